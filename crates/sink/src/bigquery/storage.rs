//! The Storage Write API writer: rows appended to the table's default stream (committed as soon
//! as BigQuery answers, at least once), over a small pool of long-lived AppendRows connections.
//!
//! Each connection carries one request at a time, so a response always belongs to the request
//! just sent; the number of connections (and so of requests in flight) is bounded, and every
//! request has a deadline. A connection that failed, timed out or sat idle too long is dropped
//! and a fresh one opened (with the writer schema) for the next request. Design notes:
//! `docs/sinks.md`.

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::future::join_all;
use gcp_bigquery_client::google::cloud::bigquery::storage::v1::append_rows_request::{
    ProtoData, Rows,
};
use gcp_bigquery_client::google::cloud::bigquery::storage::v1::big_query_write_client::BigQueryWriteClient;
use gcp_bigquery_client::google::cloud::bigquery::storage::v1::table_field_schema::{Mode, Type};
use gcp_bigquery_client::google::cloud::bigquery::storage::v1::{
    AppendRowsRequest, AppendRowsResponse, GetWriteStreamRequest, ProtoRows, TableSchema,
    WriteStreamView,
};
use prost::Message;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http::Extensions;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Streaming};

use super::storage_outcomes::{self, Answer, Failure};
use super::storage_rows::{self, APPEND_REQUEST_HEADROOM, MAX_APPEND_REQUEST_BYTES};
use super::{BigQuerySinkConfig, NAME};
use crate::{FailureCause, PreparedEvent, PublishOutcome, SinkError};

/// Google's Storage Write API endpoint.
pub const GOOGLE_STORAGE_ENDPOINT: &str = "https://bigquerystorage.googleapis.com";

/// The OAuth scope for writing rows.
const SCOPE: &str = "https://www.googleapis.com/auth/bigquery";

/// A connection idle for longer is not reused: the server may have closed it meanwhile, and a
/// request on a dead connection would come back as a spurious retry.
const IDLE_LIMIT: Duration = Duration::from_secs(30);

/// A connection is replaced after this long, so credentials and load balancing are refreshed.
const MAX_AGE: Duration = Duration::from_secs(600);

/// Sent as the trace ID of every request, so the writes are recognizable in BigQuery's logs.
const TRACE_ID: &str = "telemetry-gateway";

/// How requests are authorized.
enum Credentials {
    /// A fixed fake token, for emulators and tests.
    Fake,
    /// Application default credentials.
    Google(google_cloud_auth::credentials::Credentials),
}

/// One open AppendRows call.
struct Connection {
    requests: mpsc::Sender<AppendRowsRequest>,
    responses: Streaming<AppendRowsResponse>,
    opened: Instant,
    last_used: Instant,
}

impl Connection {
    fn reusable(&self, now: Instant) -> bool {
        now.duration_since(self.last_used) < IDLE_LIMIT && now.duration_since(self.opened) < MAX_AGE
    }
}

/// Appends rows to the default stream of the configured table.
pub(crate) struct StorageWriter {
    config: BigQuerySinkConfig,
    stream_name: String,
    channel: Channel,
    credentials: Credentials,
    idle: Mutex<Vec<Connection>>,
    slots: Semaphore,
    /// The last schema mismatch BigQuery reported, until an append succeeds again.
    schema_problem: Mutex<Option<String>>,
}

