//! The `bigquery` sink's settings: one row per event in a BigQuery table.

use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};
use telemetry_gateway_sink::bigquery::{DEFAULT_REQUEST_TIMEOUT, WriteApi};
use telemetry_gateway_sink::{BigQuerySink, BigQuerySinkConfig, EventSink};

use super::SinkSettings;
use crate::config::{ConfigError, ConfigErrors, non_blank, required};

/// `TELEMETRY_GATEWAY_EVENTS_BIGQUERY_PROJECT_ID`.
pub const PROJECT_ID: &str = "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_PROJECT_ID";
/// `TELEMETRY_GATEWAY_EVENTS_BIGQUERY_DATASET_ID`.
pub const DATASET_ID: &str = "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_DATASET_ID";
/// `TELEMETRY_GATEWAY_EVENTS_BIGQUERY_TABLE_ID`.
pub const TABLE_ID: &str = "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_TABLE_ID";
/// `TELEMETRY_GATEWAY_EVENTS_BIGQUERY_WRITE_API`.
pub const WRITE_API: &str = "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_WRITE_API";
/// `TELEMETRY_GATEWAY_EVENTS_BIGQUERY_ENDPOINT`.
pub const ENDPOINT: &str = "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_ENDPOINT";
/// `TELEMETRY_GATEWAY_EVENTS_BIGQUERY_STORAGE_ENDPOINT`.
pub const STORAGE_ENDPOINT: &str = "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_STORAGE_ENDPOINT";
/// `TELEMETRY_GATEWAY_EVENTS_BIGQUERY_REQUEST_TIMEOUT_SECONDS`.
pub const REQUEST_TIMEOUT_SECONDS: &str =
    "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_REQUEST_TIMEOUT_SECONDS";

/// The BigQuery sink's settings.
#[derive(Debug, Clone, Args)]
pub struct BigQuerySettings {
    /// Google Cloud project of the BigQuery table events are inserted into.
    #[arg(long = "events-bigquery-project-id", env = PROJECT_ID)]
    pub bigquery_project_id: Option<String>,

    /// BigQuery dataset of the events table.
    #[arg(long = "events-bigquery-dataset-id", env = DATASET_ID)]
    pub bigquery_dataset_id: Option<String>,

    /// BigQuery table events are inserted into, one row per event (schema:
    /// `deploy/bigquery/events.schema.json`). Setting it selects the `bigquery` sink when
    /// `TELEMETRY_GATEWAY_EVENTS_SINKS` is not set.
    #[arg(long = "events-bigquery-table-id", env = TABLE_ID)]
    pub bigquery_table_id: Option<String>,

    /// The BigQuery API rows are written with: `storage` (the Storage Write API, table's default
    /// stream; billed by actual bytes) or `insert_all` (the legacy streaming API; billed per row
    /// with a 1 KB minimum). See docs/sinks.md for the costs of each.
    #[arg(long = "events-bigquery-write-api",
        env = WRITE_API,
        value_enum,
        default_value_t = BigQueryWriteApi::Storage
    )]
    pub bigquery_write_api: BigQueryWriteApi,

    /// BigQuery v2 base URL replacing Google's (for emulators and tests, e.g.
    /// `http://127.0.0.1:9050/bigquery/v2`); a fake access token is sent to it. Unset: Google's
    /// endpoint with application default credentials. Used by `insert_all`.
    #[arg(long = "events-bigquery-endpoint", env = ENDPOINT)]
    pub bigquery_endpoint: Option<String>,

    /// BigQuery Storage Write API gRPC URL replacing Google's (for emulators and tests, e.g.
    /// `http://127.0.0.1:9060`); a fake access token is sent to it. Unset: Google's endpoint
    /// with application default credentials. Used by `storage`.
    #[arg(long = "events-bigquery-storage-endpoint", env = STORAGE_ENDPOINT)]
    pub bigquery_storage_endpoint: Option<String>,

    /// How long one BigQuery request (insertAll or AppendRows, or a health check) may take
    /// before its events count as not delivered (retryable), in seconds.
    #[arg(long = "events-bigquery-request-timeout-seconds",
        env = REQUEST_TIMEOUT_SECONDS,
        default_value_t = DEFAULT_REQUEST_TIMEOUT.as_secs()
    )]
    pub bigquery_request_timeout_seconds: u64,
}

/// The BigQuery API the `bigquery` sink writes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BigQueryWriteApi {
    /// The Storage Write API (default stream).
    Storage,
    /// The legacy streaming API, `tabledata.insertAll`.
    #[value(name = "insert_all")]
    InsertAll,
}

impl BigQuerySettings {
    /// Whether the settings ask for BigQuery when no sink list is given: a table is set.
    pub fn requested(&self) -> bool {
        self.bigquery_table_id.is_some()
    }

    /// The sink's configuration; project, dataset and table must all be set.
    pub fn config(&self) -> Result<BigQuerySinkConfig, ConfigErrors> {
        let mut problems = ConfigErrors::default();
        let project = required(
            &mut problems,
            &self.bigquery_project_id,
            PROJECT_ID,
            "bigquery",
        );
        let dataset = required(
            &mut problems,
            &self.bigquery_dataset_id,
            DATASET_ID,
            "bigquery",
        );
        let table = required(&mut problems, &self.bigquery_table_id, TABLE_ID, "bigquery");
        if self.bigquery_request_timeout_seconds == 0 {
            problems.push(ConfigError::Invalid {
                setting: REQUEST_TIMEOUT_SECONDS,
                message: "must be greater than 0".into(),
            });
        }
        let endpoint = non_blank(&self.bigquery_endpoint);
        let storage_endpoint = non_blank(&self.bigquery_storage_endpoint);
        let write_api = match self.bigquery_write_api {
            BigQueryWriteApi::Storage => WriteApi::Storage,
            BigQueryWriteApi::InsertAll => WriteApi::InsertAll,
        };
        if write_api == WriteApi::Storage && endpoint.is_some() && storage_endpoint.is_none() {
            // An emulator for one API and Google's real endpoint for the other would send test
            // rows to production.
            problems.push(ConfigError::Invalid {
                setting: STORAGE_ENDPOINT,
                message: format!(
                    "required with {ENDPOINT} when {WRITE_API}=storage (the default); or set \
                     {WRITE_API}=insert_all"
                ),
            });
        }
        problems.into_result()?;
        let mut config = BigQuerySinkConfig::new(project, dataset, table);
        config.request_timeout =
            std::time::Duration::from_secs(self.bigquery_request_timeout_seconds);
        config.endpoint = endpoint;
        config.storage_endpoint = storage_endpoint;
        config.write_api = write_api;
        Ok(config)
    }
}

impl SinkSettings for BigQuerySettings {
    const CLOUD: bool = true;

    fn validate(&self) -> Result<(), ConfigErrors> {
        self.config().map(drop)
    }

    async fn build(&self) -> anyhow::Result<Arc<dyn EventSink>> {
        let sink = BigQuerySink::connect(self.config()?)
            .await
            .context("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_*")?;
        Ok(Arc::new(sink))
    }
}
