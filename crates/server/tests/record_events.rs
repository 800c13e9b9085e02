//! Every rule of the RecordEvents stream (`docs/compatibility.md` §2), over a real socket with a
//! tonic client.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use prost_types::value::Kind;
use prost_types::{Struct, Value};
use telemetry_gateway_proto::v1::{Identifier, RecordEventsRequest, RecordEventsRequestMetadata};
use telemetry_gateway_server::{EventPolicy, ServerOptions};
use telemetry_gateway_sink::{FailureCause, PublishOutcome};
use telemetry_gateway_testkit::client::{events_message, metadata_message};
use telemetry_gateway_testkit::events::{
    managed_metadata, oversized_event, simple_event, simple_events, unlicensed_metadata,
};
use telemetry_gateway_testkit::{RecordingSink, record_events};
use tonic::Code;

use support::{AllowAll, Setup, TestGateway, payload_json};

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test]
async fn each_payload_gets_exactly_one_response_listing_its_ids() {
    let sink = Arc::new(RecordingSink::new());
    let gateway = TestGateway::start(sink.clone()).await;
    let responses = record_events(
        &mut gateway.client().await,
        vec![
            metadata_message(unlicensed_metadata("instance-1")),
            events_message(simple_events("a", 100)),
            events_message(simple_events("b", 100)),
            events_message(simple_events("c", 100)),
        ],
    )
    .await
    .expect("the stream ends OK at EOF");
    assert_eq!(responses.len(), 3);
    assert_eq!(responses[0].succeeded_events, ids("a", 100));
    assert_eq!(responses[1].succeeded_events, ids("b", 100));
    assert_eq!(responses[2].succeeded_events, ids("c", 100));
    assert_eq!(sink.delivered().len(), 300);
}

#[tokio::test]
async fn metadata_twice_is_invalid_argument() {
    let gateway = TestGateway::start(Arc::new(RecordingSink::new())).await;
    let status = record_events(
        &mut gateway.client().await,
        vec![
            metadata_message(unlicensed_metadata("instance-1")),
            metadata_message(unlicensed_metadata("instance-1")),
        ],
    )
    .await
    .expect_err("a second metadata message ends the stream");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "received metadata more than once");
}

#[tokio::test]
async fn events_before_metadata_are_invalid_argument() {
    let sink = Arc::new(RecordingSink::new());
    let gateway = TestGateway::start(sink.clone()).await;
    let status = record_events(
        &mut gateway.client().await,
        vec![events_message(simple_events("a", 1))],
    )
    .await
    .expect_err("events before metadata end the stream");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "got events when metadata not yet received"
    );
    assert!(sink.published().is_empty());
}

#[tokio::test]
async fn unlicensed_instance_requires_an_instance_id() {
    let gateway = TestGateway::start(Arc::new(RecordingSink::new())).await;
    let status = record_events(
        &mut gateway.client().await,
        vec![metadata_message(unlicensed_metadata(""))],
    )
    .await
    .expect_err("no instance ID");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "instance_id is required for unlicensed instance"
    );
}

#[tokio::test]
async fn managed_service_requires_a_service_id() {
    let gateway = TestGateway::start(Arc::new(RecordingSink::new())).await;
    let status = record_events(
        &mut gateway.client().await,
        vec![metadata_message(managed_metadata(""))],
    )
    .await
    .expect_err("no service ID");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "service_id is required for managed services"
    );
}

#[tokio::test]
async fn managed_service_without_sams_configuration_is_unauthenticated() {
    let gateway = TestGateway::start(Arc::new(RecordingSink::new())).await;
    let status = record_events(
        &mut gateway.client().await,
        vec![metadata_message(managed_metadata("my-service"))],
    )
    .await
    .expect_err("SAMS is not configured");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status
            .message()
            .contains("TELEMETRY_GATEWAY_SAMS_CLIENT_ID"),
        "the message says what is missing: {}",
        status.message()
    );
}

