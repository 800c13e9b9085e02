//! Fuzz targets for the gateway's parsers, as plain functions over bytes.
//!
//! Each function takes one fuzzer input, runs it through a parser the way the gateway does, and
//! panics only when a property the gateway relies on is broken (the parser panicked, two
//! renderers disagree, an error message echoes unbounded input, ...). The `fuzz_targets/` binaries
//! hand them to libFuzzer (`cargo xtask fuzz`); `tests/replay.rs` runs every seed and every saved
//! finding through them as ordinary tests on the stable toolchain. See docs/fuzzing.md.

use std::sync::OnceLock;

use prost::Message as _;
use prost::bytes::Bytes;
use serde_json::Value;
use telemetry_gateway_auth::{LicenseError, LicenseVerifier};
use telemetry_gateway_proto::json::to_canonical_json;
use telemetry_gateway_proto::v1::identifier::Identifier;
use telemetry_gateway_proto::v1::record_events_request::Payload;
use telemetry_gateway_proto::v1::{Event, RecordEventsRequest, RecordEventsRequestMetadata};
use telemetry_gateway_proto::wire::{EventView, RawPayload, RawRecordEventsRequest};
use telemetry_gateway_proto::{migrate_legacy_metadata, render_event};
use telemetry_gateway_server::pipeline::{AttributeNeed, EventPolicy, prepare_payload, summarize};
use telemetry_gateway_server::skim::{Root, Shape, Skim, SkimError};
use telemetry_gateway_server::{Source, SourceKind};
use telemetry_gateway_sink::PublishOutcome;
use telemetry_gateway_sink::pubsub::fit_attributes;
use telemetry_gateway_testkit::events::{
    licensed_metadata, managed_metadata, rich_event, simple_event, unlicensed_metadata,
};
use telemetry_gateway_testkit::json::normalized_numbers;
use telemetry_gateway_testkit::license::{LicenseKeyPair, LicenseSpec, SignatureFormat};

/// The names of the targets, as `fuzz_targets/<name>.rs` and `fuzz/seeds/<name>/`.
pub const TARGETS: [&str; 4] = [
    "license_key",
    "record_events",
    "json_differential",
    "grpc_framing",
];

/// Runs the target called `name` on `data`; `false` when there is no such target.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "license_key" => license_key(data),
        "record_events" => record_events(data),
        "json_differential" => json_differential(data),
        "grpc_framing" => grpc_framing(data),
        _ => return false,
    }
    true
}

/// The fuzzing key pair (test only, checked in so that seeds minted with it verify in every run).
pub const FUZZ_LICENSE_KEY_PEM: &str = include_str!("../license-key.pem");

/// Rejection reasons are sent back to the sender and logged: they must stay short whatever the
/// key holds.
const MAX_LICENSE_ERROR_BYTES: usize = 512;

fn fuzz_key_pair() -> &'static LicenseKeyPair {
    static PAIR: OnceLock<LicenseKeyPair> = OnceLock::new();
    PAIR.get_or_init(|| {
        LicenseKeyPair::from_private_key_pem_pkcs1(FUZZ_LICENSE_KEY_PEM)
            .unwrap_or_else(|err| panic!("fuzz/license-key.pem is a PKCS#1 RSA key: {err}"))
    })
}

fn fuzz_verifier() -> &'static LicenseVerifier {
    static VERIFIER: OnceLock<LicenseVerifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        LicenseVerifier::from_pem_private_key(FUZZ_LICENSE_KEY_PEM)
            .unwrap_or_else(|err| panic!("the verifier accepts fuzz/license-key.pem: {err}"))
    })
}

/// License key parsing and verification.
///
/// First byte even: the rest is license key text (as an instance sends it), verified with the
/// fuzzing key and with the production key. Odd: the rest is license *info*, signed with the
/// fuzzing key (format from the first byte), so the info parser behind the signature check is
/// reached too. Properties: no panic, errors are short, the production key accepts nothing
/// (the fuzzer cannot sign with it), and verification is deterministic.
pub fn license_key(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let key = if mode % 2 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let format = match (mode / 2) % 3 {
            0 => SignatureFormat::SshRsa,
            1 => SignatureFormat::RsaSha256,
            _ => SignatureFormat::RsaSha512,
        };
        fuzz_key_pair().mint_info(rest, format)
    };
    let verified = fuzz_verifier().verify(&key);
    match &verified {
        Ok(license) => {
            let _ = format!("{license:?}");
        }
        Err(err) => check_license_error(err),
    }
    assert_eq!(
        verified,
        fuzz_verifier().verify(&key),
        "verification is deterministic"
    );
    match LicenseVerifier::production().verify(&key) {
        Ok(license) => panic!("the production key accepted a fuzzed key: {license:?}"),
        Err(err) => check_license_error(&err),
    }
}

