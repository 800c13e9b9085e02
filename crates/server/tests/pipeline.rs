//! The pure pipeline, table-tested against the original's own test cases (`docs/compatibility.md`
//! §9).

use std::collections::BTreeMap;
use std::sync::Arc;

use prost_types::Struct;
use telemetry_gateway_proto::v1::{Event, EventParameters};
use telemetry_gateway_proto::wire::RawEvents;
use telemetry_gateway_server::pipeline::{
    AttributeNeed, BatchResult, EventPolicy, PreparedPayload, Summary, attributes, prepare_payload,
    summarize,
};
use telemetry_gateway_server::{Source, SourceKind};
use telemetry_gateway_sink::{
    DiscardSink, EventSink, FailureCause, FanoutSink, FileSink, FileSinkConfig, LogSink, Measured,
    PublishOutcome, SinkMetrics,
};
use telemetry_gateway_testkit::events::{
    managed_metadata, oversized_event, simple_event, simple_events, unlicensed_metadata,
};

fn unlicensed() -> Source {
    Source::new(
        SourceKind::UnlicensedInstance {
            instance_id: "i".into(),
            external_url: String::new(),
        },
        &unlicensed_metadata("i"),
    )
}

fn managed() -> Source {
    Source::new(
        SourceKind::ManagedService {
            service_id: "svc".into(),
            environment: None,
        },
        &managed_metadata("svc"),
    )
}

fn event_with(feature: &str, action: &str, parameters: Option<EventParameters>) -> Event {
    Event {
        feature: feature.into(),
        action: action.into(),
        parameters,
        ..Event::default()
    }
}

