//! The file sink: newline-delimited JSON on local disk, the embedded default.
//!
//! Each event becomes one line, its payload bytes followed by `\n`, so the files load with
//! `bq load --source_format=NEWLINE_DELIMITED_JSON` as they are. An event is reported delivered
//! only after its line was written and `fsync`ed.
//!
//! One dedicated writer thread owns the open file. Publishers queue their batches to it; it takes
//! everything queued, appends it, syncs once and then answers every waiter (group commit), so
//! many concurrent streams share each fsync. When a group cannot be made durable, the file is cut
//! back to its length before the group (and the cut fsynced) and every event of the group is
//! reported retryable. Disk space is reserved a few MiB ahead of the file's end, so that appends
//! allocate no blocks, and given back when the file is finished.
//!
//! A finished file is sealed (read-only). At start, files left unsealed by a crash are repaired:
//! cut back to their complete JSON lines (see `segment`). So every file in the directory holds
//! complete NDJSON lines; after a crash, the last lines of a repaired file may be events whose
//! senders were not yet answered (they resend them: at least once, de-duplicated by event ID).

mod fault;
mod segment;
mod writer;

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, oneshot};

#[doc(hidden)]
pub use self::fault::{FaultInjection, Step};
use self::writer::{Batch, Lines, Writer};
use crate::{EventSink, FailureCause, PreparedEvent, PublishOutcome, SinkError};

const NAME: &str = "file";
const MIB: u64 = 1024 * 1024;

/// The default directory of the event files.
pub const DEFAULT_DIR: &str = "./data/events";

/// The default size at which the file sink starts a new file: 128 MiB.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 128 * MIB;

/// How many bytes of queued batches may wait for the writer before publishers wait too.
const QUEUE_BUDGET_BYTES: usize = 64 * 1024 * 1024;

/// What each queued batch costs beyond its lines (reply channel, bookkeeping), so that a flood of
/// tiny batches is bounded as well.
const BATCH_OVERHEAD_BYTES: usize = 256;

const SHUT_DOWN: &str = "file sink is shut down";
const WRITER_STOPPED: &str = "file sink writer stopped before confirming the write";

/// Where and how the file sink writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSinkConfig {
    /// The directory for event files; created if missing.
    pub dir: PathBuf,
    /// The size in bytes past which no file grows, unless a single batch is larger on its own.
    pub max_file_bytes: u64,
}

impl Default for FileSinkConfig {
    fn default() -> Self {
        FileSinkConfig {
            dir: PathBuf::from(DEFAULT_DIR),
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
        }
    }
}

/// Appends events as NDJSON lines to size-rotated files and acknowledges them once fsynced.
#[derive(Debug)]
pub struct FileSink {
    config: FileSinkConfig,
    /// Taken at shutdown; the writer stops once every clone of it is gone.
    queue: Mutex<Option<mpsc::UnboundedSender<Batch>>>,
    /// Bytes the queue may still hold (see [`QUEUE_BUDGET_BYTES`]).
    budget: Arc<Semaphore>,
    /// Resolves when the writer has answered its last batch and closed its file.
    writer_done: Mutex<Option<oneshot::Receiver<()>>>,
    shared: Arc<Shared>,
}

/// What the writer reports back to the sink.
#[derive(Debug, Default)]
struct Shared {
    files: Mutex<Files>,
    syncs: AtomicU64,
}

#[derive(Debug, Default)]
struct Files {
    /// Files written by this sink, in creation order.
    all: Vec<PathBuf>,
    /// The file the next group goes to, if one is open.
    current: Option<PathBuf>,
}

impl Shared {
    fn lock_files(&self) -> MutexGuard<'_, Files> {
        lock(&self.files)
    }
}

impl FileSink {
    /// Creates the directory if needed, repairs files an earlier run left unfinished, starts a
    /// new file and starts the writer thread.
    ///
    /// Files of earlier runs are otherwise left as they are; this sink never appends to them.
    pub fn open(config: FileSinkConfig) -> Result<FileSink, SinkError> {
        Self::open_with_faults(config, FaultInjection::default())
    }

