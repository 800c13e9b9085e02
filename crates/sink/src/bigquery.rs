//! The BigQuery sink: one row per event, written with the Storage Write API (the default:
//! protobuf rows appended to the table's default stream, see `storage`) or the legacy streaming
//! `tabledata.insertAll` API (with the event ID as `insertId`, BigQuery's best-effort
//! de-duplication key).
//!
//! Either way a batch is cut into requests within the API's limits (rows, 10 MB), sent
//! concurrently but never more than a fixed number at once per sink, each bounded by a timeout.
//! BigQuery's answer is mapped row by row (see `outcomes` and `storage_outcomes`): only rows
//! BigQuery confirms as stored are delivered. Rows BigQuery refuses because the table no longer
//! matches the schema are retryable, and the sink reports itself unhealthy until a write goes
//! through again. The table's schema is `deploy/bigquery/events.schema.json`; design notes are in
//! `docs/sinks.md`.

mod outcomes;
mod rows;
mod storage;
mod storage_outcomes;
mod storage_rows;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use gcp_bigquery_client::Client;
use gcp_bigquery_client::auth::Authenticator;
use gcp_bigquery_client::client_builder::ClientBuilder;
use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::model::table_data_insert_all_request::TableDataInsertAllRequest;
use tokio::sync::Semaphore;

pub use self::rows::{MAX_REQUEST_BYTES, MAX_ROWS_PER_REQUEST};
pub use self::storage::GOOGLE_STORAGE_ENDPOINT;
pub use self::storage_rows::{APPEND_REQUEST_HEADROOM, MAX_APPEND_REQUEST_BYTES};
use crate::{EventSink, FailureCause, PreparedEvent, PublishOutcome, SinkError};

const NAME: &str = "bigquery";

/// How long one request (or the health check) may take before it counts as failed.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How many requests one sink keeps in flight at most, across all streams (with the Storage
/// Write API, also how many AppendRows connections it opens at most).
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 16;

/// Which BigQuery API rows are written with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WriteApi {
    /// The Storage Write API, default stream: billed by actual bytes, Google's recommendation.
    #[default]
    Storage,
    /// The legacy streaming API, `tabledata.insertAll`: billed per row with a 1 KB minimum.
    InsertAll,
}

/// Where the BigQuery sink writes and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BigQuerySinkConfig {
    /// The Google Cloud project of the table.
    pub project_id: String,
    /// The dataset of the table.
    pub dataset_id: String,
    /// The table rows are inserted into.
    pub table_id: String,
    /// Which API rows are written with.
    pub write_api: WriteApi,
    /// A BigQuery v2 base URL (`http://127.0.0.1:9050/bigquery/v2`) for emulators and tests; it
    /// is sent a fake access token. `None`: Google's endpoint with application default
    /// credentials. Used by insertAll only.
    pub endpoint: Option<String>,
    /// A Storage Write API gRPC URL (`http://127.0.0.1:9060`) for emulators and tests; it is
    /// sent a fake access token. `None`: [`GOOGLE_STORAGE_ENDPOINT`] with application default
    /// credentials. Used by the Storage Write API only.
    pub storage_endpoint: Option<String>,
    /// How long one request (insertAll or AppendRows) may take.
    pub request_timeout: Duration,
    /// How many requests may be in flight at once.
    pub max_concurrent_requests: usize,
    /// Rows per request (at most [`MAX_ROWS_PER_REQUEST`] is sensible for insertAll).
    pub max_rows_per_request: usize,
}

impl BigQuerySinkConfig {
    /// The table `project_id.dataset_id.table_id` on Google's endpoint, with default limits.
    pub fn new(
        project_id: impl Into<String>,
        dataset_id: impl Into<String>,
        table_id: impl Into<String>,
    ) -> BigQuerySinkConfig {
        BigQuerySinkConfig {
            project_id: project_id.into(),
            dataset_id: dataset_id.into(),
            table_id: table_id.into(),
            write_api: WriteApi::default(),
            endpoint: None,
            storage_endpoint: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            max_rows_per_request: MAX_ROWS_PER_REQUEST,
        }
    }

    /// `project.dataset.table`.
    pub fn table_path(&self) -> String {
        format!("{}.{}.{}", self.project_id, self.dataset_id, self.table_id)
    }
}

/// Writes each event as one row of a BigQuery table.
pub struct BigQuerySink {
    config: BigQuerySinkConfig,
    writer: Writer,
}

/// The API the sink writes with.
#[allow(
    clippy::large_enum_variant,
    reason = "one per sink, built once at start-up"
)]
enum Writer {
    InsertAll(InsertAll),
    Storage(storage::StorageWriter),
}

