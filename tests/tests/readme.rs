//! The README's shell blocks, so the docs cannot drift from the binaries.
//!
//! Every fenced ```` ```sh ```` block in README.md is preceded by a marker
//! line saying what this test does with it:
//!
//! - `<!-- test: run GROUP -->`: run against the real binaries. The blocks
//!   of one group run in order, as one `bash -euo pipefail` script, in a
//!   fresh scratch directory that links the clone's top-level entries (so
//!   `controller/tests/fixtures` and `examples/` resolve), with the
//!   workspace's binaries first on `PATH`, then the packaging tools
//!   (`helm`, `crane`: `tests/tools/build`), `TMPDIR` and Helm's homes
//!   inside the scratch directory. The script must succeed and print what [`EXPECTED`] says.
//! - `<!-- test: check -->`: needs something this test does not run (cargo,
//!   a long-running server on a fixed port, the image build).
//! - `<!-- test: cluster -->`: needs a cluster, a registry or Vault.
//!
//! Every block, whatever its marker, must parse (`bash -n`), every
//! `rotor`, `rotor-sidecar` and `rotor-controller` command in it may use only
//! subcommands and flags its `--help` shows, every `helm --set` only keys of
//! the chart's values.yaml, and every path into the clone it names must
//! exist. Links to other files and to the README's own headings must
//! resolve, except the docs other work adds ([`PENDING_DOCS`]). The YAML
//! the README shows (`yaml` blocks, `<<'YAML'` heredocs) must parse as the
//! API types of its kind: Rotor's CRDs, Pods, NetworkPolicies.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};

use rotor_e2e::help::{Help, help_of};
use rotor_e2e::{bin, wait_until, workspace_root};

/// What each group's run prints on stdout, at least.
const EXPECTED: [(&str, &str); 7] = [
    ("demo", "the sidecar acknowledged version 2"),
    ("postgres-demo", "2 rotations,"),
    ("help", "Usage: rotor store put"),
    ("helm", "kind: MutatingWebhookConfiguration"),
    ("sidecar", "s3cret"),
    ("migrate", "rotor.dev/secret.db-password: shop/db-password"),
    ("local-store", "PREVIOUS"),
];

/// Docs the README links that other changes in flight add; a link to one
/// of them is not dead while it is on its way.
const PENDING_DOCS: [&str; 0] = [];

/// The binaries whose flags the blocks may use.
const BINARIES: [&str; 3] = ["rotor", "rotor-sidecar", "rotor-controller"];

/// What a marker asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Run(String),
    Check,
    Cluster,
}

/// One shell block of the README.
#[derive(Debug)]
struct Block {
    /// The README's line of the opening fence, for messages.
    line: usize,
    kind: Kind,
    text: String,
}

fn readme() -> String {
    std::fs::read_to_string(workspace_root().join("README.md")).unwrap()
}

/// Every ```` ```sh ```` block with its marker; panics naming the blocks
/// without one, or with a marker this test does not know.
fn blocks(readme: &str) -> Vec<Block> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut blocks = Vec::new();
    let mut unmarked = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let fence = lines[i].trim_start();
        if !fence.starts_with("```") {
            i += 1;
            continue;
        }
        let indent = lines[i].len() - fence.len();
        let lang = fence.trim_start_matches('`').trim();
        let start = i;
        i += 1;
        let mut body = Vec::new();
        while i < lines.len() && lines[i].trim() != "```" {
            body.push(lines[i].get(indent..).unwrap_or("").to_owned());
            i += 1;
        }
        i += 1;
        if !matches!(lang, "sh" | "bash" | "shell" | "console") {
            continue;
        }
        let marker = start
            .checked_sub(1)
            .map(|p| lines[p].trim())
            .and_then(|m| m.strip_prefix("<!-- test: "))
            .and_then(|m| m.strip_suffix(" -->"));
        let kind = match marker.map(|m| m.split_once(' ').unwrap_or((m, ""))) {
            Some(("run", group)) if !group.is_empty() => Kind::Run(group.to_owned()),
            Some(("check", "")) => Kind::Check,
            Some(("cluster", "")) => Kind::Cluster,
            _ => {
                unmarked.push(format!("README.md:{} ({lang})", start + 1));
                continue;
            }
        };
        blocks.push(Block {
            line: start + 1,
            kind,
            text: body.join("\n") + "\n",
        });
    }
    assert!(
        unmarked.is_empty(),
        "shell blocks without a `<!-- test: run GROUP|check|cluster -->` line right above: {unmarked:#?}"
    );
    blocks
}

