//! Streams the controller must refuse, on a real API server, with tokens
//! minted by the TokenRequest API and bound to real pods: the wrong
//! audience, another pod's token, a deleted pod's, and a hello naming a
//! secret the pod does not declare. Each is refused with its kind, counted
//! in `rotor_channel_refused_total`, and logged without the token.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use rotor_channel::{ErrorKind, Hello, PodClaims};
use rotor_e2e::cluster::{
    Controller, admit_pod, consumer_pod, eventually, installed, lone_leader, vault_store_namespace,
};
use rotor_e2e::servers::Bao;
use rotor_sidecar::channel::{Client, ClientLimits, Ended};

/// `rotor_channel_refused_total{reason}` from the controller's /metrics.
fn refused(controller: &Controller, kind: ErrorKind) -> u64 {
    let needle = format!(
        "rotor_channel_refused_total{{reason=\"{}\"}} ",
        kind.as_str()
    );
    rotor_e2e::http(controller.metrics_port, "GET", "/metrics", "")
        .map(|(_, body)| {
            body.lines()
                .find_map(|l| l.strip_prefix(&needle)?.trim().parse().ok())
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// A stream dialed straight to the controller's channel port, as a
/// sidecar of `pod` reading `secrets` with `token`: the refusal, or
/// `None` when it was admitted.
async fn dial(
    controller: &Controller,
    ns: &str,
    pod: &str,
    uid: &str,
    secrets: &[&str],
    token: &str,
) -> Option<rotor_channel::Problem> {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    let ca = controller.dir.path().join("tls/ca.crt");
    let client = Client {
        addr: format!("127.0.0.1:{}", controller.channel_port),
        tls: rotor_sidecar::channel::tls_config(&ca).unwrap(),
        token: token_file,
        hello: Hello {
            pod: PodClaims {
                namespace: ns.to_owned(),
                name: pod.to_owned(),
                uid: uid.to_owned(),
            },
            store: "vault".into(),
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
            refresh_ms: 0,
        },
        limits: ClientLimits::default(),
        link: tokio::sync::watch::Sender::new(Default::default()),
    };
    let (push, _requests) = tokio::sync::mpsc::channel(4);
    let mut welcomed = false;
    let ended =
        tokio::time::timeout(Duration::from_secs(5), client.stream(&push, &mut welcomed)).await;
    match ended {
        Err(_) if welcomed => None,
        Ok(Ended::Refused(problem)) => Some(problem),
        other => panic!(
            "neither admitted nor refused: {other:?}\n{}",
            controller.log()
        ),
    }
}

/// A refusal case: its name, the token, the pod claimed, the secrets
/// asked for, the refusal's kind and a phrase of its message.
type Case<'a> = (&'a str, String, &'a str, Vec<&'a str>, ErrorKind, &'a str);

#[tokio::test]
async fn streams_are_refused_for_bad_tokens_and_undeclared_secrets() {
    let plane = installed();
    let client = plane.client().await;
    let bao = Bao::start();
    let (ns, secret) = vault_store_namespace(plane, &bao, "refusals").await;
    let controller = lone_leader(plane, "refusing-replica").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let mut uids = std::collections::BTreeMap::new();
    for name in ["p1", "p2", "gone"] {
        let pod = admit_pod(&pods, consumer_pod(name, &secret), &controller).await;
        uids.insert(name, pod.metadata.uid.unwrap());
    }
    let token = |pod: &'static str, audience: &'static str| {
        let uid = uids[pod].clone();
        let ns = ns.clone();
        async move {
            plane
                .token(&ns, "app", &[audience], Some((pod, &uid)))
                .await
        }
    };
    let channel = rotor_channel::AUDIENCE;
    let declared = [secret.as_str()];

    // The control: p1's own token, what p1 declares: admitted.
    let ok = dial(
        &controller,
        &ns,
        "p1",
        &uids["p1"],
        &declared,
        &token("p1", channel).await,
    )
    .await;
    assert!(ok.is_none(), "{ok:?}\n{}", controller.log());

    let cases: Vec<Case> = vec![
        // A token for Vault, not for the channel.
        (
            "wrong audience",
            token("p1", "vault").await,
            "p1",
            declared.to_vec(),
            ErrorKind::Unauthenticated,
            "audience",
        ),
        // p2's token, claiming to be p1.
        (
            "another pod's token",
            token("p2", channel).await,
            "p1",
            declared.to_vec(),
            ErrorKind::Forbidden,
            "issued for pod",
        ),
        // p1 asking for a secret its annotations do not name.
        (
            "undeclared secret",
            token("p1", channel).await,
            "p1",
            vec![secret.as_str(), "other/secret"],
            ErrorKind::UndeclaredSecret,
            "does not declare",
        ),
    ];
    for (case, token, pod, secrets, kind, says) in cases {
        let before = refused(&controller, kind);
        let problem = dial(&controller, &ns, pod, &uids[pod], &secrets, &token)
            .await
            .unwrap_or_else(|| panic!("{case}: admitted"));
        assert_eq!(problem.kind, kind, "{case}: {problem:?}");
        assert!(problem.message.contains(says), "{case}: {problem:?}");
        assert!(
            !problem.message.contains(&token),
            "{case}: the token in the refusal"
        );
        let counted = eventually(10, || async { refused(&controller, kind) > before }).await;
        assert!(
            counted,
            "{case}: not counted in rotor_channel_refused_total"
        );
    }

    // A token of a pod that was deleted since: the API server no longer
    // accepts it (a bound object that is gone), or the pod is not found.
    let gone_token = token("gone", channel).await;
    pods.delete("gone", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let deleted = eventually(30, || async {
        pods.get_opt("gone").await.ok().flatten().is_none()
    })
    .await;
    assert!(deleted);
    let before = refused(&controller, ErrorKind::Unauthenticated)
        + refused(&controller, ErrorKind::Forbidden);
    let problem = dial(
        &controller,
        &ns,
        "gone",
        &uids["gone"],
        &declared,
        &gone_token,
    )
    .await
    .expect("a deleted pod's token admitted");
    assert!(
        matches!(
            problem.kind,
            ErrorKind::Unauthenticated | ErrorKind::Forbidden
        ),
        "{problem:?}"
    );
    let counted = eventually(10, || async {
        refused(&controller, ErrorKind::Unauthenticated)
            + refused(&controller, ErrorKind::Forbidden)
            > before
    })
    .await;
    assert!(counted);

    // Refusals are logged with the pod and the reason, never the token.
    let log = controller.full_log();
    assert!(
        log.contains("channel: stream refused"),
        "{}",
        controller.log()
    );
    assert!(!log.contains(&gone_token), "the controller logged a token");
}