/// The insertAll client and its bound on requests in flight.
struct InsertAll {
    client: Client,
    config: BigQuerySinkConfig,
    requests: Semaphore,
    /// The last table-caused row error, until a later insert succeeds: the sink is unhealthy
    /// meanwhile.
    schema_mismatch: Mutex<Option<String>>,
}

/// The access token sent to an endpoint override: emulators accept anything.
#[derive(Clone)]
struct EmulatorToken;

#[async_trait]
impl Authenticator for EmulatorToken {
    async fn access_token(&self) -> Result<String, BQError> {
        Ok("emulator-access-token".to_string())
    }
}

impl BigQuerySink {
    /// Builds the client of the configured API: application default credentials (a key file
    /// named by `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's user credentials, or the metadata
    /// server, as on Cloud Run), or a fake token for an endpoint override. Nothing is sent yet.
    pub async fn connect(config: BigQuerySinkConfig) -> Result<BigQuerySink, SinkError> {
        let invalid = |message: String| SinkError::Config {
            sink: NAME,
            message,
        };
        for (value, what) in [
            (&config.project_id, "project ID"),
            (&config.dataset_id, "dataset ID"),
            (&config.table_id, "table ID"),
        ] {
            if value.trim().is_empty() {
                return Err(invalid(format!("the {what} is empty")));
            }
        }
        if config.max_concurrent_requests == 0 || config.max_rows_per_request == 0 {
            return Err(invalid(
                "request concurrency and rows per request must be positive".into(),
            ));
        }
        let writer = match config.write_api {
            WriteApi::Storage => {
                if config.endpoint.is_some() && config.storage_endpoint.is_none() {
                    return Err(invalid(
                        "an insertAll endpoint override is set but no Storage Write API endpoint: \
                         set the Storage Write endpoint too, or write with insertAll"
                            .into(),
                    ));
                }
                Writer::Storage(storage::StorageWriter::new(&config)?)
            }
            WriteApi::InsertAll => Writer::InsertAll(InsertAll::connect(&config).await?),
        };
        Ok(BigQuerySink { config, writer })
    }

    /// The sink's configuration.
    pub fn config(&self) -> &BigQuerySinkConfig {
        &self.config
    }
}

impl InsertAll {
    async fn connect(config: &BigQuerySinkConfig) -> Result<InsertAll, SinkError> {
        let invalid = |message: String| SinkError::Config {
            sink: NAME,
            message,
        };
        let mut builder = ClientBuilder::new();
        let client = match &config.endpoint {
            Some(endpoint) => {
                builder
                    .with_v2_base_url(endpoint.trim_end_matches('/').to_string())
                    .build_from_authenticator(Arc::new(EmulatorToken))
                    .await
            }
            None => builder.build_from_application_default_credentials().await,
        }
        .map_err(|err| invalid(format!("cannot build the BigQuery client: {err}")))?;
        Ok(InsertAll {
            client,
            requests: Semaphore::new(config.max_concurrent_requests),
            config: config.clone(),
            schema_mismatch: Mutex::new(None),
        })
    }

    /// Sends one insertAll request and maps the answer to one outcome per row.
    async fn insert(&self, request: rows::Request) -> (Vec<usize>, Vec<PublishOutcome>) {
        let count = request.rows.len();
        let Ok(_permit) = self.requests.acquire().await else {
            return (
                request.indices,
                PublishOutcome::all_retryable(
                    count,
                    FailureCause::ShutDown,
                    "BigQuery sink is shut down",
                ),
            );
        };
        let mut insert_all = TableDataInsertAllRequest::new();
        // Valid rows go in even when a neighbour is invalid, so one bad row does not make a
        // whole request retry; `stopped` rows are still handled (as retryable) if they appear.
        insert_all.skip_invalid_rows();
        if let Err(err) = insert_all.add_rows(request.rows) {
            return (
                request.indices,
                PublishOutcome::all_retryable(
                    count,
                    FailureCause::Other,
                    format!("building insertAll: {err}"),
                ),
            );
        }
        let call = self.client.tabledata().insert_all(
            &self.config.project_id,
            &self.config.dataset_id,
            &self.config.table_id,
            insert_all,
        );
        let outcomes = match tokio::time::timeout(self.config.request_timeout, call).await {
            Ok(Ok(response)) => {
                let answer = outcomes::from_response(count, &response);
                self.note_schema(answer.schema_mismatch, &answer.outcomes);
                answer.outcomes
            }
            Ok(Err(err)) => {
                let reason = outcomes::request_error(&err);
                tracing::warn!(sink = NAME, table = %self.config.table_path(), rows = count, error = %reason, "insertAll failed; the rows will be retried");
                PublishOutcome::all_retryable(count, FailureCause::Unavailable, reason)
            }
            Err(_) => {
                let reason = format!(
                    "insertAll timed out after {:?}",
                    self.config.request_timeout
                );
                tracing::warn!(sink = NAME, table = %self.config.table_path(), rows = count, error = %reason, "insertAll failed; the rows will be retried");
                PublishOutcome::all_retryable(count, FailureCause::Timeout, reason)
            }
        };
        (request.indices, outcomes)
    }