#[tokio::test]
async fn an_identifier_without_a_kind_is_unimplemented() {
    let gateway = TestGateway::start(Arc::new(RecordingSink::new())).await;
    let metadata = RecordEventsRequestMetadata {
        request_id: "r".into(),
        identifier: Some(Identifier { identifier: None }),
    };
    let status = record_events(
        &mut gateway.client().await,
        vec![metadata_message(metadata)],
    )
    .await
    .expect_err("unsupported identifier");
    assert_eq!(status.code(), Code::Unimplemented);
    assert_eq!(status.message(), "unsupported identifier type");
}

#[tokio::test]
async fn a_missing_identifier_is_unimplemented_not_a_crash() {
    let gateway = TestGateway::start(Arc::new(RecordingSink::new())).await;
    let metadata = RecordEventsRequestMetadata {
        request_id: "r".into(),
        identifier: None,
    };
    let status = record_events(
        &mut gateway.client().await,
        vec![metadata_message(metadata)],
    )
    .await
    .expect_err("unsupported identifier");
    assert_eq!(status.code(), Code::Unimplemented);
    assert_eq!(status.message(), "unsupported identifier type");
}

#[tokio::test]
async fn messages_without_a_payload_are_ignored() {
    let sink = Arc::new(RecordingSink::new());
    let gateway = TestGateway::start(sink.clone()).await;
    let responses = record_events(
        &mut gateway.client().await,
        vec![
            RecordEventsRequest { payload: None },
            metadata_message(unlicensed_metadata("instance-1")),
            RecordEventsRequest { payload: None },
            events_message(simple_events("a", 2)),
        ],
    )
    .await
    .expect("empty messages are skipped");
    assert_eq!(responses.len(), 1);
    assert_eq!(responses[0].succeeded_events, ids("a", 2));
}

#[tokio::test]
async fn a_failed_publish_leaves_ids_out_and_the_stream_goes_on() {
    let sink = Arc::new(RecordingSink::with_outcome(|event| {
        if event.id.ends_with("-1") {
            PublishOutcome::retryable(FailureCause::Unavailable, "topic unavailable")
        } else {
            PublishOutcome::Delivered
        }
    }));
    let gateway = TestGateway::start(sink.clone()).await;
    let responses = record_events(
        &mut gateway.client().await,
        vec![
            metadata_message(unlicensed_metadata("instance-1")),
            events_message(simple_events("a", 3)),
            events_message(simple_events("b", 3)),
        ],
    )
    .await
    .expect("publish failures never end the stream");
    assert_eq!(responses[0].succeeded_events, vec!["a-0", "a-2"]);
    assert_eq!(responses[1].succeeded_events, vec!["b-0", "b-2"]);
}

#[tokio::test]
async fn a_sink_that_fails_everything_gets_empty_responses() {
    let sink = Arc::new(RecordingSink::with_outcome(|_| {
        PublishOutcome::retryable(FailureCause::Unavailable, "down")
    }));
    let gateway = TestGateway::start(sink).await;
    let responses = record_events(
        &mut gateway.client().await,
        vec![
            metadata_message(unlicensed_metadata("instance-1")),
            events_message(simple_events("a", 5)),
        ],
    )
    .await
    .expect("the stream survives");
    assert_eq!(responses.len(), 1);
    assert!(responses[0].succeeded_events.is_empty());
}

#[tokio::test]
async fn legacy_metadata_is_migrated_before_publishing() {
    let sink = Arc::new(RecordingSink::new());
    let gateway = TestGateway::start(sink.clone()).await;
    let mut event = simple_event("legacy");
    let parameters = event
        .parameters
        .as_mut()
        .expect("simple events have parameters");
    parameters.metadata = BTreeMap::from([("bar".into(), 456.0), ("foo".into(), 1.5)]);
    parameters.legacy_metadata = BTreeMap::from([("foo".into(), 123)]);
    record_events(
        &mut gateway.client().await,
        vec![
            metadata_message(unlicensed_metadata("i")),
            events_message(vec![event]),
        ],
    )
    .await
    .expect("accepted");
    let published = payload_json(&sink.delivered()[0]);
    assert_eq!(
        published["event"]["parameters"],
        serde_json::json!({"version": 1, "metadata": {"bar": 456, "foo": 123}})
    );
}

