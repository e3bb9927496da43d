//! The HTTPS rotation target against a test receiver on loopback TLS that
//! checks every caller's bearer token with the real API server's
//! TokenReview (audience: its own URL) and accepts only the namespace's
//! `rotor-rotator` ServiceAccount:
//!
//! - `rotor-controller standalone` with `--https-target-token-file` (a
//!   token of the rotator for the receiver's URL) rotates: the receiver
//!   gets `setSecret` and `testSecret` with the pending value, then
//!   `finishSecret` with the promoted version; the value appears in no log
//!   or status;
//! - a token for another audience is refused (401), and the rotation rolls
//!   back with `TargetRejected`, the store unchanged;
//! - a receiver answering 500 rolls back and is sent `setSecret` with
//!   CURRENT's value; a slow one rolls back with `TargetTimedOut`;
//! - in a cluster, the controller's rotator identity
//!   (`identity::Rotator`) sends a token the receiver accepts.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use rotor_controller::rotation::target::https::{
    Https, HttpsSpec, Receiver as _, RotationCall, RotationStep,
};
use rotor_e2e::cluster::{ControlPlane, new_ca, server_cert};
use rotor_e2e::command;
use rotor_e2e::postgres::{Killed, wait_for};
use rotor_envelope::{ExposeSecret, KeyFileKek};
use rotor_store::{LocalStore, Selector, WriteAs};

const ROTATOR: &str = "rotor-rotator";
const INITIAL: &str = "initial-https-canary-4b7e";

/// How the receiver answers an authenticated call.
#[derive(Clone, Copy, PartialEq)]
enum Answer {
    Ok,
    Fail500,
    Slow,
}

/// What the receiver saw: each accepted call (step, version, value), and
/// how many callers it refused.
#[derive(Default)]
struct Seen {
    calls: Vec<(RotationStep, String, Option<String>)>,
    refused: u32,
}

struct ReceiverState {
    client: kube::Client,
    audience: String,
    subject: String,
    answer: Answer,
    seen: Mutex<Seen>,
}

/// Whether `token` is the rotator's, for this receiver's audience, by
/// TokenReview.
async fn authenticated(r: &ReceiverState, token: &str) -> bool {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: Some(vec![r.audience.clone()]),
        },
        ..TokenReview::default()
    };
    let Ok(reply) = Api::<TokenReview>::all(r.client.clone())
        .create(&PostParams::default(), &review)
        .await
    else {
        return false;
    };
    let Some(status) = reply.status else {
        return false;
    };
    status.authenticated == Some(true)
        && status.user.and_then(|u| u.username).as_deref() == Some(r.subject.as_str())
        && status.audiences.is_some_and(|a| a.contains(&r.audience))
}

async fn rotate(
    State(r): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let ok = match token {
        Some(t) => authenticated(&r, t).await,
        None => false,
    };
    if !ok {
        r.seen.lock().unwrap().refused += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(call) = serde_json::from_slice::<RotationCall>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    r.seen.lock().unwrap().calls.push((
        call.step,
        call.client_request_token.clone(),
        call.secret_string.clone(),
    ));
    match r.answer {
        Answer::Ok => StatusCode::OK,
        Answer::Fail500 => StatusCode::INTERNAL_SERVER_ERROR,
        Answer::Slow => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            StatusCode::OK
        }
    }
}

/// The receiver, on a free loopback port with a certificate from its own
/// CA; its URL and CA.
struct TestReceiver {
    url: String,
    ca_pem: String,
    state: Arc<ReceiverState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestReceiver {
    async fn start(plane: &ControlPlane, namespace: &str, answer: Answer) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (ca, ca_key) = new_ca("rotor https receiver test CA");
        let (cert, key) = server_cert(&ca, &ca_key, &["127.0.0.1"]);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!(
            "https://127.0.0.1:{}/rotate",
            listener.local_addr().unwrap().port()
        );
        let state = Arc::new(ReceiverState {
            client: plane.client().await,
            audience: url.clone(),
            subject: format!("system:serviceaccount:{namespace}:{ROTATOR}"),
            answer,
            seen: Mutex::default(),
        });
        let app = axum::Router::new()
            .route("/rotate", axum::routing::post(rotate))
            .with_state(state.clone());
        let tls =
            axum_server::tls_rustls::RustlsConfig::from_pem(cert.into_bytes(), key.into_bytes())
                .await
                .unwrap();
        let server = axum_server::from_tcp_rustls(listener, tls);
        let task = tokio::spawn(async move {
            let _ = server.serve(app.into_make_service()).await;
        });
        Self {
            url,
            ca_pem: ca.pem(),
            state,
            task,
        }
    }

