//! HTTP diagnostics, gRPC health and reflection, all on the gRPC port.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use telemetry_gateway_server::diagnostics::HEALTH_ANSWER_REUSE;
use telemetry_gateway_sink::{EventSink, PreparedEvent, PublishOutcome, SinkError};

use telemetry_gateway_server::ServerOptions;
use telemetry_gateway_testkit::RecordingSink;
use telemetry_gateway_testkit::http::get;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use support::{Setup, TestGateway};

async fn gateway_with_secret(sink: Arc<RecordingSink>, secret: Option<&str>) -> TestGateway {
    TestGateway::start_with(Setup {
        sink,
        options: ServerOptions {
            diagnostics_secret: secret.map(telemetry_gateway_server::Secret::from),
            version: "1.2.3-test".into(),
            ..ServerOptions::default()
        },
        ..Setup::default()
    })
    .await
}

#[tokio::test]
async fn version_is_served_without_authentication() {
    let gateway = gateway_with_secret(Arc::new(RecordingSink::new()), Some("s3cret")).await;
    let response = get(gateway.addr, "/-/version", None)
        .await
        .expect("HTTP/1.1 works");
    assert_eq!(
        (response.status, response.body.as_str()),
        (200, "1.2.3-test")
    );
}

#[tokio::test]
async fn healthz_follows_the_original_authentication_rules() {
    let gateway = gateway_with_secret(Arc::new(RecordingSink::new()), Some("s3cret")).await;
    let cases = [
        (None, 401, "unauthorized"),
        (Some("Bearer wrong"), 401, "unauthorized"),
        (
            Some("Bearer"),
            400,
            "token type missing in Authorization header",
        ),
        (Some("Basic s3cret"), 400, "invalid token scheme Basic"),
        (Some("Bearer s3cret"), 200, "healthz: ok"),
        (Some("bEaReR s3cret"), 200, "healthz: ok"),
    ];
    for (authorization, status, body) in cases {
        let response = get(gateway.addr, "/-/healthz", authorization)
            .await
            .expect("served");
        assert_eq!(
            (response.status, response.body.as_str()),
            (status, body),
            "{authorization:?}"
        );
    }
}

#[tokio::test]
async fn healthz_is_open_without_a_secret_and_reports_the_sink() {
    let sink = Arc::new(RecordingSink::new());
    let gateway = gateway_with_secret(sink.clone(), None).await;
    let healthy = get(gateway.addr, "/-/healthz", None).await.expect("served");
    assert_eq!(
        (healthy.status, healthy.body.as_str()),
        (200, "healthz: ok")
    );

    sink.set_health(Err("topic does not exist".into()));
    // A recent answer is reused for a moment.
    tokio::time::sleep(HEALTH_ANSWER_REUSE + Duration::from_millis(100)).await;
    let unhealthy = get(gateway.addr, "/-/healthz", None).await.expect("served");
    assert_eq!(
        (unhealthy.status, unhealthy.body.as_str()),
        (500, "healthz: recording: topic does not exist")
    );
}

#[tokio::test]
async fn grpc_health_reports_the_service_as_serving() {
    let gateway = TestGateway::start(Arc::new(RecordingSink::new())).await;
    let channel = gateway.channel().await;
    let mut health = HealthClient::new(channel);
    for service in ["", telemetry_gateway_proto::SERVICE_NAME] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health answers");
        assert_eq!(
            response.into_inner().status(),
            ServingStatus::Serving,
            "{service:?}"
        );
    }
}

/// The health and reflection services are outside the memory budget: a request that declares
/// more than a name's worth of bytes is refused at its header, before tonic reserves room for it.
#[tokio::test]
async fn health_and_reflection_refuse_requests_larger_than_a_name() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;

    let gateway = TestGateway::start(Arc::new(RecordingSink::new())).await;
    let channel = gateway.channel().await;
    let long = "x".repeat(32 * 1024);
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: long.clone(),
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(long)),
    };
    // tonic's reflection service ends the stream when its request stream fails: no answer (a
    // request it could read would get one, an error response for an unknown symbol at least).
    let answer = match ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
    {
        Err(status) => Err(status),
        Ok(responses) => responses.into_inner().message().await,
    };
    match answer {
        Ok(None) => {}
        Err(status) => assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}"),
        Ok(Some(response)) => panic!("answered: {response:?}"),
    }

    // A name of ordinary length is still answered on the same connection.
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: telemetry_gateway_proto::SERVICE_NAME.into(),
        })
        .await
        .expect("health answers");
    assert_eq!(response.into_inner().status(), ServingStatus::Serving);
}

