//! Rotation start until N consumers acknowledged, N = 1, 10, 100 sidecars
//! on loopback (target: ≤ 1 s for N = 100), on the local store. Runs the
//! release `rotor-sidecar` processes and drives the state machine in this
//! process, timing from the `Generating` step to the step that sees every
//! acknowledgement.
//!
//! ```sh
//! cargo build --release --bins && cargo bench -p rotor-e2e --bench rotation_ack
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rotor_controller::rotation::machine::{Phase, step};
use rotor_controller::rotation::validate::{Mode, Policy};
use rotor_controller::sidecar_push::HttpSidecars;
use rotor_crds::api::{
    Generator, RandomBytesGenerator, Schedule, SecretRotationPolicySpec,
    SecretRotationPolicyStatus, Staged, StoreRef, Strategy,
};
use rotor_e2e::pod::Pod;
use rotor_envelope::KeyFileKek;
use rotor_store::{LocalStore, WriteAs};

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "\n| consumers | rotation start → all acknowledged (median of 5) | max | target |\n|---|---|---|---|"
    );
    for n in [1usize, 10, 100] {
        let times = runtime.block_on(measure(n));
        let mut sorted = times.clone();
        sorted.sort();
        println!(
            "| {n} | {:.1} ms | {:.1} ms | {} |",
            sorted[sorted.len() / 2].as_secs_f64() * 1000.0,
            sorted.last().unwrap().as_secs_f64() * 1000.0,
            if n == 100 { "≤ 1 s" } else { "" }
        );
    }
}

async fn measure(n: usize) -> Vec<Duration> {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let key = dir.path().join("kek");
    KeyFileKek::generate(&key, false).unwrap();
    let path = dir.path().join("store.rotor");
    let store = LocalStore::new(&path, Arc::new(KeyFileKek::load(&key).unwrap()));
    store.put("app/db", b"initial", WriteAs::Current).unwrap();
    let mut pods = Vec::new();
    for _ in 0..n {
        let mut pod = Pod::new();
        pod.store_args = vec![
            format!("--local-store={}", path.display()).into(),
            format!("--key={}", key.display()).into(),
        ];
        pod.envs = vec![("ROTOR_LOG".into(), "warn".into())];
        pod.annotate(&[
            ("rotor.dev/secret.db", "app/db"),
            ("rotor.dev/refresh", "1h"),
        ]);
        pod.start();
        pods.push(pod);
    }
    let consumers = HttpSidecars::new(
        pods.iter()
            .map(|p| format!("http://127.0.0.1:{}", p.push))
            .collect(),
    );
    let spec = Policy::parse(
        &SecretRotationPolicySpec {
            store_ref: StoreRef {
                name: "local".into(),
                kind: "RotorStore".into(),
            },
            secret_name: "app/db".into(),
            schedule: Schedule {
                interval: Some("1h".into()),
                ..Schedule::default()
            },
            generator: Generator {
                password: None,
                random_bytes: Some(RandomBytesGenerator {
                    length: 32,
                    encoding: Default::default(),
                }),
                key_pair: None,
            },
            strategy: Strategy {
                staged: Staged {
                    ack_timeout: "30s".into(),
                    grace_period: "0s".into(),
                    on_timeout: Default::default(),
                },
            },
            target: None,
            sidecars: vec![],
            paused: false,
        },
        Mode::Standalone,
    )
    .unwrap();
    let mut times = Vec::new();
    for _ in 0..5 {
        let mut status = SecretRotationPolicyStatus::default();
        // Idle -> Generating (rotate now).
        status = step(
            &spec,
            &status,
            SystemTime::now(),
            true,
            &store,
            &consumers,
            None,
        )
        .await
        .unwrap()
        .status;
        let started = Instant::now();
        loop {
            status = step(
                &spec,
                &status,
                SystemTime::now(),
                false,
                &store,
                &consumers,
                None,
            )
            .await
            .unwrap()
            .status;
            if status.phase.as_deref() == Some(Phase::Promoting.as_str()) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "never acknowledged"
            );
        }
        times.push(started.elapsed());
        // Finish the rotation (promote, retire) before the next one.
        for _ in 0..3 {
            status = step(
                &spec,
                &status,
                SystemTime::now() + Duration::from_secs(1),
                false,
                &store,
                &consumers,
                None,
            )
            .await
            .unwrap()
            .status;
        }
        // Stay under the sidecars' push rate limit.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    times
}