    fn steps(&self) -> Vec<RotationStep> {
        let seen = self.state.seen.lock().unwrap();
        seen.calls.iter().map(|c| c.0).collect()
    }
}

/// `rotor-controller standalone` with one policy on a local store whose
/// target is `receiver`, sending the token in `token`.
struct Rig {
    dir: tempfile::TempDir,
    store: LocalStore,
    metrics_port: u16,
    _controller: Killed,
}

impl Rig {
    fn start(receiver: &TestReceiver, token: &str, timeout: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("kek");
        KeyFileKek::generate(&key, false).unwrap();
        let path = dir.path().join("store.rotor");
        let store = LocalStore::new(&path, Arc::new(KeyFileKek::load(&key).unwrap()));
        store
            .put("app/key", INITIAL.as_bytes(), WriteAs::Current)
            .unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, token).unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        std::fs::write(
            policies.join("store.yaml"),
            format!(
                "apiVersion: rotor.dev/v1alpha1\nkind: RotorStore\nmetadata: {{name: main}}\nspec:\n  provider:\n    local: {{path: {}, keyPath: {}}}\n",
                path.display(),
                key.display()
            ),
        )
        .unwrap();
        std::fs::write(
            policies.join("policy.yaml"),
            format!(
                "apiVersion: rotor.dev/v1alpha1\nkind: SecretRotationPolicy\nmetadata: {{name: key, namespace: default, annotations: {{rotor.dev/rotate-now: 'r0'}}}}\nspec:\n  storeRef: {{name: main}}\n  secretName: app/key\n  schedule: {{interval: 1h}}\n  generator: {{password: {{length: 24}}}}\n  strategy: {{staged: {{ackTimeout: 10s, gracePeriod: 1s}}}}\n  target:\n    https: {{url: '{}', timeout: {timeout}, caBundle: {}}}\n",
                receiver.url,
                serde_json::to_string(&receiver.ca_pem).unwrap()
            ),
        )
        .unwrap();
        let metrics_port = rotor_e2e::free_port();
        let controller = command("rotor-controller")
            .args(["standalone", "--policies"])
            .arg(&policies)
            .arg(format!("--metrics-addr=127.0.0.1:{metrics_port}"))
            .arg("--state")
            .arg(dir.path().join("state"))
            .arg("--https-target-token-file")
            .arg(&token_file)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("controller.log")).unwrap())
            .spawn()
            .unwrap();
        Self {
            dir,
            store,
            metrics_port,
            _controller: Killed(controller),
        }
    }

    fn status(&self) -> serde_json::Value {
        std::fs::read(self.dir.path().join("state/default.key.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .map(|v| v["status"].clone())
            .unwrap_or_default()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("controller.log")).unwrap_or_default()
    }

    fn current(&self) -> String {
        let f = self.store.get("app/key", Selector::Current).unwrap();
        String::from_utf8(f.value.expose_secret().to_vec()).unwrap()
    }

    /// Waits for a rollback with `reason` in `Degraded`, back in Idle with
    /// no pending version and CURRENT unchanged.
    async fn rolls_back_with(&self, reason: &str) {
        assert!(
            wait_for(90, || {
                let s = self.status();
                s["phase"] == "Idle"
                    && s["conditions"].as_array().is_some_and(|c| {
                        c.iter()
                            .any(|c| c["type"] == "Degraded" && c["reason"] == reason)
                    })
            })
            .await,
            "no rollback for {reason}: {}\n{}",
            self.status(),
            self.log()
        );
        assert!(self.status()["pendingVersion"].is_null());
        assert_eq!(self.current(), INITIAL);
        assert!(self.log().contains(reason), "the failure is logged");
    }
}

