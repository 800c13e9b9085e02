//! The writer's data I/O, with faults a test can switch on.
//!
//! Root ignores file permissions and loop devices are rarely at hand, so the failure paths of the
//! file sink are exercised by switching faults on here rather than by breaking a real disk.

use std::fs::File;
use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Switches that make the file sink's writes or fsyncs fail (tests only; off by default).
#[doc(hidden)]
#[derive(Clone, Debug, Default)]
pub struct FaultInjection(Arc<Switches>);

#[derive(Debug, Default)]
struct Switches {
    fail_writes: AtomicBool,
    fail_syncs: AtomicBool,
    sync_delay_micros: AtomicU64,
}

impl FaultInjection {
    /// All faults off.
    pub fn new() -> Self {
        Self::default()
    }

    /// While on, each write stores half its bytes and then fails as if the disk were full.
    pub fn fail_writes(&self, on: bool) {
        self.0.fail_writes.store(on, Ordering::SeqCst);
    }

    /// While on, each fsync fails with an I/O error (after the data was written).
    pub fn fail_syncs(&self, on: bool) {
        self.0.fail_syncs.store(on, Ordering::SeqCst);
    }

    /// Makes each fsync take at least `delay`, as on a slow disk.
    pub fn delay_syncs(&self, delay: Duration) {
        let micros = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.0.sync_delay_micros.store(micros, Ordering::SeqCst);
    }

    /// Appends `bytes` to `file`.
    pub(super) fn write_all(&self, mut file: &File, bytes: &[u8]) -> io::Result<()> {
        if self.0.fail_writes.load(Ordering::SeqCst) {
            file.write_all(&bytes[..bytes.len() / 2])?;
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device (injected fault)",
            ));
        }
        file.write_all(bytes)
    }

    /// Makes `file`'s data durable.
    pub(super) fn sync_data(&self, file: &File) -> io::Result<()> {
        let delay = self.0.sync_delay_micros.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_micros(delay));
        }
        if self.0.fail_syncs.load(Ordering::SeqCst) {
            return Err(io::Error::other("input/output error (injected fault)"));
        }
        file.sync_data()
    }
}