#[test]
fn every_shell_block_is_marked_and_each_kind_is_used() {
    let blocks = blocks(&readme());
    let count = |f: &dyn Fn(&Kind) -> bool| blocks.iter().filter(|b| f(&b.kind)).count();
    assert!(count(&|k| matches!(k, Kind::Run(_))) >= 4, "{blocks:#?}");
    assert!(count(&|k| *k == Kind::Check) >= 3, "{blocks:#?}");
    assert!(count(&|k| *k == Kind::Cluster) >= 8, "{blocks:#?}");
    // The README still starts with its two commands.
    let first = &blocks[0];
    assert_eq!(
        first
            .text
            .lines()
            .map(|l| l.split("  ").next().unwrap())
            .collect::<Vec<_>>(),
        ["cargo run -p rotor -- demo", "tests/run"],
        "README.md:{}",
        first.line
    );
}

/// Runs one group's script in a scratch directory; returns stdout.
fn run_group(group: &str, script: &str) -> String {
    let root = workspace_root();
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    for entry in std::fs::read_dir(&root).unwrap() {
        let name = entry.unwrap().file_name();
        let text = name.to_string_lossy();
        if text.starts_with('.') || text == "target" {
            continue;
        }
        std::os::unix::fs::symlink(root.join(&name), dir.join(&name)).unwrap();
    }
    let tmp = dir.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let bin_dir = bin("rotor").parent().unwrap().to_owned();
    let path = format!(
        "{}:{}:{}",
        bin_dir.display(),
        rotor_e2e::tools::dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let stdout = dir.join("stdout.txt");
    let stderr = dir.join("stderr.txt");
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .env("PATH", path)
        .env("TMPDIR", &tmp)
        .env("HELM_CACHE_HOME", tmp.join("helm-cache"))
        .env("HELM_CONFIG_HOME", tmp.join("helm-config"))
        .env("HELM_DATA_HOME", tmp.join("helm-data"))
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap());
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("ROTOR_") {
            cmd.env_remove(var);
        }
    }
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let mut status = None;
    // A guard against a hang, not a measurement.
    let finished = wait_until(180, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    // Whatever the script left running in the background ends with it.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stderr(Stdio::null())
        .status();
    if !finished {
        let _ = child.wait();
    }
    let out = std::fs::read_to_string(&stdout).unwrap();
    let err = std::fs::read_to_string(&stderr).unwrap();
    assert!(
        finished,
        "README group {group:?} did not finish in 180 s:\n{script}\n--- stdout\n{out}\n--- stderr\n{err}"
    );
    let status = status.unwrap();
    assert!(
        status.success(),
        "README group {group:?} failed ({status}):\n{script}\n--- stdout\n{out}\n--- stderr\n{err}"
    );
    out
}

#[test]
fn the_offline_blocks_run_against_the_real_binaries() {
    let mut groups: BTreeMap<String, String> = BTreeMap::new();
    for block in blocks(&readme()) {
        if let Kind::Run(group) = block.kind {
            groups.entry(group).or_default().push_str(&block.text);
        }
    }
    let named: BTreeSet<&str> = EXPECTED.iter().map(|(g, _)| *g).collect();
    let found: BTreeSet<&str> = groups.keys().map(String::as_str).collect();
    assert_eq!(found, named, "the README's run groups and EXPECTED differ");
    for (group, expected) in EXPECTED {
        let out = run_group(group, &groups[group]);
        assert!(
            out.contains(expected),
            "README group {group:?} printed no {expected:?}:\n{out}"
        );
    }
}

/// The block's lines with backslash continuations joined and heredoc
/// bodies left out: what the shell reads as commands.
fn command_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    let mut heredoc: Option<String> = None;
    for line in text.lines() {
        if let Some(end) = &heredoc {
            if line.trim() == end {
                heredoc = None;
            }
            continue;
        }
        if let Some(rest) = line.strip_suffix('\\') {
            current.push_str(rest);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        if let Some(at) = current.find("<<") {
            let word = current[at + 2..]
                .trim_start_matches('-')
                .split_whitespace()
                .next()
                .unwrap_or("")
                .trim_matches(['\'', '"']);
            heredoc = Some(word.to_owned());
        }
        lines.push(std::mem::take(&mut current));
    }
    lines
}

/// The simple commands of a line: words split on blanks and the shell's
/// operators, quotes removed, comments dropped. Good enough for the
/// README's blocks, which keep to plain commands.
fn simple_commands(line: &str) -> Vec<Vec<String>> {
    let mut commands = vec![Vec::new()];
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    let end_word = |word: &mut String, in_word: &mut bool, commands: &mut Vec<Vec<String>>| {
        if *in_word {
            commands.last_mut().unwrap().push(std::mem::take(word));
            *in_word = false;
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    word.push(q);
                }
            }
            '"' => {
                in_word = true;
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' => word.extend(chars.next()),
                        q => word.push(q),
                    }
                }
            }
            '#' if !in_word => break,
            '$' if chars.peek() == Some(&'(') => {
                chars.next();
                end_word(&mut word, &mut in_word, &mut commands);
                commands.push(Vec::new());
            }
            ';' | '&' | '|' | '(' | ')' => {
                end_word(&mut word, &mut in_word, &mut commands);
                if commands.last().is_some_and(|c| !c.is_empty()) {
                    commands.push(Vec::new());
                }
            }
            c if c.is_whitespace() => end_word(&mut word, &mut in_word, &mut commands),
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    end_word(&mut word, &mut in_word, &mut commands);
    commands.retain(|c| !c.is_empty());
    commands
}

