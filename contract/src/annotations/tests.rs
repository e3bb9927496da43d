//! Tests of the annotation contract: valid pods parse, each invalid one names
//! its annotation and what is expected.

use super::*;

fn p(pairs: &[(&str, &str)]) -> Result<PodSecrets, AnnotationErrors> {
    parse(pairs.iter().copied())
}

fn base() -> Vec<(&'static str, &'static str)> {
    vec![
        (INJECT, "true"),
        (STORE, "local"),
        ("rotor.dev/secret.db", "prod/db"),
    ]
}

#[test]
fn a_full_valid_pod() {
    let got = p(&[
        (INJECT, "true"),
        (STORE, "vault-prod"),
        ("rotor.dev/secret.db-password", "prod/db#password"),
        ("rotor.dev/secret.tls.crt", "prod/tls#crt"),
        (
            "rotor.dev/template.db-url",
            "postgres://app:{{ secrets['db-password'] }}@db/app",
        ),
        (FILE_MODE, "0440"),
        (FILE_OWNER, "1000:2000"),
        (REFRESH, "5m"),
        (RELOAD, "signal:HUP:nginx, http://127.0.0.1:8080/-/reload"),
        ("rotor.dev/reload.2", "exec:/bin/app reload --now"),
        ("rotor.dev/reload.1", "signal:SIGUSR1:/run/app.pid"),
        (ON_MISSING, "delete"),
        (STATUS, "injected"),
        ("app.kubernetes.io/name", "ignored"),
    ])
    .unwrap();
    assert!(got.inject);
    assert_eq!(got.store.as_deref(), Some("vault-prod"));
    assert_eq!(
        got.files["db-password"],
        FileSource::Secret {
            name: "prod/db".into(),
            key: Some("password".into())
        }
    );
    assert!(matches!(got.files["db-url"], FileSource::Template { .. }));
    assert_eq!(got.file_mode, Some(0o440));
    assert_eq!(got.file_owner, Some((1000, 2000)));
    assert_eq!(got.refresh, Duration::from_secs(300));
    assert_eq!(got.on_missing, OnMissing::Delete);
    let reload: Vec<String> = got.reload.iter().map(ToString::to_string).collect();
    assert_eq!(
        reload,
        [
            "signal:HUP:nginx",
            "http://127.0.0.1:8080/-/reload",
            "signal:USR1:/run/app.pid",
            "exec:/bin/app reload --now"
        ]
    );
    assert!(got.needs_shared_pid_namespace());
    assert_eq!(got.secret_names(), ["prod/db", "prod/tls"]);
}

#[test]
fn defaults() {
    let got = p(&base()).unwrap();
    assert_eq!(got.file_mode, None);
    assert_eq!(got.refresh, Duration::from_secs(30));
    assert_eq!(got.on_missing, OnMissing::Keep);
    assert!(got.reload.is_empty() && got.file_owner.is_none());
    assert!(!got.needs_shared_pid_namespace());
    // No inject annotation: nothing is required.
    assert!(!p(&[]).unwrap().inject);
}

#[test]
fn valid_values_table() {
    let cases: &[(&str, &str)] = &[
        ("rotor.dev/secret.a", "x"),
        ("rotor.dev/secret.A.b-c_d9", "team/app/db#user"),
        (REFRESH, "100ms"),
        (REFRESH, "24h"),
        (REFRESH, "1m 30s"),
        (FILE_MODE, "400"),
        (FILE_MODE, "0600"),
        (FILE_MODE, "0644"),
        (FILE_OWNER, "0:0"),
        (RELOAD, "signal:term:app"),
        (RELOAD, "http://localhost:9/"),
        (RELOAD, "http://[::1]:80/reload"),
        (RELOAD, "exec:kill -HUP 1"),
        (INJECT, "false"),
    ];
    for (k, v) in cases {
        let mut a = base();
        a.push((k, v));
        p(&a).unwrap_or_else(|e| panic!("{k}={v:?} refused: {e}"));
    }
}

