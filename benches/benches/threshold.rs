//! Threshold signatures of a Steward site (BLS12-381, and the simulator's stand-in): sign a
//! share, verify a share, combine `2f + 1` shares, verify a combined signature, for sites
//! of 4 (`f = 1`) and 16 (`f = 5`) replicas, and the collector's optimistic path (combine,
//! verify once) against checking every share first.

use bulwark_crypto::threshold::{threshold_message, Bls, ShareCollector, Simulated, ThresholdScheme};
use criterion::{criterion_group, criterion_main, Criterion};
use rand_chacha::rand_core::SeedableRng;
use std::hint::black_box;
use std::time::Duration;

fn config() -> Criterion {
    Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1))
}

fn scheme<S: ThresholdScheme>(c: &mut Criterion) {
    for (members, needed) in [(4usize, 3usize), (16, 11)] {
        let (key, secrets) = S::deal(members, needed, &mut rand_chacha::ChaCha20Rng::seed_from_u64(1));
        let shared_key = std::sync::Arc::new(key.clone());
        let message = threshold_message(b"proposal", &[7; 64]);
        let shares: Vec<(u32, S::Share)> =
            secrets.iter().take(needed).map(|secret| (S::index(secret), S::sign_share(secret, &message))).collect();
        let signature = S::combine(&key, &shares).unwrap();
        let mut group = c.benchmark_group(format!("threshold/{}/{needed}-of-{members}", S::NAME));
        group.bench_function("sign share", |b| b.iter(|| S::sign_share(black_box(&secrets[0]), &message)));
        group.bench_function("verify share", |b| {
            b.iter(|| assert!(S::verify_share(&key, 0, black_box(&shares[0].1), &message)))
        });
        group.bench_function("combine", |b| b.iter(|| S::combine(&key, black_box(&shares)).unwrap()));
        group.bench_function("verify combined", |b| {
            b.iter(|| assert!(S::verify(&key, black_box(&signature), &message)))
        });
        group.bench_function("collect and sign (TS2)", |b| {
            b.iter(|| {
                let mut collector = ShareCollector::<S>::new(shared_key.clone(), message);
                for (index, share) in &shares {
                    collector.add(*index, share.clone()).unwrap();
                }
                assert!(collector.try_combine().signature.is_some());
            })
        });
        group.bench_function("check every share, then combine", |b| {
            b.iter(|| {
                assert!(shares.iter().all(|(index, share)| S::verify_share(&key, *index, share, &message)));
                S::combine(&key, &shares).unwrap()
            })
        });
        group.finish();
    }
}

fn bls(c: &mut Criterion) {
    scheme::<Bls>(c);
}

fn simulated(c: &mut Criterion) {
    scheme::<Simulated>(c);
}

criterion_group!(name = benches; config = config(); targets = bls, simulated);
criterion_main!(benches);