fn check_license_error(err: &LicenseError) {
    let message = err.to_string();
    assert!(
        message.len() <= MAX_LICENSE_ERROR_BYTES,
        "a {}-byte rejection reason: {message:.200}",
        message.len()
    );
}

/// `RecordEventsRequest` decode → prepare → render, as the stream handler does.
///
/// Properties: no panic; metadata renders to what prost-reflect renders; every prepared event's
/// payload is a JSON object `{"event":…,"metadata":…}` whose metadata is the stream's; its
/// attributes, once fitted, are within Pub/Sub's limits; the summary acknowledges only input IDs,
/// each once.
pub fn record_events(data: &[u8]) {
    // The server reads requests with their events left encoded; prost is the reference.
    let decoded = RecordEventsRequest::decode(data);
    let raw = match RawRecordEventsRequest::decode(Bytes::copy_from_slice(data)) {
        Ok(raw) => raw,
        Err(err) => {
            let reference = decoded.expect_err("the raw reading refused what prost decodes");
            assert_eq!(
                err.to_string(),
                reference.to_string(),
                "the refusal is prost's"
            );
            return;
        }
    };
    match raw.payload {
        Some(RawPayload::Metadata(metadata)) => {
            assert!(
                matches!(&decoded, Ok(RecordEventsRequest { payload: Some(Payload::Metadata(m)) }) if *m == metadata),
                "the raw reading's metadata is prost's"
            );
            let source = source_for(&metadata);
            let rendered = parse_json(source.metadata_json(), "metadata JSON");
            let reference = to_canonical_json(&metadata)
                .unwrap_or_else(|err| panic!("prost-reflect renders metadata: {err}"));
            assert_eq!(
                normalized_numbers(rendered),
                normalized_numbers(parse_json(reference.as_bytes(), "prost-reflect JSON")),
                "metadata renderers agree"
            );
        }
        Some(RawPayload::Events(events)) => {
            let metadata = RecordEventsRequestMetadata::default();
            let source = source_for(&metadata);
            let prepared = prepare_payload(
                &events,
                &source,
                &EventPolicy::default(),
                AttributeNeed::Build,
            );
            let (decoded, prepared) = match (decoded, prepared) {
                (Ok(decoded), Ok(prepared)) => (decoded, prepared),
                (Err(reference), Err(err)) => {
                    assert_eq!(
                        err.to_string(),
                        reference.to_string(),
                        "the refusal is prost's"
                    );
                    return;
                }
                (Ok(_), Err(err)) => panic!("prepare_payload refused what prost decodes: {err}"),
                (Err(err), Ok(_)) => panic!("prepare_payload took what prost refuses: {err}"),
            };
            let Some(Payload::Events(reference)) = decoded.payload else {
                panic!("prost decoded another payload");
            };
            let input_ids: Vec<String> = reference.events.iter().map(|e| e.id.clone()).collect();
            assert_eq!(
                events.len(),
                input_ids.len(),
                "as many events as prost decodes"
            );
            let stream_metadata = parse_json(source.metadata_json(), "metadata JSON");
            for event in &prepared.events {
                let payload = parse_json(&event.payload, "payload");
                let Value::Object(fields) = payload else {
                    panic!("a payload is a JSON object");
                };
                assert!(fields.get("event").is_some_and(Value::is_object));
                assert_eq!(fields.get("metadata"), Some(&stream_metadata));
                let mut attributes = event.attributes.clone();
                fit_attributes(&mut attributes);
                assert_within_pubsub_limits(&attributes);
            }
            let outcomes = vec![PublishOutcome::Delivered; prepared.events.len()];
            // Without attributes (no sink reads them) everything else is the same.
            let skipped = prepare_payload(
                &events,
                &source,
                &EventPolicy::default(),
                AttributeNeed::Skip,
            )
            .unwrap_or_else(|err| panic!("prepared once, refused without attributes: {err}"));
            let without: Vec<_> = prepared
                .events
                .iter()
                .cloned()
                .map(|mut event| {
                    event.attributes.clear();
                    event
                })
                .collect();
            assert_eq!(
                skipped.events, without,
                "the same events without attributes"
            );
            let summary = summarize(prepared, &outcomes, &source);
            assert_eq!(
                summarize(skipped, &outcomes, &source),
                summary,
                "the same summary without attributes"
            );
            let mut seen = std::collections::HashSet::new();
            for id in &summary.succeeded {
                assert!(input_ids.contains(id), "acknowledged an ID never sent");
                assert!(seen.insert(id), "acknowledged {id:?} twice");
            }
        }
        None => assert!(
            matches!(decoded, Ok(RecordEventsRequest { payload: None })),
            "the raw reading found no payload where prost did"
        ),
    }
}

