//! Central change detection end to end, with real processes: `rotor-
//! controller standalone` checks each secret once per interval, and real
//! `rotor-sidecar`s connected over the channel fetch a new version when it
//! is announced, polling themselves only as a safety net. Counted by the
//! store itself (OpenBao's audit log, each process with its own token) and
//! by the processes' metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rotor_e2e::pod::Pod;
use rotor_e2e::servers::{Audited, Bao};
use rotor_e2e::standalone::{Standalone, metric_in};
use rotor_e2e::{http, wait_until};

const SECRET: &str = "app/db";

/// An audited OpenBao holding `SECRET`, a standalone controller on it
/// (its own token), and `n` sidecars (another token) connected to it.
struct Rig {
    bao: Bao,
    controller: Option<Standalone>,
    pods: Vec<Pod>,
    _dir: tempfile::TempDir,
}

/// The audit log's name of the controller's token and the sidecars'.
const CONTROLLER: &str = "token-controller";
const SIDECARS: &str = "token-sidecars";

impl Rig {
    /// `store_spec` is the RotorStore's `spec` beyond its provider (a
    /// budget, say); `server` the address the controller reaches OpenBao
    /// at (a throttling proxy, say; OpenBao itself when `None`).
    fn start(n: usize, refresh: &str, store_spec: &str) -> Self {
        Self::start_on(Bao::start_audited(), n, refresh, store_spec, None)
    }

    fn start_on(
        bao: Bao,
        n: usize,
        refresh: &str,
        store_spec: &str,
        server: Option<String>,
    ) -> Self {
        write(&bao, "1");
        let dir = tempfile::tempdir().unwrap();
        let controller_token = dir.path().join("controller-token");
        std::fs::write(&controller_token, bao.named_token("controller")).unwrap();
        let sidecar_token = dir.path().join("sidecar-token");
        std::fs::write(&sidecar_token, bao.named_token("sidecars")).unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        std::fs::write(
            policies.join("store.yaml"),
            format!(
                "apiVersion: rotor.dev/v1alpha1\nkind: RotorStore\nmetadata: {{name: main}}\nspec:\n  provider:\n    vault:\n      server: {}\n      auth: {{tokenSecretRef: {{name: unused, key: token}}}}\n{store_spec}",
                server.unwrap_or_else(|| bao.addr())
            ),
        )
        .unwrap();
        let controller = Standalone::start(
            &policies,
            &dir.path().join("state"),
            &dir.path().join("controller.log"),
            &[format!("--vault-token-file={}", controller_token.display())],
            &[],
        );
        let mut pods = Vec::new();
        for i in 0..n {
            let mut pod = Pod::new();
            pod.use_vault(&bao.addr(), &sidecar_token);
            pod.envs = controller.sidecar_env("default", &format!("pod-{i}"));
            pod.annotate(&[
                ("rotor.dev/store", "main"),
                ("rotor.dev/secret.db", SECRET),
                ("rotor.dev/refresh", refresh),
            ]);
            pod.start();
            pods.push(pod);
        }
        let rig = Self {
            bao,
            controller: Some(controller),
            pods,
            _dir: dir,
        };
        assert!(
            rig.controller().wait_streams(n, 60),
            "the sidecars did not connect: {}",
            rig.controller().log_text()
        );
        for pod in &rig.pods {
            assert!(
                wait_until(30, || sidecar_metric(
                    pod,
                    "rotor_sidecar_channel_connected"
                ) == 1.0),
                "{}",
                std::fs::read_to_string(pod.log()).unwrap_or_default()
            );
        }
        // Each sidecar made the poll that was due when its stream came up;
        // from here on it polls only as a safety net.
        for pod in &rig.pods {
            assert!(
                wait_until(30, || sidecar_metric(pod, SAFETY_NET_POLLS) >= 1.0),
                "{}",
                std::fs::read_to_string(pod.log()).unwrap_or_default()
            );
        }
        // The controller has seen version 1: the next write is a change.
        assert!(wait_until(30, || !reads(
            &rig.bao.audited(),
            CONTROLLER,
            "metadata"
        )
        .is_empty()));
        rig
    }

    fn controller(&self) -> &Standalone {
        self.controller.as_ref().expect("the controller runs")
    }

