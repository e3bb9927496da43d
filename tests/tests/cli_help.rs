//! The real binaries' `--help`, read recursively through every subcommand
//! the help texts list: every argument, flag and subcommand is described,
//! every environment variable is named after its flag, no variable means
//! two things, and the README's command list names exactly the commands
//! there are.

use std::collections::{BTreeMap, BTreeSet};

use rotor_e2e::help::{Help, all_helps};
use rotor_e2e::workspace_root;
use rotor_telemetry::flags::env_name;

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
