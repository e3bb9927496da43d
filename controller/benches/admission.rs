//! Admission latency over HTTPS on loopback at 500 requests/s (target: p99
//! ≤ 5 ms), and the controller's RSS idle and with 10,000 stores indexed.
//! Runs the release `rotor-controller webhook` as a process:
//! `cargo bench -p rotor-controller --bench admission`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rotor_fixtures::procfs::rss_kib;

const RATE: u64 = 500;
const SECONDS: u64 = 10;
const CONNECTIONS: usize = 8;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (tls, stores) = (dir.path().join("tls"), dir.path().join("stores"));
    std::fs::create_dir_all(&tls).unwrap();
    std::fs::create_dir_all(&stores).unwrap();
    let bin = env!("CARGO_BIN_EXE_rotor-controller");
    let ok = Command::new(bin)
        .args(["certs", "--dns-name", "localhost", "--out"])
        .arg(&tls)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    std::fs::write(
        stores.join("stores.yaml"),
        include_str!("../tests/fixtures/stores.yaml"),
    )
    .unwrap();

    let (port, mut server) = start(bin, &stores, &tls);
    let idle = rss_kib(server.id());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (latencies, errors) = runtime.block_on(load(port, &tls.join("ca.crt")));
    let busy = rss_kib(server.id());
    let _ = server.kill();
    let _ = server.wait();

    // 10,000 RotorStores (and their namespaces) in the index.
    let mut big = String::new();
    for i in 0..10_000 {
        big.push_str(&format!(
            "apiVersion: rotor.dev/v1alpha1\nkind: RotorStore\nmetadata: {{name: s, namespace: ns-{i}}}\nspec:\n  provider:\n    vault:\n      server: https://vault:8200\n      auth: {{kubernetes: {{role: r{i}}}}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{i}, labels: {{team: t{i}}}}}\n---\n"
        ));
    }
    std::fs::write(stores.join("many.yaml"), big).unwrap();
    let (_, mut server) = start(bin, &stores, &tls);
    let with_stores = rss_kib(server.id());
    let _ = server.kill();
    let _ = server.wait();

    let mut sorted = latencies.clone();
    sorted.sort();
    let p = |q: f64| sorted[((sorted.len() - 1) as f64 * q) as usize];
    println!("\n| figure | target | measured |\n|---|---|---|");
    println!(
        "| admission latency over HTTPS, {RATE} req/s for {SECONDS} s, {CONNECTIONS} connections | p99 ≤ 5 ms | p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} requests, {errors} errors) |",
        ms(p(0.5)),
        ms(p(0.99)),
        ms(*sorted.last().unwrap()),
        sorted.len()
    );
    println!(
        "| controller RSS at idle | reported | {:.1} MB |",
        idle as f64 / 1024.0
    );
    println!(
        "| controller RSS after the load | reported | {:.1} MB |",
        busy as f64 / 1024.0
    );
    println!(
        "| controller RSS with 10,000 RotorStores and namespaces indexed | reported | {:.1} MB |",
        with_stores as f64 / 1024.0
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn start(bin: &str, stores: &Path, tls: &Path) -> (u16, Child) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(bin)
        .args(rotor_fixtures::webhook::args(stores, port, tls))
        .env("ROTOR_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "webhook did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    (port, child)
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(port: u16, connector: &tokio_rustls::TlsConnector) -> Sender {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn load(port: u16, ca: &Path) -> (Vec<Duration>, usize) {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let body = Bytes::from_static(include_bytes!("../tests/fixtures/inject.json"));
    let total = (RATE * SECONDS) as usize;
    let interval = Duration::from_micros(1_000_000 / RATE);
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        let mut sender = connect(port, &connector).await;
        let body = body.clone();
        let start = Instant::now() + Duration::from_millis(50);
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut errors = 0;
            for i in (c..total).step_by(CONNECTIONS) {
                tokio::time::sleep_until((start + interval * i as u32).into()).await;
                let t = Instant::now();
                let request = hyper::Request::post("/mutate")
                    .header("host", "localhost")
                    .header("content-type", "application/json")
                    .body(Full::new(body.clone()))
                    .unwrap();
                match sender.send_request(request).await {
                    Ok(resp) if resp.status() == 200 => {
                        let _ = resp.into_body().collect().await;
                        out.push(t.elapsed());
                    }
                    _ => errors += 1,
                }
            }
            (out, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    (all, errors)
}
