//! Encoding and decoding of each normal-case message kind (`wire::encode_frame` and
//! `wire::decode_frame`), throughput in frame bytes.

use bulwark_benches::{client_key, signed_request, signed_requests, Fixture, SCOPE};
use bulwark_framework::messages::Message;
use bulwark_framework::wire::{decode_frame, encode_frame};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
}

fn messages(fixture: &Fixture) -> Vec<(&'static str, Message)> {
    let client = client_key(0);
    vec![
        ("request/0B", Message::Request(signed_request(&client, 1, 0))),
        ("request/512B", Message::Request(signed_request(&client, 1, 512))),
        ("request/4KiB", Message::Request(signed_request(&client, 1, 4096))),
        ("pre_prepare/16x512B", fixture.pre_prepare(signed_requests(16, 512))),
        ("pre_prepare/128x512B", fixture.pre_prepare(signed_requests(128, 512))),
        ("prepare", Message::Prepare(fixture.prepare())),
        ("commit", fixture.commit()),
        ("reply/0B", fixture.reply(0)),
        ("reply/4KiB", fixture.reply(4096)),
        ("checkpoint", fixture.checkpoint()),
    ]
}

fn wire(c: &mut Criterion) {
    let fixture = Fixture::new();
    let limit = fixture.frame_limit();
    let messages = messages(&fixture);

    let mut encode = c.benchmark_group("encode");
    for (name, message) in &messages {
        let bytes = encode_frame(SCOPE, message).expect("fixture encodes").len();
        encode.throughput(Throughput::Bytes(bytes as u64));
        encode.bench_function(*name, |b| b.iter(|| encode_frame(SCOPE, black_box(message)).unwrap()));
    }
    encode.finish();

    let mut decode = c.benchmark_group("decode");
    for (name, message) in &messages {
        let frame = encode_frame(SCOPE, message).expect("fixture encodes");
        let (decoded, _) = decode_frame(&frame, limit).expect("fixture decodes").expect("frame is complete");
        assert_eq!(&decoded.message, message, "{name} does not round-trip");
        decode.throughput(Throughput::Bytes(frame.len() as u64));
        decode.bench_function(*name, |b| b.iter(|| decode_frame(black_box(&frame), limit).unwrap()));
    }
    decode.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = wire
}
criterion_main!(benches);
