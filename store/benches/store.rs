//! Local store: warm `get` in a store of 1,000 secrets (target ≤ 50 µs),
//! the cheap current-version check, and `put` of 1 KiB.

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use rotor_envelope::{ExposeSecret, KeyFileKek};
use rotor_store::{LocalStore, Selector, WriteAs};

fn store_ops(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(shm_or_tmp()).unwrap();
    let store = LocalStore::new(
        dir.path().join("bench.rotor"),
        Arc::new(KeyFileKek::from_bytes(&[7u8; 32])),
    );
    let value = vec![0x5au8; 1024];
    for i in 0..1000 {
        store
            .put(&format!("secret-{i:04}"), &value, WriteAs::Current)
            .unwrap();
    }
    store.get("secret-0500", Selector::Current).unwrap();

    c.bench_function("store_get_warm_1000_secrets", |b| {
        b.iter(|| {
            let v = store.get("secret-0500", Selector::Current).unwrap();
            assert_eq!(v.value.expose_secret().len(), 1024);
        })
    });
    c.bench_function("store_current_version_1000_secrets", |b| {
        b.iter(|| store.current_number("secret-0500").unwrap())
    });
    let mut group = c.benchmark_group("store_put_1KiB");
    group.sample_size(20);
    group.bench_function("1000_secrets", |b| {
        b.iter(|| store.put("secret-0001", &value, WriteAs::Current).unwrap())
    });
    group.finish();
}

/// The store's directory: tmpfs when there is one, like in a pod.
fn shm_or_tmp() -> std::path::PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    }
}

criterion_group!(benches, store_ops);
criterion_main!(benches);