fn assert_within_pubsub_limits(attributes: &telemetry_gateway_sink::Attributes) {
    use telemetry_gateway_sink::pubsub::{
        MAX_ATTRIBUTE_KEY_BYTES, MAX_ATTRIBUTE_VALUE_BYTES, MAX_ATTRIBUTES,
    };
    assert!(attributes.len() <= MAX_ATTRIBUTES);
    for (key, value) in attributes {
        assert!(!key.is_empty() && key.len() <= MAX_ATTRIBUTE_KEY_BYTES);
        assert!(value.len() <= MAX_ATTRIBUTE_VALUE_BYTES);
    }
}

fn source_for(metadata: &RecordEventsRequestMetadata) -> Source {
    let identifier = metadata
        .identifier
        .as_ref()
        .and_then(|i| i.identifier.as_ref());
    let kind = match identifier {
        Some(Identifier::ManagedService(service)) => SourceKind::ManagedService {
            service_id: service.service_id.clone(),
            environment: service.service_environment.clone(),
        },
        Some(Identifier::UnlicensedInstance(instance)) => SourceKind::UnlicensedInstance {
            instance_id: instance.instance_id.clone(),
            external_url: instance.external_url.clone(),
        },
        Some(Identifier::LicensedInstance(instance)) => SourceKind::UnlicensedInstance {
            instance_id: instance.instance_id.clone(),
            external_url: instance.external_url.clone(),
        },
        None => SourceKind::UnlicensedInstance {
            instance_id: String::new(),
            external_url: String::new(),
        },
    };
    Source::new(kind, metadata)
}

fn parse_json(bytes: &[u8], what: &str) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|err| {
        panic!(
            "{what} is not JSON ({err}): {:.300}",
            String::from_utf8_lossy(bytes)
        )
    })
}

/// The hand-written renderer against prost-reflect's, on any decodable `Event`.
///
/// Property: both parse to the same JSON value (numbers compared as doubles), or both refuse.
/// Inputs of odd length are migrated (legacy metadata into metadata) before rendering.
/// prost-reflect is laxer than Go's protojson (and our renderer) in three cases, which count as
/// "prost-reflect refuses" too: it writes a non-finite Struct number as JSON `null`, it renders a
/// Struct Value with no kind set (Go: "none of the oneof fields is set"), and it normalises a
/// Timestamp whose nanos are outside 0..=999,999,999 (carrying into the seconds)
/// where Go refuses with "nanos out of range" (docs/fuzzing.md, found by this target).
pub fn json_differential(data: &[u8]) {
    wire_differential(data);
    let Ok(mut event) = Event::decode(data) else {
        return;
    };
    // Odd lengths are migrated first, as the pipeline does, so both shapes of metadata are seen.
    if data.len() % 2 == 1 {
        migrate_legacy_metadata(&mut event);
    }
    let mut ours = Vec::new();
    let ours = render_event(&event, &mut ours).map(|()| ours);
    let reference = if has_non_finite_struct_number(&event) || has_invalid_timestamp(&event) {
        None
    } else {
        to_canonical_json(&event).ok()
    };
    match (ours, reference) {
        (Ok(ours), Some(reference)) => assert_eq!(
            normalized_numbers(parse_json(&ours, "render_event output")),
            normalized_numbers(parse_json(reference.as_bytes(), "prost-reflect output")),
            "renderers disagree"
        ),
        (Err(_), None) => {}
        (Ok(ours), None) => panic!(
            "render_event accepted what prost-reflect refuses: {}",
            String::from_utf8_lossy(&ours)
        ),
        (Err(err), Some(reference)) => {
            panic!("render_event refused ({err}) what prost-reflect renders: {reference:.300}")
        }
    }
}

/// The wire reader against prost: an event it reads in place, prost decodes to the same fields
/// (compared through `Debug`, where NaN equals itself), before and after legacy migration.
fn wire_differential(data: &[u8]) {
    let Some(mut view) = EventView::parse(data) else {
        return;
    };
    let mut decoded = Event::decode(data).expect("the wire reader read what prost refuses");
    assert_eq!(
        format!("{view:?}"),
        format!("{:?}", EventView::from_event(&decoded)),
        "the wire reader and prost disagree"
    );
    view.migrate_legacy_metadata();
    migrate_legacy_metadata(&mut decoded);
    assert_eq!(
        format!("{view:?}"),
        format!("{:?}", EventView::from_event(&decoded)),
        "legacy migration disagrees"
    );
}