/// A namespace with the rotator account.
async fn tenant(plane: &ControlPlane) -> String {
    let ns = plane.namespace("https-target").await;
    plane.service_account(&ns, ROTATOR).await;
    ns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_calls_set_test_and_finish_with_the_rotators_token() {
    let plane = ControlPlane::shared();
    let ns = tenant(plane).await;
    let receiver = TestReceiver::start(plane, &ns, Answer::Ok).await;
    let token = plane.token(&ns, ROTATOR, &[&receiver.url], None).await;
    let rig = Rig::start(&receiver, &token, "5s");
    assert!(
        wait_for(60, || receiver.steps().contains(&RotationStep::Finish)).await,
        "no finishSecret: {:?}\n{}",
        receiver.steps(),
        rig.log()
    );
    assert!(wait_for(10, || rig.status()["phase"] == "Idle").await);
    assert_eq!(
        receiver.steps(),
        [RotationStep::Set, RotationStep::Test, RotationStep::Finish]
    );
    let current = rig.current();
    assert_ne!(current, INITIAL);
    let version = rig.status()["currentVersion"].as_str().unwrap().to_owned();
    let calls = std::mem::take(&mut receiver.state.seen.lock().unwrap().calls);
    for (step, v, value) in &calls {
        assert_eq!(v, &version, "{step:?} names the rotated version");
        match step {
            RotationStep::Finish => assert!(value.is_none()),
            _ => assert_eq!(value.as_deref(), Some(current.as_str())),
        }
    }
    assert_eq!(receiver.state.seen.lock().unwrap().refused, 0);
    // Canary: neither value nor the token is in the controller's log, the
    // status or /metrics (which counted the rotation).
    let (_, metrics) = rotor_e2e::http(rig.metrics_port, "GET", "/metrics", "").unwrap();
    assert!(metrics.contains("rotor_rotation"), "{metrics}");
    let text = format!("{}{}{metrics}", rig.log(), rig.status());
    assert!(!text.contains(&current) && !text.contains(INITIAL));
    assert!(!text.contains(&token), "the token leaked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_audience_is_refused_and_rolls_back() {
    let plane = ControlPlane::shared();
    let ns = tenant(plane).await;
    let receiver = TestReceiver::start(plane, &ns, Answer::Ok).await;
    let token = plane
        .token(&ns, ROTATOR, &["https://somewhere.else/rotate"], None)
        .await;
    let rig = Rig::start(&receiver, &token, "5s");
    rig.rolls_back_with("TargetRejected").await;
    let seen = receiver.state.seen.lock().unwrap();
    assert!(seen.refused >= 5, "every attempt was refused");
    assert!(seen.calls.is_empty(), "no call was accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_answering_500_rolls_back_with_nothing_to_restore() {
    let plane = ControlPlane::shared();
    let ns = tenant(plane).await;
    let receiver = TestReceiver::start(plane, &ns, Answer::Fail500).await;
    let token = plane.token(&ns, ROTATOR, &[&receiver.url], None).await;
    let rig = Rig::start(&receiver, &token, "5s");
    rig.rolls_back_with("TargetRejected").await;
    assert!(rig.log().contains("HTTP 500"));
    // Setting failed, so nothing was changed and nothing is restored: five
    // setSecret attempts with the pending value, no testSecret.
    let calls = std::mem::take(&mut receiver.state.seen.lock().unwrap().calls);
    assert_eq!(
        calls.len(),
        5,
        "{:?}",
        calls.iter().map(|c| c.0).collect::<Vec<_>>()
    );
    assert!(calls.iter().all(|c| c.0 == RotationStep::Set));
    assert!(calls.iter().all(|c| c.2.as_deref() != Some(INITIAL)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_times_out_and_rolls_back() {
    let plane = ControlPlane::shared();
    let ns = tenant(plane).await;
    let receiver = TestReceiver::start(plane, &ns, Answer::Slow).await;
    let token = plane.token(&ns, ROTATOR, &[&receiver.url], None).await;
    let rig = Rig::start(&receiver, &token, "1s");
    rig.rolls_back_with("TargetTimedOut").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_the_rotator_identity_calls_with_the_urls_audience() {
    let plane = ControlPlane::shared();
    let ns = tenant(plane).await;
    let receiver = TestReceiver::start(plane, &ns, Answer::Ok).await;
    let rotator =
        rotor_controller::identity::Rotators::new(plane.client().await, ROTATOR).in_namespace(&ns);
    let spec = HttpsSpec {
        url: receiver.url.clone(),
        ca_bundle: Some(receiver.ca_pem.clone()),
        timeout: Duration::from_secs(5),
    };
    let https = Https::new(&spec, Some(&rotator)).unwrap();
    let call = RotationCall {
        step: RotationStep::Test,
        secret_id: "app/key".into(),
        client_request_token: "v1".into(),
        secret_string: Some("value-canary".into()),
    };
    https.call(&call).await.unwrap();
    assert_eq!(receiver.steps(), [RotationStep::Test]);
    // Another namespace's rotator is refused.
    let other = tenant(plane).await;
    let stranger = rotor_controller::identity::Rotators::new(plane.client().await, ROTATOR)
        .in_namespace(&other);
    let https = Https::new(&spec, Some(&stranger)).unwrap();
    assert_eq!(
        https.call(&call).await,
        Err(rotor_controller::rotation::target::TargetFailure::Rejected(
            401
        ))
    );
}