#[tokio::test]
async fn invalid_events_from_instances_are_acknowledged_but_not_published() {
    let sink = Arc::new(RecordingSink::new());
    let gateway = TestGateway::start(sink.clone()).await;
    let mut bad_feature = simple_event("bad-feature");
    bad_feature.feature = "Not_Valid".into();
    let mut no_timestamp = simple_event("no-timestamp");
    no_timestamp.timestamp = None;
    let mut no_id = simple_event("");
    no_id.id.clear();
    let responses = record_events(
        &mut gateway.client().await,
        vec![
            metadata_message(unlicensed_metadata("i")),
            events_message(vec![
                simple_event("ok-1"),
                bad_feature,
                no_timestamp,
                no_id,
                simple_event("ok-2"),
            ]),
        ],
    )
    .await
    .expect("accepted");
    assert_eq!(
        responses[0].succeeded_events,
        vec!["ok-1", "bad-feature", "no-timestamp", "", "ok-2"],
        "non-retryable failures are reported as succeeded so instances stop retrying"
    );
    let published: Vec<String> = sink.published().into_iter().map(|e| e.id).collect();
    assert_eq!(published, vec!["ok-1", "ok-2"]);
}

#[tokio::test]
async fn invalid_events_from_managed_services_are_reported_as_failed() {
    let sink = Arc::new(RecordingSink::new());
    let gateway = TestGateway::start_with(Setup {
        sink: sink.clone(),
        managed: Arc::new(AllowAll),
        ..Setup::default()
    })
    .await;
    let mut bad = simple_event("bad");
    bad.action = "x".into();
    let responses = record_events(
        &mut gateway.client().await,
        vec![
            metadata_message(managed_metadata("my-service")),
            events_message(vec![simple_event("ok"), bad]),
        ],
    )
    .await
    .expect("accepted");
    assert_eq!(responses[0].succeeded_events, vec!["ok"]);
    assert_eq!(
        sink.published()[0].attributes["publisher.source"],
        "my-service"
    );
}

#[tokio::test]
async fn events_that_cannot_be_rendered_are_acknowledged_but_not_published() {
    let sink = Arc::new(RecordingSink::new());
    let gateway = TestGateway::start(sink.clone()).await;
    let mut nan = simple_event("nan-in-struct");
    nan.parameters
        .as_mut()
        .expect("parameters")
        .private_metadata = Some(Struct {
        fields: BTreeMap::from([(
            "x".into(),
            Value {
                kind: Some(Kind::NumberValue(f64::NAN)),
            },
        )]),
    });
    let responses = record_events(
        &mut gateway.client().await,
        vec![
            metadata_message(unlicensed_metadata("i")),
            events_message(vec![nan, simple_event("fine")]),
        ],
    )
    .await
    .expect("accepted");
    assert_eq!(responses[0].succeeded_events, vec!["nan-in-struct", "fine"]);
    let published: Vec<String> = sink.published().into_iter().map(|e| e.id).collect();
    assert_eq!(published, vec!["fine"]);
}

#[tokio::test]
async fn oversized_events_are_dropped_and_acknowledged() {
    let sink = Arc::new(RecordingSink::new());
    let gateway = TestGateway::start(sink.clone()).await;
    let huge = oversized_event("huge");
    let responses = record_events(
        &mut gateway.client().await,
        vec![
            metadata_message(unlicensed_metadata("i")),
            events_message(vec![simple_event("small"), huge]),
        ],
    )
    .await
    .expect("accepted");
    assert_eq!(responses[0].succeeded_events, vec!["small", "huge"]);
    let published: Vec<String> = sink.published().into_iter().map(|e| e.id).collect();
    assert_eq!(published, vec!["small"]);
}

