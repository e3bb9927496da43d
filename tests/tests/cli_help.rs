//! The real binaries' `--help`, read recursively through every subcommand
//! the help texts list: every argument, flag and subcommand is described,
//! every environment variable is named after its flag, no variable means
//! two things, and the README's command list names exactly the commands
//! there are.

use std::collections::{BTreeMap, BTreeSet};

use rotor_e2e::{command, stdout_ok, workspace_root};
use rotor_telemetry::flags::env_name;

/// What ends a description in an option's help: the annotations clap adds.
const ANNOTATIONS: [&str; 5] = [
    "[env:",
    "[default:",
    "[possible values:",
    "Possible values:",
    "[aliases:",
];

/// Variables that more than one binary reads, each with one meaning.
const SHARED: [(&str, &str); 5] = [
    ("ROTOR_LOG", "the log filter, in every binary"),
    ("ROTOR_LOG_FORMAT", "the log line format, in every binary"),
    (
        "ROTOR_KEY",
        "the local store's key file, for the sidecar and `rotor store`",
    ),
    (
        "ROTOR_VAULT_TOKEN_FILE",
        "a Vault token file, for the sidecar and the controller",
    ),
    (
        "ROTOR_VAULT_JWT_FILE",
        "a service-account token for Vault's Kubernetes auth, for the sidecar (in rotor-sidecar and `rotor sidecar`)",
    ),
];

/// One command's help: its path (`["rotor", "store", "get"]`) and text.
struct Help {
    path: Vec<String>,
    text: String,
}

impl Help {
    fn name(&self) -> String {
        self.path.join(" ")
    }

    /// The binary that reads this command's flags: `rotor controller …`
    /// is `rotor-controller …`, `rotor sidecar` is `rotor-sidecar`.
    fn binary(&self) -> String {
        match self.path.get(1).map(String::as_str) {
            Some(sub @ ("controller" | "sidecar")) if self.path[0] == "rotor" => {
                format!("rotor-{sub}")
            }
            _ => self.path[0].clone(),
        }
    }

    /// The lines under each heading (`Options:`, `Arguments:`, `Commands:`).
    fn sections(&self) -> BTreeMap<&str, Vec<&str>> {
        let mut sections: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut current = None;
        for line in self.text.lines() {
            if line.trim().is_empty() {
                continue;
            }
            if !line.starts_with(' ') && line.ends_with(':') {
                current = Some(line.trim_end_matches(':'));
            } else if !line.starts_with(' ') {
                current = None;
            } else if let Some(heading) = current {
                sections.entry(heading).or_default().push(line);
            }
        }
        sections
    }

    /// The subcommands the help lists, without clap's `help`.
    fn subcommands(&self) -> Vec<(String, String)> {
        let sections = self.sections();
        let Some(lines) = sections.get("Commands") else {
            return Vec::new();
        };
        lines
            .iter()
            .filter(|line| line.starts_with("  ") && !line[2..].starts_with(' '))
            .map(|line| {
                let (name, about) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
                (name.to_owned(), about.trim().to_owned())
            })
            .filter(|(name, _)| name != "help")
            .collect()
    }

    /// Every argument and option the help lists.
    fn entries(&self) -> Vec<Entry> {
        let mut entries = Vec::new();
        for (heading, lines) in self.sections() {
            if !matches!(heading, "Options" | "Arguments") {
                continue;
            }
            let mut current: Option<Entry> = None;
            for line in lines {
                let indent = line.len() - line.trim_start().len();
                let body = line.trim();
                let starts_entry =
                    (indent == 2 || indent == 6) && body.starts_with(['-', '<', '[']);
                if starts_entry {
                    entries.extend(current.take());
                    let (spec, rest) = body.split_once("  ").unwrap_or((body, ""));
                    current = Some(Entry {
                        spec: spec.to_owned(),
                        text: rest.trim().to_owned(),
                    });
                } else if let Some(entry) = current.as_mut() {
                    entry.text.push('\n');
                    entry.text.push_str(body);
                }
            }
            entries.extend(current);
        }
        entries
    }
}

