//! `kubectl apply --server-side -k deploy/` against a real API server: the
//! CRDs are Established, every example is accepted, and each CEL rule
//! rejects what it should, with its own message.

use rotor_e2e::cluster::installed;

/// Applies a manifest from stdin; `Ok(stdout)` or `Err(stderr)`.
fn apply(namespace: &str, yaml: &str) -> Result<String, String> {
    let plane = installed();
    let out = rotor_e2e::output_with_stdin(
        plane.kubectl().args([
            "apply",
            "--server-side",
            "--field-manager=rotor-tests",
            "-n",
            namespace,
            "-f",
            "-",
        ]),
        yaml.as_bytes(),
    );
    let (stdout, stderr) = rotor_e2e::text(&out);
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(stderr)
    }
}

#[tokio::test]
async fn install_establishes_the_crds_and_accepts_every_example() {
    let plane = installed();
    // The examples live in namespace `shop`.
    plane.create_namespace("shop", &[]).await;
    let examples = rotor_e2e::workspace_root().join("deploy/examples");
    let mut files: Vec<_> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    for file in files {
        let out = plane
            .kubectl()
            .args([
                "apply",
                "--server-side",
                "--field-manager=rotor-tests",
                "-f",
            ])
            .arg(&file)
            .output()
            .unwrap();
        let (stdout, stderr) = rotor_e2e::text(&out);
        assert!(
            out.status.success(),
            "{} was refused: {stderr}",
            file.display()
        );
        assert!(stdout.contains("serverside-applied"), "{stdout}");
    }
    // Everything the base installs is there.
    for object in [
        "namespace/rotor-system",
        "-n=rotor-system serviceaccount/rotor-controller",
        "-n=rotor-system deployment/rotor-controller",
        "-n=rotor-system service/rotor-webhook",
        "-n=rotor-system networkpolicy/rotor-controller",
        "-n=rotor-system poddisruptionbudget/rotor-controller",
        "clusterrole/rotor-controller",
        "mutatingwebhookconfiguration/rotor-webhook",
    ] {
        let args: Vec<&str> = std::iter::once("get")
            .chain(object.split(' '))
            .chain(["-o", "name"])
            .collect();
        plane.kubectl_ok(&args);
    }
    // The webhook sends only pods with Rotor annotations.
    let conditions = plane.kubectl_ok(&[
        "get",
        "mutatingwebhookconfiguration/rotor-webhook",
        "-o",
        "jsonpath={.webhooks[0].matchConditions[0].expression}",
    ]);
    assert!(conditions.contains("rotor.dev/"), "{conditions}");
    // `kubectl get rotor` lists every Rotor kind, and only Rotor kinds.
    let listed = plane.kubectl_ok(&["get", "rotor", "-A", "-o", "name"]);
    for name in [
        "rotorstore.rotor.dev/vault",
        "clusterrotorstore.rotor.dev/aws",
        "secretrotationpolicy.rotor.dev/db-password",
    ] {
        assert!(listed.lines().any(|l| l == name), "{name}:\n{listed}");
    }
    assert!(
        listed.lines().all(|l| l.contains(".rotor.dev/")),
        "{listed}"
    );
}

