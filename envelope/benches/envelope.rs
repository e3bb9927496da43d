//! Envelope seal + open of 64 B, 1 KiB and 64 KiB records.
//! Target for 1 KiB: ≤ 2 µs for a seal and an open together.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rotor_envelope::{ExposeSecret, KeyFileKek, RecordId, open, seal};

fn seal_open(c: &mut Criterion) {
    let kek = KeyFileKek::from_bytes(&[7u8; 32]);
    let id = RecordId {
        store_id: b"0123456789abcdef",
        name: "db/password",
        version: 42,
    };
    let mut group = c.benchmark_group("envelope_seal_open");
    for size in [64usize, 1024, 64 * 1024] {
        let plain = vec![0x5au8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &plain, |b, plain| {
            b.iter(|| {
                let sealed = seal(&kek, &id, plain).unwrap();
                let opened = open(&kek, &id, &sealed).unwrap();
                assert_eq!(opened.expose_secret().len(), plain.len());
            })
        });
    }
    group.finish();
}

criterion_group!(benches, seal_open);
criterion_main!(benches);