    /// Waits until every sidecar's file holds `value`.
    fn wait_everywhere(&self, value: &str, secs: u64) {
        for (i, pod) in self.pods.iter().enumerate() {
            let expected = format!(r#"{{"v":"{value}"}}"#);
            assert!(
                wait_until(secs, || pod.read("db").as_deref()
                    == Some(expected.as_str())),
                "pod-{i} serves {:?}, not {value}: {}\n{}",
                pod.read("db"),
                std::fs::read_to_string(pod.log()).unwrap_or_default(),
                self.controller
                    .as_ref()
                    .map(Standalone::log_text)
                    .unwrap_or_default()
            );
        }
    }

    /// The sum over the sidecars of one series.
    fn sidecars_metric(&self, series: &str) -> f64 {
        self.pods.iter().map(|p| sidecar_metric(p, series)).sum()
    }
}

fn write(bao: &Bao, value: &str) {
    let body = serde_json::json!({"data": {"v": value}}).to_string();
    bao.api("POST", &format!("secret/data/{SECRET}"), &body);
}

fn sidecar_metric(pod: &Pod, series: &str) -> f64 {
    let text = http(pod.admin, "GET", "/metrics", "")
        .map(|(_, body)| body)
        .unwrap_or_default();
    metric_in(&text, series)
}

/// The requests `token` sent for `SECRET` at `kind` (`data` or
/// `metadata`), with operation `read`.
fn reads<'a>(requests: &'a [Audited], token: &str, kind: &str) -> Vec<&'a Audited> {
    let path = format!("secret/{kind}/{SECRET}");
    requests
        .iter()
        .filter(|r| r.token == token && r.operation == "read" && r.path == path)
        .collect()
}

const SAFETY_NET_POLLS: &str = "rotor_sidecar_polls_total{interval=\"safety_net\"}";
const OWN_POLLS: &str = "rotor_sidecar_polls_total{interval=\"refresh\"}";

/// Five connected sidecars, one write: each file is updated, and OpenBao
/// saw the controller's metadata checks (never a value) and exactly one
/// fetch of CURRENT per sidecar (its metadata, where Rotor's CURRENT label
/// is, then its data), with no sidecar poll in between.
#[test]
fn a_change_reaches_connected_sidecars_with_one_read_each_and_no_poll() {
    let rig = Rig::start(5, "3s", "");
    let polls_before = rig.sidecars_metric(OWN_POLLS) + rig.sidecars_metric(SAFETY_NET_POLLS);
    let checks_before = reads(&rig.bao.audited(), CONTROLLER, "metadata").len();
    let before = rig.bao.audited().len();
    write(&rig.bao, "2");
    rig.wait_everywhere("2", 30);
    let announced = rig.controller().metric("rotor_channel_announced_total");
    let requests = rig.bao.audited().split_off(before);

    assert_eq!(announced, 5.0, "{}", rig.controller().log_text());
    assert_eq!(
        reads(&requests, SIDECARS, "data").len(),
        5,
        "one data read per sidecar: {requests:#?}"
    );
    // A poll would be one more metadata read (the version check before
    // the fetch).
    assert_eq!(
        reads(&requests, SIDECARS, "metadata").len(),
        5,
        "a sidecar polled: {requests:#?}"
    );
    assert_eq!(
        requests.iter().filter(|r| r.token == SIDECARS).count(),
        10,
        "{requests:#?}"
    );
    // The controller checked, and read no value.
    assert!(!reads(&requests, CONTROLLER, "metadata").is_empty());
    assert!(checks_before > 0);
    assert!(
        requests
            .iter()
            .filter(|r| r.token == CONTROLLER)
            .all(|r| r.path.starts_with("secret/metadata/")),
        "{requests:#?}"
    );
    assert_eq!(
        rig.sidecars_metric(OWN_POLLS) + rig.sidecars_metric(SAFETY_NET_POLLS),
        polls_before,
        "a sidecar polled on its own timer"
    );
}

/// The controller stops: the sidecars see their streams go, poll at their
/// own interval again, and a write after that reaches every file.
#[test]
fn a_stopped_controller_leaves_sidecars_fresh_through_their_own_polling() {
    let mut rig = Rig::start(3, "1s", "");
    drop(rig.controller.take());
    for pod in &rig.pods {
        assert!(wait_until(30, || sidecar_metric(
            pod,
            "rotor_sidecar_channel_connected"
        ) == 0.0));
    }
    let polls = rig.sidecars_metric(OWN_POLLS);
    write(&rig.bao, "3");
    rig.wait_everywhere("3", 30);
    assert!(rig.sidecars_metric(OWN_POLLS) > polls);
    // Every sidecar fetched it itself: after a metadata check of its own.
    let requests = rig.bao.audited();
    assert!(!reads(&requests, SIDECARS, "metadata").is_empty());
}

