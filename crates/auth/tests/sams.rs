//! The SAMS client against a fake SAMS over real HTTP: the gateway's own token, introspection,
//! the cache and its coalescing, and failures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use telemetry_gateway_auth::sams::{SamsClient, SamsClientConfig, SamsError, WRITE_EVENTS_SCOPE};
use telemetry_gateway_testkit::fake_sams::{
    CLIENT_ID, CLIENT_SECRET, Failure, FakeSams, FieldNames, TokenGrant,
};

fn client_for(sams: &FakeSams, adjust: impl FnOnce(&mut SamsClientConfig)) -> SamsClient {
    let mut config = SamsClientConfig::new(sams.url(), CLIENT_ID, CLIENT_SECRET);
    adjust(&mut config);
    SamsClient::new(config).expect("a valid configuration")
}

#[tokio::test]
async fn an_active_token_is_introspected_with_its_scopes() {
    let sams = FakeSams::start().await;
    let expires_at = chrono::Utc::now() + chrono::Duration::minutes(10);
    sams.grant(
        "svc-token",
        TokenGrant::active(&["openid", WRITE_EVENTS_SCOPE]).expiring_at(expires_at),
    );
    let client = client_for(&sams, |_| {});
    let answer = client.introspect("svc-token").await.expect("introspected");
    assert!(answer.active);
    assert_eq!(answer.scopes, vec!["openid", WRITE_EVENTS_SCOPE]);
    assert_eq!(answer.client_id, "sams_cid_managed_service");
    let seen = answer.expires_at.expect("an expiry");
    assert!((seen - expires_at).num_milliseconds().abs() < 1000);
    assert!(answer.allows(WRITE_EVENTS_SCOPE));
    assert_eq!((sams.token_calls(), sams.introspection_calls()), (1, 1));
}

#[tokio::test]
async fn snake_case_answers_are_accepted() {
    let sams = FakeSams::start().await;
    sams.field_names(FieldNames::SnakeCase);
    sams.grant("svc-token", TokenGrant::active(&[WRITE_EVENTS_SCOPE]));
    let answer = client_for(&sams, |_| {})
        .introspect("svc-token")
        .await
        .expect("introspected");
    assert_eq!(answer.client_id, "sams_cid_managed_service");
    assert!(answer.expires_at.is_some());
}

#[tokio::test]
async fn unknown_and_inactive_tokens_are_inactive() {
    let sams = FakeSams::start().await;
    sams.grant("inactive", TokenGrant::inactive());
    let client = client_for(&sams, |_| {});
    assert!(
        !client
            .introspect("inactive")
            .await
            .expect("answered")
            .active
    );
    assert!(!client.introspect("unknown").await.expect("answered").active);
}

#[tokio::test]
async fn the_gateway_token_is_fetched_once_and_reused() {
    let sams = FakeSams::start().await;
    let client = client_for(&sams, |_| {});
    for i in 0..5 {
        sams.grant(&format!("t{i}"), TokenGrant::active(&[]));
        client.introspect(&format!("t{i}")).await.expect("answered");
    }
    assert_eq!(sams.token_calls(), 1);
    assert_eq!(sams.introspection_calls(), 5);
}

#[tokio::test]
async fn a_short_lived_gateway_token_is_refreshed_before_it_expires() {
    let sams = FakeSams::start().await;
    sams.client_token_lifetime(Some(1));
    let client = client_for(&sams, |_| {});
    client.introspect("a").await.expect("answered");
    tokio::time::sleep(Duration::from_millis(700)).await;
    client.introspect("b").await.expect("answered");
    assert_eq!(sams.token_calls(), 2);
}

#[tokio::test]
async fn a_rotated_gateway_token_is_replaced_and_the_call_retried() {
    let sams = FakeSams::start().await;
    let client = client_for(&sams, |_| {});
    client.introspect("a").await.expect("answered");
    sams.revoke_client_tokens();
    sams.grant("b", TokenGrant::active(&[WRITE_EVENTS_SCOPE]));
    let answer = client
        .introspect("b")
        .await
        .expect("answered after a retry");
    assert!(answer.active);
    assert_eq!(sams.token_calls(), 2);
    assert_eq!(sams.introspection_calls(), 3);
}

