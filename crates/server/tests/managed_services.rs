//! Managed services authenticated by SAMS (`docs/compatibility.md` §3 and §5, and the original's
//! test table of §9), over a real socket with a tonic client, against a fake SAMS over real HTTP.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use telemetry_gateway_auth::sams::{SamsClientConfig, WRITE_EVENTS_SCOPE};
use telemetry_gateway_proto::v1::{Event, RecordEventRequest, RecordEventsRequest};
use telemetry_gateway_server::{ManagedAuthError, ManagedServiceAuthorizer, SamsAuthorizer};
use telemetry_gateway_testkit::RecordingSink;
use telemetry_gateway_testkit::client::{events_message, metadata_message, record_events_with};
use telemetry_gateway_testkit::events::{managed_metadata, simple_event, simple_events};
use telemetry_gateway_testkit::fake_sams::{
    CLIENT_ID, CLIENT_SECRET, Failure, FakeSams, TokenGrant,
};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Status};

use support::{Setup, TestGateway, payload_json};

const SERVICE_ID: &str = "my-managed-service";
const VALID: &str = "sams_at_valid";
const INACTIVE: &str = "sams_at_inactive";
const WRONG_SCOPE: &str = "sams_at_wrong_scope";

/// A fake SAMS with the tokens of the original's table (`docs/compatibility.md` §5), a gateway
/// checking tokens with it, and the sink behind the gateway.
struct Managed {
    sams: FakeSams,
    sink: Arc<RecordingSink>,
    gateway: TestGateway,
}

impl Managed {
    async fn start() -> Managed {
        Managed::start_with(|_| {}).await
    }

    async fn start_with(adjust: impl FnOnce(&mut SamsClientConfig)) -> Managed {
        let sams = FakeSams::start().await;
        sams.grant(
            VALID,
            TokenGrant::active(&["foo", "bar", WRITE_EVENTS_SCOPE]),
        );
        sams.grant(INACTIVE, TokenGrant::inactive());
        sams.grant(WRONG_SCOPE, TokenGrant::active(&["foo", "bar"]));
        let mut config = SamsClientConfig::new(sams.url(), CLIENT_ID, CLIENT_SECRET);
        adjust(&mut config);
        let (sink, gateway) = gateway_for(config).await;
        Managed {
            sams,
            sink,
            gateway,
        }
    }
}

async fn gateway_for(config: SamsClientConfig) -> (Arc<RecordingSink>, TestGateway) {
    let sink = Arc::new(RecordingSink::new());
    let authorizer = SamsAuthorizer::new(config).expect("a valid SAMS configuration");
    let gateway = TestGateway::start_with(Setup {
        sink: sink.clone(),
        managed: Arc::new(authorizer),
        ..Setup::default()
    })
    .await;
    (sink, gateway)
}