/// A timestamp Go's protojson refuses: nanos outside 0..=999,999,999, or seconds outside
/// 0001-01-01T00:00:00Z ..= 9999-12-31T23:59:59Z.
fn has_invalid_timestamp(event: &Event) -> bool {
    event.timestamp.as_ref().is_some_and(|ts| {
        !(0..=999_999_999).contains(&ts.nanos)
            || !(-62_135_596_800..=253_402_300_799).contains(&ts.seconds)
    })
}

/// A Struct value Go's protojson refuses: a non-finite number, or a Value with no kind set.
fn has_non_finite_struct_number(event: &Event) -> bool {
    fn non_finite(value: &prost_types::Value) -> bool {
        use prost_types::value::Kind;
        match &value.kind {
            None => true,
            Some(Kind::NumberValue(n)) => !n.is_finite(),
            Some(Kind::StructValue(s)) => s.fields.values().any(non_finite),
            Some(Kind::ListValue(l)) => l.values.iter().any(non_finite),
            _ => false,
        }
    }
    event
        .parameters
        .as_ref()
        .and_then(|p| p.private_metadata.as_ref())
        .is_some_and(|s| s.fields.values().any(non_finite))
}

/// The memory budget's reading of a request body: gRPC frames, each message skimmed
/// (`server::skim`) to price it before it is decoded, its bytes arriving in chunks of any size.
///
/// The first byte picks a chunk size; the rest is the request body, read as gRPC frames (5-byte
/// headers, each followed by its declared length). Properties, for every complete message: the
/// skim's verdict and shape are the same whatever the chunking; and when prost decodes the
/// message, the skim accepted it and counted at least its events (the budget never prices a
/// message below what decoding it holds).
pub fn grpc_framing(data: &[u8]) {
    let Some((&chunk, body)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk) + 1;
    for message in frames(body) {
        let whole = skim(message, message.len().max(1));
        assert_eq!(skim(message, chunk), whole, "chunks of {chunk}");
        if let Ok(decoded) = RecordEventsRequest::decode(message) {
            let events = match decoded.payload {
                Some(Payload::Events(payload)) => payload.events.len(),
                _ => 0,
            };
            match &whole {
                Ok(shape) => assert!(
                    shape.events >= events,
                    "the skim counted {} events, decoding found {events}",
                    shape.events
                ),
                Err(err) => assert!(
                    matches!(err, SkimError::Malformed(_)) && may_hold_group(message),
                    "prost decodes what the skim refuses: {err}"
                ),
            }
        }
    }
}

/// The complete messages of a gRPC-framed body, read plainly.
fn frames(body: &[u8]) -> Vec<&[u8]> {
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(header) = body.get(at..at + 5) {
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let Some(message) = body.get(at + 5..(at + 5).saturating_add(len)) else {
            break;
        };
        found.push(message);
        at += 5 + len;
    }
    found
}

fn skim(message: &[u8], chunk: usize) -> Result<Shape, SkimError> {
    let mut skim = Skim::new(Root::RecordEventsRequest, Some(message.len()), usize::MAX);
    for piece in message.chunks(chunk) {
        skim.feed(piece)?;
    }
    skim.finish(message.len())
}

/// Whether the message may hold a field of the group wire types (3, 4): prost skips such
/// unknown fields, the skim refuses them (no sender writes groups in a proto3 protocol).
fn may_hold_group(message: &[u8]) -> bool {
    message.windows(1).any(|byte| matches!(byte[0] & 7, 3 | 4))
}

/// Where the seed inputs come from: the protocol fixtures of the repository.
pub const TESTDATA_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata");

/// Findings that once broke a target, kept as regression inputs: `fuzz/regressions/<target>/`.
pub const REGRESSIONS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/regressions");