#[tokio::test]
async fn concurrent_checks_of_one_token_share_one_call() {
    let sams = FakeSams::start().await;
    sams.grant("shared", TokenGrant::active(&[WRITE_EVENTS_SCOPE]));
    sams.delay_introspection(Duration::from_millis(200));
    let client = Arc::new(client_for(&sams, |_| {}));
    // Spawned all at once (an iterator of spawns would start each after the previous ended).
    let checks: Vec<_> = (0..50)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.introspect("shared").await })
        })
        .collect();
    for check in futures_join(checks.into_iter()).await {
        assert!(check.expect("answered").active);
    }
    assert_eq!(sams.introspection_calls(), 1);
    assert_eq!(sams.token_calls(), 1);
}

#[tokio::test]
async fn answers_are_cached_until_their_ttl() {
    let sams = FakeSams::start().await;
    sams.grant("active", TokenGrant::active(&[WRITE_EVENTS_SCOPE]));
    sams.grant("inactive", TokenGrant::inactive());
    // TTLs far apart, so that a loaded machine's slow round trips cannot make the positive
    // answer expire before it is checked between the two (an expiry is checked after a sleep
    // longer than its TTL, which no delay can make too short).
    let client = client_for(&sams, |config| {
        config.cache.positive_ttl = Duration::from_secs(3);
        config.cache.negative_ttl = Duration::from_millis(300);
    });
    for _ in 0..3 {
        client.introspect("active").await.expect("answered");
        client.introspect("inactive").await.expect("answered");
    }
    assert_eq!(sams.introspection_calls(), 2);
    tokio::time::sleep(Duration::from_millis(800)).await;
    client.introspect("inactive").await.expect("answered");
    client.introspect("active").await.expect("answered");
    assert_eq!(
        sams.introspection_calls(),
        3,
        "only the negative answer expired"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    client.introspect("active").await.expect("answered");
    assert_eq!(sams.introspection_calls(), 4);
}

#[tokio::test]
async fn an_answer_is_not_cached_past_the_tokens_expiry() {
    let sams = FakeSams::start().await;
    // Far enough ahead that setting up and the first call cannot reach it on a loaded machine,
    // and well within the 60 s the answer would otherwise be cached for.
    let soon = chrono::Utc::now() + chrono::Duration::seconds(3);
    sams.grant(
        "short",
        TokenGrant::active(&[WRITE_EVENTS_SCOPE]).expiring_at(soon),
    );
    let client = client_for(&sams, |_| {});
    client.introspect("short").await.expect("answered");
    client.introspect("short").await.expect("answered");
    assert_eq!(sams.introspection_calls(), 1);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    client.introspect("short").await.expect("answered");
    assert_eq!(sams.introspection_calls(), 2);
}

#[tokio::test]
async fn failures_are_errors_and_are_not_cached() {
    let sams = FakeSams::start().await;
    sams.grant("t", TokenGrant::active(&[WRITE_EVENTS_SCOPE]));
    let client = client_for(&sams, |_| {});
    sams.fail_introspection(Some(Failure::Status(500)));
    let err = client.introspect("t").await.expect_err("500");
    assert!(
        matches!(err, SamsError::Status { status: 500, .. }),
        "{err}"
    );
    sams.fail_introspection(Some(Failure::Garbage));
    let err = client.introspect("t").await.expect_err("not JSON");
    assert!(matches!(err, SamsError::InvalidResponse { .. }), "{err}");
    sams.fail_introspection(None);
    assert!(client.introspect("t").await.expect("answered").active);
    assert_eq!(sams.introspection_calls(), 3);
}

#[tokio::test]
async fn a_failing_token_endpoint_is_an_error() {
    let sams = FakeSams::start().await;
    sams.fail_token_endpoint(Some(Failure::Status(503)));
    let err = client_for(&sams, |_| {})
        .introspect("t")
        .await
        .expect_err("no client token");
    assert!(
        matches!(
            err,
            SamsError::Status {
                endpoint: "/oauth/token",
                status: 503,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(sams.introspection_calls(), 0);
}

#[tokio::test]
async fn wrong_client_credentials_are_refused_by_the_token_endpoint() {
    let sams = FakeSams::start().await;
    let err = client_for(&sams, |config| config.client_secret = "wrong".into())
        .introspect("t")
        .await
        .expect_err("refused");
    assert!(
        matches!(err, SamsError::Status { status: 401, .. }),
        "{err}"
    );
    assert!(
        !err.to_string().contains("wrong"),
        "the secret is not in the error"
    );
}

#[tokio::test]
async fn a_hanging_sams_times_out() {
    let sams = FakeSams::start().await;
    sams.fail_introspection(Some(Failure::Hang));
    let client = client_for(&sams, |config| {
        config.request_timeout = Duration::from_millis(300);
    });
    let started = Instant::now();
    let err = client.introspect("t").await.expect_err("timed out");
    assert!(matches!(err, SamsError::Transport { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_closed_port_fails_fast() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", closed.local_addr().expect("address"));
    drop(closed);
    let client = SamsClient::new(SamsClientConfig::new(url, CLIENT_ID, CLIENT_SECRET))
        .expect("a valid configuration");
    let started = Instant::now();
    let err = client.introspect("t").await.expect_err("unreachable");
    assert!(matches!(err, SamsError::Transport { .. }), "{err}");
    assert!(!err.is_canceled());
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_caller_that_leaves_gets_canceled() {
    let sams = FakeSams::start().await;
    sams.fail_introspection(Some(Failure::Hang));
    let client = client_for(&sams, |_| {});
    let err = client
        .introspect_until("t", tokio::time::sleep(Duration::from_millis(100)))
        .await
        .expect_err("canceled");
    assert!(err.is_canceled());
    assert_eq!(err.to_string(), "request canceled");
}

#[test]
fn invalid_urls_are_refused_at_construction() {
    for url in ["", "accounts.sourcegraph.com", "ftp://x", "http://x/?q=1"] {
        let err =
            SamsClient::new(SamsClientConfig::new(url, CLIENT_ID, CLIENT_SECRET)).expect_err(url);
        assert!(matches!(err, SamsError::InvalidUrl { .. }), "{url}: {err}");
    }
}

#[test]
fn the_secret_is_not_in_the_debug_output() {
    let config =
        SamsClientConfig::new("https://accounts.sourcegraph.com", CLIENT_ID, CLIENT_SECRET);
    assert!(!format!("{config:?}").contains(CLIENT_SECRET));
}

#[tokio::test]
async fn a_flood_of_distinct_tokens_is_introspected_a_few_at_a_time() {
    let sams = FakeSams::start().await;
    sams.delay_introspection(Duration::from_millis(100));
    let client = Arc::new(client_for(&sams, |config| {
        config.max_concurrent_introspections = 4;
    }));
    let checks: Vec<_> = (0..40)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.introspect(&format!("random-{i}")).await })
        })
        .collect();
    for check in futures_join(checks.into_iter()).await {
        assert!(
            !check.expect("answered").active,
            "unknown tokens are inactive"
        );
    }
    assert_eq!(sams.introspection_calls(), 40);
    assert_eq!(sams.most_concurrent_introspections(), 4);
    // The negative answers are cached: the same tokens again cost SAMS nothing.
    for i in 0..40 {
        client
            .introspect(&format!("random-{i}"))
            .await
            .expect("answered from the cache");
    }
    assert_eq!(sams.introspection_calls(), 40);
}

#[tokio::test]
async fn a_check_that_finds_no_free_slot_in_time_is_overloaded_and_not_sent() {
    let sams = FakeSams::start().await;
    sams.delay_introspection(Duration::from_secs(2));
    let client = Arc::new(client_for(&sams, |config| {
        config.max_concurrent_introspections = 1;
        config.request_timeout = Duration::from_secs(3);
    }));
    let checks: Vec<_> = (0..3)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.introspect(&format!("token-{i}")).await })
        })
        .collect();
    let results = futures_join(checks.into_iter()).await;
    let overloaded = results
        .iter()
        .filter(|result| result.as_ref().is_err_and(SamsError::is_overloaded))
        .count();
    assert_eq!(overloaded, 1, "{results:?}");
    assert_eq!(sams.introspection_calls(), 2);
    assert_eq!(sams.most_concurrent_introspections(), 1);
}

/// Awaits every task, in order.
async fn futures_join<T>(tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("the task finishes"));
    }
    results
}