    /// [`FileSink::open`] with switchable write and fsync faults, for tests.
    #[doc(hidden)]
    pub fn open_with_faults(
        config: FileSinkConfig,
        faults: FaultInjection,
    ) -> Result<FileSink, SinkError> {
        if config.max_file_bytes == 0 {
            return Err(SinkError::config(
                NAME,
                "max_file_bytes must be at least 1".to_string(),
            ));
        }
        fs::create_dir_all(&config.dir).map_err(|error| {
            SinkError::config(
                NAME,
                format!("cannot create directory {}: {error}", config.dir.display()),
            )
        })?;
        let repair = segment::repair(&config.dir, &faults).map_err(|error| {
            SinkError::config(
                NAME,
                format!(
                    "cannot repair the event files under {}: {error}",
                    config.dir.display()
                ),
            )
        })?;
        log_repair(&repair);
        // Creating the first file is the writability check.
        let first = segment::create(&config.dir, &faults).map_err(|error| {
            SinkError::config(
                NAME,
                format!(
                    "cannot create a file under {}: {error}",
                    config.dir.display()
                ),
            )
        })?;

        let shared = Arc::new(Shared::default());
        let writer = Writer::new(
            config.dir.clone(),
            config.max_file_bytes,
            first,
            Arc::clone(&shared),
            faults,
        );
        let (queue, batches) = mpsc::unbounded_channel();
        let (done, writer_done) = oneshot::channel();
        thread::Builder::new()
            .name("file-sink-writer".to_string())
            .spawn(move || {
                writer.run(batches);
                let _ = done.send(());
            })
            .map_err(|source| SinkError::Io { sink: NAME, source })?;

        Ok(FileSink {
            config,
            queue: Mutex::new(Some(queue)),
            budget: Arc::new(Semaphore::new(QUEUE_BUDGET_BYTES)),
            writer_done: Mutex::new(Some(writer_done)),
            shared,
        })
    }

    /// The directory this sink writes to.
    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    /// The file the next events go to, if one is open.
    pub fn current_path(&self) -> Option<PathBuf> {
        self.shared.lock_files().current.clone()
    }

    /// Every file this sink has written so far, in creation (and name) order.
    pub fn files(&self) -> Vec<PathBuf> {
        self.shared.lock_files().all.clone()
    }

    /// How many successful fsyncs made events durable (each covers one whole group).
    pub fn syncs(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }

    fn queue(&self) -> Option<mpsc::UnboundedSender<Batch>> {
        lock(&self.queue).clone()
    }

    /// Queues `lines` (`events` events, `size` bytes with their line breaks) and waits until the
    /// writer has made them durable or given up on them.
    async fn append(
        &self,
        queue: mpsc::UnboundedSender<Batch>,
        lines: Lines,
        events: usize,
        size: usize,
    ) -> Result<(), String> {
        let charge = (size + BATCH_OVERHEAD_BYTES).min(QUEUE_BUDGET_BYTES);
        let charge = u32::try_from(charge).unwrap_or(u32::MAX);
        let budget = Arc::clone(&self.budget)
            .acquire_many_owned(charge)
            .await
            .map_err(|_| SHUT_DOWN.to_string())?;

        let (reply, answer) = oneshot::channel();
        queue
            .send(Batch {
                lines,
                events,
                size: size as u64,
                reply,
                _budget: budget,
            })
            .map_err(|_| WRITER_STOPPED.to_string())?;
        drop(queue);
        answer
            .await
            .unwrap_or_else(|_| Err(WRITER_STOPPED.to_string()))
    }

    /// Appends the events as lines: `ndjson` as one piece when it is their text, else each
    /// payload that can be one line (the others are refused as invalid).
    async fn publish_lines(
        &self,
        events: &[PreparedEvent],
        ndjson: Option<&Bytes>,
    ) -> Vec<PublishOutcome> {
        if events.is_empty() {
            return Vec::new();
        }
        let Some(queue) = self.queue() else {
            return PublishOutcome::all_retryable(events.len(), FailureCause::ShutDown, SHUT_DOWN);
        };
        if let Some(text) = ndjson.filter(|text| is_ndjson_of(text, events)) {
            let lines = Lines::Text(text.clone());
            return match self.append(queue, lines, events.len(), text.len()).await {
                Ok(()) => vec![PublishOutcome::Delivered; events.len()],
                Err(reason) => {
                    PublishOutcome::all_retryable(events.len(), FailureCause::Io, reason)
                }
            };
        }
        let verdicts: Vec<Result<(), String>> = events
            .iter()
            .map(|event| fits_one_line(&event.payload))
            .collect();
        // The lines to write (shared with the events, not copied) and the bytes they take.
        let lines: Vec<Bytes> = events
            .iter()
            .zip(&verdicts)
            .filter(|(_, verdict)| verdict.is_ok())
            .map(|(event, _)| event.payload.clone())
            .collect();
        let size: usize = lines.iter().map(|line| line.len() + 1).sum();
        let written = if lines.is_empty() {
            Ok(())
        } else {
            let count = lines.len();
            self.append(queue, Lines::Payloads(lines), count, size)
                .await
        };
        verdicts
            .into_iter()
            .map(|verdict| match (verdict, &written) {
                (Err(reason), _) => PublishOutcome::permanent(FailureCause::Invalid, reason),
                (Ok(()), Ok(())) => PublishOutcome::Delivered,
                (Ok(()), Err(reason)) => {
                    PublishOutcome::retryable(FailureCause::Io, reason.clone())
                }
            })
            .collect()
    }
}

