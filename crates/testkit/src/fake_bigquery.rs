//! A fake BigQuery v2 endpoint over real HTTP on 127.0.0.1: `tabledata.insertAll` and
//! `tables.get`, with answers a test programs at run time and a record of every insertAll
//! request. For the error semantics the emulators do not reproduce faithfully (per-row
//! `invalid`/`stopped` errors, 5xx, 429, hanging responses).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How the fake answers one insertAll request.
#[derive(Debug, Clone, PartialEq)]
pub enum InsertReply {
    /// 200; every row not listed in `errors` counts as inserted.
    Inserted {
        /// Per-row errors: (row index in the request, reason), as in `insertErrors`.
        errors: Vec<(usize, String)>,
    },
    /// 200 with an `insertErrors` body given verbatim; no row counts as inserted.
    RawInsertErrors(Value),
    /// This HTTP status with a Google-style error body carrying `reason`; nothing is inserted.
    Status {
        /// The HTTP status.
        status: u16,
        /// The `errors[].reason` (`backendError`, `rateLimitExceeded`, `notFound`, ...).
        reason: String,
    },
    /// Never answer (the request must time out on the client side).
    Hang,
}

impl InsertReply {
    /// Every row inserted.
    pub fn ok() -> InsertReply {
        InsertReply::Inserted { errors: Vec::new() }
    }

    /// The rows at `rows` rejected with `reason` (`invalid`, `stopped`, ...), the rest inserted.
    pub fn row_errors(rows: &[usize], reason: &str) -> InsertReply {
        InsertReply::Inserted {
            errors: rows.iter().map(|row| (*row, reason.to_string())).collect(),
        }
    }

    /// What BigQuery answers when `invalid` rows are in a request without `skipInvalidRows`:
    /// those rows `invalid`, every other row of the request `stopped`, nothing inserted.
    pub fn invalid_and_stopped(invalid: &[usize], rows_in_request: usize) -> InsertReply {
        let errors = (0..rows_in_request)
            .map(|row| {
                let reason = if invalid.contains(&row) {
                    "invalid"
                } else {
                    "stopped"
                };
                (row, reason.to_string())
            })
            .collect();
        InsertReply::Inserted { errors }
    }

    /// An HTTP error status with `reason`.
    pub fn status(status: u16, reason: &str) -> InsertReply {
        InsertReply::Status {
            status,
            reason: reason.to_string(),
        }
    }
}

/// One insertAll request as the fake received it.
#[derive(Debug, Clone)]
pub struct RecordedInsert {
    /// `project.dataset.table` from the URL.
    pub table: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The `Content-Encoding` header, if any.
    pub content_encoding: Option<String>,
    /// The size of the request body in bytes.
    pub body_bytes: usize,
    /// The parsed body (`rows`, `skipInvalidRows`, ...); `Null` if it was not JSON.
    pub body: Value,
}