impl StorageWriter {
    /// Prepares the channel (connected lazily) and credentials; nothing is sent yet.
    pub(crate) fn new(config: &BigQuerySinkConfig) -> Result<StorageWriter, SinkError> {
        let (url, credentials) = match &config.storage_endpoint {
            Some(url) => (url.trim_end_matches('/').to_string(), Credentials::Fake),
            None => {
                let credentials = google_cloud_auth::credentials::Builder::default()
                    .with_scopes([SCOPE])
                    .build()
                    .map_err(|err| {
                        SinkError::config(
                            NAME,
                            format!("no application default credentials for BigQuery: {err}"),
                        )
                    })?;
                (
                    GOOGLE_STORAGE_ENDPOINT.to_string(),
                    Credentials::Google(credentials),
                )
            }
        };
        let invalid = |err: &dyn std::fmt::Display| {
            SinkError::config(NAME, format!("Storage Write API endpoint {url}: {err}"))
        };
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|err| invalid(&err))?
            .connect_timeout(config.request_timeout)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        if url.starts_with("https://") {
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().with_native_roots())
                .map_err(|err| invalid(&err))?;
        }
        Ok(StorageWriter {
            stream_name: format!(
                "projects/{}/datasets/{}/tables/{}/streams/_default",
                config.project_id, config.dataset_id, config.table_id
            ),
            channel: endpoint.connect_lazy(),
            credentials,
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(config.max_concurrent_requests),
            schema_problem: Mutex::new(None),
            config: config.clone(),
        })
    }

    /// One outcome per event: delivered only when BigQuery committed its row.
    pub(crate) async fn publish(&self, events: &[PreparedEvent]) -> Vec<PublishOutcome> {
        let ingested_at = Utc::now();
        let plan = storage_rows::plan(
            events,
            ingested_at,
            self.config.max_rows_per_request,
            MAX_APPEND_REQUEST_BYTES - APPEND_REQUEST_HEADROOM,
        );
        let mut outcomes: Vec<Option<PublishOutcome>> = vec![None; events.len()];
        for (index, reason) in plan.rejected {
            tracing::warn!(sink = NAME, event_id = %events[index].id, error = %reason, "event cannot be written to BigQuery");
            outcomes[index] = Some(PublishOutcome::permanent(FailureCause::Invalid, reason));
        }
        let written = join_all(
            plan.appends
                .into_iter()
                .map(|append| self.write(events, ingested_at, append)),
        )
        .await;
        for (index, outcome) in written.into_iter().flatten() {
            outcomes[index] = Some(outcome);
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

    /// Appends one planned request; rows BigQuery refuses are permanent, and the others of the
    /// request (which BigQuery then did not commit) are sent once more without them.
    async fn write(
        &self,
        events: &[PreparedEvent],
        ingested_at: chrono::DateTime<Utc>,
        append: storage_rows::Append,
    ) -> Vec<(usize, PublishOutcome)> {
        let mut results = Vec::with_capacity(append.indices.len());
        let mut indices = append.indices;
        let mut rows = append.rows;
        for attempt in 0..2 {
            match self.append_once(rows).await {
                Answer::Committed => {
                    results.extend(indices.into_iter().map(|i| (i, PublishOutcome::Delivered)));
                    break;
                }
                Answer::Failed(failure) => {
                    let outcome = PublishOutcome::retryable(failure.cause, failure.reason);
                    results.extend(indices.into_iter().map(|i| (i, outcome.clone())));
                    break;
                }
                Answer::RowErrors(refused) => {
                    // One line per request: the rows are reported per event by the server.
                    let first = refused.values().next().cloned().unwrap_or_default();
                    tracing::warn!(sink = NAME, table = %self.config.table_path(), rows = refused.len(), error = %first, "BigQuery rejected rows of an append");
                    let mut rest = Vec::new();
                    for (position, index) in indices.into_iter().enumerate() {
                        match refused.get(&position) {
                            Some(reason) => {
                                results.push((
                                    index,
                                    PublishOutcome::permanent(
                                        FailureCause::Rejected,
                                        reason.clone(),
                                    ),
                                ));
                            }
                            None => rest.push(index),
                        }
                    }
                    if attempt == 1 || rest.is_empty() {
                        let outcome = PublishOutcome::retryable(
                            FailureCause::Other,
                            "BigQuery did not commit the row: other rows of its request were rejected",
                        );
                        results.extend(rest.into_iter().map(|i| (i, outcome.clone())));
                        break;
                    }
                    // Rows are encoded again rather than kept: row errors are rare, copies are not.
                    // (They encoded before, so they do again; the pairs stay aligned regardless.)
                    (indices, rows) = rest
                        .into_iter()
                        .filter_map(|i| {
                            let row = storage_rows::row(&events[i], ingested_at).ok()?;
                            Some((i, row.encode_to_vec()))
                        })
                        .unzip();
                }
            }
        }
        results
    }

    /// Sends one AppendRows request on a connection of the pool and classifies the answer.
    async fn append_once(&self, rows: Vec<Vec<u8>>) -> Answer {
        let count = rows.len();
        let Ok(_permit) = self.slots.acquire().await else {
            return Answer::Failed(Failure {
                reason: "BigQuery sink is shut down".into(),
                schema_mismatch: false,
                cause: FailureCause::ShutDown,
            });
        };
        let reused = self.take_idle();
        let answer = match tokio::time::timeout(
            self.config.request_timeout,
            self.send(reused, rows),
        )
        .await
        {
            Ok(Ok((mut connection, response))) => {
                let answer = storage_outcomes::classify(count, &response);
                if !matches!(answer, Answer::Failed(_)) {
                    connection.last_used = Instant::now();
                    lock(&self.idle).push(connection);
                }
                answer
            }
            Ok(Err(failure)) => Answer::Failed(failure),
            Err(_) => Answer::Failed(Failure {
                reason: format!(
                    "AppendRows timed out after {:?}",
                    self.config.request_timeout
                ),
                schema_mismatch: false,
                cause: FailureCause::Timeout,
            }),
        };
        match &answer {
            Answer::Committed => *lock(&self.schema_problem) = None,
            Answer::Failed(failure) => {
                tracing::warn!(sink = NAME, table = %self.config.table_path(), rows = count, error = %failure.reason, "AppendRows failed; the rows will be retried");
                if failure.schema_mismatch {
                    *lock(&self.schema_problem) = Some(failure.reason.clone());
                }
            }
            Answer::RowErrors(_) => {}
        }
        answer
    }

    /// A reusable idle connection, if any; stale ones are closed.
    fn take_idle(&self) -> Option<Connection> {
        let now = Instant::now();
        let mut idle = lock(&self.idle);
        while let Some(connection) = idle.pop() {
            if connection.reusable(now) {
                return Some(connection);
            }
        }
        None
    }

    /// Sends `rows` on `connection` (or a new one) and waits for its one response.
    async fn send(
        &self,
        connection: Option<Connection>,
        rows: Vec<Vec<u8>>,
    ) -> Result<(Connection, AppendRowsResponse), Failure> {
        let mut connection = match connection {
            Some(connection) => match connection.requests.send(self.request(rows, false)).await {
                Ok(()) => connection,
                // The call had already ended, so the request never left: a new connection is safe.
                Err(mpsc::error::SendError(request)) => self.open(with_schema(request)).await?,
            },
            None => self.open(self.request(rows, true)).await?,
        };
        match connection.responses.message().await {
            Ok(Some(response)) => Ok((connection, response)),
            Ok(None) => Err(Failure {
                reason: "BigQuery closed the AppendRows connection without answering".into(),
                schema_mismatch: false,
                cause: FailureCause::Unavailable,
            }),
            Err(status) => Err(storage_outcomes::stream_failure(&status)),
        }
    }

    fn request(&self, rows: Vec<Vec<u8>>, include_schema: bool) -> AppendRowsRequest {
        AppendRowsRequest {
            write_stream: self.stream_name.clone(),
            trace_id: TRACE_ID.to_string(),
            rows: Some(Rows::ProtoRows(ProtoData {
                writer_schema: include_schema.then(storage_rows::writer_schema),
                rows: Some(ProtoRows {
                    serialized_rows: rows,
                }),
            })),
            ..AppendRowsRequest::default()
        }
    }

    /// Opens an AppendRows call whose first request is `first` (which carries the schema).
    async fn open(&self, first: AppendRowsRequest) -> Result<Connection, Failure> {
        let (requests, receiver) = mpsc::channel(1);
        let metadata = self.metadata().await?;
        // The first request is queued before the call starts: servers answer the headers only
        // with the first response.
        requests
            .send(first)
            .await
            .map_err(|_| transport("the request channel closed"))?;
        let request = Request::from_parts(
            metadata,
            Extensions::default(),
            ReceiverStream::new(receiver),
        );
        let responses = self
            .client()
            .append_rows(request)
            .await
            .map_err(|status| storage_outcomes::stream_failure(&status))?
            .into_inner();
        let now = Instant::now();
        Ok(Connection {
            requests,
            responses,
            opened: now,
            last_used: now,
        })
    }

    fn client(&self) -> BigQueryWriteClient<Channel> {
        BigQueryWriteClient::new(self.channel.clone())
            .max_encoding_message_size(MAX_APPEND_REQUEST_BYTES)
            .max_decoding_message_size(4 * 1024 * 1024)
    }

    /// Authorization and the routing header BigQuery expects on every call.
    async fn metadata(&self) -> Result<MetadataMap, Failure> {
        let mut metadata = match &self.credentials {
            Credentials::Fake => {
                let mut metadata = MetadataMap::new();
                metadata.insert(
                    "authorization",
                    MetadataValue::from_static("Bearer emulator-access-token"),
                );
                metadata
            }
            Credentials::Google(credentials) => {
                match credentials.headers(Extensions::default()).await {
                    Ok(google_cloud_auth::credentials::CacheableResource::New { data, .. }) => {
                        MetadataMap::from_headers(data)
                    }
                    Ok(google_cloud_auth::credentials::CacheableResource::NotModified) => {
                        return Err(transport("credentials returned no headers"));
                    }
                    Err(err) => return Err(transport(&format!("credentials: {err}"))),
                }
            }
        };
        let routing = format!("write_stream={}", percent_encode(&self.stream_name));
        let routing = routing
            .parse()
            .map_err(|_| transport("the stream name is not valid in a header"))?;
        metadata.insert("x-goog-request-params", routing);
        Ok(metadata)
    }

    /// Healthy when the default stream of the table answers (`GetWriteStream`), the table has
    /// the columns the gateway writes, and no append has reported a schema mismatch since the
    /// last one that succeeded.
    pub(crate) async fn health(&self) -> Result<(), SinkError> {
        let table = self.config.table_path();
        if let Some(problem) = lock(&self.schema_problem).clone() {
            return Err(SinkError::unhealthy(
                NAME,
                format!("table {table} does not accept the gateway's rows: {problem}"),
            ));
        }
        let check = async {
            let metadata = self.metadata().await.map_err(|f| f.reason)?;
            let request = Request::from_parts(
                metadata,
                Extensions::default(),
                GetWriteStreamRequest {
                    name: self.stream_name.clone(),
                    view: WriteStreamView::Full as i32,
                },
            );
            let stream = self
                .client()
                .get_write_stream(request)
                .await
                .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?
                .into_inner();
            match stream.table_schema {
                Some(schema) => schema_mismatches(&schema),
                None => Ok(()),
            }
        };
        match tokio::time::timeout(self.config.request_timeout, check).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(SinkError::unhealthy(
                NAME,
                format!("table {table}: {message}"),
            )),
            Err(_) => Err(SinkError::unhealthy(
                NAME,
                format!(
                    "table {table}: no answer within {:?}",
                    self.config.request_timeout
                ),
            )),
        }
    }

    /// Later appends are retryable; appends in flight finish, idle connections close.
    pub(crate) fn shutdown(&self) {
        self.slots.close();
        lock(&self.idle).clear();
    }
}