/// 50 sidecars, a store budget of 20 requests a second (burst 20), so 10
/// fetches of CURRENT (two requests each on OpenBao): the one change
/// reaches all of them, announced in waves, and OpenBao never saw more of
/// their requests in a second than the bucket allows (burst + rate).
#[test]
fn fifty_sidecars_fetching_at_once_stay_within_the_budget() {
    const N: usize = 50;
    // A 5 s refresh: the 50 s safety net stays out of the way while the
    // 50 sidecars start one after another.
    let rig = Rig::start(N, "5s", "  budget: {requestsPerSecond: 20, burst: 20}\n");
    let before = rig.bao.audited().len();
    write(&rig.bao, "2");
    rig.wait_everywhere("2", 60);
    let requests = rig.bao.audited().split_off(before);
    assert_eq!(
        reads(&requests, SIDECARS, "data").len(),
        N,
        "one fetch per sidecar"
    );
    let fetched: Vec<f64> = requests
        .iter()
        .filter(|r| r.token == SIDECARS)
        .map(|r| r.at)
        .collect();
    // Two requests per fetch, and any safety-net poll that fell due.
    assert!(
        fetched.len() >= 2 * N,
        "two requests per fetch: {requests:#?}"
    );
    let most_in_a_second = fetched
        .iter()
        .map(|start| {
            fetched
                .iter()
                .filter(|t| **t >= *start && **t < start + 1.0)
                .count()
        })
        .max()
        .unwrap();
    assert!(
        most_in_a_second <= 40,
        "{most_in_a_second} sidecar requests in one second, over the budget's 20 + 20"
    );
    let spread = fetched.iter().copied().fold(f64::MIN, f64::max)
        - fetched.iter().copied().fold(f64::MAX, f64::min);
    eprintln!(
        "{N} sidecars: at most {most_in_a_second} of their requests in a second, first to last {spread:.2} s"
    );
    // Five waves a second apart: at least 3 s from the first read to the
    // last.
    assert!(spread >= 3.0, "the reads took only {spread:.2} s");
    assert!(
        rig.controller()
            .metric("rotor_channel_announce_waves_total")
            >= 5.0
    );
    assert_eq!(
        rig.controller().metric("rotor_channel_announce_pending"),
        0.0
    );
    assert!(
        rig.controller()
            .log_text()
            .contains("last_wave_within_secs=4"),
        "the bound is logged"
    );
}

/// A loopback proxy in front of OpenBao that answers every request with
/// HTTP 429 and OpenBao's rate-limit error while `throttle` is set (dropping its open connections when it
/// is set), and forwards otherwise.
async fn throttling_proxy(upstream: SocketAddr, throttle: Arc<AtomicBool>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (flip_tx, _) = tokio::sync::broadcast::channel::<()>(4);
    let watcher = (throttle.clone(), flip_tx.clone());
    tokio::spawn(async move {
        let mut was = false;
        loop {
            let now = watcher.0.load(Ordering::SeqCst);
            if now && !was {
                let _ = watcher.1.send(());
            }
            was = now;
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    });
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                continue;
            };
            let (throttle, mut flipped) = (throttle.clone(), flip_tx.subscribe());
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                if throttle.load(Ordering::SeqCst) {
                    let mut buf = [0u8; 4096];
                    let _ = client.read(&mut buf).await;
                    // What Vault and OpenBao answer over a rate-limit quota.
                    let body = r#"{"errors":["request path \"secret/metadata/app/db\": rate limit quota exceeded"]}"#;
                    let answer = format!(
                        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = client.write_all(answer.as_bytes()).await;
                    return;
                }
                let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    _ = flipped.recv() => {}
                }
            });
        }
    });
    addr
}

/// OpenBao throttles the controller for a while: its checks slow down
/// (`rotor_store_throttled_total` grows), and the last version written
/// meanwhile still reaches every file, announced once the store answers.
#[test]
fn a_throttling_store_slows_the_controller_and_no_change_is_lost() {
    let bao = Bao::start_audited();
    let throttle = Arc::new(AtomicBool::new(false));
    let proxies = tokio::runtime::Runtime::new().unwrap();
    let upstream: SocketAddr = format!("127.0.0.1:{}", bao.port).parse().unwrap();
    let proxy = proxies.block_on(throttling_proxy(upstream, throttle.clone()));
    let rig = Rig::start_on(bao, 3, "2s", "", Some(format!("http://{proxy}")));
    let throttled = || {
        rig.controller()
            .metric("rotor_store_throttled_total{store=\"main\"}")
    };
    let announced = || rig.controller().metric("rotor_channel_announced_total");
    // Through the proxy, the controller's checks work.
    write(&rig.bao, "2");
    rig.wait_everywhere("2", 60);
    assert_eq!(announced(), 3.0, "{}", rig.controller().log_text());

    throttle.store(true, Ordering::SeqCst);
    write(&rig.bao, "3");
    assert!(
        wait_until(30, || throttled() >= 2.0),
        "{}",
        rig.controller().log_text()
    );
    write(&rig.bao, "4");
    throttle.store(false, Ordering::SeqCst);
    rig.wait_everywhere("4", 120);
    assert!(
        wait_until(60, || announced() >= 6.0),
        "the last version was not announced: {}",
        rig.controller().log_text()
    );
}