#[tokio::test]
async fn messages_over_the_receive_limit_are_resource_exhausted() {
    let gateway = TestGateway::start_with(Setup {
        options: ServerOptions {
            max_receive_message_bytes: 64 * 1024,
            ..ServerOptions::default()
        },
        ..Setup::default()
    })
    .await;
    let mut big = simple_event("big");
    big.feature = "cody".into();
    big.parameters
        .as_mut()
        .expect("parameters")
        .private_metadata = Some(Struct {
        fields: BTreeMap::from([(
            "blob".into(),
            Value {
                kind: Some(Kind::StringValue("x".repeat(128 * 1024))),
            },
        )]),
    });
    let status = record_events(
        &mut gateway.client().await,
        vec![
            metadata_message(unlicensed_metadata("i")),
            events_message(vec![big]),
        ],
    )
    .await
    .expect_err("too large");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
}

#[tokio::test]
async fn duplicate_ids_in_a_payload_are_published_and_acknowledged_once() {
    let sink = Arc::new(RecordingSink::new());
    let gateway = TestGateway::start(sink.clone()).await;
    let responses = record_events(
        &mut gateway.client().await,
        vec![
            metadata_message(unlicensed_metadata("i")),
            events_message(vec![
                simple_event("x"),
                simple_event("y"),
                simple_event("x"),
                simple_event("x"),
            ]),
        ],
    )
    .await
    .expect("accepted");
    assert_eq!(responses[0].succeeded_events, vec!["x", "y"]);
    let published: Vec<String> = sink.published().into_iter().map(|e| e.id).collect();
    assert_eq!(published, vec!["x", "y"]);
}

#[tokio::test]
async fn an_empty_payload_gets_an_empty_response() {
    let sink = Arc::new(RecordingSink::new());
    let gateway = TestGateway::start(sink.clone()).await;
    let responses = record_events(
        &mut gateway.client().await,
        vec![
            metadata_message(unlicensed_metadata("i")),
            events_message(vec![]),
        ],
    )
    .await
    .expect("accepted");
    assert_eq!(responses.len(), 1);
    assert!(responses[0].succeeded_events.is_empty());
    assert_eq!(sink.batches(), 0, "nothing is handed to the sink");
}

#[tokio::test]
async fn succeeded_events_keep_the_input_order() {
    let sink = Arc::new(RecordingSink::with_outcome(|event| {
        if event.id.starts_with("fail") {
            PublishOutcome::retryable(FailureCause::Unavailable, "no")
        } else {
            PublishOutcome::Delivered
        }
    }));
    let gateway = TestGateway::start(sink).await;
    let mut invalid = simple_event("invalid");
    invalid.feature.clear();
    let order = ["z", "fail-1", "a", "invalid", "m", "fail-2", "b"];
    let events = order
        .iter()
        .map(|id| {
            if *id == "invalid" {
                invalid.clone()
            } else {
                simple_event(*id)
            }
        })
        .collect();
    let responses = record_events(
        &mut gateway.client().await,
        vec![
            metadata_message(unlicensed_metadata("i")),
            events_message(events),
        ],
    )
    .await
    .expect("accepted");
    assert_eq!(
        responses[0].succeeded_events,
        vec!["z", "a", "invalid", "m", "b"]
    );
}

#[tokio::test]
async fn compressed_requests_are_accepted() {
    use tonic::codec::CompressionEncoding;
    for encoding in [CompressionEncoding::Gzip, CompressionEncoding::Zstd] {
        let sink = Arc::new(RecordingSink::new());
        let gateway = TestGateway::start(sink.clone()).await;
        let mut client = gateway
            .client()
            .await
            .send_compressed(encoding)
            .accept_compressed(encoding);
        let responses = record_events(
            &mut client,
            vec![
                metadata_message(unlicensed_metadata("i")),
                events_message(simple_events("z", 50)),
            ],
        )
        .await
        .expect("compressed streams work");
        assert_eq!(responses[0].succeeded_events.len(), 50, "{encoding:?}");
    }
}

