//! A fake BigQuery Storage Write API (`google.cloud.bigquery.storage.v1.BigQueryWrite`) over
//! real gRPC on 127.0.0.1: `AppendRows` and `GetWriteStream`, with answers a test programs at
//! run time and a record of every AppendRows request, its rows decoded with the writer schema the
//! client sent on that connection. For what the emulator does not reproduce: row errors, request
//! errors with `StorageError` details, a connection ending mid-stream, hanging answers, schema
//! mismatches.
//!
//! Like BigQuery, a connection's first request must carry the writer schema, and a request with
//! row errors commits nothing.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use gcp_bigquery_client::google::cloud::bigquery::storage::v1::append_rows_request::Rows;
use gcp_bigquery_client::google::cloud::bigquery::storage::v1::append_rows_response::{
    AppendResult, Response,
};
use gcp_bigquery_client::google::cloud::bigquery::storage::v1::storage_error::StorageErrorCode;
use gcp_bigquery_client::google::cloud::bigquery::storage::v1::table_field_schema::{Mode, Type};
use gcp_bigquery_client::google::cloud::bigquery::storage::v1::{
    AppendRowsRequest, AppendRowsResponse, GetWriteStreamRequest, RowError, StorageError,
    TableFieldSchema, TableSchema, WriteStream,
};
use gcp_bigquery_client::google::rpc::Status as RpcStatus;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use prost_types::{FileDescriptorProto, FileDescriptorSet};
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::server::{NamedService, StreamingService, UnaryService};
use tonic::{Code, Streaming};

const SERVICE: &str = "google.cloud.bigquery.storage.v1.BigQueryWrite";

/// How the fake answers one AppendRows request.
#[derive(Debug, Clone, PartialEq)]
pub enum AppendReply {
    /// Every row committed.
    Committed,
    /// These rows (index in the request, message) refused; nothing of the request committed.
    RowErrors(Vec<(usize, String)>),
    /// An `error` in the response (the connection stays open); nothing committed.
    Error {
        /// The gRPC code.
        code: Code,
        /// The message.
        message: String,
        /// A `StorageError` detail with this code, if any.
        storage_error: Option<StorageErrorCode>,
    },
    /// The whole AppendRows call ends with this status; nothing committed.
    EndStream(Code, String),
    /// Never answer (the client must time out).
    Hang,
}

impl AppendReply {
    /// The rows at `rows` refused with a `FIELDS_ERROR`.
    pub fn row_errors(rows: &[usize]) -> AppendReply {
        AppendReply::RowErrors(
            rows.iter()
                .map(|row| {
                    (
                        *row,
                        "Field payload: the fake rejected this row".to_string(),
                    )
                })
                .collect(),
        )
    }

    /// An error response with `code`.
    pub fn error(code: Code, message: &str) -> AppendReply {
        AppendReply::Error {
            code,
            message: message.to_string(),
            storage_error: None,
        }
    }

    /// BigQuery's answer when the table lacks a column the writer schema has.
    pub fn schema_mismatch() -> AppendReply {
        AppendReply::Error {
            code: Code::InvalidArgument,
            message:
                "Input schema has more fields than BigQuery schema, extra fields: 'ingested_at'"
                    .into(),
            storage_error: Some(StorageErrorCode::SchemaMismatchExtraFields),
        }
    }
}

/// One AppendRows request as the fake received it.
#[derive(Debug, Clone)]
pub struct RecordedAppend {
    /// Which AppendRows call (connection) carried it, counting from 0.
    pub connection: usize,
    /// The `write_stream` field.
    pub write_stream: String,
    /// Whether it carried a writer schema.
    pub has_writer_schema: bool,
    /// The encoded size of the request in bytes.
    pub encoded_len: usize,
    /// The call's `authorization` metadata.
    pub authorization: Option<String>,
    /// The call's `x-goog-request-params` metadata.
    pub routing: Option<String>,
    /// The rows, decoded with the connection's writer schema: column name → value (strings,
    /// int64s as numbers); absent columns are left out.
    pub rows: Vec<Map<String, Value>>,
}

