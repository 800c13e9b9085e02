//! A fake OpenTelemetry Collector: an OTLP/gRPC receiver on 127.0.0.1 for traces and metrics
//! (plain or gzip-compressed) that keeps every span and metric it is sent, so a test can wait
//! for one by name.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

pub use opentelemetry_proto::tonic::common::v1 as common;
pub use opentelemetry_proto::tonic::metrics::v1 as metrics;
pub use opentelemetry_proto::tonic::trace::v1 as trace;

use common::KeyValue;
use common::any_value::Value;

/// One span as received, with the attributes of the resource that sent it.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The sender's resource attributes (`service.name`, ...).
    pub resource: Vec<KeyValue>,
    /// The span.
    pub span: trace::Span,
}

impl ReceivedSpan {
    /// The span's attribute `key`, if present.
    pub fn attribute(&self, key: &str) -> Option<&Value> {
        attribute(&self.span.attributes, key)
    }

    /// The resource attribute `key`, if present.
    pub fn resource_attribute(&self, key: &str) -> Option<&Value> {
        attribute(&self.resource, key)
    }
}

/// One metric as received in one export, with the attributes of the resource that sent it.
#[derive(Debug, Clone)]
pub struct ReceivedMetric {
    /// The sender's resource attributes.
    pub resource: Vec<KeyValue>,
    /// The metric, with the data points of that export.
    pub metric: metrics::Metric,
}

impl ReceivedMetric {
    /// The resource attribute `key`, if present.
    pub fn resource_attribute(&self, key: &str) -> Option<&Value> {
        attribute(&self.resource, key)
    }

    /// The data points of a sum or gauge; empty for other kinds.
    pub fn number_points(&self) -> &[metrics::NumberDataPoint] {
        match &self.metric.data {
            Some(metrics::metric::Data::Sum(sum)) => &sum.data_points,
            Some(metrics::metric::Data::Gauge(gauge)) => &gauge.data_points,
            _ => &[],
        }
    }

    /// The integer value of the sum or gauge point whose attributes include every pair in
    /// `attributes`, if there is exactly one such point.
    pub fn int_value(&self, attributes: &[(&str, Value)]) -> Option<i64> {
        let mut matching = self.number_points().iter().filter(|point| {
            attributes
                .iter()
                .all(|(key, value)| attribute(&point.attributes, key) == Some(value))
        });
        let point = matching.next()?;
        if matching.next().is_some() {
            return None;
        }
        match point.value {
            Some(metrics::number_data_point::Value::AsInt(value)) => Some(value),
            _ => None,
        }
    }
}

/// The value of attribute `key` among `attributes`.
pub fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|value| value.value.as_ref())
}

#[derive(Debug, Default)]
struct Received {
    spans: Vec<ReceivedSpan>,
    metrics: Vec<ReceivedMetric>,
}

#[derive(Clone)]
struct Collector {
    received: Arc<Mutex<Received>>,
    /// Bumped after each export, to wake waiters.
    exports: Arc<watch::Sender<u64>>,
}

