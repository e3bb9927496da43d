//! The rule every flag of Rotor's binaries follows, checked by each binary's
//! tests: every argument and subcommand has a description, and a flag that
//! reads the environment reads `ROTOR_` and its long name in upper case,
//! `-` as `_` (`--out-dir` reads `ROTOR_OUT_DIR`), with no exceptions.

use clap::Command;

/// The environment variable of the flag `--<long>`.
pub fn env_name(long: &str) -> String {
    format!("ROTOR_{}", long.to_ascii_uppercase().replace('-', "_"))
}

/// Every breach of the rule in `command` and its visible subcommands, one
/// line each (`rotor store get <name>: no description`); empty if none.
pub fn problems(command: &Command) -> Vec<String> {
    let mut found = Vec::new();
    walk(command, command.get_name(), &mut found);
    found
}

fn walk(command: &Command, path: &str, found: &mut Vec<String>) {
    for arg in command.get_arguments().filter(|a| !a.is_hide_set()) {
        let name = match arg.get_long() {
            Some(long) => format!("--{long}"),
            None => format!("<{}>", arg.get_id()),
        };
        if arg.get_help().is_none() && arg.get_long_help().is_none() {
            found.push(format!("{path} {name}: no description"));
        }
        let Some(env) = arg.get_env() else { continue };
        let expected = arg.get_long().map(env_name);
        if expected.as_deref().map(std::ffi::OsStr::new) != Some(env) {
            found.push(format!(
                "{path} {name}: reads {}, not {}",
                env.to_string_lossy(),
                expected.as_deref().unwrap_or("nothing (no long name)")
            ));
        }
    }
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let sub_path = format!("{path} {}", sub.get_name());
        if sub.get_about().is_none() && sub.get_long_about().is_none() {
            found.push(format!("{sub_path}: no description"));
        }
        walk(sub, &sub_path, found);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    #[test]
    fn the_env_var_is_the_flag_in_upper_case() {
        assert_eq!(env_name("out-dir"), "ROTOR_OUT_DIR");
        assert_eq!(env_name("log"), "ROTOR_LOG");
    }

    #[test]
    fn an_undescribed_argument_and_a_misnamed_env_var_are_reported() {
        let command = Command::new("tool")
            .arg(
                Arg::new("fine")
                    .long("fine")
                    .env("ROTOR_FINE")
                    .help("Fine."),
            )
            .subcommand(
                Command::new("sub")
                    .about("A subcommand.")
                    .arg(Arg::new("name").action(ArgAction::Set))
                    .arg(
                        Arg::new("listen")
                            .long("listen")
                            .env("ROTOR_WEBHOOK_ADDR")
                            .help("Where."),
                    ),
            )
            .subcommand(Command::new("bare"));
        assert_eq!(
            problems(&command),
            [
                "tool sub <name>: no description",
                "tool sub --listen: reads ROTOR_WEBHOOK_ADDR, not ROTOR_LISTEN",
                "tool bare: no description",
            ]
        );
    }
}