/// The help texts read so far, by command path.
#[derive(Default)]
struct Helps(BTreeMap<Vec<String>, Help>);

impl Helps {
    fn get(&mut self, path: &[String]) -> &Help {
        self.0.entry(path.to_vec()).or_insert_with(|| help_of(path))
    }

    /// What is wrong with one invocation of a Rotor binary: a subcommand or
    /// a flag its `--help` does not show.
    fn problems(&mut self, words: &[String]) -> Vec<String> {
        let mut path = vec![words[0].clone()];
        let mut problems = Vec::new();
        let mut positional = false;
        for word in &words[1..] {
            if let Some(flag) = word.strip_prefix("--") {
                let flag = flag.split('=').next().unwrap();
                let help = self.get(&path);
                if !help.entries().iter().any(|e| e.long() == Some(flag)) {
                    problems.push(format!("`{}` has no --{flag}", path.join(" ")));
                }
                continue;
            }
            if word.starts_with('-') || positional {
                continue;
            }
            let subcommands = self.get(&path).subcommands();
            if subcommands.is_empty() {
                positional = true;
            } else if subcommands.iter().any(|(name, _)| name == word) {
                path.push(word.clone());
            } else {
                problems.push(format!("`{}` has no subcommand {word}", path.join(" ")));
                positional = true;
            }
        }
        problems
    }
}

/// The chart's values, for `helm --set KEY=VALUE`.
fn chart_values() -> serde_json::Value {
    let text = std::fs::read_to_string(workspace_root().join("charts/rotor/values.yaml")).unwrap();
    serde_yaml_ng::from_str(&text).unwrap()
}

/// The paths into the clone a command names (`deploy/examples/x.yaml`,
/// `@controller/tests/fixtures/inject.json`).
fn clone_paths(words: &[String]) -> Vec<String> {
    const TOP: [&str; 8] = [
        "charts/",
        "controller/",
        "deploy/",
        "docs/",
        "examples/",
        "fixtures/",
        "images/",
        "tests/",
    ];
    words
        .iter()
        .map(|w| w.trim_start_matches('@').trim_start_matches("./"))
        .filter(|w| TOP.iter().any(|top| w.starts_with(top)))
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_block_parses_and_uses_only_what_exists() {
    let root = workspace_root();
    let values = chart_values();
    let mut helps = Helps::default();
    let mut problems = Vec::new();
    let mut rotor_commands = 0;
    for block in blocks(&readme()) {
        let at = format!("README.md:{}", block.line);
        let parsed = Command::new("bash")
            .args(["-n", "-c", &block.text])
            .output()
            .unwrap();
        if !parsed.status.success() {
            problems.push(format!(
                "{at}: bash -n: {}",
                String::from_utf8_lossy(&parsed.stderr)
            ));
        }
        for line in command_lines(&block.text) {
            for words in simple_commands(&line) {
                let words: Vec<String> = match words.as_slice() {
                    [cargo, run, p, rotor, dashes, rest @ ..]
                        if cargo == "cargo" && run == "run" && p == "-p" && dashes == "--" =>
                    {
                        std::iter::once(rotor.clone())
                            .chain(rest.to_vec())
                            .collect()
                    }
                    _ => words,
                };
                if BINARIES.contains(&words[0].as_str()) {
                    rotor_commands += 1;
                    problems.extend(
                        helps
                            .problems(&words)
                            .into_iter()
                            .map(|p| format!("{at}: {p}")),
                    );
                }
                if words[0] == "helm" {
                    for pair in words.windows(2).filter(|w| w[0] == "--set") {
                        let key = pair[1].split('=').next().unwrap();
                        let known = key
                            .split('.')
                            .try_fold(&values, |v, part| v.get(part))
                            .is_some();
                        if !known {
                            problems.push(format!("{at}: the chart has no value {key}"));
                        }
                    }
                }
                for path in clone_paths(&words) {
                    if !root.join(&path).exists() {
                        problems.push(format!("{at}: {path} is not in the clone"));
                    }
                }
            }
        }
    }
    assert!(
        rotor_commands >= 20,
        "too few rotor commands found: {rotor_commands}"
    );
    assert!(problems.is_empty(), "{problems:#?}");
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces
/// as `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every `](target)` of a Markdown text.
fn links(text: &str) -> Vec<String> {
    text.match_indices("](")
        .filter_map(|(at, _)| {
            let rest = &text[at + 2..];
            Some(rest[..rest.find(')')?].to_owned())
        })
        .collect()
}

#[test]
fn the_readme_links_resolve() {
    let root = workspace_root();
    let readme = readme();
    let mut in_code = false;
    let mut anchors = BTreeSet::new();
    for line in readme.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            anchors.insert(slug(line.trim_start_matches('#')));
        }
    }
    let mut dead = Vec::new();
    for link in links(&readme) {
        if link.starts_with("http://") || link.starts_with("https://") {
            continue;
        }
        if let Some(anchor) = link.strip_prefix('#') {
            if !anchors.contains(anchor) {
                dead.push(link);
            }
            continue;
        }
        let file = link.split('#').next().unwrap();
        if !root.join(file).exists() && !PENDING_DOCS.contains(&file) {
            dead.push(link);
        }
    }
    assert!(anchors.len() > 40, "too few headings: {anchors:?}");
    assert!(dead.is_empty(), "dead links in README.md: {dead:#?}");
    // docs/development.md's links into the README and beside it.
    let development = std::fs::read_to_string(root.join("docs/development.md")).unwrap();
    for link in links(&development) {
        let (file, anchor) = link.split_once('#').unwrap_or((&link, ""));
        if link.starts_with("http") || file.is_empty() {
            continue;
        }
        let path = Path::new("docs").join(file);
        assert!(
            root.join(&path).exists(),
            "docs/development.md: dead {link}"
        );
        if file == "../README.md" && !anchor.is_empty() {
            assert!(anchors.contains(anchor), "docs/development.md: dead {link}");
        }
    }
}

