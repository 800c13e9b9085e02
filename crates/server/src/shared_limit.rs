//! Limits on the calls in progress across the health and reflection services, which sit
//! outside the memory budget. Each of their calls may hold a request of up to 16 KiB
//! (`SMALL_REQUEST_BYTES` in `crate::serve`), and a connection may hold 100 of them, so without
//! a limit across connections their memory grows with the connections open (docs/security.md).
//! Health checks (`Check`) have places of their own, so that streams held open (a `Watch`, a
//! reflection stream) cannot keep them from a probe, and a deadline, so that a check whose
//! request never arrives gives its place back. A call beyond its limit is refused at once
//! (`ResourceExhausted`) rather than queued: a health check should fail fast, and a queued call
//! would hold its stream.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::server::NamedService;
use tower::Service;

/// The calls in progress at once across the health and reflection services, health checks
/// apart; and the health checks in progress at once.
pub const MAX_SMALL_SERVICE_CALLS: usize = 256;

/// How long a health check may take, its request included, before it is answered
/// `DeadlineExceeded` and its place given back.
pub const HEALTH_CHECK_DEADLINE: Duration = Duration::from_secs(5);

/// The path of a health check, the one unary call of these services.
const HEALTH_CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

/// The places the services wrapped in [`SharedLimit`] share: one set for health checks, one for
/// every other call.
#[derive(Debug, Clone)]
pub struct CallPermits {
    checks: Arc<Semaphore>,
    others: Arc<Semaphore>,
    calls: usize,
    check_deadline: Duration,
}

impl CallPermits {
    /// At most `calls` health checks, and `calls` other calls, in progress at once; a health
    /// check answered within `check_deadline`.
    pub fn new(calls: usize, check_deadline: Duration) -> CallPermits {
        CallPermits {
            checks: Arc::new(Semaphore::new(calls)),
            others: Arc::new(Semaphore::new(calls)),
            calls,
            check_deadline,
        }
    }

    /// `service`, its calls counted against these permits.
    pub fn limit<S>(&self, service: S) -> SharedLimit<S> {
        SharedLimit {
            inner: service,
            permits: self.clone(),
        }
    }
}

/// A gRPC service whose calls each hold one of a shared set of places until their response
/// has been sent (a streaming response, such as a health `Watch`, holds it while it streams).
#[derive(Debug, Clone)]
pub struct SharedLimit<S> {
    inner: S,
    permits: CallPermits,
}

impl<S: NamedService> NamedService for SharedLimit<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for SharedLimit<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let check = request.uri().path() == HEALTH_CHECK_PATH;
        let (places, what) = if check {
            (&self.permits.checks, "health checks")
        } else {
            (&self.permits.others, "health watches and reflection calls")
        };
        let Ok(permit) = places.clone().try_acquire_owned() else {
            let refused = tonic::Status::resource_exhausted(format!(
                "too many {what} in progress (at most {} at once); try again later",
                self.permits.calls
            ));
            return futures::future::ready(Ok(refused.into_http())).boxed();
        };
        let response = self.inner.call(request).map(|response| {
            response.map(|response| {
                response.map(|body| {
                    Body::new(Permitted {
                        body,
                        _permit: permit,
                    })
                })
            })
        });
        if !check {
            return response.boxed();
        }
        let deadline = self.permits.check_deadline;
        async move {
            tokio::time::timeout(deadline, response)
                .await
                .unwrap_or_else(|_| {
                    let late = tonic::Status::deadline_exceeded(format!(
                        "the health check took longer than {deadline:?}"
                    ));
                    Ok(late.into_http())
                })
        }
        .boxed()
    }
}

/// A response body and the permit its call holds until the body is dropped.
struct Permitted {
    body: Body,
    _permit: OwnedSemaphorePermit,
}

impl HttpBody for Permitted {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::ServiceExt;

    use super::*;

    /// Starts a call to `path` on `service`: its place is taken then, not when it is awaited.
    async fn start<S>(service: &mut S, path: &'static str) -> S::Future
    where
        S: Service<http::Request<()>>,
        S::Error: std::fmt::Debug,
    {
        let request = http::Request::builder()
            .uri(path)
            .body(())
            .expect("a request");
        service.ready().await.expect("ready").call(request)
    }

    fn code(response: &http::Response<Body>) -> tonic::Code {
        tonic::Status::from_header_map(response.headers()).map_or(tonic::Code::Ok, |s| s.code())
    }

    #[tokio::test]
    async fn calls_beyond_the_shared_limit_are_refused_until_a_response_is_done() {
        let permits = CallPermits::new(2, HEALTH_CHECK_DEADLINE);
        // A response with a message still to send, as a gRPC call's is when its handler returns.
        let service = tower::service_fn(|_: http::Request<()>| async {
            let message = http_body_util::Full::new(Bytes::from_static(b"message"));
            Ok::<_, Infallible>(http::Response::new(Body::new(message)))
        });
        let (mut one, mut other) = (permits.limit(service), permits.limit(service));
        let first = start(&mut one, "/").await.await.expect("first");
        let second = start(&mut other, "/").await.await.expect("second");
        assert_eq!(
            (code(&first), code(&second)),
            (tonic::Code::Ok, tonic::Code::Ok)
        );

        // Both permits are held by the responses not yet sent, across the two services.
        let refused = start(&mut one, "/").await.await.expect("a response");
        assert_eq!(code(&refused), tonic::Code::ResourceExhausted);

        // The permit comes back when the response is done (sent, or dropped).
        drop(first);
        let third = start(&mut other, "/").await.await.expect("third");
        assert_eq!(code(&third), tonic::Code::Ok);
        drop(second);
    }

    #[tokio::test(start_paused = true)]
    async fn health_checks_have_places_of_their_own_and_a_deadline() {
        let permits = CallPermits::new(1, HEALTH_CHECK_DEADLINE);
        // A watch that streams for ever, and checks whose requests never arrive.
        let service = tower::service_fn(|request: http::Request<()>| async move {
            if request.uri().path() == HEALTH_CHECK_PATH {
                std::future::pending::<()>().await;
            }
            let message = http_body_util::Full::new(Bytes::from_static(b"status"));
            Ok::<_, Infallible>(http::Response::new(Body::new(message)))
        });
        let mut health = permits.limit(service);
        let watching = start(&mut health, "/grpc.health.v1.Health/Watch")
            .await
            .await
            .expect("watching");
        assert_eq!(code(&watching), tonic::Code::Ok);

        // The watch holds the only other place, not the check's.
        let check = start(&mut health, HEALTH_CHECK_PATH).await;
        let second = start(&mut health, HEALTH_CHECK_PATH).await;
        let second = second.await.expect("answered");
        assert_eq!(
            code(&second),
            tonic::Code::ResourceExhausted,
            "one check at a time"
        );
        let late = check.await.expect("answered");
        assert_eq!(code(&late), tonic::Code::DeadlineExceeded);

        // The check that timed out gave its place back.
        let again = start(&mut health, HEALTH_CHECK_PATH).await;
        assert_eq!(
            code(&again.await.expect("answered")),
            tonic::Code::DeadlineExceeded
        );
        drop(watching);
    }
}