impl Collector {
    fn lock(&self) -> MutexGuard<'_, Received> {
        self.received.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self) {
        self.exports.send_modify(|count| *count += 1);
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        {
            let mut received = self.lock();
            for resource_spans in request.into_inner().resource_spans {
                let resource = resource_spans.resource.unwrap_or_default().attributes;
                for scope_spans in resource_spans.scope_spans {
                    received
                        .spans
                        .extend(scope_spans.spans.into_iter().map(|span| ReceivedSpan {
                            resource: resource.clone(),
                            span,
                        }));
                }
            }
        }
        self.bump();
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        {
            let mut received = self.lock();
            for resource_metrics in request.into_inner().resource_metrics {
                let resource = resource_metrics.resource.unwrap_or_default().attributes;
                for scope_metrics in resource_metrics.scope_metrics {
                    received
                        .metrics
                        .extend(
                            scope_metrics
                                .metrics
                                .into_iter()
                                .map(|metric| ReceivedMetric {
                                    resource: resource.clone(),
                                    metric,
                                }),
                        );
                }
            }
        }
        self.bump();
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// A running fake collector; stops when dropped.
pub struct FakeOtlp {
    addr: SocketAddr,
    collector: Collector,
    server: JoinHandle<()>,
}

impl FakeOtlp {
    /// Starts the receiver on 127.0.0.1 and a free port.
    pub async fn start() -> FakeOtlp {
        let collector = Collector {
            received: Arc::default(),
            exports: Arc::new(watch::channel(0).0),
        };
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind the fake OTLP receiver");
        let addr = listener.local_addr().expect("local address");
        let router = tonic::transport::Server::builder()
            .add_service(
                TraceServiceServer::new(collector.clone())
                    .accept_compressed(CompressionEncoding::Gzip),
            )
            .add_service(
                MetricsServiceServer::new(collector.clone())
                    .accept_compressed(CompressionEncoding::Gzip),
            );
        let server = tokio::spawn(async move {
            let _ = router
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        FakeOtlp {
            addr,
            collector,
            server,
        }
    }

    /// The endpoint to set as `OTEL_EXPORTER_OTLP_ENDPOINT` (`http://127.0.0.1:<port>`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.collector.lock().spans.clone()
    }

    /// Every metric received so far, one entry per metric per export, in arrival order.
    pub fn metrics(&self) -> Vec<ReceivedMetric> {
        self.collector.lock().metrics.clone()
    }

    /// Waits up to `timeout` for a span named `name`, and returns the first one received.
    pub async fn wait_for_span(&self, name: &str, timeout: Duration) -> ReceivedSpan {
        self.wait_for_span_where(timeout, |span| span.span.name == name)
            .await
            .unwrap_or_else(|| {
                panic!(
                    "no span {name:?} within {timeout:?}; received {:?}",
                    span_names(&self.spans())
                )
            })
    }

    /// Waits up to `timeout` for a span that satisfies `matches`; `None` if none arrived.
    pub async fn wait_for_span_where(
        &self,
        timeout: Duration,
        matches: impl Fn(&ReceivedSpan) -> bool,
    ) -> Option<ReceivedSpan> {
        self.wait_until(timeout, || {
            self.collector
                .lock()
                .spans
                .iter()
                .find(|s| matches(s))
                .cloned()
        })
        .await
    }

    /// Waits up to `timeout` for an export of the metric `name`, and returns the latest one.
    pub async fn wait_for_metric(&self, name: &str, timeout: Duration) -> ReceivedMetric {
        self.wait_for_metric_where(name, timeout, |_| true)
            .await
            .unwrap_or_else(|| panic!("no metric {name:?} within {timeout:?}"))
    }

    /// Waits up to `timeout` for an export of the metric `name` that satisfies `matches`, and
    /// returns the latest such export; `None` if none arrived.
    pub async fn wait_for_metric_where(
        &self,
        name: &str,
        timeout: Duration,
        matches: impl Fn(&ReceivedMetric) -> bool,
    ) -> Option<ReceivedMetric> {
        self.wait_until(timeout, || {
            self.collector
                .lock()
                .metrics
                .iter()
                .rev()
                .find(|m| m.metric.name == name && matches(m))
                .cloned()
        })
        .await
    }

    /// Checks `found` after every export until it returns something or `timeout` passes.
    async fn wait_until<T>(&self, timeout: Duration, found: impl Fn() -> Option<T>) -> Option<T> {
        let mut exports = self.collector.exports.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            exports.mark_unchanged();
            if let Some(value) = found() {
                return Some(value);
            }
            match tokio::time::timeout_at(deadline, exports.changed()).await {
                Ok(Ok(())) => continue,
                // Timed out (or the fake is gone): one last look.
                _ => return found(),
            }
        }
    }
}

impl Drop for FakeOtlp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn span_names(spans: &[ReceivedSpan]) -> Vec<&str> {
    spans.iter().map(|s| s.span.name.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::resource::v1::Resource;

    use super::*;

    fn string_attribute(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(common::AnyValue {
                value: Some(Value::StringValue(value.into())),
            }),
            ..Default::default()
        }
    }

    fn resource() -> Option<Resource> {
        Some(Resource {
            attributes: vec![string_attribute("service.name", "test")],
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn a_span_sent_over_otlp_can_be_waited_for() {
        let fake = FakeOtlp::start().await;
        let mut client = TraceServiceClient::connect(fake.endpoint())
            .await
            .expect("connect");
        let span = trace::Span {
            name: "work".into(),
            attributes: vec![string_attribute("result", "success")],
            ..Default::default()
        };
        client
            .export(ExportTraceServiceRequest {
                resource_spans: vec![trace::ResourceSpans {
                    resource: resource(),
                    scope_spans: vec![trace::ScopeSpans {
                        spans: vec![span],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            })
            .await
            .expect("accepted");

        let received = fake.wait_for_span("work", Duration::from_secs(5)).await;

        assert_eq!(
            received.attribute("result"),
            Some(&Value::StringValue("success".into()))
        );
        assert_eq!(
            received.resource_attribute("service.name"),
            Some(&Value::StringValue("test".into()))
        );
    }

    #[tokio::test]
    async fn waiting_for_a_span_that_never_comes_gives_up_at_the_deadline() {
        let fake = FakeOtlp::start().await;
        let found = fake
            .wait_for_span_where(Duration::from_millis(50), |_| true)
            .await;
        assert!(found.is_none());
    }

    #[tokio::test]
    async fn the_latest_export_of_a_metric_is_returned() {
        let fake = FakeOtlp::start().await;
        let mut client = MetricsServiceClient::connect(fake.endpoint())
            .await
            .expect("connect");
        for value in [1, 5] {
            let point = metrics::NumberDataPoint {
                attributes: vec![string_attribute("result", "success")],
                value: Some(metrics::number_data_point::Value::AsInt(value)),
                ..Default::default()
            };
            let metric = metrics::Metric {
                name: "processed".into(),
                data: Some(metrics::metric::Data::Sum(metrics::Sum {
                    data_points: vec![point],
                    is_monotonic: true,
                    ..Default::default()
                })),
                ..Default::default()
            };
            client
                .export(ExportMetricsServiceRequest {
                    resource_metrics: vec![metrics::ResourceMetrics {
                        resource: resource(),
                        scope_metrics: vec![metrics::ScopeMetrics {
                            metrics: vec![metric],
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                })
                .await
                .expect("accepted");
        }

        let metric = fake
            .wait_for_metric("processed", Duration::from_secs(5))
            .await;

        let success = [("result", Value::StringValue("success".into()))];
        assert_eq!(metric.int_value(&success), Some(5));
        assert_eq!(fake.metrics().len(), 2);
    }
}