#[async_trait]
impl EventSink for FileSink {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn publish(&self, events: &[PreparedEvent]) -> Vec<PublishOutcome> {
        self.publish_lines(events, None).await
    }

    /// Writes `ndjson` as it is when it holds exactly the events' lines (one buffer for the
    /// whole batch instead of two per event); otherwise publishes the events a line at a time.
    async fn publish_ndjson(
        &self,
        events: &[PreparedEvent],
        ndjson: &Bytes,
    ) -> Vec<PublishOutcome> {
        self.publish_lines(events, Some(ndjson)).await
    }

    /// A line is the payload alone.
    fn reads_attributes(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        format!(
            "NDJSON files under {} (rotated at {})",
            self.config.dir.display(),
            FileSize(self.config.max_file_bytes)
        )
    }

    async fn health(&self) -> Result<(), SinkError> {
        let Some(queue) = self.queue() else {
            return Err(SinkError::unhealthy(NAME, SHUT_DOWN.to_string()));
        };
        if queue.is_closed() {
            return Err(SinkError::unhealthy(
                NAME,
                "the writer thread is not running".to_string(),
            ));
        }
        let dir = self.config.dir.clone();
        match tokio::task::spawn_blocking(move || segment::probe_writable(&dir)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(SinkError::unhealthy(
                NAME,
                format!(
                    "directory {} is not writable: {error}",
                    self.config.dir.display()
                ),
            )),
            Err(error) => Err(SinkError::unhealthy(
                NAME,
                format!("the writability probe failed: {error}"),
            )),
        }
    }

    /// Stops accepting events, waits until everything queued is written and synced, and closes
    /// the file.
    async fn shutdown(&self) -> Result<(), SinkError> {
        drop(lock(&self.queue).take());
        let writer_done = lock(&self.writer_done).take();
        match writer_done {
            None => Ok(()),
            Some(done) => done.await.map_err(|_| {
                SinkError::unhealthy(NAME, "the writer thread stopped unexpectedly".to_string())
            }),
        }
    }
}

/// Reports what the start-up repair changed: each cut or removal is a warning, since it means
/// the previous process stopped while writing.
fn log_repair(repair: &segment::Repair) {
    for (path, bytes) in &repair.cut {
        tracing::warn!(sink = NAME, path = %path.display(), bytes, "cut an incomplete tail off an event file left unfinished by an earlier run");
    }
    for path in &repair.removed {
        tracing::warn!(sink = NAME, path = %path.display(), "removed an event file without complete lines left by an earlier run");
    }
    if repair.checked > 0 {
        tracing::info!(
            sink = NAME,
            files = repair.checked,
            "checked and sealed the event files an earlier run left unfinished"
        );
    }
}

/// Whether a payload can be written as exactly one NDJSON line; a line break would split it and
/// corrupt the file for every loader.
fn fits_one_line(payload: &[u8]) -> Result<(), String> {
    if payload.is_empty() {
        Err("the payload is empty and cannot be an NDJSON line".to_string())
    } else if memchr::memchr(b'\n', payload).is_some() {
        Err("the payload contains a line break and cannot be one NDJSON line".to_string())
    } else {
        Ok(())
    }
}

/// Whether `text` is exactly the lines of `events`: each payload, one line, followed by a line
/// break, in order, and nothing else. The gateway's payloads are slices of the text they were
/// rendered into, so the usual check is one pointer comparison per event (the same place and
/// length is the same bytes); payloads from elsewhere are compared byte by byte.
fn is_ndjson_of(text: &[u8], events: &[PreparedEvent]) -> bool {
    let mut rest = text;
    for event in events {
        let payload = &event.payload[..];
        let Some((line, after)) = rest.split_at_checked(payload.len()) else {
            return false;
        };
        let same = std::ptr::eq(line.as_ptr(), payload.as_ptr()) || line == payload;
        let Some((b'\n', after)) = after.split_first() else {
            return false;
        };
        if !same || fits_one_line(payload).is_err() {
            return false;
        }
        rest = after;
    }
    rest.is_empty()
}

/// A size shown in MiB when it is a whole number of them, in bytes otherwise.
struct FileSize(u64);

impl fmt::Display for FileSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(MIB) {
            write!(f, "{} MiB", self.0 / MIB)
        } else {
            write!(f, "{} bytes", self.0)
        }
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