#[test]
fn every_invalid_case_names_the_annotation_problem_and_expectation() {
    let cases: &[(&str, &str, &str)] = &[
        (
            INJECT,
            "yes",
            "annotation rotor.dev/inject: value \"yes\" is not a boolean; expected \"true\" or \"false\"",
        ),
        (
            STORE,
            "Vault_Prod",
            "annotation rotor.dev/store: value \"Vault_Prod\" contains the character 'V'",
        ),
        (
            STORE,
            "-x",
            "does not begin and end with a lowercase letter or digit",
        ),
        (
            "rotor.dev/secret.../etc/passwd",
            "x",
            "annotation rotor.dev/secret.../etc/passwd: names the file \"../etc/passwd\", which contains the character '/'",
        ),
        (
            "rotor.dev/secret..hidden",
            "x",
            "names the file \".hidden\", which does not begin and end with a letter or digit",
        ),
        (
            "rotor.dev/secret..",
            "x",
            "names the file \".\", which does not begin and end",
        ),
        (
            "rotor.dev/secret.",
            "x",
            "names the file \"\", which is empty",
        ),
        (
            "rotor.dev/secret.x",
            "../../etc#k",
            "value \"../../etc#k\" has the secret name \"../../etc\", which has a \"..\" path segment",
        ),
        (
            "rotor.dev/secret.x",
            "",
            "value \"\" has the secret name \"\", which is empty",
        ),
        (
            "rotor.dev/secret.x",
            "db#",
            "has the key \"\", which is empty",
        ),
        ("rotor.dev/secret.x", "db#a#b", "has the key \"a#b\""),
        (
            "rotor.dev/template.x",
            "{{ unclosed",
            "annotation rotor.dev/template.x: is not a valid template",
        ),
        (
            "rotor.dev/template.x",
            "{{ secrets['nope'] }}",
            "refers to secrets[\"nope\"], which no rotor.dev/secret.nope annotation defines",
        ),
        (
            FILE_MODE,
            "0755",
            "value \"0755\" grants execute permission",
        ),
        (
            FILE_MODE,
            "0666",
            "grants write permission to group or others",
        ),
        (FILE_MODE, "4400", "sets setuid, setgid or sticky bits"),
        (FILE_MODE, "0040", "does not let the owner read the file"),
        (FILE_MODE, "rw", "is not an octal number"),
        (
            FILE_OWNER,
            "app:app",
            "value \"app:app\" is not a numeric uid:gid; expected \"<uid>:<gid>\"",
        ),
        (FILE_OWNER, "1000", "is not a numeric uid:gid"),
        (REFRESH, "soon", "value \"soon\" is not a duration"),
        (
            REFRESH,
            "10ms",
            "value \"10ms\" is out of range; expected a duration from 100ms to 24h",
        ),
        (REFRESH, "2d", "is out of range"),
        (
            RELOAD,
            "signal:KILL:app",
            "action \"signal:KILL:app\" names the signal \"KILL\", which is not allowed; expected one of HUP",
        ),
        (RELOAD, "signal:HUP", "has no process after the signal"),
        (RELOAD, "signal:HUP:a/b", "has the process name \"a/b\""),
        (
            RELOAD,
            "signal:HUP:/run/../etc/pid",
            "has a pid file path with '..'",
        ),
        (
            RELOAD,
            "http://10.0.0.1:80/x",
            "is not a loopback URL with a port; expected \"http://127.0.0.1:<port>/<path>\"",
        ),
        (
            RELOAD,
            "http://127.0.0.1/x",
            "is not a loopback URL with a port",
        ),
        (
            RELOAD,
            "https://127.0.0.1:8443/x",
            "is not a known reload action",
        ),
        (RELOAD, "exec:", "has no command"),
        (
            "rotor.dev/reload.x",
            "exec:true",
            "has the suffix \"x\", which is not a number",
        ),
        (
            ON_MISSING,
            "ignore",
            "value \"ignore\" is not a known policy; expected \"keep\" or \"delete\"",
        ),
        (
            "rotor.dev/vault-addr",
            "https://evil:8200",
            "annotation rotor.dev/vault-addr: is not a Rotor annotation; store addresses come only from RotorStore and ClusterRotorStore objects",
        ),
        (
            "rotor.dev/refesh",
            "30s",
            "annotation rotor.dev/refesh: is not a Rotor annotation; expected one of",
        ),
    ];
    for (k, v, expected) in cases {
        let mut a = base();
        a.push((k, v));
        let err = p(&a).expect_err(&format!("{k}={v:?} accepted")).to_string();
        assert!(
            err.contains(expected),
            "{k}={v:?}:\n  got      {err}\n  expected {expected}"
        );
        assert!(err.contains("expected"), "{err}");
    }
}

#[test]
fn duplicate_file_names_and_missing_requirements() {
    let err = p(&[
        (INJECT, "true"),
        (STORE, "s"),
        ("rotor.dev/secret.db", "a"),
        ("rotor.dev/template.db", "x"),
    ])
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("defines the file \"db\" a second time"),
        "{err}"
    );

    let err = p(&[(INJECT, "true")]).unwrap_err();
    assert_eq!(err.0.len(), 2, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("annotation rotor.dev/store: is missing"),
        "{text}"
    );
    assert!(text.contains("no rotor.dev/secret.<file>"), "{text}");
}

#[test]
fn all_problems_are_reported_at_once() {
    let err = p(&[
        (INJECT, "maybe"),
        (STORE, "s"),
        ("rotor.dev/secret.db", "a"),
        (REFRESH, "x"),
        (FILE_MODE, "777"),
    ])
    .unwrap_err();
    assert_eq!(err.0.len(), 3, "{err}");
}

#[test]
fn long_values_are_cut_in_messages() {
    let long = "x".repeat(500);
    let err = p(&[(REFRESH, &long)]).unwrap_err().to_string();
    assert!(err.len() < 400, "{err}");
}

#[test]
fn a_template_naming_a_path_is_told_it_is_not_a_file_name() {
    let e = parse([("rotor.dev/template.x", "{{ secrets['../db'] }}")])
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "annotation rotor.dev/template.x: refers to secrets[\"../db\"], which is not a file \
         name: it contains the character '/'; expected secrets[\"<file>\"] for a file defined by \
         a rotor.dev/secret.<file> annotation"
    );
    assert!(!e.contains("rotor.dev/secret.../db"), "{e}");
}