/// Adds gRPC metadata entries to a request.
fn with_headers<T>(mut request: Request<T>, headers: &[(&'static str, &str)]) -> Request<T> {
    for (key, value) in headers {
        let value = MetadataValue::try_from(*value).expect("an ASCII metadata value");
        request.metadata_mut().append(*key, value);
    }
    request
}

/// One `RecordEvents` stream as a managed service: metadata, then `events`.
async fn stream(
    gateway: &TestGateway,
    headers: &[(&'static str, &str)],
    events: Vec<Event>,
) -> Result<Vec<Vec<String>>, Status> {
    let messages: Vec<RecordEventsRequest> = vec![
        metadata_message(managed_metadata(SERVICE_ID)),
        events_message(events),
    ];
    let request = with_headers(Request::new(tokio_stream::iter(messages)), headers);
    let responses = record_events_with(&mut gateway.client().await, request).await?;
    Ok(responses.into_iter().map(|r| r.succeeded_events).collect())
}

/// One unary `RecordEvent` as a managed service.
async fn unary(
    gateway: &TestGateway,
    headers: &[(&'static str, &str)],
    event: Event,
) -> Result<(), Status> {
    let request = with_headers(
        Request::new(RecordEventRequest {
            metadata: Some(managed_metadata(SERVICE_ID)),
            event: Some(event),
        }),
        headers,
    );
    gateway
        .client()
        .await
        .record_event(request)
        .await
        .map(|_| ())
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The outcome a row of the original's table (`docs/compatibility.md` §5) expects.
fn expect_refusal(
    result: Result<impl std::fmt::Debug, Status>,
    code: Code,
    message: &str,
    row: &str,
) {
    let status = result.expect_err(row);
    assert_eq!(
        (status.code(), status.message()),
        (code, message),
        "row {row:?}"
    );
}

/// One row of `TestCheckWriteEventsScope`: the metadata sent, how to program SAMS, and the
/// expected refusal (`None`: accepted).
struct Row {
    name: &'static str,
    headers: Vec<(&'static str, String)>,
    failing_sams: bool,
    expected: Option<(Code, &'static str)>,
}

fn table() -> Vec<Row> {
    let row = |name, headers: &[(&'static str, &str)], failing_sams, expected| Row {
        name,
        headers: headers.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        failing_sams,
        expected,
    };
    vec![
        // Over HTTP/2 a call always carries metadata (content-type, te, user-agent), so a call
        // without `authorization` gets what the original answers a real sender.
        row(
            "no metadata",
            &[],
            false,
            Some((Code::Unauthenticated, "no token header value")),
        ),
        row(
            "no authorization header",
            &[("somethingelse", "foobar")],
            false,
            Some((Code::Unauthenticated, "no token header value")),
        ),
        row(
            "malformed authorization header",
            &[("authorization", "bearer")],
            false,
            Some((
                Code::Unauthenticated,
                "invalid token header: token type missing in Authorization header",
            )),
        ),
        row(
            "wrong token type",
            &[("authorization", "Basic Zm9vOmJhcg==")],
            false,
            Some((
                Code::Unauthenticated,
                "invalid token header: invalid token type Basic in Authorization header",
            )),
        ),
        row(
            "token ok, introspect failed",
            &[("authorization", "bearer foobar")],
            true,
            Some((Code::Internal, "unable to validate token")),
        ),
        row(
            "token ok, but inactive",
            &[("authorization", &bearer(INACTIVE))],
            false,
            Some((Code::PermissionDenied, "permission denied")),
        ),
        row(
            "unknown token",
            &[("authorization", "bearer never-issued")],
            false,
            Some((Code::PermissionDenied, "permission denied")),
        ),
        row(
            "token ok and active, but invalid scope",
            &[("authorization", &bearer(WRONG_SCOPE))],
            false,
            Some((Code::PermissionDenied, "permission denied")),
        ),
        row(
            "token ok and active and valid scope",
            &[("authorization", &bearer(VALID))],
            false,
            None,
        ),
        row(
            "valid scope, lowercase bearer",
            &[("authorization", &format!("bearer {VALID}"))],
            false,
            None,
        ),
    ]
}

async fn managed_for(row: &Row) -> Managed {
    let managed = Managed::start().await;
    if row.failing_sams {
        managed.sams.fail_introspection(Some(Failure::Status(500)));
    }
    managed
}

fn headers_of(row: &Row) -> Vec<(&'static str, &str)> {
    row.headers.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test]
async fn every_row_of_the_scope_check_table_through_record_events() {
    for row in table() {
        let managed = managed_for(&row).await;
        let result = stream(&managed.gateway, &headers_of(&row), simple_events("s", 3)).await;
        match row.expected {
            Some((code, message)) => {
                expect_refusal(result, code, message, row.name);
                assert!(managed.sink.published().is_empty(), "row {:?}", row.name);
            }
            None => {
                let responses = result.unwrap_or_else(|s| panic!("row {:?}: {s:?}", row.name));
                assert_eq!(
                    responses,
                    vec![vec!["s-0", "s-1", "s-2"]],
                    "row {:?}",
                    row.name
                );
                assert_eq!(managed.sink.delivered().len(), 3);
            }
        }
    }
}

#[tokio::test]
async fn every_row_of_the_scope_check_table_through_record_event() {
    for row in table() {
        let managed = managed_for(&row).await;
        let result = unary(&managed.gateway, &headers_of(&row), simple_event("u-1")).await;
        match row.expected {
            Some((code, message)) => {
                expect_refusal(result, code, message, row.name);
                assert!(managed.sink.published().is_empty(), "row {:?}", row.name);
            }
            None => {
                result.unwrap_or_else(|s| panic!("row {:?}: {s:?}", row.name));
                assert_eq!(managed.sink.delivered().len(), 1);
            }
        }
    }
}

#[tokio::test]
async fn concurrent_streams_with_one_token_share_one_introspection() {
    let managed = Managed::start().await;
    // Slow enough that every stream asks while the first answer is still on its way.
    managed.sams.delay_introspection(Duration::from_millis(300));
    let client = managed.gateway.client().await;
    let authorization = bearer(VALID);
    let streams = (0..100).map(|i| {
        let mut client = client.clone();
        let authorization = authorization.clone();
        async move {
            let messages = vec![
                metadata_message(managed_metadata(SERVICE_ID)),
                events_message(vec![simple_event(format!("c-{i}"))]),
            ];
            let request = with_headers(
                Request::new(tokio_stream::iter(messages)),
                &[("authorization", &authorization)],
            );
            record_events_with(&mut client, request).await
        }
    });
    let results = futures::future::join_all(streams).await;
    for (i, result) in results.into_iter().enumerate() {
        let responses = result.unwrap_or_else(|s| panic!("stream {i}: {s:?}"));
        assert_eq!(responses[0].succeeded_events, vec![format!("c-{i}")]);
    }
    assert_eq!(managed.sams.introspection_calls(), 1);
    assert_eq!(managed.sams.token_calls(), 1);
    assert_eq!(managed.sink.delivered().len(), 100);
}

#[tokio::test]
async fn a_revoked_token_stops_working_within_the_cache_ttl() {
    let ttl = Duration::from_millis(400);
    let managed = Managed::start_with(|config| config.cache.positive_ttl = ttl).await;
    let headers = [("authorization", bearer(VALID))];
    let headers: Vec<(&'static str, &str)> =
        headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    unary(&managed.gateway, &headers, simple_event("before"))
        .await
        .expect("accepted before revocation");
    managed.sams.revoke(VALID);
    // The answer was cached before the revocation, so it has expired once the TTL has passed
    // since then (the margin covers the cache's clock); sleeping is never too short, however
    // loaded the machine.
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let status = unary(&managed.gateway, &headers, simple_event("after"))
        .await
        .expect_err("denied once the cached answer expired");
    assert_eq!(
        (status.code(), status.message()),
        (Code::PermissionDenied, "permission denied")
    );
    assert_eq!(managed.sams.introspection_calls(), 2);
}

#[tokio::test]
async fn a_managed_event_through_record_event_is_published_as_the_service() {
    let managed = Managed::start().await;
    unary(
        &managed.gateway,
        &[("authorization", &bearer(VALID))],
        simple_event("unary-published"),
    )
    .await
    .expect("published");
    let delivered = managed.sink.delivered();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].id, "unary-published");
    assert_eq!(delivered[0].attributes["publisher.source"], SERVICE_ID);
    assert_eq!(
        payload_json(&delivered[0])["metadata"]["identifier"]["managedService"]["serviceId"],
        SERVICE_ID
    );
}

#[tokio::test]
async fn an_invalid_event_through_record_event_is_invalid_argument() {
    let managed = Managed::start().await;
    let mut event = simple_event("unary-invalid");
    event.timestamp = None;
    let status = unary(
        &managed.gateway,
        &[("authorization", &bearer(VALID))],
        event,
    )
    .await
    .expect_err("invalid");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("invalid event: "),
        "{status:?}"
    );
    assert!(managed.sink.published().is_empty());
}

#[tokio::test]
async fn invalid_events_from_a_managed_service_are_reported_as_failed() {
    let managed = Managed::start().await;
    let mut bad = simple_event("bad");
    bad.feature = "Not-Valid".into();
    let responses = stream(
        &managed.gateway,
        &[("authorization", &bearer(VALID))],
        vec![simple_event("good-1"), bad, simple_event("good-2")],
    )
    .await
    .expect("the stream is accepted");
    assert_eq!(responses, vec![vec!["good-1", "good-2"]]);
    let published: Vec<String> = managed.sink.published().into_iter().map(|e| e.id).collect();
    assert_eq!(published, vec!["good-1", "good-2"]);
    assert!(
        managed
            .sink
            .published()
            .iter()
            .all(|e| e.attributes["publisher.source"] == SERVICE_ID)
    );
}

#[tokio::test]
async fn an_unreachable_sams_is_internal_quickly() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("address").port();
    drop(closed);
    let config =
        SamsClientConfig::new(format!("http://127.0.0.1:{port}"), CLIENT_ID, CLIENT_SECRET);
    let (sink, gateway) = gateway_for(config).await;
    let started = Instant::now();
    let authorization = bearer(VALID);
    let headers = [("authorization", authorization.as_str())];
    let unary_result = unary(&gateway, &headers, simple_event("x")).await;
    expect_refusal(
        unary_result,
        Code::Internal,
        "unable to validate token",
        "unary",
    );
    let stream_result = stream(&gateway, &headers, simple_events("x", 1)).await;
    expect_refusal(
        stream_result,
        Code::Internal,
        "unable to validate token",
        "stream",
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert!(sink.published().is_empty());
}

#[tokio::test]
async fn a_hanging_sams_times_out_as_internal() {
    let managed = Managed::start_with(|config| {
        config.request_timeout = Duration::from_millis(300);
    })
    .await;
    managed.sams.fail_introspection(Some(Failure::Hang));
    let started = Instant::now();
    let result = unary(
        &managed.gateway,
        &[("authorization", &bearer(VALID))],
        simple_event("x"),
    )
    .await;
    expect_refusal(result, Code::Internal, "unable to validate token", "hang");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn wrong_gateway_credentials_are_internal_not_a_verdict_on_the_token() {
    let sams = FakeSams::start().await;
    sams.grant(VALID, TokenGrant::active(&[WRITE_EVENTS_SCOPE]));
    let (_, gateway) = gateway_for(SamsClientConfig::new(sams.url(), CLIENT_ID, "wrong")).await;
    let result = unary(
        &gateway,
        &[("authorization", &bearer(VALID))],
        simple_event("x"),
    )
    .await;
    expect_refusal(
        result,
        Code::Internal,
        "unable to validate token",
        "wrong secret",
    );
    assert_eq!(sams.introspection_calls(), 0);
}

#[tokio::test]
async fn a_failed_introspection_is_not_cached() {
    let managed = Managed::start().await;
    let headers = [("authorization", bearer(VALID))];
    let headers: Vec<(&'static str, &str)> =
        headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    managed.sams.fail_introspection(Some(Failure::Status(503)));
    let failed = unary(&managed.gateway, &headers, simple_event("x")).await;
    expect_refusal(
        failed,
        Code::Internal,
        "unable to validate token",
        "failing",
    );
    managed.sams.fail_introspection(None);
    unary(&managed.gateway, &headers, simple_event("y"))
        .await
        .expect("SAMS answers again");
    assert_eq!(managed.sams.introspection_calls(), 2);
}

#[tokio::test]
async fn the_raw_token_is_sent_only_to_sams_introspection() {
    let managed = Managed::start().await;
    unary(
        &managed.gateway,
        &[("authorization", &bearer(VALID))],
        simple_event("x"),
    )
    .await
    .expect("accepted");
    assert_eq!(managed.sams.introspected_tokens(), vec![VALID]);
    let published = managed.sink.published();
    let payload = String::from_utf8_lossy(&published[0].payload);
    assert!(!payload.contains(VALID));
}

/// Wraps an authorizer and records whether a check was abandoned before it finished.
struct Observed {
    inner: SamsAuthorizer,
    abandoned: Arc<std::sync::atomic::AtomicUsize>,
}

/// Counts itself as abandoned unless disarmed.
struct DropGuard(Option<Arc<std::sync::atomic::AtomicUsize>>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        if let Some(counter) = self.0.take() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

#[async_trait::async_trait]
impl ManagedServiceAuthorizer for Observed {
    async fn authorize(&self, metadata: &MetadataMap) -> Result<(), ManagedAuthError> {
        let mut guard = DropGuard(Some(self.abandoned.clone()));
        let result = self.inner.authorize(metadata).await;
        guard.0 = None;
        result
    }
}

#[tokio::test]
async fn a_stream_whose_caller_leaves_during_the_check_abandons_it() {
    let sams = FakeSams::start().await;
    sams.fail_introspection(Some(Failure::Hang));
    let mut config = SamsClientConfig::new(sams.url(), CLIENT_ID, CLIENT_SECRET);
    config.request_timeout = Duration::from_secs(30);
    let abandoned = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let gateway = TestGateway::start_with(Setup {
        managed: Arc::new(Observed {
            inner: SamsAuthorizer::new(config).expect("valid"),
            abandoned: abandoned.clone(),
        }),
        ..Setup::default()
    })
    .await;
    let mut client = gateway.client().await;
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    sender
        .send(metadata_message(managed_metadata(SERVICE_ID)))
        .await
        .expect("queued");
    let request = with_headers(
        Request::new(tokio_stream::wrappers::ReceiverStream::new(receiver)),
        &[("authorization", &bearer(VALID))],
    );
    let responses = client
        .record_events(request)
        .await
        .expect("the stream opens");
    // Wait until the gateway is asking SAMS, then go away.
    let deadline = Instant::now() + Duration::from_secs(5);
    while sams.introspection_calls() == 0 {
        assert!(Instant::now() < deadline, "SAMS was never asked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(responses);
    drop(sender);
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(5);
    while abandoned.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the check went on after the caller left"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_unary_call_past_its_deadline_is_canceled() {
    let managed =
        Managed::start_with(|config| config.request_timeout = Duration::from_secs(30)).await;
    managed.sams.fail_introspection(Some(Failure::Hang));
    let mut request = with_headers(
        Request::new(RecordEventRequest {
            metadata: Some(managed_metadata(SERVICE_ID)),
            event: Some(simple_event("late")),
        }),
        &[("authorization", &bearer(VALID))],
    );
    request.set_timeout(Duration::from_millis(300));
    let status = managed
        .gateway
        .client()
        .await
        .record_event(request)
        .await
        .expect_err("past its deadline");
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    assert!(managed.sink.published().is_empty());
}
