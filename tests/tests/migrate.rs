//! `rotor migrate vault-injector` on the annotation examples of Vault's
//! injector documentation (`tests/golden/vault-injector/<case>.yaml`): its
//! stdout and stderr match the golden files `<case>.out.yaml` and
//! `<case>.stderr` byte for byte, every translated pod passes the webhook's
//! annotation parser, and what is not translated is listed and gives exit
//! status 3. Update a golden file only when the new output is meant.

use std::path::Path;

use rotor_e2e::{command, output_with_stdin, text, workspace_root};

const GOLDEN: &str = "tests/golden/vault-injector";

/// Each case: its name, `--mount`, the exit status.
const CASES: [(&str, &str, i32); 3] = [
    ("tutorial-kv", "internal", 0),
    ("annotations-reference", "secret", 0),
    ("untranslatable", "secret", 3),
];

fn golden(name: &str) -> String {
    let path = workspace_root().join(GOLDEN).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The Rotor annotations of every pod template in `yaml`, parsed by the
/// webhook's parser; returns how many pods asked for injection.
fn check_rotor_contracts(yaml: &str) -> usize {
    use serde::Deserialize;
    let mut injected = 0;
    for document in serde_yaml_ng::Deserializer::from_str(yaml) {
        let value = serde_yaml_ng::Value::deserialize(document).unwrap();
        let metadata = match value["kind"].as_str() {
            Some("Pod") => &value["metadata"],
            Some("CronJob") => &value["spec"]["jobTemplate"]["spec"]["template"]["metadata"],
            _ => &value["spec"]["template"]["metadata"],
        };
        let Some(annotations) = metadata["annotations"].as_mapping() else {
            continue;
        };
        let pairs = annotations
            .iter()
            .map(|(k, v)| (k.as_str().unwrap(), v.as_str().unwrap()));
        let contract = rotor_contract::annotations::parse(pairs)
            .unwrap_or_else(|e| panic!("{:?}: {e}", value["metadata"]["name"]));
        if contract.inject {
            injected += 1;
            assert_eq!(contract.store.as_deref(), Some("vault"));
        }
    }
    injected
}

#[test]
fn the_documented_examples_match_their_golden_files() {
    for (case, mount, status) in CASES {
        let input = Path::new(GOLDEN).join(format!("{case}.yaml"));
        let out = command("rotor")
            .current_dir(workspace_root())
            .args([
                "migrate",
                "vault-injector",
                "--store",
                "vault",
                "--mount",
                mount,
            ])
            .arg(&input)
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(status), "{case}: {stderr}");
        assert_eq!(
            stdout,
            golden(&format!("{case}.out.yaml")),
            "{case}: stdout"
        );
        assert_eq!(stderr, golden(&format!("{case}.stderr")), "{case}: stderr");
        assert!(
            check_rotor_contracts(&stdout) > 0,
            "{case}: no pod translated"
        );
    }
}

#[test]
fn what_is_not_translated_is_listed_by_annotation_and_kept() {
    let stderr = golden("untranslatable.stderr");
    let stdout = golden("untranslatable.out.yaml");
    let kept: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.split_once(": not translated: "))
        .map(|(_, rest)| rest.split_once(':').unwrap().0)
        .collect();
    for annotation in [
        "vault.hashicorp.com/agent-inject-template-db-creds",
        "vault.hashicorp.com/agent-inject-template-env",
        "vault.hashicorp.com/agent-inject-secret-foo",
        "vault.hashicorp.com/agent-inject-command-token",
        "vault.hashicorp.com/agent-configmap",
        "vault.hashicorp.com/secret-volume-path-cert",
    ] {
        assert!(
            kept.contains(&annotation),
            "{annotation} not listed: {stderr}"
        );
    }
    // Every annotation listed as kept is in the output.
    for annotation in &kept {
        assert!(
            stdout.contains(&format!("{annotation}:")),
            "{annotation} dropped"
        );
    }
    assert!(
        stderr.ends_with(&format!(
            "{} Vault annotations were not translated (kept in the output, listed above)\n",
            kept.len()
        )),
        "{stderr}"
    );
}

#[test]
fn stdin_gives_the_same_output() {
    let input = golden("tutorial-kv.yaml");
    let out = output_with_stdin(
        command("rotor").args([
            "migrate",
            "vault-injector",
            "--store=vault",
            "--mount=internal",
            "-",
        ]),
        input.as_bytes(),
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, golden("tutorial-kv.out.yaml"));
    assert_eq!(
        stderr,
        golden("tutorial-kv.stderr").replace(&format!("{GOLDEN}/tutorial-kv.yaml#"), "stdin#")
    );
}

#[test]
fn bad_input_is_an_error_naming_it_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "kind: Pod\nmetadata: [\n").unwrap();
    let good = workspace_root().join(GOLDEN).join("tutorial-kv.yaml");
    let out = command("rotor")
        .args(["migrate", "vault-injector", "--store", "vault"])
        .arg(&good)
        .arg(&bad)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains(&format!("{} is not valid YAML", bad.display())) && stderr.contains("line"),
        "{stderr}"
    );

    let out = command("rotor")
        .args(["migrate", "vault-injector", "--store", "Not_A_Store"])
        .arg(&good)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("--store") && stderr.contains("Not_A_Store"),
        "{stderr}"
    );

    let out = command("rotor")
        .args(["migrate", "vault-injector"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "--store is required");
}
