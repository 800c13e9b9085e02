//! The writer's file-system I/O, with faults a test can switch on.
//!
//! Root ignores file permissions and loop devices are rarely at hand, so the failure paths of the
//! file sink are exercised by switching faults on here rather than by breaking a real disk. Every
//! step the writer takes goes through here (create, reserve, write, fsync, truncate, release,
//! directory fsync), and each can be made to fail; the steps taken are recorded so that tests can
//! check their order (a truncation is made durable before anything else happens, say).

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Buffers per vectored write: Linux's limit per call.
const MAX_SLICES_PER_WRITE: usize = 1024;

/// One step of the writer, as recorded by [`FaultInjection::steps`].
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// A new event file was created.
    Create,
    /// Disk space was reserved ahead of the file's end.
    Reserve,
    /// Lines were appended.
    Write,
    /// A file's data was fsynced.
    Sync,
    /// A file was cut back to its delivered length.
    Truncate,
    /// The space reserved past a finished file's end was given back.
    Release,
    /// The directory's entries were fsynced.
    SyncDir,
}

/// Switches that make the file sink's steps fail (tests only; off by default).
#[doc(hidden)]
#[derive(Clone, Debug, Default)]
pub struct FaultInjection(Arc<Switches>);

#[derive(Debug, Default)]
struct Switches {
    fail_creates: AtomicBool,
    fail_reserves: AtomicBool,
    fail_releases: AtomicBool,
    fail_writes: AtomicBool,
    /// How many of the next file fsyncs fail (`u64::MAX`: all of them).
    failing_syncs: AtomicU64,
    fail_truncates: AtomicBool,
    fail_dir_syncs: AtomicBool,
    sync_delay_micros: AtomicU64,
    /// How many buffers the writes were handed, in all.
    buffers_written: AtomicU64,
    /// The steps taken (successful or not), oldest first, bounded.
    steps: Mutex<Vec<Step>>,
}

/// How many steps are remembered (tests look at the last few).
const MAX_RECORDED_STEPS: usize = 4096;

impl FaultInjection {
    /// All faults off.
    pub fn new() -> Self {
        Self::default()
    }

    /// While on, creating an event file (at start or at rotation) fails.
    pub fn fail_creates(&self, on: bool) {
        self.0.fail_creates.store(on, Ordering::SeqCst);
    }

    /// While on, reserving disk space ahead of a file's end fails (as on a file system without
    /// `fallocate`).
    pub fn fail_reserves(&self, on: bool) {
        self.0.fail_reserves.store(on, Ordering::SeqCst);
    }

    /// While on, giving back the space reserved past a finished file's end fails.
    pub fn fail_releases(&self, on: bool) {
        self.0.fail_releases.store(on, Ordering::SeqCst);
    }

    /// While on, each write stores half its bytes and then fails as if the disk were full.
    pub fn fail_writes(&self, on: bool) {
        self.0.fail_writes.store(on, Ordering::SeqCst);
    }

    /// While on, each fsync of a file fails with an I/O error (after the data was written).
    pub fn fail_syncs(&self, on: bool) {
        let failing = if on { u64::MAX } else { 0 };
        self.0.failing_syncs.store(failing, Ordering::SeqCst);
    }

    /// Makes only the next `n` fsyncs of a file fail.
    pub fn fail_next_syncs(&self, n: u64) {
        self.0.failing_syncs.store(n, Ordering::SeqCst);
    }

    /// While on, cutting a file back after a failure fails.
    pub fn fail_truncates(&self, on: bool) {
        self.0.fail_truncates.store(on, Ordering::SeqCst);
    }

    /// While on, each fsync of the directory fails.
    pub fn fail_dir_syncs(&self, on: bool) {
        self.0.fail_dir_syncs.store(on, Ordering::SeqCst);
    }

    /// Makes each fsync take at least `delay`, as on a slow disk.
    pub fn delay_syncs(&self, delay: Duration) {
        let micros = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.0.sync_delay_micros.store(micros, Ordering::SeqCst);
    }

    /// How many buffers all writes so far were handed: two per line written a line at a time
    /// (the line and its break), one per batch written as one text.
    pub fn buffers_written(&self) -> u64 {
        self.0.buffers_written.load(Ordering::Relaxed)
    }

