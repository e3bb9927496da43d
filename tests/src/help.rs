//! The real binaries' `--help`, parsed: every command's arguments, options
//! and subcommands, read recursively through every subcommand the help
//! texts list. `tests/cli_help.rs` checks the help texts themselves;
//! `tests/readme.rs` checks the flags the README's shell blocks use.

use std::collections::BTreeMap;

use crate::{command, stdout_ok};

/// What ends a description in an option's help: the annotations clap adds.
const ANNOTATIONS: [&str; 5] = [
    "[env:",
    "[default:",
    "[possible values:",
    "Possible values:",
    "[aliases:",
];

/// One command's help: its path (`["rotor", "store", "get"]`) and text.
pub struct Help {
    /// `["rotor", "store", "get"]`.
    pub path: Vec<String>,
    /// What `--help` printed.
    pub text: String,
}

impl Help {
    pub fn name(&self) -> String {
        self.path.join(" ")
    }

    /// The binary that reads this command's flags: `rotor controller …`
    /// is `rotor-controller …`, `rotor sidecar` is `rotor-sidecar`.
    pub fn binary(&self) -> String {
        match self.path.get(1).map(String::as_str) {
            Some(sub @ ("controller" | "sidecar")) if self.path[0] == "rotor" => {
                format!("rotor-{sub}")
            }
            _ => self.path[0].clone(),
        }
    }

    /// The lines under each heading (`Options:`, `Arguments:`, `Commands:`).
    pub fn sections(&self) -> BTreeMap<&str, Vec<&str>> {
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
    pub fn subcommands(&self) -> Vec<(String, String)> {
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
    pub fn entries(&self) -> Vec<Entry> {
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
pub struct Entry {
    /// `-h, --help`, `--out-dir <OUT_DIR>`, `<NAME>`.
    pub spec: String,
    /// Everything the help says about it.
    pub text: String,
}

impl Entry {
    pub fn long(&self) -> Option<&str> {
        let start = self.spec.find("--")? + 2;
        let rest = &self.spec[start..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .unwrap_or(rest.len());
        Some(&rest[..end])
    }

    pub fn description(&self) -> &str {
        let end = ANNOTATIONS
            .iter()
            .filter_map(|marker| self.text.find(marker))
            .min()
            .unwrap_or(self.text.len());
        self.text[..end].trim()
    }

    pub fn env(&self) -> Option<&str> {
        let start = self.text.find("[env: ")? + "[env: ".len();
        let rest = &self.text[start..];
        Some(&rest[..rest.find(['=', ']'])?])
    }
}

/// The help of one command, `path[0]` being the binary.
pub fn help_of(path: &[String]) -> Help {
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
pub fn all_helps() -> Vec<Help> {
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
