//! The tower layer that puts the request bodies of the events service under the memory budget
//! and the sender limits.

use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::transport::server::TcpConnectInfo;

use super::accounting::InflightBudget;
use super::body::budgeted;
use crate::metrics::Metrics;
use crate::rpc::{EVENTS_SERVICE_PATH, UNARY_PATH};

/// Wraps each events-service request body in a budgeted body and hands the call its
/// [`StreamLedger`](super::StreamLedger) in the request extensions; other services (health,
/// reflection, diagnostics) pass untouched.
#[derive(Clone, Debug)]
pub struct BudgetLayer {
    budget: InflightBudget,
    metrics: Metrics,
}

impl BudgetLayer {
    /// Budgets request bodies against `budget`; refusals are counted in `metrics`.
    pub fn new(budget: InflightBudget, metrics: Metrics) -> BudgetLayer {
        BudgetLayer { budget, metrics }
    }
}

impl<S> tower::Layer<S> for BudgetLayer {
    type Service = BudgetService<S>;

    fn layer(&self, inner: S) -> BudgetService<S> {
        BudgetService {
            inner,
            budget: self.budget.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`BudgetLayer`].
#[derive(Clone, Debug)]
pub struct BudgetService<S> {
    inner: S,
    budget: InflightBudget,
    metrics: Metrics,
}

impl<S> tower::Service<http::Request<Body>> for BudgetService<S>
where
    S: tower::Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> S::Future {
        if !request.uri().path().starts_with(EVENTS_SERVICE_PATH) {
            return self.inner.call(request);
        }
        let unary = request.uri().path() == UNARY_PATH;
        let (mut parts, body) = request.into_parts();
        let encoding = parts
            .headers
            .get("grpc-encoding")
            .and_then(|value| value.to_str().ok());
        let peer = parts
            .extensions
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr);
        let (body, ledger) = budgeted(&self.budget, &self.metrics, body, unary, encoding, peer);
        parts.extensions.insert(ledger);
        self.inner.call(http::Request::from_parts(parts, body))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tower::{Layer, Service, ServiceExt};

    use super::*;
    use crate::budget::StreamLedger;

    async fn has_ledger(path: &str) -> bool {
        let budget = InflightBudget::new(1000, Duration::from_millis(10));
        let metrics = Metrics::new(&opentelemetry::global::meter("test"));
        let mut service = BudgetLayer::new(budget, metrics).layer(tower::service_fn(
            |request: http::Request<Body>| async move {
                Ok::<_, std::convert::Infallible>(
                    request.extensions().get::<Arc<StreamLedger>>().is_some(),
                )
            },
        ));
        let request = http::Request::post(path)
            .body(Body::empty())
            .expect("a valid request");
        service
            .ready()
            .await
            .expect("ready")
            .call(request)
            .await
            .expect("infallible")
    }

    #[tokio::test]
    async fn only_the_events_service_is_budgeted() {
        assert!(has_ledger(UNARY_PATH).await);
        assert!(has_ledger(&format!("{EVENTS_SERVICE_PATH}RecordEvents")).await);
        assert!(!has_ledger("/grpc.health.v1.Health/Check").await);
        assert!(!has_ledger("/-/ready").await);
    }
}