#[tokio::test]
async fn reflection_lists_the_gateway_service() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let gateway = TestGateway::start(Arc::new(RecordingSink::new())).await;
    let channel = gateway.channel().await;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection answers")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("a response")
        .expect("one message");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list, got {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&telemetry_gateway_proto::SERVICE_NAME.to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
}

#[tokio::test]
async fn ready_waits_for_the_sink_to_pass_a_health_check_while_starting() {
    let sink = Arc::new(RecordingSink::new());
    sink.set_health(Err("topic does not exist".into()));
    let gateway = gateway_with_secret(sink.clone(), None).await;
    let starting = get(gateway.addr, "/-/ready", None).await.expect("served");
    assert_eq!(
        (starting.status, starting.body.as_str()),
        (503, "not ready: starting: recording: topic does not exist")
    );
    sink.set_health(Ok(()));
    let ready = get(gateway.addr, "/-/ready", None).await.expect("served");
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready"));
    // Once started, a sink outage is for /-/healthz to report: readiness only tracks draining
    // and the memory budget, so a brief outage does not take every instance out of rotation.
    sink.set_health(Err("topic does not exist".into()));
    let still = get(gateway.addr, "/-/ready", None).await.expect("served");
    assert_eq!(still.status, 200);
    let health = get(gateway.addr, "/-/healthz", None).await.expect("served");
    assert_eq!(health.status, 500);
}

/// A sink whose health check takes a while and is counted.
#[derive(Default)]
struct SlowHealthSink {
    checks: AtomicUsize,
}

#[async_trait]
impl EventSink for SlowHealthSink {
    fn name(&self) -> &'static str {
        "slow-health"
    }

    async fn publish(&self, events: &[PreparedEvent]) -> Vec<PublishOutcome> {
        vec![PublishOutcome::Delivered; events.len()]
    }

    async fn health(&self) -> Result<(), SinkError> {
        self.checks.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(())
    }
}

/// A sink whose health check never answers (an unreachable Pub/Sub, say).
struct UnreachableSink;

#[async_trait::async_trait]
impl telemetry_gateway_sink::EventSink for UnreachableSink {
    fn name(&self) -> &'static str {
        "unreachable"
    }

    async fn publish(
        &self,
        events: &[telemetry_gateway_sink::PreparedEvent],
    ) -> Vec<telemetry_gateway_sink::PublishOutcome> {
        telemetry_gateway_sink::PublishOutcome::all_retryable(
            events.len(),
            telemetry_gateway_sink::FailureCause::Unavailable,
            "unreachable",
        )
    }

    async fn health(&self) -> Result<(), telemetry_gateway_sink::SinkError> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_flood_of_healthz_requests_without_a_secret_checks_the_sink_once() {
    let sink = Arc::new(SlowHealthSink::default());
    let gateway = TestGateway::start_with(Setup {
        sink: sink.clone(),
        ..Setup::default()
    })
    .await;
    let requests: Vec<_> = (0..100)
        .map(|_| tokio::spawn(get(gateway.addr, "/-/healthz", None)))
        .collect();
    for request in requests {
        let response = request.await.expect("joined").expect("served");
        assert_eq!(
            (response.status, response.body.as_str()),
            (200, "healthz: ok")
        );
    }
    assert_eq!(
        sink.checks.load(Ordering::SeqCst),
        1,
        "concurrent requests share one check, and its answer is reused"
    );
    tokio::time::sleep(HEALTH_ANSWER_REUSE + Duration::from_millis(100)).await;
    get(gateway.addr, "/-/healthz", None).await.expect("served");
    assert_eq!(
        sink.checks.load(Ordering::SeqCst),
        2,
        "an old answer is not reused"
    );
}

#[tokio::test]
async fn ready_answers_while_the_sink_check_hangs_and_live_ignores_the_sink() {
    let gateway = TestGateway::start_with(Setup {
        sink: Arc::new(UnreachableSink),
        ..Setup::default()
    })
    .await;
    for _ in 0..2 {
        let asked = std::time::Instant::now();
        let ready = get(gateway.addr, "/-/ready", None).await.expect("served");
        // The gateway answers within 700 ms, under the probes' 1 s deadline; the body below (not
        // "timed out") shows it did not wait for the 5 s check, and this bound, kept under those
        // 5 s, leaves a loaded machine its slack.
        assert!(
            asked.elapsed() < std::time::Duration::from_secs(4),
            "{:?}",
            asked.elapsed()
        );
        assert_eq!(
            (ready.status, ready.body.as_str()),
            (503, "not ready: starting: checking the sink")
        );
    }
    let live = get(gateway.addr, "/-/live", None).await.expect("served");
    assert_eq!((live.status, live.body.as_str()), (200, "live"));
}