/// The seed inputs of `target`, named: built from `testdata/` (wire fixtures of every protocol
/// shape) and from the test kit's events and licenses, in each target's input format.
pub fn seeds(target: &str) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let fixtures = protobuf_fixtures()?;
    let mut seeds = Vec::new();
    match target {
        "license_key" => {
            let pair = fuzz_key_pair();
            let specs = [
                ("current", LicenseSpec::default()),
                ("v1", LicenseSpec::original_v1_fixture()),
            ];
            for (name, spec) in specs {
                for (format, mode) in [
                    (SignatureFormat::SshRsa, 1u8),
                    (SignatureFormat::RsaSha256, 3),
                    (SignatureFormat::RsaSha512, 5),
                ] {
                    let key = pair.mint(&spec, format);
                    seeds.push((
                        format!("{name}-{}-key", format.ssh_name()),
                        prefixed(0, key.as_bytes()),
                    ));
                    seeds.push((
                        format!("{name}-{}-info", format.ssh_name()),
                        prefixed(mode, &spec.info_json()),
                    ));
                }
            }
            seeds.push(("empty-key".into(), vec![0]));
            seeds.push(("whitespace-key".into(), prefixed(0, b" \n\t ")));
        }
        "record_events" => {
            let requests = [
                (
                    "unlicensed-metadata",
                    metadata_request(unlicensed_metadata("fuzz-instance")),
                ),
                (
                    "managed-metadata",
                    metadata_request(managed_metadata("fuzz-service")),
                ),
                (
                    "licensed-metadata",
                    metadata_request(licensed_metadata(
                        &fuzz_key_pair().mint(&LicenseSpec::default(), SignatureFormat::SshRsa),
                    )),
                ),
                (
                    "events",
                    events_request(vec![
                        rich_event(),
                        simple_event("fuzz-1"),
                        simple_event("fuzz-1"),
                    ]),
                ),
                (
                    "private-metadata-flags",
                    events_request(vec![event_with_private_flags()]),
                ),
            ];
            for (name, request) in requests {
                seeds.push((name.to_string(), request.encode_to_vec()));
            }
            seeds.extend(fixtures);
        }
        "json_differential" => {
            seeds.push(("rich-event".into(), rich_event().encode_to_vec()));
            seeds.push((
                "simple-event".into(),
                simple_event("fuzz-1").encode_to_vec(),
            ));
            seeds.push((
                "private-metadata-flags".into(),
                event_with_private_flags().encode_to_vec(),
            ));
            seeds.extend(fixtures);
        }
        "grpc_framing" => {
            let mut body = Vec::new();
            for (_, message) in &fixtures {
                body.push(0);
                body.extend_from_slice(
                    &u32::try_from(message.len())
                        .unwrap_or(u32::MAX)
                        .to_be_bytes(),
                );
                body.extend_from_slice(message);
            }
            for chunk in [0u8, 1, 4, 5, 6, 63, 255] {
                seeds.push((
                    format!("fixtures-in-chunks-of-{}", u16::from(chunk) + 1),
                    prefixed(chunk, &body),
                ));
            }
            seeds.push(("empty-message".into(), vec![2, 0, 0, 0, 0, 0]));
            seeds.push((
                "huge-declared-length".into(),
                vec![2, 1, 255, 255, 255, 255, 7],
            ));
        }
        _ => {}
    }
    Ok(seeds)
}

/// The saved findings of `target`, named by file.
pub fn regressions(target: &str) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    read_dir_files(&std::path::Path::new(REGRESSIONS_DIR).join(target))
}

fn protobuf_fixtures() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut fixtures = read_dir_files(&std::path::Path::new(TESTDATA_DIR).join("backcompat"))?;
    fixtures.retain(|(name, _)| name.ends_with(".pb"));
    Ok(fixtures)
}

fn read_dir_files(dir: &std::path::Path) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            let name = entry.file_name().to_string_lossy().into_owned();
            files.push((name, std::fs::read(entry.path())?));
        }
    }
    files.sort();
    Ok(files)
}

fn prefixed(first: u8, rest: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(rest.len() + 1);
    bytes.push(first);
    bytes.extend_from_slice(rest);
    bytes
}

fn metadata_request(metadata: RecordEventsRequestMetadata) -> RecordEventsRequest {
    RecordEventsRequest {
        payload: Some(Payload::Metadata(metadata)),
    }
}

fn events_request(events: Vec<Event>) -> RecordEventsRequest {
    RecordEventsRequest {
        payload: Some(Payload::Events(
            telemetry_gateway_proto::v1::record_events_request::EventsPayload { events },
        )),
    }
}

/// An event whose metadata announces private metadata with keys at and over Pub/Sub's limits.
fn event_with_private_flags() -> Event {
    let mut event = simple_event("fuzz-flags");
    let parameters = event.parameters.get_or_insert_with(Default::default);
    let long = format!("recordsPrivateMetadata{}", "k".repeat(250));
    parameters.metadata.insert(long, 1.0);
    for i in 0..120 {
        parameters
            .metadata
            .insert(format!("recordsPrivateMetadata{i}"), 1.0);
    }
    event
}
