//! The events service's work: who is sending (`identify`), a payload's way to the sink and back
//! (`process_payload`), the `RecordEvents` protocol (`stream`) and the unary `RecordEvent`
//! (`unary`).
//! The tonic adapter (`grpc`) composes them with the concerns every call shares
//! (`crate::rpc`).

mod grpc;
mod stream;
mod unary;

pub use grpc::GrpcService;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use prost::DecodeError;
use telemetry_gateway_auth::LicenseVerifier;
use telemetry_gateway_proto::v1::RecordEventsRequestMetadata;
use telemetry_gateway_proto::v1::identifier::{Identifier, LicensedInstanceIdentifier};
use telemetry_gateway_proto::wire::RawEvents;
use telemetry_gateway_sink::{EventSink, FailureCause, PublishOutcome};
use tokio::sync::Semaphore;
use tonic::metadata::MetadataMap;
use tracing::Instrument;
use tracing::field::Empty;

use crate::budget::InflightBudget;
use crate::dead_letter::DeadLetters;
use crate::error::ServerError;
use crate::lifecycle::Lifecycle;
use crate::managed::ManagedServiceAuthorizer;
use crate::metrics::Metrics;
use crate::payload_log::{CANCELED, bounded, log_summary};
use crate::pipeline::{
    AttributeNeed, EventPolicy, PreparedPayload, Summary, prepare_payload, summarize, take_refusals,
};
use crate::rate_limit::RateLimiter;
use crate::source::{Source, SourceKind, with_fingerprinted_license_key};

/// Payloads of this many events or more are prepared on the blocking pool.
const PREPARE_INLINE_EVENTS: usize = 1024;

/// Payloads whose message is this large or larger are prepared on the blocking pool. Below both
/// limits a payload takes a few milliseconds at most (about 2 µs per event of 700 bytes, read
/// from its wire bytes): less than a hand-off to another thread costs the rest.
const PREPARE_INLINE_BYTES: usize = 1024 * 1024;

/// Identifiers a sender chose (request, instance and service IDs, URLs) are logged cut to this.
const MAX_LOGGED_ID_BYTES: usize = 256;

/// Everything a request needs: the sink, the credential checks, and the event policy.
pub struct EventGateway {
    sink: Arc<dyn EventSink>,
    licenses: LicenseVerifier,
    managed: Arc<dyn ManagedServiceAuthorizer>,
    policy: EventPolicy,
    /// Whether the sink reads events' attributes (asked once, when the gateway is composed).
    attributes: AttributeNeed,
    lifecycle: Lifecycle,
    metrics: Metrics,
    budget: InflightBudget,
    rate_limiter: Option<RateLimiter>,
    dead_letters: Option<Arc<DeadLetters>>,
    /// One permit per core: how many large payloads are prepared on the blocking pool at once.
    preparers: Arc<Semaphore>,
}

impl EventGateway {
    /// Composes a gateway from its parts.
    pub fn new(
        sink: Arc<dyn EventSink>,
        licenses: LicenseVerifier,
        managed: Arc<dyn ManagedServiceAuthorizer>,
        policy: EventPolicy,
    ) -> EventGateway {
        EventGateway {
            attributes: AttributeNeed::of(sink.as_ref()),
            sink,
            licenses,
            managed,
            policy,
            lifecycle: Lifecycle::default(),
            metrics: Metrics::global(),
            budget: InflightBudget::unlimited(),
            rate_limiter: None,
            dead_letters: None,
            preparers: Arc::new(Semaphore::new(
                std::thread::available_parallelism().map_or(1, |cores| cores.get()),
            )),
        }
    }

    /// Writes every event refused for good to `dead_letters` too (best effort; off by default).
    pub fn with_dead_letters(mut self, dead_letters: Arc<DeadLetters>) -> EventGateway {
        self.dead_letters = Some(dead_letters);
        self
    }

    /// Where refused events are written, if anywhere.
    pub fn dead_letters(&self) -> Option<&Arc<DeadLetters>> {
        self.dead_letters.as_ref()
    }

    /// Bounds the bytes of payloads held at once by `budget`.
    pub fn with_budget(mut self, budget: InflightBudget) -> EventGateway {
        self.budget = budget;
        self
    }

    /// The memory budget of payloads in flight.
    pub fn budget(&self) -> &InflightBudget {
        &self.budget
    }