    /// The steps taken so far, oldest first.
    pub fn steps(&self) -> Vec<Step> {
        self.0
            .steps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn record(&self, step: Step) {
        let mut steps = self.0.steps.lock().unwrap_or_else(PoisonError::into_inner);
        if steps.len() < MAX_RECORDED_STEPS {
            steps.push(step);
        }
    }

    fn injected(switch: &AtomicBool, what: &str) -> io::Result<()> {
        if switch.load(Ordering::SeqCst) {
            return Err(io::Error::other(format!("{what} (injected fault)")));
        }
        Ok(())
    }

    /// Creates `path`, which must not exist, for appending.
    pub(super) fn create(&self, path: &Path) -> io::Result<File> {
        self.record(Step::Create);
        Self::injected(&self.0.fail_creates, "cannot create the file")?;
        // Append mode: after a failed group is cut off with `set_len`, the next write lands at
        // the new end without any seeking.
        OpenOptions::new().append(true).create_new(true).open(path)
    }

    /// Reserves disk blocks for `len` bytes of `file` from `offset` on, without changing its
    /// length: appends into them allocate nothing (the file system's delayed allocation costs
    /// more, per block, than the copy itself).
    pub(super) fn reserve(&self, file: &File, offset: u64, len: u64) -> io::Result<()> {
        self.record(Step::Reserve);
        Self::injected(&self.0.fail_reserves, "cannot reserve space")?;
        reserve(file, offset, len)
    }

    /// Gives back the blocks reserved past `file`'s end (`len`, its length): cutting a file to
    /// its own length frees them.
    pub(super) fn release(&self, file: &File, len: u64) -> io::Result<()> {
        self.record(Step::Release);
        Self::injected(&self.0.fail_releases, "cannot give back reserved space")?;
        file.set_len(len)
    }

    /// Appends `pieces` to `file`, in order, with as few system calls as the kernel allows:
    /// they are written from where they are (not copied into one buffer first), up to Linux's
    /// limit of buffers per call at a time.
    pub(super) fn write_all<'a>(
        &self,
        mut file: &File,
        pieces: impl Iterator<Item = &'a [u8]>,
    ) -> io::Result<()> {
        self.record(Step::Write);
        if self.0.fail_writes.load(Ordering::SeqCst) {
            let all: Vec<u8> = pieces.flatten().copied().collect();
            file.write_all(&all[..all.len() / 2])?;
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device (injected fault)",
            ));
        }
        let mut pieces = pieces.fuse();
        let mut slices = Vec::new();
        loop {
            slices.clear();
            slices.extend(pieces.by_ref().take(MAX_SLICES_PER_WRITE).map(IoSlice::new));
            if slices.is_empty() {
                return Ok(());
            }
            self.0
                .buffers_written
                .fetch_add(slices.len() as u64, Ordering::Relaxed);
            let mut rest = &mut slices[..];
            while !rest.is_empty() {
                match file.write_vectored(rest) {
                    Ok(0) => {
                        return Err(io::Error::new(
                            io::ErrorKind::WriteZero,
                            "failed to write whole buffer",
                        ));
                    }
                    Ok(written) => IoSlice::advance_slices(&mut rest, written),
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(error) => return Err(error),
                }
            }
        }
    }

    /// Makes `file`'s data (and its length) durable.
    pub(super) fn sync_data(&self, file: &File) -> io::Result<()> {
        self.record(Step::Sync);
        let delay = self.0.sync_delay_micros.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_micros(delay));
        }
        let failing = self
            .0
            .failing_syncs
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
                0 => None,
                u64::MAX => Some(u64::MAX),
                n => Some(n - 1),
            });
        if failing.is_ok() {
            return Err(io::Error::other("input/output error (injected fault)"));
        }
        file.sync_data()
    }

    /// Cuts `file` back to `len` bytes.
    pub(super) fn truncate(&self, file: &File, len: u64) -> io::Result<()> {
        self.record(Step::Truncate);
        Self::injected(&self.0.fail_truncates, "cannot truncate")?;
        file.set_len(len)
    }

    /// Makes the entries of `dir` durable (a new or removed name survives a crash only after
    /// this).
    pub(super) fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.record(Step::SyncDir);
        Self::injected(&self.0.fail_dir_syncs, "cannot fsync the directory")?;
        sync_dir(dir)
    }
}

#[cfg(target_os = "linux")]
fn reserve(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use rustix::fs::{FallocateFlags, fallocate};
    fallocate(file, FallocateFlags::KEEP_SIZE, offset, len).map_err(io::Error::from)
}

/// Reserving space without changing a file's length is Linux's `fallocate`; elsewhere files
/// grow as they are written.
#[cfg(not(target_os = "linux"))]
fn reserve(_file: &File, _offset: u64, _len: u64) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Directories cannot be opened for syncing on this platform.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}
