//! The `file` sink's settings: fsynced NDJSON files (also where dead letters go with a directory).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use telemetry_gateway_sink::file::{DEFAULT_DIR, DEFAULT_MAX_FILE_BYTES};
use telemetry_gateway_sink::{EventSink, FileSink, FileSinkConfig};

use super::SinkSettings;
use crate::config::{ConfigError, ConfigErrors};

/// `TELEMETRY_GATEWAY_EVENTS_FILE_DIR`.
pub const DIR: &str = "TELEMETRY_GATEWAY_EVENTS_FILE_DIR";
/// `TELEMETRY_GATEWAY_EVENTS_FILE_MAX_BYTES`.
pub const MAX_BYTES: &str = "TELEMETRY_GATEWAY_EVENTS_FILE_MAX_BYTES";

/// The file sink's settings.
#[derive(Debug, Clone, Args)]
pub struct FileSettings {
    /// Directory of the file sink's NDJSON files (created if missing).
    #[arg(long = "events-file-dir", env = DIR, default_value = DEFAULT_DIR)]
    pub file_dir: PathBuf,

    /// Size at which the file sink starts a new file, in bytes.
    #[arg(long = "events-file-max-bytes", env = MAX_BYTES, default_value_t = DEFAULT_MAX_FILE_BYTES)]
    pub file_max_bytes: u64,
}

impl FileSettings {
    /// The sink's configuration for files in `dir` (the events directory, or the dead letters').
    pub fn config(&self, dir: PathBuf) -> Result<FileSinkConfig, ConfigErrors> {
        if self.file_max_bytes == 0 {
            return Err(ConfigError::Invalid {
                setting: MAX_BYTES,
                message: "must be greater than 0".into(),
            }
            .into());
        }
        Ok(FileSinkConfig {
            dir,
            max_file_bytes: self.file_max_bytes,
        })
    }
}

impl SinkSettings for FileSettings {
    const CLOUD: bool = false;

    fn validate(&self) -> Result<(), ConfigErrors> {
        self.config(self.file_dir.clone()).map(drop)
    }

    async fn build(&self) -> anyhow::Result<Arc<dyn EventSink>> {
        let sink = FileSink::open(self.config(self.file_dir.clone())?).context(DIR)?;
        Ok(Arc::new(sink))
    }
}