fn with_schema(mut request: AppendRowsRequest) -> AppendRowsRequest {
    if let Some(Rows::ProtoRows(data)) = &mut request.rows {
        data.writer_schema = Some(storage_rows::writer_schema());
    }
    request
}

fn transport(message: &str) -> Failure {
    Failure {
        reason: format!("AppendRows failed: {message}"),
        schema_mismatch: false,
        cause: FailureCause::Unavailable,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `value` with everything but unreserved characters percent-encoded, as in a query string.
fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Where the table's schema cannot take the rows the gateway writes: a column missing or of
/// another type, or a REQUIRED column the gateway does not fill.
fn schema_mismatches(table: &TableSchema) -> Result<(), String> {
    let ours = storage_rows::schema_columns();
    let mut problems = Vec::new();
    for (name, kind, _) in &ours {
        match table
            .fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
        {
            None => problems.push(format!("no column {name}")),
            Some(field) => {
                let theirs = Type::try_from(field.r#type).map_or("UNKNOWN", |t| t.as_str_name());
                let compatible = theirs == kind.as_str()
                    || (kind == "JSON" && theirs == "STRING")
                    || (kind == "STRING" && theirs == "JSON");
                if !compatible {
                    problems.push(format!("column {name} is {theirs}, not {kind}"));
                }
            }
        }
    }
    let written: BTreeSet<String> = ours.iter().map(|c| c.0.to_ascii_lowercase()).collect();
    for field in &table.fields {
        if field.mode == Mode::Required as i32
            && !written.contains(&field.name.to_ascii_lowercase())
        {
            problems.push(format!(
                "REQUIRED column {} is not written by the gateway",
                field.name
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the table's schema does not fit deploy/bigquery/events.schema.json: {}",
            problems.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gcp_bigquery_client::google::cloud::bigquery::storage::v1::TableFieldSchema;

    fn field(name: &str, kind: Type, mode: Mode) -> TableFieldSchema {
        TableFieldSchema {
            name: name.into(),
            r#type: kind as i32,
            mode: mode as i32,
            ..TableFieldSchema::default()
        }
    }

    fn shipped() -> Vec<TableFieldSchema> {
        storage_rows::schema_columns()
            .into_iter()
            .map(|(name, kind, required)| {
                let kind = Type::from_str_name(&kind).expect("a storage type");
                let mode = if required {
                    Mode::Required
                } else {
                    Mode::Nullable
                };
                field(&name, kind, mode)
            })
            .collect()
    }

    #[test]
    fn the_shipped_schema_fits_and_payload_may_be_a_string() {
        assert_eq!(
            schema_mismatches(&TableSchema { fields: shipped() }),
            Ok(())
        );
        let mut fields = shipped();
        for f in &mut fields {
            if f.name == "payload" {
                f.r#type = Type::String as i32;
            }
        }
        assert_eq!(schema_mismatches(&TableSchema { fields }), Ok(()));
    }

    #[test]
    fn missing_columns_other_types_and_extra_required_columns_do_not_fit() {
        let mut fields: Vec<_> = shipped()
            .into_iter()
            .filter(|f| f.name != "ingested_at")
            .collect();
        for f in &mut fields {
            if f.name == "event_timestamp" {
                f.r#type = Type::String as i32;
            }
        }
        fields.push(field("tenant", Type::String, Mode::Required));
        fields.push(field("note", Type::String, Mode::Nullable));
        let err = schema_mismatches(&TableSchema { fields }).expect_err("does not fit");
        assert!(err.contains("no column ingested_at"), "{err}");
        assert!(
            err.contains("column event_timestamp is STRING, not TIMESTAMP"),
            "{err}"
        );
        assert!(err.contains("REQUIRED column tenant"), "{err}");
        assert!(!err.contains("note"), "{err}");
    }

    #[test]
    fn the_routing_header_is_percent_encoded() {
        assert_eq!(
            percent_encode("projects/p-1/datasets/d_2/tables/t.3/streams/_default"),
            "projects%2Fp-1%2Fdatasets%2Fd_2%2Ftables%2Ft.3%2Fstreams%2F_default"
        );
    }
}