/// One argument or option of a help text.
#[derive(Debug)]
struct Entry {
    /// `-h, --help`, `--out-dir <OUT_DIR>`, `<NAME>`.
    spec: String,
    /// Everything the help says about it.
    text: String,
}

impl Entry {
    fn long(&self) -> Option<&str> {
        let start = self.spec.find("--")? + 2;
        let rest = &self.spec[start..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .unwrap_or(rest.len());
        Some(&rest[..end])
    }

    fn description(&self) -> &str {
        let end = ANNOTATIONS
            .iter()
            .filter_map(|marker| self.text.find(marker))
            .min()
            .unwrap_or(self.text.len());
        self.text[..end].trim()
    }

    fn env(&self) -> Option<&str> {
        let start = self.text.find("[env: ")? + "[env: ".len();
        let rest = &self.text[start..];
        Some(&rest[..rest.find(['=', ']'])?])
    }
}

fn help_of(path: &[String]) -> Help {
    let text = stdout_ok(
        command(&path[0]).args(&path[1..]).arg("--help"),
        &format!("{} --help", path.join(" ")),
    );
    Help {
        path: path.to_vec(),
        text,
    }
}

/// The help of every binary and every subcommand their help texts list.
fn all_helps() -> Vec<Help> {
    let mut todo: Vec<Vec<String>> = ["rotor", "rotor-sidecar", "rotor-controller"]
        .iter()
        .map(|b| vec![b.to_string()])
        .collect();
    let mut helps = Vec::new();
    while let Some(path) = todo.pop() {
        let help = help_of(&path);
        for (sub, _) in help.subcommands() {
            todo.push(path.iter().cloned().chain([sub]).collect());
        }
        helps.push(help);
    }
    helps.sort_by_key(Help::name);
    assert!(helps.len() > 20, "too few commands found: {}", helps.len());
    helps
}

#[test]
fn every_argument_flag_and_subcommand_has_a_description() {
    let mut undescribed = Vec::new();
    let mut seen = 0;
    for help in all_helps() {
        for entry in help.entries() {
            seen += 1;
            if entry.description().is_empty() {
                undescribed.push(format!("{}: {}", help.name(), entry.spec));
            }
        }
        for (sub, about) in help.subcommands() {
            if about.is_empty() {
                undescribed.push(format!("{} {sub}", help.name()));
            }
        }
    }
    assert!(seen > 100, "too few options found: {seen}");
    assert!(undescribed.is_empty(), "no description: {undescribed:#?}");
}

#[test]
fn every_env_var_is_rotor_and_the_flag_name() {
    let mut wrong = Vec::new();
    let mut seen = 0;
    for help in all_helps() {
        for entry in help.entries() {
            let Some(env) = entry.env() else { continue };
            seen += 1;
            match entry.long() {
                Some(long) if env == env_name(long) => {}
                long => wrong.push(format!(
                    "{}: --{} reads {env}",
                    help.name(),
                    long.unwrap_or("(no long name)")
                )),
            }
        }
    }
    assert!(seen > 50, "too few env vars found: {seen}");
    assert!(wrong.is_empty(), "not named after the flag: {wrong:#?}");
}

#[test]
fn the_flags_the_issue_names_read_their_env_vars() {
    let helps = all_helps();
    let env_of = |command: &str, flag: &str| {
        let help = helps
            .iter()
            .find(|h| h.name() == command)
            .unwrap_or_else(|| panic!("no command {command}"));
        help.entries()
            .into_iter()
            .find(|e| e.long() == Some(flag))
            .unwrap_or_else(|| panic!("{command} has no --{flag}"))
            .env()
            .map(str::to_owned)
    };
    for line in [
        "rotor-sidecar --once ROTOR_ONCE",
        "rotor-sidecar --local-store ROTOR_LOCAL_STORE",
        "rotor-sidecar --kubernetes-namespace ROTOR_KUBERNETES_NAMESPACE",
        "rotor-controller run --listen ROTOR_LISTEN",
        "rotor-controller webhook --listen ROTOR_LISTEN",
        "rotor-controller run --service ROTOR_SERVICE",
        "rotor-controller run --tls-secret ROTOR_TLS_SECRET",
        "rotor-controller run --webhook-configuration ROTOR_WEBHOOK_CONFIGURATION",
        "rotor-controller run --namespace ROTOR_NAMESPACE",
        "rotor store --store ROTOR_STORE",
        "rotor store --key ROTOR_KEY",
    ] {
        let (rest, env) = line.rsplit_once(' ').unwrap();
        let (command, flag) = rest.rsplit_once(" --").unwrap();
        assert_eq!(env_of(command, flag).as_deref(), Some(env), "{line}");
    }
}

#[test]
fn no_env_var_means_two_things() {
    let mut readers: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for help in all_helps() {
        for entry in help.entries() {
            if let Some(env) = entry.env() {
                readers
                    .entry(env.to_owned())
                    .or_default()
                    .insert(help.binary());
            }
        }
    }
    let shared: BTreeSet<&str> = SHARED.iter().map(|(env, _)| *env).collect();
    let ambiguous: Vec<_> = readers
        .iter()
        .filter(|(env, binaries)| binaries.len() > 1 && !shared.contains(env.as_str()))
        .collect();
    assert!(
        ambiguous.is_empty(),
        "read by more than one binary: {ambiguous:#?}"
    );
    for (env, meaning) in SHARED {
        assert!(readers.contains_key(env), "nothing reads {env} ({meaning})");
    }
}

/// The README's `## Commands` section.
fn readme_commands_section() -> String {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let section = readme
        .split("\n## Commands\n")
        .nth(1)
        .expect("README.md has a `## Commands` section");
    section.split("\n## ").next().unwrap().to_owned()
}

/// The rows of the section's table: the command in the first column and
/// what the row says about it.
fn readme_commands() -> BTreeMap<String, String> {
    readme_commands_section()
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .map(|rest| {
            let (command, row) = rest.split_once('`').unwrap();
            (command.to_owned(), row.to_owned())
        })
        .collect()
}

/// The `--flags` and `ROTOR_*` variables a piece of README text names.
fn named(text: &str, prefix: &str) -> BTreeSet<String> {
    text.match_indices(prefix)
        .map(|(start, _)| {
            let rest = &text[start + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|name| !name.is_empty())
        .map(|name| format!("{prefix}{name}"))
        .collect()
}

#[test]
fn the_readme_lists_every_command_and_no_other() {
    // `rotor controller run` is `rotor-controller run`: listed once.
    let commands: BTreeSet<String> = all_helps()
        .iter()
        .map(|help| match help.path.as_slice() {
            [rotor, controller, rest @ ..]
                if rotor == "rotor" && controller == "controller" && !rest.is_empty() =>
            {
                format!("rotor-controller {}", rest.join(" "))
            }
            _ => help.name(),
        })
        .collect();
    let listed: BTreeSet<String> = readme_commands().into_keys().collect();
    let missing: Vec<_> = commands.difference(&listed).collect();
    let unknown: Vec<_> = listed.difference(&commands).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "README.md's command list lacks {missing:?} and lists {unknown:?}, which --help does not"
    );
}

#[test]
fn the_readme_names_only_flags_and_variables_that_help_shows() {
    let helps = all_helps();
    // A row's flags are its command's own.
    for (command, row) in readme_commands() {
        let help = helps
            .iter()
            .find(|h| h.name() == command)
            .unwrap_or_else(|| panic!("README.md lists {command}, which --help does not"));
        let flags: BTreeSet<String> = help
            .entries()
            .iter()
            .filter_map(|e| Some(format!("--{}", e.long()?)))
            .collect();
        let unknown: Vec<_> = named(&row, "--").difference(&flags).cloned().collect();
        assert!(
            unknown.is_empty(),
            "README.md: `{command}` has no {unknown:?}"
        );
    }
    // Every variable the section names is one a binary reads.
    let shown: BTreeSet<String> = helps
        .iter()
        .flat_map(Help::entries)
        .filter_map(|e| e.env().map(str::to_owned))
        .collect();
    let section = readme_commands_section();
    let unknown: Vec<_> = named(&section, "ROTOR_")
        .difference(&shown)
        .cloned()
        .collect();
    assert!(
        unknown.is_empty(),
        "README.md names {unknown:?}, which no --help shows"
    );
}
