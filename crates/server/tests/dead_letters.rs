//! Dead letters at the service: managed services' refused events (told the truth, not
//! acknowledged) are dead-lettered too, a payload abandoned by its sender writes none, and a
//! full queue loses dead letters without touching the acknowledgement.

use std::sync::Arc;
use std::time::Duration;
use telemetry_gateway_proto::wire::RawEvents;

use telemetry_gateway_auth::LicenseVerifier;
use telemetry_gateway_server::{
    DeadLetterOptions, DeadLetters, EventGateway, EventPolicy, Metrics, NotConfigured, Source,
    SourceKind,
};
use telemetry_gateway_sink::{FailureCause, PublishOutcome};
use telemetry_gateway_testkit::RecordingSink;
use telemetry_gateway_testkit::events::{managed_metadata, simple_event};

fn managed() -> Source {
    Source::new(
        SourceKind::ManagedService {
            service_id: "svc".into(),
            environment: None,
        },
        &managed_metadata("svc"),
    )
}

/// A gateway over `sink` whose dead letters go to the returned recording sink.
fn gateway(sink: RecordingSink, destination: RecordingSink) -> (EventGateway, Arc<RecordingSink>) {
    let destination = Arc::new(destination);
    let metrics = Metrics::global();
    let dead_letters = DeadLetters::start(
        destination.clone(),
        DeadLetterOptions::default(),
        metrics.clone(),
    );
    let gateway = EventGateway::new(
        Arc::new(sink),
        LicenseVerifier::production(),
        Arc::new(NotConfigured),
        EventPolicy::default(),
    )
    .with_metrics(metrics)
    .with_dead_letters(Arc::new(dead_letters));
    (gateway, destination)
}

async fn records(destination: &RecordingSink, n: usize) -> Vec<serde_json::Value> {
    for _ in 0..200 {
        if destination.published().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    destination
        .published()
        .iter()
        .map(|record| serde_json::from_slice(&record.payload).expect("JSON"))
        .collect()
}

#[tokio::test]
async fn a_managed_services_refused_events_are_dead_lettered_though_not_acknowledged() {
    let sink = RecordingSink::with_outcome(|event| {
        if event.id == "refused-by-sink" {
            PublishOutcome::permanent(FailureCause::Rejected, "invalid row")
        } else {
            PublishOutcome::Delivered
        }
    });
    let (gateway, destination) = gateway(sink, RecordingSink::new());
    let mut invalid = simple_event("invalid");
    invalid.timestamp = None;
    let summary = gateway
        .process_payload(
            &managed(),
            RawEvents::from_events(&[simple_event("ok"), invalid, simple_event("refused-by-sink")]),
        )
        .await
        .expect("events decode");
    assert_eq!(summary.succeeded, ["ok"]);
    let records = records(&destination, 2).await;
    let reasons: Vec<(&str, &str)> = records
        .iter()
        .map(|r| {
            (
                r["event_id"].as_str().expect("id"),
                r["reason"].as_str().expect("reason"),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [("invalid", "invalid"), ("refused-by-sink", "rejected")]
    );
    assert_eq!(records[0]["source"], "svc");
    assert_eq!(records[1]["message"], "invalid row");
    assert_eq!(records[1]["event_json"]["id"], "refused-by-sink");
}

#[tokio::test]
async fn a_payload_abandoned_by_its_sender_writes_no_dead_letters() {
    let sink = RecordingSink::new().with_delay(Duration::from_secs(30));
    let (gateway, destination) = gateway(sink, RecordingSink::new());
    let mut invalid = simple_event("invalid");
    invalid.feature = String::new();
    let summary = gateway
        .process_payload_until(
            &managed(),
            RawEvents::from_events(&[simple_event("slow"), invalid]),
            std::future::ready(()),
        )
        .await
        .expect("events decode");
    assert!(summary.succeeded.is_empty());
    assert!(records(&destination, 1).await.is_empty());
}

#[tokio::test]
async fn a_stuck_destination_fills_the_queue_and_acknowledgements_go_on() {
    // The destination never answers: the queue (at its smallest, one record cap) fills up.
    let stuck = RecordingSink::new().with_delay(Duration::from_secs(3600));
    let destination = Arc::new(stuck);
    let dead_letters = DeadLetters::start(
        destination.clone(),
        DeadLetterOptions {
            max_record_bytes: 0,
            queue_bytes: 0,
            ..DeadLetterOptions::default()
        },
        Metrics::global(),
    );
    let gateway = EventGateway::new(
        Arc::new(RecordingSink::new()),
        LicenseVerifier::production(),
        Arc::new(NotConfigured),
        EventPolicy::default(),
    )
    .with_dead_letters(Arc::new(dead_letters));
    let source = Source::new(
        SourceKind::UnlicensedInstance {
            instance_id: "i".into(),
            external_url: String::new(),
        },
        &telemetry_gateway_testkit::events::unlicensed_metadata("i"),
    );
    for round in 0..50 {
        let mut invalid = simple_event(format!("invalid-{round}"));
        invalid.feature = String::new();
        let summary = tokio::time::timeout(
            Duration::from_secs(10),
            gateway.process_payload(
                &source,
                RawEvents::from_events(&[invalid, simple_event(format!("ok-{round}"))]),
            ),
        )
        .await
        .expect("never waits for the dead-letter destination")
        .expect("events decode");
        assert_eq!(summary.succeeded.len(), 2);
    }
    assert!(destination.in_progress() <= 1);
}