fn source_attribute(attrs: &[(&str, &str)]) -> BTreeMap<String, String> {
    attrs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn attributes_match_the_original_cases() {
    let basic = [
        ("event.action", "chat"),
        ("event.feature", "cody.feature"),
        ("event.hasPrivateMetadata", "false"),
        ("publisher.source", "unlicensed_instance"),
    ];
    // "basic"
    assert_eq!(
        attributes(&event_with("cody.feature", "chat", None), &unlicensed()),
        source_attribute(&basic)
    );

    // "has privateMetadata": an empty Struct counts.
    let with_private = EventParameters {
        private_metadata: Some(Struct::default()),
        ..Default::default()
    };
    let mut expected = source_attribute(&basic);
    expected.insert("event.hasPrivateMetadata".into(), "true".into());
    assert_eq!(
        attributes(
            &event_with("cody.feature", "chat", Some(with_private.clone())),
            &unlicensed()
        ),
        expected
    );

    // "recordsPrivateMetadataTranscript"
    let transcript = EventParameters {
        metadata: BTreeMap::from([("recordsPrivateMetadataTranscript".into(), 1.0)]),
        ..with_private
    };
    let mut expected_transcript = expected.clone();
    expected_transcript.insert(
        "event.recordsPrivateMetadataTranscript".into(),
        "true".into(),
    );
    assert_eq!(
        attributes(
            &event_with("cody.feature", "chat", Some(transcript)),
            &unlicensed()
        ),
        expected_transcript
    );

    // "metadata that don't get added to attributes"
    let others = EventParameters {
        metadata: BTreeMap::from([
            ("anotherMetadata".into(), 3.0),
            ("recordTranscript".into(), 1.0),
            ("recordsPrivateMetadata".into(), 1.0),
            ("recordsPrivateMetadataNegative".into(), -1.0),
        ]),
        ..Default::default()
    };
    assert_eq!(
        attributes(
            &event_with("cody.feature", "chat", Some(others)),
            &unlicensed()
        ),
        source_attribute(&basic)
    );
}

#[test]
fn one_character_suffixes_qualify_unlike_the_original() {
    let parameters = EventParameters {
        metadata: BTreeMap::from([("recordsPrivateMetadataX".into(), 1.0)]),
        ..Default::default()
    };
    let attrs = attributes(&event_with("a.b", "cd", Some(parameters)), &unlicensed());
    assert_eq!(
        attrs
            .get("event.recordsPrivateMetadataX")
            .map(String::as_str),
        Some("true")
    );
}

#[test]
fn managed_services_are_published_under_their_service_id() {
    let attrs = attributes(&event_with("a.b", "cd", None), &managed());
    assert_eq!(attrs["publisher.source"], "svc");
}

#[test]
fn attributes_are_built_only_when_a_sink_reads_them() {
    let mut event = simple_event("e1");
    if let Some(parameters) = event.parameters.as_mut() {
        parameters
            .metadata
            .insert("recordsPrivateMetadataTranscript".to_string(), 1.0);
    }
    let events = vec![event];
    let raw = RawEvents::from_events(&events);
    let policy = EventPolicy::default();
    let built = prepare_payload(&raw, &unlicensed(), &policy, AttributeNeed::Build);
    let skipped = prepare_payload(&raw, &unlicensed(), &policy, AttributeNeed::Skip);
    let (Ok(built), Ok(skipped)) = (built, skipped) else {
        panic!("events decode")
    };
    assert_eq!(
        built.events[0].attributes,
        attributes(&events[0], &unlicensed())
    );
    assert_eq!(built.events[0].attributes.len(), 5);
    assert!(skipped.events[0].attributes.is_empty());
    // Everything else is the same.
    let mut without = built.events[0].clone();
    without.attributes.clear();
    assert_eq!(skipped.events[0], without);

    // The file and discard sinks write payloads only; the others, and a fan-out including one
    // of them, read attributes.
    let file_dir = tempfile::tempdir().expect("temporary directory");
    let file = FileSink::open(FileSinkConfig {
        dir: file_dir.path().to_path_buf(),
        ..FileSinkConfig::default()
    })
    .expect("file sink");
    let file: Arc<dyn EventSink> = Arc::new(Measured::new(
        file,
        SinkMetrics::new(&opentelemetry::global::meter("test")),
    ));
    let discard: Arc<dyn EventSink> = Arc::new(DiscardSink::new());
    let log: Arc<dyn EventSink> = Arc::new(LogSink::new());
    assert_eq!(AttributeNeed::of(file.as_ref()), AttributeNeed::Skip);
    assert_eq!(AttributeNeed::of(&discard), AttributeNeed::Skip);
    assert_eq!(AttributeNeed::of(log.as_ref()), AttributeNeed::Build);
    let both = FanoutSink::new(vec![Arc::clone(&file), Arc::clone(&discard)]);
    assert_eq!(AttributeNeed::of(&both), AttributeNeed::Skip);
    let with_log = FanoutSink::new(vec![file, log]);
    assert_eq!(AttributeNeed::of(&with_log), AttributeNeed::Build);
}

fn summarize_with(
    source: &Source,
    events: Vec<Event>,
    outcome: impl Fn(&str) -> PublishOutcome,
) -> telemetry_gateway_server::pipeline::Summary {
    let prepared = prepare(events, source, &EventPolicy::default());
    let outcomes: Vec<PublishOutcome> = prepared.events.iter().map(|e| outcome(&e.id)).collect();
    summarize(prepared, &outcomes, source)
}

/// Prepares `events` as the server does: from their wire bytes.
fn prepare(events: Vec<Event>, source: &Source, policy: &EventPolicy) -> PreparedPayload {
    prepare_payload(
        &RawEvents::from_events(&events),
        source,
        policy,
        AttributeNeed::Build,
    )
    .expect("events decode")
}

/// The summary as a reviewer reads it, for inline snapshots: the result and its message, then
/// each acknowledged, failed and dropped event.
fn digest(summary: &Summary) -> String {
    let mut lines = vec![format!(
        "{:?}: {} ({} submitted, {} duplicates)",
        summary.result,
        summary.result.message(),
        summary.submitted,
        summary.duplicates
    )];
    lines.extend(summary.succeeded.iter().map(|id| format!("ack {id}")));
    lines.extend(summary.failed.iter().map(|failure| {
        let kind = if failure.retryable { "retry" } else { "fail" };
        format!("{kind} {}: {}", failure.id, failure.error)
    }));
    lines.extend(summary.dropped.iter().map(|dropped| {
        format!(
            "drop {} ({:?}): {}",
            dropped.id, dropped.reason, dropped.detail
        )
    }));
    lines.join("\n")
}

#[test]
fn all_failed_is_a_complete_failure() {
    let summary = summarize_with(&unlicensed(), simple_events("id", 5), |_| {
        PublishOutcome::retryable(FailureCause::Unavailable, "event publish failed")
    });
    assert_eq!(summary.result, BatchResult::CompleteFailure);
    assert_eq!(
        summary.result.message(),
        "all events in batch failed to submit"
    );
    assert!(summary.succeeded.is_empty());
    assert_eq!(summary.failed.len(), 5);
    assert!(
        summary
            .failed
            .iter()
            .all(|f| f.error == "event publish failed" && f.retryable)
    );
    assert!(
        summary.failed[0]
            .to_string()
            .contains("feature:\"cody.chat\" action:\"submitted\" id:\"id-0\"")
    );
    insta::assert_snapshot!(digest(&summary), @r"
        CompleteFailure: all events in batch failed to submit (5 submitted, 0 duplicates)
        retry id-0: event publish failed
        retry id-1: event publish failed
        retry id-2: event publish failed
        retry id-3: event publish failed
        retry id-4: event publish failed
    ");
}

#[test]
fn some_failed_is_a_partial_failure() {
    let summary = summarize_with(
        &unlicensed(),
        vec![simple_event("asdf"), simple_event("asdfasdf")],
        |id| {
            if id == "asdf" {
                PublishOutcome::retryable(FailureCause::Unavailable, "oh no")
            } else {
                PublishOutcome::Delivered
            }
        },
    );
    assert_eq!(summary.result, BatchResult::PartialFailure);
    assert_eq!(
        summary.result.message(),
        "some events in batch failed to submit"
    );
    assert_eq!(summary.succeeded, vec!["asdfasdf"]);
    assert_eq!(summary.failed.len(), 1);
    insta::assert_snapshot!(digest(&summary), @r"
        PartialFailure: some events in batch failed to submit (2 submitted, 0 duplicates)
        ack asdfasdf
        retry asdf: oh no
    ");
}

#[test]
fn permanent_failures_are_acknowledged_for_instances_only() {
    let events = vec![
        simple_event("retriable"),
        simple_event("ok"),
        simple_event("unretriable"),
    ];
    let outcome = |id: &str| match id {
        "retriable" => PublishOutcome::retryable(FailureCause::Unavailable, "oh no"),
        "unretriable" => PublishOutcome::permanent(FailureCause::Rejected, "unretriable error"),
        _ => PublishOutcome::Delivered,
    };
    let instance = summarize_with(&unlicensed(), events.clone(), outcome);
    assert_eq!(instance.result, BatchResult::PartialFailure);
    assert_eq!(instance.succeeded, vec!["ok", "unretriable"]);
    assert_eq!(instance.failed.len(), 1);
    assert_eq!(instance.dropped.len(), 1);
    insta::assert_snapshot!(digest(&instance), @r"
        PartialFailure: some events in batch failed to submit (3 submitted, 0 duplicates)
        ack ok
        ack unretriable
        retry retriable: oh no
        drop unretriable (Rejected): unretriable error
    ");

    let service = summarize_with(&managed(), events, outcome);
    assert_eq!(service.succeeded, vec!["ok"]);
    assert_eq!(service.failed.len(), 2);
    assert!(!service.failed[1].retryable);
    insta::assert_snapshot!(digest(&service), @r"
        PartialFailure: some events in batch failed to submit (3 submitted, 0 duplicates)
        ack ok
        retry retriable: oh no
        fail unretriable: unretriable error
    ");
}

#[test]
fn a_batch_of_only_permanent_failures_from_an_instance_is_a_success() {
    let summary = summarize_with(&unlicensed(), simple_events("p", 3), |_| {
        PublishOutcome::permanent(FailureCause::Rejected, "bad")
    });
    assert_eq!(summary.result, BatchResult::Success);
    assert_eq!(summary.succeeded.len(), 3);
    insta::assert_snapshot!(digest(&summary), @r"
        Success: all events in batch submitted successfully (3 submitted, 0 duplicates)
        ack p-0
        ack p-1
        ack p-2
        drop p-0 (Rejected): bad
        drop p-1 (Rejected): bad
        drop p-2 (Rejected): bad
    ");
}

#[test]
fn all_succeeded_including_a_large_set() {
    let summary = summarize_with(&unlicensed(), simple_events("n", 100), |_| {
        PublishOutcome::Delivered
    });
    assert_eq!(summary.result, BatchResult::Success);
    assert_eq!(
        summary.result.message(),
        "all events in batch submitted successfully"
    );
    assert_eq!(
        summary.succeeded,
        (0..100).map(|i| format!("n-{i}")).collect::<Vec<_>>()
    );
    assert!(summary.failed.is_empty());
}

#[test]
fn an_empty_payload_is_not_a_failure() {
    let summary = summarize_with(&unlicensed(), vec![], |_| PublishOutcome::Delivered);
    assert_eq!(summary.result, BatchResult::Success);
    assert_eq!(summary.submitted, 0);
    insta::assert_snapshot!(digest(&summary), @"Success: all events in batch submitted successfully (0 submitted, 0 duplicates)");
}

#[test]
fn a_missing_outcome_is_retryable_never_acknowledged() {
    let source = unlicensed();
    let prepared = prepare(simple_events("m", 2), &source, &EventPolicy::default());
    let summary = summarize(prepared, &[PublishOutcome::Delivered], &source);
    assert_eq!(summary.succeeded, vec!["m-0"]);
    assert_eq!(summary.failed.len(), 1);
    assert!(summary.failed[0].retryable);
    insta::assert_snapshot!(digest(&summary), @r"
        PartialFailure: some events in batch failed to submit (2 submitted, 0 duplicates)
        ack m-0
        retry m-1: no outcome reported by the sink
    ");
}

/// An event that fails validation (no timestamp), with the given ID.
fn invalid_event(id: &str) -> Event {
    Event {
        timestamp: None,
        ..simple_event(id)
    }
}

#[test]
fn a_valid_event_after_an_invalid_one_with_its_id_is_published_and_acknowledged_once() {
    let source = unlicensed();
    let prepared = prepare(
        vec![
            invalid_event("x"),
            simple_event("y"),
            simple_event("x"),
            invalid_event("x"),
        ],
        &source,
        &EventPolicy::default(),
    );
    let published: Vec<&str> = prepared.events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(published, ["y", "x"]);
    let summary = summarize(
        prepared,
        &[PublishOutcome::Delivered, PublishOutcome::Delivered],
        &source,
    );
    assert_eq!(summary.succeeded, ["y", "x"]);
    assert_eq!(summary.dropped.len(), 1, "{summary:?}");
    assert_eq!(summary.duplicates, 1);
}

#[test]
fn the_ndjson_text_holds_each_published_payload_on_its_own_line() {
    let prepared = prepare(
        vec![
            simple_event("a"),
            invalid_event("b"),
            // Rendered, then cut back out of the buffer.
            oversized_event("e"),
            simple_event("c"),
            simple_event("a"),
            invalid_event("d"),
        ],
        &unlicensed(),
        &EventPolicy::default(),
    );
    let published: Vec<&str> = prepared.events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(published, ["a", "c"]);
    let mut lines = Vec::new();
    for event in &prepared.events {
        lines.extend_from_slice(&event.payload);
        lines.push(b'\n');
    }
    assert_eq!(prepared.ndjson, lines);
    // Each payload is the text's own bytes, not a copy of them.
    let mut offset = 0;
    for event in &prepared.events {
        assert!(std::ptr::eq(
            event.payload.as_ptr(),
            prepared.ndjson[offset..].as_ptr()
        ));
        offset += event.payload.len() + 1;
    }
}

#[test]
fn an_id_whose_published_event_failed_is_not_acknowledged_through_an_invalid_twin() {
    let summary = summarize_with(
        &unlicensed(),
        vec![invalid_event("x"), simple_event("x")],
        |_| PublishOutcome::retryable(FailureCause::Unavailable, "unavailable"),
    );
    assert!(summary.succeeded.is_empty(), "{summary:?}");
    assert_eq!(summary.failed.len(), 1);
    assert!(summary.failed[0].retryable);
}

#[test]
fn repeated_invalid_events_with_one_id_are_acknowledged_once() {
    let summary = summarize_with(
        &unlicensed(),
        vec![invalid_event("x"), invalid_event("x")],
        |_| PublishOutcome::Delivered,
    );
    assert_eq!(summary.succeeded, ["x"]);
    assert_eq!(summary.duplicates, 1);
}

#[test]
fn an_event_refused_by_policy_does_not_hide_a_later_allowed_event_with_its_id() {
    let keys = telemetry_gateway_testkit::license::LicenseKeyPair::shared();
    let spec = telemetry_gateway_testkit::license::LicenseSpec {
        tags: vec!["disable-telemetry-events-export".into()],
        ..Default::default()
    };
    let key = keys.mint(
        &spec,
        telemetry_gateway_testkit::license::SignatureFormat::SshRsa,
    );
    let verifier = telemetry_gateway_auth::LicenseVerifier::from_openssh_public_key(
        &keys.public_key_openssh(),
    )
    .expect("verifier");
    let info = verifier.verify(&key).expect("the key verifies").info;
    let source = Source::new(
        SourceKind::LicensedInstance {
            instance_id: "i".into(),
            external_url: String::new(),
            license: Box::new(info),
        },
        &telemetry_gateway_testkit::events::licensed_metadata(&key),
    );
    let policy = EventPolicy {
        enforce_export_tags: true,
        ..EventPolicy::default()
    };
    let refused = Event {
        feature: "search".into(),
        action: "viewed".into(),
        ..simple_event("x")
    };
    let prepared = prepare(vec![refused, simple_event("x")], &source, &policy);
    assert_eq!(prepared.events.len(), 1, "the cody event is published");
    let summary = summarize(
        prepared,
        &[PublishOutcome::retryable(FailureCause::Unavailable, "down")],
        &source,
    );
    assert!(
        summary.succeeded.is_empty(),
        "the ID is not acknowledged while its allowed event is unpublished: {summary:?}"
    );
}