    /// Records what one answered request says about the table: a schema mismatch makes the sink
    /// unhealthy (and is logged once, when it starts); a delivered row makes it healthy again.
    fn note_schema(&self, mismatch: Option<String>, outcomes: &[PublishOutcome]) {
        let mut current = self
            .schema_mismatch
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match mismatch {
            Some(reason) => {
                if current.is_none() {
                    tracing::error!(sink = NAME, table = %self.config.table_path(), error = %reason, "the BigQuery table does not match the schema; rows will be retried until it does");
                }
                *current = Some(reason);
            }
            None if current.is_some() && outcomes.iter().any(PublishOutcome::is_delivered) => {
                *current = None;
                tracing::info!(sink = NAME, table = %self.config.table_path(), "the BigQuery table accepts rows again");
            }
            None => {}
        }
    }
}

#[async_trait]
impl EventSink for BigQuerySink {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn publish(&self, events: &[PreparedEvent]) -> Vec<PublishOutcome> {
        match &self.writer {
            Writer::InsertAll(insert_all) => insert_all.publish(events).await,
            Writer::Storage(storage) => storage.publish(events).await,
        }
    }

    fn describe(&self) -> String {
        let api = match self.config.write_api {
            WriteApi::Storage => "Storage Write API",
            WriteApi::InsertAll => "insertAll",
        };
        format!("BigQuery table {} ({api})", self.config.table_path())
    }

    async fn health(&self) -> Result<(), SinkError> {
        match &self.writer {
            Writer::InsertAll(insert_all) => insert_all.health().await,
            Writer::Storage(storage) => storage.health().await,
        }
    }

    async fn shutdown(&self) -> Result<(), SinkError> {
        match &self.writer {
            Writer::InsertAll(insert_all) => insert_all.requests.close(),
            Writer::Storage(storage) => storage.shutdown(),
        }
        Ok(())
    }
}

impl InsertAll {
    async fn publish(&self, events: &[PreparedEvent]) -> Vec<PublishOutcome> {
        let plan = rows::plan(
            events,
            chrono::Utc::now(),
            self.config.max_rows_per_request,
            MAX_REQUEST_BYTES,
        );
        let mut outcomes: Vec<Option<PublishOutcome>> = vec![None; events.len()];
        for (index, reason) in plan.rejected {
            tracing::warn!(sink = NAME, event_id = %events[index].id, error = %reason, "event cannot be inserted into BigQuery");
            outcomes[index] = Some(PublishOutcome::permanent(FailureCause::Invalid, reason));
        }
        let answered = join_all(plan.requests.into_iter().map(|r| self.insert(r))).await;
        for (indices, request_outcomes) in answered {
            for (index, outcome) in indices.into_iter().zip(request_outcomes) {
                outcomes[index] = Some(outcome);
            }
        }
        outcomes
            .into_iter()
            .map(|outcome| {
                outcome.unwrap_or_else(|| {
                    PublishOutcome::retryable(FailureCause::Other, "not sent to BigQuery")
                })
            })
            .collect()
    }

    /// Healthy when the table exists and is readable (`tables.get`), and its last answered
    /// insert did not say it no longer matches the schema.
    async fn health(&self) -> Result<(), SinkError> {
        let unhealthy = |message: String| SinkError::Unhealthy {
            sink: NAME,
            message,
        };
        let mismatch = self
            .schema_mismatch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(reason) = mismatch {
            return Err(unhealthy(format!(
                "table {}: {reason}",
                self.config.table_path()
            )));
        }
        let get = self.client.table().get(
            &self.config.project_id,
            &self.config.dataset_id,
            &self.config.table_id,
            None,
        );
        match tokio::time::timeout(self.config.request_timeout, get).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(BQError::ResponseError { error })) => Err(unhealthy(format!(
                "table {}: HTTP {} {}",
                self.config.table_path(),
                error.error.code,
                error.error.message
            ))),
            Ok(Err(err)) => Err(unhealthy(format!(
                "table {}: {err}",
                self.config.table_path()
            ))),
            Err(_) => Err(unhealthy(format!(
                "table {}: no answer within {:?}",
                self.config.table_path(),
                self.config.request_timeout
            ))),
        }
    }
}