impl RecordedAppend {
    /// The rows' `event_id`s, in order.
    pub fn event_ids(&self) -> Vec<String> {
        self.rows
            .iter()
            .map(|row| row["event_id"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

#[derive(Debug, Default)]
struct FakeState {
    replies: VecDeque<AppendReply>,
    appends: Vec<RecordedAppend>,
    stored: Vec<Map<String, Value>>,
    connections: usize,
    table_missing: bool,
    table_schema: Option<TableSchema>,
    delay: Option<Duration>,
    in_flight: usize,
    max_in_flight: usize,
}

type Shared = Arc<Mutex<FakeState>>;

fn lock(state: &Shared) -> MutexGuard<'_, FakeState> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running fake Storage Write API; stops when dropped.
pub struct FakeBigQueryWrite {
    addr: SocketAddr,
    state: Shared,
    server: JoinHandle<()>,
}

impl FakeBigQueryWrite {
    /// Starts the fake on 127.0.0.1 and a free port; by default it commits every request.
    pub async fn start() -> FakeBigQueryWrite {
        let state = Shared::default();
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind the fake Storage Write API");
        let addr = listener.local_addr().expect("local address");
        let service = WriteService(state.clone());
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        FakeBigQueryWrite {
            addr,
            state,
            server,
        }
    }

    /// The URL to configure as the sink's storage endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers the next AppendRows requests with `replies`, in order, then commits.
    pub fn push_replies(&self, replies: impl IntoIterator<Item = AppendReply>) {
        lock(&self.state).replies.extend(replies);
    }

    /// Makes `GetWriteStream` answer NOT_FOUND (`true`) or the stream (`false`).
    pub fn set_table_missing(&self, missing: bool) {
        lock(&self.state).table_missing = missing;
    }

    /// The table schema `GetWriteStream` reports (default: `deploy/bigquery/events.schema.json`).
    pub fn set_table_schema(&self, fields: Vec<TableFieldSchema>) {
        lock(&self.state).table_schema = Some(TableSchema { fields });
    }

    /// Delays every AppendRows answer by `delay` (to observe concurrency).
    pub fn set_delay(&self, delay: Duration) {
        lock(&self.state).delay = Some(delay);
    }

    /// The most AppendRows requests the fake was handling at once.
    pub fn max_in_flight(&self) -> usize {
        lock(&self.state).max_in_flight
    }

    /// How many AppendRows calls (connections) were opened.
    pub fn connections(&self) -> usize {
        lock(&self.state).connections
    }

    /// Every AppendRows request received so far.
    pub fn appends(&self) -> Vec<RecordedAppend> {
        lock(&self.state).appends.clone()
    }

    /// The rows committed, in arrival order.
    pub fn stored_rows(&self) -> Vec<Map<String, Value>> {
        lock(&self.state).stored.clone()
    }
}

impl Drop for FakeBigQueryWrite {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The shipped table schema, as `GetWriteStream` reports it.
pub fn shipped_table_schema() -> Vec<TableFieldSchema> {
    let columns: Vec<Value> =
        serde_json::from_str(include_str!("../../../deploy/bigquery/events.schema.json"))
            .expect("the shipped schema is JSON");
    columns
        .iter()
        .map(|column| TableFieldSchema {
            name: column["name"].as_str().unwrap_or_default().to_string(),
            r#type: Type::from_str_name(column["type"].as_str().unwrap_or_default())
                .unwrap_or(Type::String) as i32,
            mode: Mode::from_str_name(column["mode"].as_str().unwrap_or("NULLABLE"))
                .unwrap_or(Mode::Nullable) as i32,
            ..TableFieldSchema::default()
        })
        .collect()
}

/// Counts a request as in flight until dropped.
struct InFlight(Shared);

impl InFlight {
    fn enter(state: &Shared) -> InFlight {
        let mut locked = lock(state);
        locked.in_flight += 1;
        locked.max_in_flight = locked.max_in_flight.max(locked.in_flight);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut locked = lock(&self.0);
        locked.in_flight = locked.in_flight.saturating_sub(1);
    }
}

/// The message type of a writer schema.
fn row_descriptor(schema: &prost_types::DescriptorProto) -> Result<MessageDescriptor, String> {
    let file = FileDescriptorProto {
        name: Some("writer_schema.proto".into()),
        syntax: Some("proto2".into()),
        message_type: vec![schema.clone()],
        ..FileDescriptorProto::default()
    };
    let pool = DescriptorPool::from_file_descriptor_set(FileDescriptorSet { file: vec![file] })
        .map_err(|err| format!("invalid writer schema: {err}"))?;
    pool.get_message_by_name(schema.name())
        .ok_or_else(|| "the writer schema has no message".to_string())
}

fn decode_row(descriptor: &MessageDescriptor, row: &[u8]) -> Result<Map<String, Value>, String> {
    let message = DynamicMessage::decode(descriptor.clone(), row)
        .map_err(|err| format!("row does not decode with the writer schema: {err}"))?;
    let mut columns = Map::new();
    for field in descriptor.fields() {
        if !message.has_field(&field) {
            continue;
        }
        let value = match message.get_field(&field).as_ref() {
            prost_reflect::Value::String(s) => Value::String(s.clone()),
            prost_reflect::Value::I64(n) => Value::from(*n),
            other => Value::String(format!("{other:?}")),
        };
        columns.insert(field.name().to_string(), value);
    }
    Ok(columns)
}

fn error_response(
    code: Code,
    message: String,
    storage_error: Option<StorageErrorCode>,
) -> AppendRowsResponse {
    AppendRowsResponse {
        response: Some(Response::Error(RpcStatus {
            code: code as i32,
            details: storage_error
                .map(|code| prost_types::Any {
                    type_url: "type.googleapis.com/google.cloud.bigquery.storage.v1.StorageError"
                        .into(),
                    value: StorageError {
                        code: code as i32,
                        entity: String::new(),
                        error_message: message.clone(),
                    }
                    .encode_to_vec(),
                })
                .into_iter()
                .collect(),
            message,
        })),
        ..AppendRowsResponse::default()
    }
}

/// Handles one AppendRows call: one answer per request, in order.
async fn serve_append_rows(
    state: Shared,
    connection: usize,
    authorization: Option<String>,
    routing: Option<String>,
    mut requests: Streaming<AppendRowsRequest>,
    responses: mpsc::Sender<Result<AppendRowsResponse, tonic::Status>>,
) {
    let mut descriptor: Option<MessageDescriptor> = None;
    while let Some(Ok(request)) = requests.next().await {
        let _in_flight = InFlight::enter(&state);
        let delay = lock(&state).delay;
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let encoded_len = request.encoded_len();
        let Some(Rows::ProtoRows(data)) = request.rows else {
            let _ = responses
                .send(Ok(error_response(
                    Code::InvalidArgument,
                    "no proto rows".into(),
                    None,
                )))
                .await;
            continue;
        };
        let has_writer_schema = data.writer_schema.is_some();
        if let Some(schema) = data.writer_schema.and_then(|s| s.proto_descriptor) {
            match row_descriptor(&schema) {
                Ok(found) => descriptor = Some(found),
                Err(message) => {
                    let _ = responses
                        .send(Ok(error_response(Code::InvalidArgument, message, None)))
                        .await;
                    continue;
                }
            }
        }
        let Some(row_type) = &descriptor else {
            let message = "proto_rows sent without prior writer_schema on this connection";
            let _ = responses
                .send(Ok(error_response(
                    Code::InvalidArgument,
                    message.into(),
                    None,
                )))
                .await;
            continue;
        };
        let decoded: Result<Vec<_>, String> = data
            .rows
            .map(|rows| rows.serialized_rows)
            .unwrap_or_default()
            .iter()
            .map(|row| decode_row(row_type, row))
            .collect();
        let rows = match decoded {
            Ok(rows) => rows,
            Err(message) => {
                let _ = responses
                    .send(Ok(error_response(Code::InvalidArgument, message, None)))
                    .await;
                continue;
            }
        };
        let reply = {
            let mut locked = lock(&state);
            locked.appends.push(RecordedAppend {
                connection,
                write_stream: request.write_stream.clone(),
                has_writer_schema,
                encoded_len,
                authorization: authorization.clone(),
                routing: routing.clone(),
                rows: rows.clone(),
            });
            let reply = locked.replies.pop_front().unwrap_or(AppendReply::Committed);
            if reply == AppendReply::Committed {
                locked.stored.extend(rows);
            }
            reply
        };
        let response = match reply {
            AppendReply::Committed => AppendRowsResponse {
                response: Some(Response::AppendResult(AppendResult { offset: None })),
                write_stream: request.write_stream,
                ..AppendRowsResponse::default()
            },
            AppendReply::RowErrors(errors) => AppendRowsResponse {
                row_errors: errors
                    .into_iter()
                    .map(|(index, message)| RowError {
                        index: i64::try_from(index).unwrap_or(i64::MAX),
                        code: 1,
                        message,
                    })
                    .collect(),
                ..error_response(
                    Code::InvalidArgument,
                    "Errors found while processing rows.".into(),
                    None,
                )
            },
            AppendReply::Error {
                code,
                message,
                storage_error,
            } => error_response(code, message, storage_error),
            AppendReply::EndStream(code, message) => {
                let _ = responses.send(Err(tonic::Status::new(code, message))).await;
                return;
            }
            AppendReply::Hang => {
                responses.closed().await;
                return;
            }
        };
        if responses.send(Ok(response)).await.is_err() {
            return;
        }
    }
}

#[derive(Clone)]
struct WriteService(Shared);

impl NamedService for WriteService {
    const NAME: &'static str = SERVICE;
}

struct AppendRowsMethod(Shared);

impl StreamingService<AppendRowsRequest> for AppendRowsMethod {
    type Response = AppendRowsResponse;
    type ResponseStream = ReceiverStream<Result<AppendRowsResponse, tonic::Status>>;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<Streaming<AppendRowsRequest>>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let header = |name: &str| {
                request
                    .metadata()
                    .get(name)
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_string)
            };
            let authorization = header("authorization");
            let routing = header("x-goog-request-params");
            let connection = {
                let mut locked = lock(&state);
                locked.connections += 1;
                locked.connections - 1
            };
            let (sender, receiver) = mpsc::channel(4);
            tokio::spawn(serve_append_rows(
                state,
                connection,
                authorization,
                routing,
                request.into_inner(),
                sender,
            ));
            Ok(tonic::Response::new(ReceiverStream::new(receiver)))
        })
    }
}

struct GetWriteStreamMethod(Shared);

impl UnaryService<GetWriteStreamRequest> for GetWriteStreamMethod {
    type Response = WriteStream;
    type Future = BoxFuture<tonic::Response<WriteStream>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<GetWriteStreamRequest>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let (missing, schema) = {
                let locked = lock(&state);
                (locked.table_missing, locked.table_schema.clone())
            };
            let name = request.into_inner().name;
            if missing {
                return Err(tonic::Status::not_found(format!(
                    "Requested entity was not found. Entity: {name}"
                )));
            }
            Ok(tonic::Response::new(WriteStream {
                name,
                table_schema: Some(schema.unwrap_or_else(|| TableSchema {
                    fields: shipped_table_schema(),
                })),
                location: "us".into(),
                ..WriteStream::default()
            }))
        })
    }
}

impl<B> Service<http::Request<B>> for WriteService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let state = self.0.clone();
        let path = request.uri().path().to_string();
        Box::pin(async move {
            // Requests reach 10 MB; tonic's default decoding limit is 4 MiB.
            let limit = Some(20 * 1024 * 1024);
            let response = if path == format!("/{SERVICE}/AppendRows") {
                tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
                    .apply_max_message_size_config(limit, None)
                    .streaming(AppendRowsMethod(state), request)
                    .await
            } else if path == format!("/{SERVICE}/GetWriteStream") {
                tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
                    .apply_max_message_size_config(limit, None)
                    .unary(GetWriteStreamMethod(state), request)
                    .await
            } else {
                tonic::Status::unimplemented(path).into_http()
            };
            Ok(response)
        })
    }
}