#[tokio::test]
async fn many_concurrent_streams_are_each_answered_in_full() {
    let sink = Arc::new(RecordingSink::new());
    let gateway = TestGateway::start(sink.clone()).await;
    let mut tasks = Vec::new();
    for stream in 0..16 {
        let mut client = gateway.client().await;
        tasks.push(tokio::spawn(async move {
            let prefix = format!("s{stream}");
            let responses = record_events(
                &mut client,
                vec![
                    metadata_message(unlicensed_metadata(&prefix)),
                    events_message(simple_events(&format!("{prefix}-a"), 20)),
                    events_message(simple_events(&format!("{prefix}-b"), 20)),
                ],
            )
            .await
            .expect("accepted");
            responses
                .iter()
                .map(|r| r.succeeded_events.len())
                .sum::<usize>()
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("task completes");
    }
    assert_eq!(total, 16 * 40);
    assert_eq!(sink.delivered().len(), 16 * 40);
}

#[tokio::test]
async fn license_tags_limit_export_to_cody_when_enforced() {
    use telemetry_gateway_testkit::events::licensed_metadata;
    use telemetry_gateway_testkit::license::{LicenseKeyPair, LicenseSpec, SignatureFormat};
    let key = LicenseKeyPair::shared().mint(
        &LicenseSpec {
            tags: vec!["disable-telemetry-events-export".into()],
            ..LicenseSpec::default()
        },
        SignatureFormat::SshRsa,
    );
    let sink = Arc::new(RecordingSink::new());
    let gateway = TestGateway::start_with(Setup {
        sink: sink.clone(),
        policy: EventPolicy {
            enforce_export_tags: true,
            ..EventPolicy::default()
        },
        ..Setup::default()
    })
    .await;
    let mut search = simple_event("search");
    search.feature = "search".into();
    let mut cody_sub = simple_event("cody-sub");
    cody_sub.feature = "cody.completions".into();
    let mut codyish = simple_event("codyish");
    codyish.feature = "codyish".into();
    let responses = record_events(
        &mut gateway.client().await,
        vec![
            metadata_message(licensed_metadata(&key)),
            events_message(vec![search, cody_sub, codyish]),
        ],
    )
    .await
    .expect("accepted");
    assert_eq!(
        responses[0].succeeded_events,
        vec!["search", "cody-sub", "codyish"]
    );
    let published: Vec<String> = sink.published().into_iter().map(|e| e.id).collect();
    assert_eq!(published, vec!["cody-sub"]);
}

#[tokio::test]
async fn license_keys_can_be_fingerprinted_in_published_metadata() {
    use telemetry_gateway_testkit::events::licensed_metadata;
    use telemetry_gateway_testkit::license::{LicenseKeyPair, LicenseSpec, SignatureFormat};
    let key = LicenseKeyPair::shared().mint(&LicenseSpec::default(), SignatureFormat::RsaSha256);
    let sink = Arc::new(RecordingSink::new());
    let gateway = TestGateway::start_with(Setup {
        sink: sink.clone(),
        policy: EventPolicy {
            fingerprint_license_keys: true,
            ..EventPolicy::default()
        },
        ..Setup::default()
    })
    .await;
    record_events(
        &mut gateway.client().await,
        vec![
            metadata_message(licensed_metadata(&key)),
            events_message(simple_events("f", 1)),
        ],
    )
    .await
    .expect("accepted");
    let published = payload_json(&sink.delivered()[0]);
    let shown = published["metadata"]["identifier"]["licensedInstance"]["licenseKey"]
        .as_str()
        .expect("a string");
    assert_eq!(shown, telemetry_gateway_auth::license_key_fingerprint(&key));
    assert!(!String::from_utf8_lossy(&sink.delivered()[0].payload).contains(&key));
}
