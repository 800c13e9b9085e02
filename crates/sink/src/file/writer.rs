//! The one thread that appends to event files: group commit, rotation and roll-back.

use std::io;
use std::mem;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use super::Shared;
use super::fault::FaultInjection;
use super::segment::{self, Segment};

/// One publish call's accepted events, waiting for the writer to append them as NDJSON lines.
#[derive(Debug)]
pub(super) struct Batch {
    /// The lines (shared with the publisher's events, not copied).
    pub(super) lines: Lines,
    /// How many events they are.
    pub(super) events: usize,
    /// The bytes they take in the file, line breaks included.
    pub(super) size: u64,
    /// Answered once the lines are durable (`Ok`) or certainly not in the file (`Err`).
    pub(super) reply: oneshot::Sender<Result<(), String>>,
    /// This batch's share of the queue budget, released when the batch is answered.
    pub(super) _budget: OwnedSemaphorePermit,
}

/// A batch's lines, in one of the two forms a publisher has them.
#[derive(Debug)]
pub(super) enum Lines {
    /// NDJSON text: whole lines, each with its line break (the events' payloads as rendered,
    /// one after another).
    Text(Bytes),
    /// Payloads, each one line without its line break.
    Payloads(Vec<Bytes>),
}

impl Lines {
    /// The pieces that append these lines, in order.
    fn pieces(&self) -> impl Iterator<Item = &[u8]> {
        let (text, payloads): (Option<&[u8]>, &[Bytes]) = match self {
            Lines::Text(text) => (Some(text), &[]),
            Lines::Payloads(payloads) => (None, payloads),
        };
        text.into_iter()
            .chain(payloads.iter().flat_map(|line| [&line[..], b"\n"]))
    }
}

/// Why a group could not be made durable.
#[derive(Debug)]
enum Failure {
    Open(io::Error),
    Write(io::Error),
    Sync(io::Error),
}

/// Owns the current file; runs on its own thread.
#[derive(Debug)]
pub(super) struct Writer {
    dir: PathBuf,
    max_file_bytes: u64,
    current: Option<Segment>,
    shared: Arc<Shared>,
    faults: FaultInjection,
}

impl Writer {
    pub(super) fn new(
        dir: PathBuf,
        max_file_bytes: u64,
        first: Segment,
        shared: Arc<Shared>,
        faults: FaultInjection,
    ) -> Self {
        announce(&shared, &first.path);
        Writer {
            dir,
            max_file_bytes,
            current: Some(first),
            shared,
            faults,
        }
    }

    /// Writes groups until every sender is gone and the queue is empty, then closes the file.
    pub(super) fn run(mut self, mut queue: mpsc::UnboundedReceiver<Batch>) {
        while let Some(first) = queue.blocking_recv() {
            let mut group = vec![first];
            // Let the publishers run first when they are waiting for this CPU (one system call
            // that returns at once when they are not): what they queue meanwhile shares this
            // group's fsync. On a busy single CPU, where each wake-up would otherwise preempt
            // the publisher and sync one batch alone, this cuts the fsyncs by over a third and may
            // hold the group back for up to a time slice (docs/performance.md).
            std::thread::yield_now();
            // Everything that queued up during the previous fsync shares the next one.
            while let Ok(next) = queue.try_recv() {
                group.push(next);
            }
            self.write_group(group);
        }
        self.retire();
    }

    /// Appends a group, rotating before any batch that would push the file past its limit.
    fn write_group(&mut self, group: Vec<Batch>) {
        let mut pending = Vec::with_capacity(group.len());
        let mut pending_bytes = 0;
        for batch in group {
            let size = batch.size;
            let used = self.current_len() + pending_bytes;
            if used > 0 && used + size > self.max_file_bytes {
                self.commit(mem::take(&mut pending));
                pending_bytes = 0;
                self.retire();
            }
            pending_bytes += size;
            pending.push(batch);
        }
        self.commit(pending);
    }

    /// Makes `batches` durable in the current file and answers each of them.
    fn commit(&mut self, batches: Vec<Batch>) {
        if batches.is_empty() {
            return;
        }
        let answer = self.append_durably(&batches);
        for batch in batches {
            // A dropped receiver is a cancelled publish: its events stay unacknowledged.
            let _ = batch.reply.send(answer.clone());
        }
    }