    /// Limits each sender's events per second by `limiter` (no limit by default).
    pub fn with_rate_limiter(mut self, limiter: RateLimiter) -> EventGateway {
        self.rate_limiter = Some(limiter);
        self
    }

    /// Takes `events` from `source`'s rate limit, if there is one.
    fn check_rate_limit(&self, source: &Source, events: usize) -> Result<(), ServerError> {
        let Some(limiter) = &self.rate_limiter else {
            return Ok(());
        };
        limiter.check(source.rate_limit_key(), events)
    }

    /// Records metrics with `metrics` instead of the global meter provider's instruments.
    pub fn with_metrics(mut self, metrics: Metrics) -> EventGateway {
        self.metrics = metrics;
        self
    }

    /// The gateway's instruments.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether the gateway is taking work or draining.
    pub fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }

    /// The sink events are handed to.
    pub fn sink(&self) -> &Arc<dyn EventSink> {
        &self.sink
    }

    /// Establishes who is sending, from the metadata message and the request's gRPC metadata.
    pub async fn identify(
        &self,
        metadata: &RecordEventsRequestMetadata,
        headers: &MetadataMap,
    ) -> Result<Source, ServerError> {
        let identifier = metadata
            .identifier
            .as_ref()
            .and_then(|identifier| identifier.identifier.as_ref());
        let kind = match identifier {
            Some(Identifier::LicensedInstance(licensed)) => {
                self.licensed_instance(&metadata.request_id, licensed)?
            }
            Some(Identifier::UnlicensedInstance(unlicensed)) => {
                if unlicensed.instance_id.is_empty() {
                    return Err(ServerError::MissingInstanceId);
                }
                tracing::info!(
                    requestID = %bounded(&metadata.request_id, MAX_LOGGED_ID_BYTES),
                    instanceID = %bounded(&unlicensed.instance_id, MAX_LOGGED_ID_BYTES),
                    "handling events submission stream for unlicensed instance"
                );
                SourceKind::UnlicensedInstance {
                    instance_id: unlicensed.instance_id.clone(),
                    external_url: unlicensed.external_url.clone(),
                }
            }
            Some(Identifier::ManagedService(service)) => {
                if service.service_id.is_empty() {
                    return Err(ServerError::MissingServiceId);
                }
                self.managed.authorize(headers).await?;
                tracing::info!(
                    requestID = %bounded(&metadata.request_id, MAX_LOGGED_ID_BYTES),
                    serviceID = %bounded(&service.service_id, MAX_LOGGED_ID_BYTES),
                    serviceEnvironment = ?service
                        .service_environment
                        .as_deref()
                        .map(|env| bounded(env, MAX_LOGGED_ID_BYTES)),
                    "handling events submission stream for managed service"
                );
                SourceKind::ManagedService {
                    service_id: service.service_id.clone(),
                    environment: service.service_environment.clone(),
                }
            }
            None => {
                tracing::error!(requestID = %bounded(&metadata.request_id, MAX_LOGGED_ID_BYTES), "identifier not supported for this RPC");
                return Err(ServerError::UnsupportedIdentifier);
            }
        };
        Ok(if self.policy.fingerprint_license_keys {
            Source::new(kind, &with_fingerprinted_license_key(metadata))
        } else {
            Source::new(kind, metadata)
        })
    }

    /// A licensed instance: its license key is bounded, verified and (opt-in) unexpired.
    fn licensed_instance(
        &self,
        request_id: &str,
        licensed: &LicensedInstanceIdentifier,
    ) -> Result<SourceKind, ServerError> {
        let max = self.budget.limits().max_license_key_bytes;
        if licensed.license_key.len() > max {
            return Err(ServerError::LicenseKeyTooLong {
                len: licensed.license_key.len(),
                max,
            });
        }
        let verified = self
            .licenses
            .verify(&licensed.license_key)
            .map_err(|err| ServerError::InvalidLicenseKey(err.to_string()))?;
        let info = verified.info;
        if self.policy.reject_expired_licenses && info.is_expired_at(chrono::Utc::now()) {
            return Err(ServerError::InvalidLicenseKey(format!(
                "license expired at {}",
                info.expires_at.to_rfc3339()
            )));
        }
        tracing::info!(
            requestID = %bounded(request_id, MAX_LOGGED_ID_BYTES),
            instanceID = %bounded(&licensed.instance_id, MAX_LOGGED_ID_BYTES),
            instanceExternalURL = %bounded(&licensed.external_url, MAX_LOGGED_ID_BYTES),
            license.salesforceOpportunityID = ?info.salesforce_opportunity_id,
            license.salesforceSubscriptionID = ?info.salesforce_subscription_id,
            license.tags = ?info.tags,
            license.userCount = info.user_count,
            license.expiresAt = %info.expires_at.to_rfc3339(),
            "handling events submission stream for licensed instance"
        );
        Ok(SourceKind::LicensedInstance {
            instance_id: licensed.instance_id.clone(),
            external_url: licensed.external_url.clone(),
            license: Box::new(info),
        })
    }

    /// Prepares, publishes and summarizes one events payload; an event that does not decode
    /// fails it whole, before anything is published.
    pub async fn process_payload(
        &self,
        source: &Source,
        events: RawEvents,
    ) -> Result<Summary, DecodeError> {
        self.process_payload_until(source, events, std::future::pending())
            .await
    }

    /// Like [`process_payload`](Self::process_payload), but stops waiting for the sink once
    /// `canceled` completes (the sender went away): the events not yet reported delivered are
    /// then failed as canceled, which is neither acknowledged nor reported as an error.
    pub async fn process_payload_until(
        &self,
        source: &Source,
        events: RawEvents,
        canceled: impl Future<Output = ()>,
    ) -> Result<Summary, DecodeError> {
        let span = tracing::info_span!(
            "handlePublishEvents",
            events = count_attribute(events.len()),
            source = source.publisher_source(),
            result = Empty,
            failed = Empty,
            otel.status_code = Empty,
            otel.status_description = Empty,
        );
        async {
            let started = Instant::now();
            let mut prepared = self.prepare(events, source).await?;
            for &size in &prepared.message_sizes {
                self.metrics.message_rendered(size);
            }
            let mut was_canceled = false;
            let outcomes = if prepared.events.is_empty() {
                Vec::new()
            } else {
                tokio::select! {
                    outcomes = self.sink.publish_ndjson(&prepared.events, &prepared.ndjson) => outcomes,
                    () = canceled => {
                        was_canceled = true;
                        PublishOutcome::all_retryable(
                            prepared.events.len(),
                            FailureCause::Canceled,
                            CANCELED,
                        )
                    }
                }
            };
            // A sender that went away sends the payload again: its refusals are written then.
            if let Some(dead_letters) = &self.dead_letters
                && !was_canceled
            {
                dead_letters.offer(source, take_refusals(&mut prepared, &outcomes));
            }
            let summary = summarize(prepared, &outcomes, source);
            let span = tracing::Span::current();
            span.record("result", summary.result.as_str());
            if !summary.failed.is_empty() {
                span.record("failed", count_attribute(summary.failed.len()));
                span.record("otel.status_code", "ERROR");
                span.record("otel.status_description", summary.result.message());
            }
            self.metrics
                .payload_processed(&summary, source.publisher_source());
            log_summary(
                &summary,
                source.publisher_source(),
                started.elapsed(),
                was_canceled,
            );
            Ok(summary)
        }
        .instrument(span)
        .await
    }

    /// Migrates, validates and renders a payload; a large one off the async workers, so that it
    /// does not hold a worker (and the streams waiting on it) for long. Large payloads take
    /// turns, one per core: more at once would only add threads (each with its own allocator
    /// cache) competing for the same cores.
    async fn prepare(
        &self,
        events: RawEvents,
        source: &Source,
    ) -> Result<PreparedPayload, DecodeError> {
        if events.len() < PREPARE_INLINE_EVENTS && events.encoded_len() < PREPARE_INLINE_BYTES {
            return prepare_payload(&events, source, &self.policy, self.attributes);
        }
        let Ok(_turn) = self.preparers.acquire().await else {
            // The semaphore is never closed.
            return Ok(PreparedPayload::default());
        };
        let (source, policy, attributes) = (source.clone(), self.policy, self.attributes);
        let prepare = move || prepare_payload(&events, &source, &policy, attributes);
        match tokio::task::spawn_blocking(prepare).await {
            Ok(prepared) => prepared,
            Err(err) => {
                // Nothing is acknowledged: the sender retries the payload.
                tracing::error!(error = %err, "preparing a payload failed");
                Ok(PreparedPayload::default())
            }
        }
    }
}

/// A count as a span attribute: the OpenTelemetry layer turns `usize` (recorded as `u64`) into a
/// string, and `i64` into an integer.
fn count_attribute(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}
