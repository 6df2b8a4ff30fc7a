//! Signatures: ed25519 sign and verify of a prepare, batch verification of client
//! requests against one-by-one verification, and edge verification of a pre-prepare
//! carrying a full batch (what every backup does for every batch).

use bulwark_benches::{signed_requests, with_client_keys, Fixture, SCOPE};

use bulwark_framework::verify::verify_message;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
}

/// Size of the operation in every request verified here.
const OPERATION_BYTES: usize = 512;

fn sign_and_verify(c: &mut Criterion) {
    let fixture = Fixture::new();
    let payload = fixture.prepare_payload();
    let key = &fixture.replica_keys[payload.replica.0 as usize];
    let public = key.public();
    let signed = SCOPE.sign(payload, key).into_signed();
    assert!(SCOPE.verify(signed.clone(), &public).is_ok());

    let mut group = c.benchmark_group("ed25519");
    group.throughput(Throughput::Elements(1));
    group.bench_function("sign/prepare", |b| b.iter(|| SCOPE.sign(black_box(payload), key)));
    group.bench_function("verify/prepare", |b| {
        // Cloning a signed prepare is a copy of about 150 bytes, noise next to a verify.
        b.iter(|| SCOPE.verify(black_box(&signed).clone(), &public).unwrap())
    });
    group.finish();
}

fn batch_verification(c: &mut Criterion) {
    let mut group = c.benchmark_group("verify_requests");
    for count in [16usize, 64, 256] {
        let items = with_client_keys(signed_requests(count, OPERATION_BYTES));
        assert!(SCOPE.verify_batch(items.clone()).iter().all(Result::is_ok));
        group.throughput(Throughput::Elements(count as u64));
        group.bench_function(format!("batch/{count}"), |b| {
            b.iter_batched(|| items.clone(), |items| SCOPE.verify_batch(items), BatchSize::LargeInput)
        });
        if count == 64 {
            group.bench_function(format!("one_by_one/{count}"), |b| {
                b.iter_batched(
                    || items.clone(),
                    |items| {
                        items.into_iter().map(|(signed, key)| SCOPE.verify(signed, &key).unwrap()).collect::<Vec<_>>()
                    },
                    BatchSize::LargeInput,
                )
            });
        }
    }
    group.finish();
}

fn edge_verification(c: &mut Criterion) {
    let fixture = Fixture::new();
    let message = fixture.pre_prepare(signed_requests(64, OPERATION_BYTES));
    verify_message(message.clone(), &fixture.config).expect("the fixture pre-prepare verifies");

    let mut group = c.benchmark_group("verify_message");
    group.throughput(Throughput::Elements(64));
    group.bench_function("pre_prepare/64x512B", |b| {
        b.iter_batched(
            || message.clone(),
            |message| verify_message(message, &fixture.config).unwrap(),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = sign_and_verify, batch_verification, edge_verification
}
criterion_main!(benches);