    fn append_durably(&mut self, batches: &[Batch]) -> Result<(), String> {
        let Err((path, before, failure)) = self.try_append(batches) else {
            return Ok(());
        };
        let events: usize = batches.iter().map(|batch| batch.events).sum();
        let reason = match &failure {
            Failure::Open(error) => format!(
                "file sink cannot create a file under {}: {error}",
                self.dir.display()
            ),
            Failure::Write(error) => format!("file sink cannot write {}: {error}", path.display()),
            Failure::Sync(error) => format!("file sink cannot fsync {}: {error}", path.display()),
        };
        tracing::error!(
            sink = "file",
            events,
            batches = batches.len(),
            error = %reason,
            "events not stored; their senders will retry them"
        );
        self.roll_back(before, &failure);
        Err(reason)
    }

    /// Writes and syncs; on failure says which file, its delivered length and what went wrong.
    fn try_append(&mut self, batches: &[Batch]) -> Result<(), (PathBuf, u64, Failure)> {
        let segment = match &mut self.current {
            Some(segment) => segment,
            None => {
                let created = segment::create(&self.dir, &self.faults)
                    .map_err(|error| (self.dir.clone(), 0, Failure::Open(error)))?;
                announce(&self.shared, &created.path);
                self.current.insert(created)
            }
        };
        let before = segment.len;
        let group: u64 = batches.iter().map(|batch| batch.size).sum();
        segment.reserve(before + group, self.max_file_bytes, &self.faults);
        let fail = |failure| (segment.path.clone(), before, failure);
        let pieces = batches.iter().flat_map(|batch| batch.lines.pieces());
        self.faults
            .write_all(&segment.file, pieces)
            .map_err(|error| fail(Failure::Write(error)))?;
        self.faults
            .sync_data(&segment.file)
            .map_err(|error| fail(Failure::Sync(error)))?;
        segment.len = before + group;
        self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Cuts the current file back to its delivered lines and makes the cut durable, so the file
    /// never holds a partial line or a line of an unacknowledged event, even after a crash.
    /// After a failed fsync the file is finished (what the kernel kept of it is uncertain, so
    /// nothing more goes into it); when the cut itself fails, the file is abandoned unsealed and
    /// the next start repairs it.
    fn roll_back(&mut self, before: u64, failure: &Failure) {
        let Some(segment) = self.current.as_mut() else {
            return;
        };
        let cut = self.faults.truncate(&segment.file, before).and_then(|()| {
            // The cut also freed the space reserved past it.
            segment.reserved = before;
            self.faults.sync_data(&segment.file)
        });
        match cut {
            Ok(()) if matches!(failure, Failure::Write(_)) => {}
            Ok(()) => self.retire(),
            Err(error) => {
                tracing::error!(
                    sink = "file",
                    path = %segment.path.display(),
                    %error,
                    "cannot durably cut the file back after a failed write; it is left unsealed \
                     and its tail is repaired when the sink next starts"
                );
                self.abandon();
            }
        }
    }

    /// Finishes the current file: seals it when it holds delivered events, removes it (durably)
    /// when it holds none.
    fn retire(&mut self) {
        let Some(mut segment) = self.take_current() else {
            return;
        };
        if segment.len == 0 {
            drop(segment.file);
            segment::remove(&self.dir, &segment.path, &self.faults);
        } else {
            segment.release(&self.faults);
            drop(segment.file);
            segment::seal(&segment.path);
        }
    }

    /// Gives up the current file without sealing it: its end is uncertain.
    fn abandon(&mut self) {
        let Some(segment) = self.take_current() else {
            return;
        };
        drop(segment.file);
        if segment.len == 0 {
            // Nothing in it was delivered; if removing fails, the next start repairs it.
            segment::remove(&self.dir, &segment.path, &self.faults);
        }
    }

    /// Takes the current file out of the writer and the sink's list of live files; a file with
    /// no delivered event leaves the list.
    fn take_current(&mut self) -> Option<Segment> {
        let segment = self.current.take()?;
        let mut files = self.shared.lock_files();
        files.current = None;
        if segment.len == 0 {
            files.all.retain(|path| path != &segment.path);
        }
        Some(segment)
    }

    fn current_len(&self) -> u64 {
        self.current.as_ref().map_or(0, |segment| segment.len)
    }
}

/// Records a newly created file as the current one.
fn announce(shared: &Shared, path: &std::path::Path) {
    tracing::debug!(sink = "file", path = %path.display(), "started a new event file");
    let mut files = shared.lock_files();
    files.all.push(path.to_path_buf());
    files.current = Some(path.to_path_buf());
}
