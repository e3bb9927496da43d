//! The source tree's shape, checked without building anything: every
//! module of every crate opens with a `//!` doc, and within a crate the
//! top-level modules' `crate::` references form no cycle (dependencies
//! only point down, as ARCHITECTURE.md says).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, recursively, in a stable order.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Each workspace crate's `src` directory.
fn crate_sources() -> Vec<PathBuf> {
    let root = rotor_e2e::workspace_root();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("Cargo.toml").is_file() && p.join("src").is_dir())
        .map(|p| p.join("src"))
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 10,
        "found only {dirs:?} under {}",
        root.display()
    );
    dirs
}

#[test]
fn every_source_module_opens_with_a_module_doc() {
    let mut missing = Vec::new();
    for src in crate_sources() {
        for file in rust_files(&src) {
            let text = std::fs::read_to_string(&file).unwrap();
            let first = text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with("#!["));
            if !first.is_some_and(|l| l.starts_with("//!")) {
                missing.push(file.display().to_string());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "modules without a `//!` doc saying what they hold:\n{}",
        missing.join("\n")
    );
}

/// The code of a file that counts for dependencies: line comments and the
/// inline `#[cfg(test)] mod tests` (tests may reach anywhere) left out.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(at) => &l[..at],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules `code` names through `crate::`: paths
/// (`crate::a::b`) and groups (`use crate::{a, b::c}`).
fn referenced(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in code.match_indices("crate::") {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue; // `rotor_crate::`, `$crate::`
        }
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut start = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' | ',' if depth == 1 => {
                        out.insert(ident(&group[start..i]));
                        start = i + 1;
                        if c == '}' {
                            break;
                        }
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

/// A cycle in `edges`, if there is one, as the modules along it.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|n| visit(n, edges, &mut Vec::new(), &mut done))
}

/// Each top-level module of the crate at `src` and the top-level modules
/// it references. Test-only files (`tests.rs`) are left out.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(src) {
        let rel = file.strip_prefix(src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if top == "lib" || top == "main" || file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let to = edges.entry(top.clone()).or_default();
        to.extend(referenced(&code(&text)).into_iter().filter(|m| *m != top));
    }
    let modules: BTreeSet<String> = edges.keys().cloned().collect();
    for to in edges.values_mut() {
        // Re-exports at the crate root (`crate::Error`) are not modules.
        to.retain(|m| modules.contains(m));
    }
    edges
}

#[test]
fn the_references_parser_sees_paths_and_groups() {
    let found = referenced(&code(
        "use crate::{a, b::{c, d}, e as f};\nfn x() { crate::g::h(); $crate::i; rotor_crate::j; }\n// crate::k\n",
    ));
    let want: BTreeSet<String> = ["a", "b", "e", "g"].map(str::to_owned).into();
    assert_eq!(found, want);
    let mut edges = BTreeMap::new();
    edges.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    edges.insert("b".to_owned(), BTreeSet::from(["c".to_owned()]));
    edges.insert("c".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert_eq!(find_cycle(&edges).unwrap(), ["a", "b", "c", "a"]);
    edges.get_mut("c").unwrap().clear();
    assert_eq!(find_cycle(&edges), None);
}

/// Upward references left in the controller, each part of a cycle that a
/// later change removes (none left); the test fails on any other cycle, and on an entry
/// here that no longer exists, so the list only shrinks.
const KNOWN_UPWARD: &[(&str, &str, &str, &str)] = &[];

#[test]
fn no_crate_has_a_cycle_between_its_top_level_modules() {
    let mut cycles = Vec::new();
    for src in crate_sources() {
        let mut graph = module_graph(&src);
        let krate = src.parent().unwrap().file_name().unwrap().to_string_lossy();
        for (c, from, to, why) in KNOWN_UPWARD {
            if *c == krate {
                let removed = graph.get_mut(*from).is_some_and(|t| t.remove(*to));
                assert!(
                    removed,
                    "{c}: {from} → {to} is gone ({why}): take it off KNOWN_UPWARD"
                );
            }
        }
        // Every cycle, one at a time: report one, cut its last edge, look again.
        while let Some(cycle) = find_cycle(&graph) {
            cycles.push(format!("{}: {}", src.display(), cycle.join(" → ")));
            let (from, to) = (&cycle[cycle.len() - 2], &cycle[cycle.len() - 1]);
            graph.get_mut(from).unwrap().remove(to);
        }
    }
    assert!(
        cycles.is_empty(),
        "module cycles (move the shared item down, into a module both may use):\n{}",
        cycles.join("\n")
    );
}