impl RecordedInsert {
    /// The rows' `insertId`s, in order.
    pub fn insert_ids(&self) -> Vec<String> {
        self.rows()
            .iter()
            .map(|row| row["insertId"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// The `rows` array of the request.
    pub fn rows(&self) -> Vec<Value> {
        self.body["rows"].as_array().cloned().unwrap_or_default()
    }
}

#[derive(Debug, Default)]
struct FakeState {
    replies: VecDeque<InsertReply>,
    default_reply: Option<InsertReply>,
    inserts: Vec<RecordedInsert>,
    stored: Vec<Value>,
    table_missing: bool,
    delay: Option<Duration>,
    in_flight: usize,
    max_in_flight: usize,
}

/// A running fake BigQuery; stops when dropped.
pub struct FakeBigQuery {
    addr: SocketAddr,
    state: Arc<Mutex<FakeState>>,
    server: JoinHandle<()>,
}

impl FakeBigQuery {
    /// Starts the fake on 127.0.0.1 and a free port; by default it inserts every row.
    pub async fn start() -> FakeBigQuery {
        let state = Arc::new(Mutex::new(FakeState::default()));
        let app = Router::new()
            .route(
                "/bigquery/v2/projects/{project}/datasets/{dataset}/tables/{table}/insertAll",
                post(insert_all),
            )
            .route(
                "/bigquery/v2/projects/{project}/datasets/{dataset}/tables/{table}",
                get(get_table),
            )
            // insertAll bodies reach 10 MB; axum's default limit is 2 MB.
            .layer(DefaultBodyLimit::disable())
            .with_state(state.clone());
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind the fake BigQuery");
        let addr = listener.local_addr().expect("local address");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeBigQuery {
            addr,
            state,
            server,
        }
    }

    /// The v2 base URL to configure as the sink's endpoint.
    pub fn v2_base_url(&self) -> String {
        format!("http://{}/bigquery/v2", self.addr)
    }

    /// The fake's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers the next insertAll requests with `replies`, in order, then with the default.
    pub fn push_replies(&self, replies: impl IntoIterator<Item = InsertReply>) {
        self.lock().replies.extend(replies);
    }

    /// Answers every insertAll request without a queued reply with `reply`.
    pub fn set_default_reply(&self, reply: InsertReply) {
        self.lock().default_reply = Some(reply);
    }

    /// Makes `tables.get` answer 404 (`true`) or the table (`false`).
    pub fn set_table_missing(&self, missing: bool) {
        self.lock().table_missing = missing;
    }

    /// Delays every insertAll answer by `delay` (to observe concurrency).
    pub fn set_delay(&self, delay: Duration) {
        self.lock().delay = Some(delay);
    }

    /// The most insertAll requests the fake was handling at once.
    pub fn max_in_flight(&self) -> usize {
        self.lock().max_in_flight
    }

    /// Every insertAll request received so far.
    pub fn inserts(&self) -> Vec<RecordedInsert> {
        self.lock().inserts.clone()
    }

    /// The rows (`{"insertId":..,"json":..}`) the fake reported as inserted, in arrival order.
    pub fn stored_rows(&self) -> Vec<Value> {
        self.lock().stored.clone()
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for FakeBigQuery {
    fn drop(&mut self) {
        self.server.abort();
    }
}

type Shared = Arc<Mutex<FakeState>>;

/// Counts a request as in flight until dropped (also when the client gives up on it).
struct InFlight(Shared);

impl InFlight {
    fn enter(state: &Shared) -> InFlight {
        let mut locked = state.lock().unwrap_or_else(PoisonError::into_inner);
        locked.in_flight += 1;
        locked.max_in_flight = locked.max_in_flight.max(locked.in_flight);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut locked = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        locked.in_flight = locked.in_flight.saturating_sub(1);
    }
}

fn header_value(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string)
}

async fn insert_all(
    State(state): State<Shared>,
    Path((project, dataset, table)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _in_flight = InFlight::enter(&state);
    let delay = state.lock().unwrap_or_else(PoisonError::into_inner).delay;
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let rows = parsed["rows"].as_array().cloned().unwrap_or_default();
    let reply = {
        let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
        state.inserts.push(RecordedInsert {
            table: format!("{project}.{dataset}.{table}"),
            authorization: header_value(&headers, header::AUTHORIZATION),
            content_encoding: header_value(&headers, header::CONTENT_ENCODING),
            body_bytes: body.len(),
            body: parsed,
        });
        let reply = state
            .replies
            .pop_front()
            .or_else(|| state.default_reply.clone())
            .unwrap_or_else(InsertReply::ok);
        if let InsertReply::Inserted { errors } = &reply {
            let stored: Vec<Value> = rows
                .iter()
                .enumerate()
                .filter(|(index, _)| !errors.iter().any(|(row, _)| row == index))
                .map(|(_, row)| row.clone())
                .collect();
            state.stored.extend(stored);
        }
        reply
    };
    match reply {
        InsertReply::Inserted { errors } => {
            let insert_errors: Vec<Value> = errors
                .iter()
                .map(|(index, reason)| {
                    let (location, message) = if reason == "stopped" {
                        ("", "")
                    } else {
                        ("payload", "the fake rejected this row")
                    };
                    json!({"index": index, "errors": [{"reason": reason, "location": location, "debugInfo": "", "message": message}]})
                })
                .collect();
            let mut body = json!({"kind": "bigquery#tableDataInsertAllResponse"});
            if !insert_errors.is_empty() {
                body["insertErrors"] = Value::Array(insert_errors);
            }
            axum::Json(body).into_response()
        }
        InsertReply::RawInsertErrors(insert_errors) => axum::Json(json!({
            "kind": "bigquery#tableDataInsertAllResponse",
            "insertErrors": insert_errors,
        }))
        .into_response(),
        InsertReply::Status { status, reason } => error_response(status, &reason),
        InsertReply::Hang => std::future::pending().await,
    }
}

async fn get_table(
    State(state): State<Shared>,
    Path((project, dataset, table)): Path<(String, String, String)>,
) -> Response {
    let missing = state
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .table_missing;
    if missing {
        return error_response(404, "notFound");
    }
    axum::Json(json!({
        "kind": "bigquery#table",
        "id": format!("{project}:{dataset}.{table}"),
        "tableReference": {"projectId": project, "datasetId": dataset, "tableId": table},
        "type": "TABLE",
        "schema": {"fields": events_schema()},
    }))
    .into_response()
}

/// The shipped table schema's fields.
fn events_schema() -> Value {
    serde_json::from_str(include_str!("../../../deploy/bigquery/events.schema.json"))
        .unwrap_or(Value::Null)
}

/// A Google API error body, as BigQuery sends it.
fn error_response(status: u16, reason: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({
        "error": {
            "code": status,
            "message": format!("the fake BigQuery answers {status} ({reason})"),
            "errors": [{"domain": "global", "reason": reason, "message": "fake"}],
            "status": code.canonical_reason().unwrap_or("UNKNOWN").to_uppercase().replace(' ', "_"),
        }
    });
    (code, axum::Json(body)).into_response()
}