/// The YAML documents the README shows: its `yaml` blocks and the heredoc
/// bodies of its shell blocks (`<<'YAML'`), with the README line each
/// starts near.
fn yaml_documents(readme: &str) -> Vec<(usize, String)> {
    let mut documents = Vec::new();
    let mut current: Option<(usize, String, &str)> = None;
    for (n, line) in readme.lines().enumerate() {
        let trimmed = line.trim();
        if let Some((start, text, end)) = current.as_mut() {
            if trimmed == *end {
                documents.push((*start, std::mem::take(text)));
                current = None;
            } else {
                text.push_str(line);
                text.push('\n');
            }
        } else if trimmed == "```yaml" {
            current = Some((n + 1, String::new(), "```"));
        } else if trimmed.ends_with("<<'YAML'") {
            current = Some((n + 1, String::new(), "YAML"));
        }
    }
    documents
}

#[test]
fn the_readme_yaml_is_what_the_api_takes() {
    use rotor_contract::api::{ClusterRotorStore, RotorStore, SecretRotationPolicy};
    let readme = readme();
    let mut problems = Vec::new();
    let mut kinds = BTreeMap::<String, usize>::new();
    for (line, text) in yaml_documents(&readme) {
        // Indented blocks (inside a list item) keep their indentation.
        let indent = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.len() - l.trim_start().len())
            .min()
            .unwrap_or(0);
        let text: String = text
            .lines()
            .map(|l| l.get(indent..).unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        for document in text.split("\n---") {
            let value: serde_json::Value = match serde_yaml_ng::from_str(document) {
                Ok(value) => value,
                Err(e) => {
                    problems.push(format!("README.md:{line}: not YAML: {e}"));
                    continue;
                }
            };
            let Some(kind) = value["kind"].as_str().map(str::to_owned) else {
                continue; // a fragment, such as a policy's spec.target
            };
            let parsed = match kind.as_str() {
                "RotorStore" => serde_json::from_value::<RotorStore>(value).map(drop),
                "ClusterRotorStore" => serde_json::from_value::<ClusterRotorStore>(value).map(drop),
                "SecretRotationPolicy" => {
                    serde_json::from_value::<SecretRotationPolicy>(value).map(drop)
                }
                "Pod" => serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(value).map(drop),
                "NetworkPolicy" => {
                    serde_json::from_value::<k8s_openapi::api::networking::v1::NetworkPolicy>(value)
                        .map(drop)
                }
                _ => Ok(()),
            };
            if let Err(e) = parsed {
                problems.push(format!("README.md:{line}: {kind}: {e}"));
            }
            *kinds.entry(kind).or_default() += 1;
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(
        kinds.get("RotorStore").is_some_and(|n| *n >= 4),
        "{kinds:?}"
    );
    assert!(kinds.contains_key("Pod"), "{kinds:?}");
    assert!(kinds.contains_key("NetworkPolicy"), "{kinds:?}");
}