/// The kinds' names are Rotor's own (not External Secrets Operator's
/// `secretstores`), each in the `rotor` category.
#[test]
fn api_resources_show_the_rotor_names_and_category() {
    let plane = installed();
    let table = plane.kubectl_ok(&["api-resources", "--api-group=rotor.dev", "-o", "wide"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let column = |name: &str| header.iter().position(|h| *h == name).expect(name);
    let (kind, categories) = (column("KIND"), column("CATEGORIES"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    let mut found: Vec<(&str, &str, &str, &str)> = rows
        .iter()
        .map(|r| (r[0], r[1], r[kind], r[categories]))
        .collect();
    found.sort_unstable();
    assert_eq!(
        found,
        [
            ("clusterrotorstores", "rcss", "ClusterRotorStore", "rotor"),
            ("rotorstores", "rss", "RotorStore", "rotor"),
            (
                "secretrotationpolicies",
                "rsrp",
                "SecretRotationPolicy",
                "rotor"
            ),
        ],
        "{table}"
    );
}

/// `kubectl get secretrotationpolicies` prints the Degraded condition and
/// the last rotation, from the status the controller writes.
#[tokio::test]
async fn policies_print_degraded_and_last_rotation() {
    let plane = installed();
    let ns = with_store_and_policy("columns").await;
    // The value under `column` in the row of policy `p` (empty if the
    // cell is), and the table.
    let cell = |column: &str| {
        let table = plane.kubectl_ok(&["get", "secretrotationpolicies", "-n", &ns]);
        let header = table.lines().next().unwrap_or_default();
        let at = header
            .find(column)
            .unwrap_or_else(|| panic!("{column}:\n{table}"));
        let row = table
            .lines()
            .find(|l| l.starts_with("p "))
            .expect("policy p");
        // An empty cell is blank: the next column's value is not this one's.
        let value = row
            .get(at..)
            .filter(|r| !r.starts_with(' '))
            .and_then(|r| r.split_whitespace().next());
        (value.unwrap_or_default().to_owned(), table)
    };
    for column in ["DEGRADED", "LAST ROTATION"] {
        let (value, table) = cell(column);
        assert_eq!(value, "", "{column}:\n{table}");
    }
    // 400 days ago prints as `400d` for the whole of a day.
    let last = std::time::SystemTime::now() - std::time::Duration::from_secs(400 * 86400);
    let last = humantime::format_rfc3339_seconds(last).to_string();
    let status = serde_json::json!({"status": {
        "lastRotation": last,
        "conditions": [{
            "type": "Degraded",
            "status": "True",
            "reason": "AckTimeout",
            "message": "a consumer did not acknowledge",
            "lastTransitionTime": last,
        }],
    }});
    plane.kubectl_ok(&[
        "patch",
        "secretrotationpolicy/p",
        "-n",
        &ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ]);
    for (column, expected) in [("DEGRADED", "True"), ("LAST ROTATION", "400d")] {
        let (value, table) = cell(column);
        assert_eq!(value, expected, "{column}:\n{table}");
    }
}

const VAULT_STORE: &str = "
apiVersion: rotor.dev/v1alpha1
kind: RotorStore
metadata: {name: s}
spec:
  provider:
    vault:
      server: https://vault:8200
      auth:
        kubernetes: {role: app}
";

const POLICY: &str = "
apiVersion: rotor.dev/v1alpha1
kind: SecretRotationPolicy
metadata: {name: p}
spec:
  storeRef: {name: s}
  secretName: app/db
  schedule:
    interval: 24h
  generator:
    password: {length: 32}
";

/// A new namespace named after `prefix` with the valid RotorStore `s` and
/// SecretRotationPolicy `p` in it.
async fn with_store_and_policy(prefix: &str) -> String {
    let ns = installed().namespace(prefix).await;
    apply(&ns, VAULT_STORE).expect("a valid RotorStore");
    apply(&ns, POLICY).expect("a valid SecretRotationPolicy");
    ns
}

/// Each rule, broken once: (what to change, the rule's message).
#[tokio::test]
async fn every_cel_rule_rejects_with_its_message() {
    // The valid objects pass, so each rejection below is its rule's doing.
    let ns = with_store_and_policy("cel").await;

    let cases: Vec<(String, &str)> = vec![
        (
            VAULT_STORE.replace("https://vault:8200", "vault:8200"),
            "server must be an http(s) URL",
        ),
        (
            VAULT_STORE.replace("kubernetes: {role: app}", "{}"),
            "set exactly one of kubernetes, appRole, tokenSecretRef",
        ),
        (
            VAULT_STORE.replace(
                "        kubernetes: {role: app}",
                "        kubernetes: {role: app}\n    aws: {region: eu-west-1}",
            ),
            "set exactly one of vault, aws, kubernetes, local",
        ),
        (
            "
apiVersion: rotor.dev/v1alpha1
kind: ClusterRotorStore
metadata: {name: cel-empty-patterns}
spec:
  allowedNamespaces: {matchLabels: {team: a}}
  paths: [{namespace: '*', patterns: []}]
  provider:
    aws: {region: eu-west-1}
"
            .to_owned(),
            "every paths entry needs at least one pattern",
        ),
        (
            POLICY.replace("{length: 32}", "{length: 4}"),
            "length must be 8 to 1024",
        ),
        (
            POLICY.replace("{length: 32}", "{length: 8, minDigits: 5, minUpper: 5}"),
            "the per-class minimums add up to more than length",
        ),
        (
            POLICY.replace("password: {length: 32}", "randomBytes: {length: 8}"),
            "length must be 16 to 4096 bytes",
        ),
        (
            POLICY.replace(
                "password: {length: 32}",
                "password: {length: 32}\n    keyPair: {algorithm: Ed25519}",
            ),
            "set exactly one of password, randomBytes, keyPair",
        ),
        (
            POLICY.replace(
                "interval: 24h",
                "interval: 24h\n    window: {start: '02:00', end: '25:00'}",
            ),
            "end must be HH:MM",
        ),
        (
            POLICY.replace(
                "interval: 24h",
                "interval: 24h\n    window: {start: '2:00', end: '04:00'}",
            ),
            "start must be HH:MM",
        ),
        (
            POLICY.replace("interval: 24h", "interval: 24h\n    cron: '0 3 * * *'"),
            "set exactly one of interval and cron",
        ),
        (
            POLICY.replace("secretName: app/db", "secretName: app/../db"),
            "secretName must be 1-255 characters without empty or '..' segments",
        ),
    ];
    for (yaml, message) in cases {
        let yaml = yaml
            .replace("{name: s}", "{name: s-bad}")
            .replace("{name: p}", "{name: p-bad}");
        match apply(&ns, &yaml) {
            Ok(out) => panic!("accepted, expected {message:?}: {out}\n{yaml}"),
            Err(e) => assert!(e.contains(message), "expected {message:?}, got {e}\n{yaml}"),
        }
    }
}

/// The limits the controller applies to a policy's durations and cron,
/// and the cluster store's auth, refused by the API server itself: each
/// broken once, with the field path and the rule's message.
#[tokio::test]
async fn rotation_limits_are_refused_naming_the_field() {
    let ns = with_store_and_policy("limits").await;
    let schedule = |to: &str| POLICY.replace("interval: 24h", to);
    let staged = |s: &str| format!("{POLICY}  strategy:\n    staged: {{{s}}}\n");
    let cases: Vec<(String, &str, &str)> = vec![
        (
            schedule("interval: 0s"),
            "spec.schedule.interval",
            "interval must be at least 15m",
        ),
        (
            schedule("interval: 14m59s"),
            "spec.schedule.interval",
            "interval must be at least 15m",
        ),
        (
            schedule("interval: 1.5h"),
            "spec.schedule.interval",
            "interval must be a duration",
        ),
        (
            schedule("interval: 24h\n    jitter: -1m"),
            "spec.schedule.jitter",
            "jitter must be a duration",
        ),
        (
            schedule("interval: 24h\n    jitter: 1d"),
            "spec.schedule.jitter",
            "jitter must be shorter than interval",
        ),
        (
            schedule("interval: 24h\n    maxAge: forever"),
            "spec.schedule.maxAge",
            "maxAge must be a duration",
        ),
        (
            staged("ackTimeout: 0s"),
            "spec.strategy.staged.ackTimeout",
            "ackTimeout must be at least 1s",
        ),
        (
            staged("ackTimeout: -5m"),
            "spec.strategy.staged.ackTimeout",
            "ackTimeout must be a duration",
        ),
        (
            staged("gracePeriod: 1 hour"),
            "spec.strategy.staged.gracePeriod",
            "gracePeriod must be a duration",
        ),
        (
            staged("gracePeriod: 2d"),
            "spec.strategy.staged",
            "strategy.staged.ackTimeout and gracePeriod must each be at most schedule.interval",
        ),
        (
            schedule("cron: '0 3 * *'"),
            "spec.schedule.cron",
            "cron must be five fields",
        ),
        (
            schedule("cron: '0 3 L * *'"),
            "spec.schedule.cron",
            "cron must be five fields",
        ),
        (
            schedule("cron: '@every 1h'"),
            "spec.schedule.cron",
            "cron must be five fields",
        ),
        (
            "
apiVersion: rotor.dev/v1alpha1
kind: ClusterRotorStore
metadata: {name: cel-token-secret}
spec:
  allowedNamespaces: {matchLabels: {team: a}}
  paths: [{namespace: '*', patterns: ['{namespace}/*']}]
  provider:
    vault:
      server: https://vault:8200
      auth:
        tokenSecretRef: {name: vault-token, key: token}
"
            .to_owned(),
            "spec.provider.vault.auth",
            "a ClusterRotorStore cannot use Secret-based Vault auth",
        ),
    ];
    for (yaml, field, message) in cases {
        let yaml = yaml.replace("{name: p}", "{name: p-bad}");
        match apply(&ns, &yaml) {
            Ok(out) => panic!("accepted, expected {message:?}: {out}\n{yaml}"),
            Err(e) => assert!(
                e.contains(&format!("{field}: Invalid value")) && e.contains(message),
                "expected {field}: {message:?}, got {e}\n{yaml}"
            ),
        }
    }
    // What the limits still allow, on the edges.
    for yaml in [
        format!(
            "{}  strategy:\n    staged: {{gracePeriod: 15m}}\n",
            schedule("interval: 15m\n    jitter: 14m59s")
        ),
        schedule("cron: '*/15 3 ? JAN-MAR mon-fri'"),
        schedule("cron: '@Daily'"),
        staged("ackTimeout: 1s, gracePeriod: 24h"),
        schedule("interval: 30days\n    maxAge: 7days"),
    ] {
        apply(&ns, &yaml.replace("{name: p}", "{name: p-edge}"))
            .unwrap_or_else(|e| panic!("refused: {e}\n{yaml}"));
    }
}
