//! Micro-benchmarks of the per-event path: decode, validate, migrate, render, attributes, and a
//! whole payload through `prepare_payload`. Run with `cargo bench -p telemetry-gateway-server`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use telemetry_gateway_loadgen::events::{encoded_payload, realistic_event};
use telemetry_gateway_proto::v1::{Event, RecordEventsRequest};
use telemetry_gateway_proto::wire::RawEvents;
use telemetry_gateway_proto::{migrate_legacy_metadata, render_event, validate_event};
use telemetry_gateway_server::pipeline::{AttributeNeed, EventPolicy, attributes, prepare_payload};
use telemetry_gateway_server::{Source, SourceKind};
use telemetry_gateway_testkit::events::unlicensed_metadata;

const EVENTS: usize = 500;
const EVENT_BYTES: usize = 700;

fn source() -> Source {
    Source::new(
        SourceKind::UnlicensedInstance {
            instance_id: "bench".into(),
            external_url: String::new(),
        },
        &unlicensed_metadata("bench"),
    )
}

fn events() -> Vec<Event> {
    (0..EVENTS as u64)
        .map(|i| realistic_event(i, EVENT_BYTES))
        .collect()
}

fn per_event(c: &mut Criterion) {
    let events = events();
    let source = source();
    let mut group = c.benchmark_group("per_event");
    group.throughput(Throughput::Elements(EVENTS as u64));

    let payload = encoded_payload(0, EVENTS, EVENT_BYTES);
    group.bench_function("decode", |b| {
        b.iter(|| {
            RecordEventsRequest::decode(black_box(payload.clone())).map(|r| r.payload.is_some())
        })
    });
    group.bench_function("validate", |b| {
        b.iter(|| {
            events
                .iter()
                .filter(|e| validate_event(black_box(e)).is_ok())
                .count()
        })
    });
    group.bench_function("migrate", |b| {
        let mut legacy = events.clone();
        for event in &mut legacy {
            if let Some(parameters) = event.parameters.as_mut() {
                parameters.legacy_metadata.insert("legacyCount".into(), 3);
            }
        }
        b.iter_batched(
            || legacy.clone(),
            |mut batch| {
                for event in &mut batch {
                    migrate_legacy_metadata(event);
                }
                batch
            },
            criterion::BatchSize::LargeInput,
        )
    });
    group.bench_function("render_json", |b| {
        let mut buffer = Vec::with_capacity(4096);
        b.iter(|| {
            for event in &events {
                buffer.clear();
                let _ = render_event(black_box(event), &mut buffer);
            }
            buffer.len()
        })
    });
    group.bench_function("attributes", |b| {
        b.iter(|| {
            events
                .iter()
                .map(|e| attributes(black_box(e), &source).len())
                .sum::<usize>()
        })
    });
    // From the wire bytes, as the server receives them.
    let raw = RawEvents::from_events(&events);
    // Without attributes: as for the file and discard sinks, which read none.
    for (name, attributes) in [
        ("prepare_payload", AttributeNeed::Build),
        ("prepare_payload_without_attributes", AttributeNeed::Skip),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                prepare_payload(
                    black_box(&raw),
                    &source,
                    &EventPolicy::default(),
                    attributes,
                )
                .map(|prepared| prepared.events.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, per_event);
criterion_main!(benches);
