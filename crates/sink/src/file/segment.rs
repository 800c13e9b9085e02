//! Event files on disk: their names, their creation, sealing and repair, and the directory's
//! writability.
//!
//! A file that the writer finished cleanly (every line in it acknowledged and fsynced) is
//! *sealed*: made read-only. A file that is still writable when a sink starts was being written
//! when the previous process stopped (or its roll-back failed), so its end is uncertain: it is
//! repaired — cut back before the first line that is not a complete JSON value — and then
//! sealed, or removed when nothing is left (docs/sinks.md, "Crash safety").

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};

use super::fault::FaultInjection;

/// Numbers the files of this process, so that names sort by creation within one second.
static NEXT_SEQUENCE: AtomicU64 = AtomicU64::new(1);

/// Numbers health probes, so that concurrent probes never share a file.
static NEXT_PROBE: AtomicU64 = AtomicU64::new(1);

/// How many taken names to skip before giving up (a restart within the same second with the
/// same process ID, as PID 1 in a container, finds the names of the previous run taken).
const NAME_ATTEMPTS: usize = 100_000;

/// How much disk space the writer reserves ahead of a file's end at a time: appends into reserved
/// space allocate no blocks, which saves about a quarter of the kernel's time per write on ext4
/// (docs/performance.md). Given back when the file is finished.
const RESERVE_STEP: u64 = 8 * 1024 * 1024;

/// One open event file, appended to by the writer only.
#[derive(Debug)]
pub(super) struct Segment {
    pub(super) path: PathBuf,
    pub(super) file: File,
    /// Bytes of delivered (written and synced) lines; the file holds exactly these.
    pub(super) len: u64,
    /// Where the disk space reserved for the file ends (`len` or more); the blocks past `len`
    /// belong to the file without being part of it.
    pub(super) reserved: u64,
    /// Whether to go on reserving: the first failure (a file system without `fallocate`, a full
    /// disk) stops it for this file, which then grows as it is written.
    reserving: bool,
}

impl Segment {
    fn new(path: PathBuf, file: File) -> Segment {
        Segment {
            path,
            file,
            len: 0,
            reserved: 0,
            reserving: true,
        }
    }

    /// Makes sure disk space is reserved up to `end`, [`RESERVE_STEP`] at a time, but not past
    /// `limit` (the rotation size) unless `end` itself is past it. Best effort: a file that
    /// cannot reserve grows as it is written, and a full disk shows in the write itself.
    pub(super) fn reserve(&mut self, end: u64, limit: u64, faults: &FaultInjection) {
        if !self.reserving || end <= self.reserved {
            return;
        }
        let target = end.max(self.reserved.saturating_add(RESERVE_STEP).min(limit));
        match faults.reserve(&self.file, self.reserved, target - self.reserved) {
            Ok(()) => self.reserved = target,
            Err(error) => {
                // A failed `fallocate` may have reserved part of the range (ext4 and XFS keep
                // what they got before running out of space): count all of it, so that it is
                // given back with the rest.
                self.reserved = target;
                self.reserving = false;
                tracing::debug!(
                    sink = "file",
                    path = %self.path.display(),
                    %error,
                    "cannot reserve disk space ahead of the file's end; it grows as it is written"
                );
            }
        }
    }

    /// Gives back the space reserved past the file's end, once nothing more goes into it.
    pub(super) fn release(&mut self, faults: &FaultInjection) {
        if self.reserved <= self.len {
            return;
        }
        if let Err(error) = faults.release(&self.file, self.len) {
            tracing::warn!(
                sink = "file",
                path = %self.path.display(),
                %error,
                "cannot give back the disk space reserved past a finished event file's end"
            );
        }
        self.reserved = self.len;
    }
}

/// The name of an event file: `events-<UTC time>-<pid>-<sequence>.ndjson`.
pub(super) fn file_name(created: DateTime<Utc>, pid: u32, sequence: u64) -> String {
    format!(
        "events-{}-{pid}-{sequence:06}.ndjson",
        created.format("%Y%m%dT%H%M%SZ")
    )
}

/// Creates a new, empty event file under `dir`, never reusing an existing name, and makes its
/// directory entry durable.
pub(super) fn create(dir: &Path, faults: &FaultInjection) -> io::Result<Segment> {
    for _ in 0..NAME_ATTEMPTS {
        let sequence = NEXT_SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(file_name(Utc::now(), process::id(), sequence));
        match faults.create(&path) {
            Ok(file) => {
                if let Err(error) = faults.sync_dir(dir) {
                    drop(file);
                    remove(dir, &path, faults);
                    return Err(error);
                }
                return Ok(Segment::new(path, file));
            }
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(error) => return Err(error),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("no free event file name under {}", dir.display()),
    ))
}

/// Removes an event file without events and makes the removal durable, so that a crash cannot
/// bring it back (with unacknowledged bytes in it, say). Failures are logged: an empty or
/// unsealed file left behind is repaired by the next start.
pub(super) fn remove(dir: &Path, path: &Path, faults: &FaultInjection) {
    let removed = fs::remove_file(path).and_then(|()| faults.sync_dir(dir));
    if let Err(error) = removed {
        tracing::warn!(
            sink = "file",
            path = %path.display(),
            %error,
            "cannot durably remove an event file without events; the next start repairs it"
        );
    }
}

/// Marks a finished file as complete: read-only. Only called after the file's last fsync.
pub(super) fn seal(path: &Path) {
    let sealed = fs::metadata(path).and_then(|metadata| {
        let mut permissions = metadata.permissions();
        permissions.set_readonly(true);
        fs::set_permissions(path, permissions)
    });
    if let Err(error) = sealed {
        tracing::warn!(
            sink = "file",
            path = %path.display(),
            %error,
            "cannot mark a finished event file read-only; the next start checks it again"
        );
    }
}

/// Whether `path` is sealed (read-only).
fn is_sealed(path: &Path) -> io::Result<bool> {
    Ok(fs::metadata(path)?.permissions().readonly())
}

/// What [`repair`] did at start.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Repair {
    /// Unsealed files checked.
    pub(super) checked: usize,
    /// Files cut back, with the bytes removed from each.
    pub(super) cut: Vec<(PathBuf, u64)>,
    /// Files removed because no complete line was left.
    pub(super) removed: Vec<PathBuf>,
}

/// Repairs the unsealed event files under `dir`: each is cut back before its first line that
/// is not a complete JSON value (a torn write, a block of zeros), made durable and sealed; a
/// file left empty is removed. The space the writer had reserved past a file's end is given
/// back.
pub(super) fn repair(dir: &Path, faults: &FaultInjection) -> io::Result<Repair> {
    let mut report = Repair::default();
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("events-") && name.ends_with(".ndjson") && entry.file_type()?.is_file()
        {
            paths.push(entry.path());
        }
    }
    paths.sort();
    for path in paths {
        if is_sealed(&path)? {
            continue;
        }
        report.checked += 1;
        let (valid, total) = valid_prefix(&path)?;
        if valid == 0 {
            remove(dir, &path, faults);
            report.removed.push(path);
            continue;
        }
        if valid < total {
            let file = OpenOptions::new().write(true).open(&path)?;
            faults.truncate(&file, valid)?;
            faults.sync_data(&file)?;
            report.cut.push((path.clone(), total - valid));
        } else if let Err(error) = release_unused(&path, total, faults) {
            tracing::warn!(
                sink = "file",
                path = %path.display(),
                %error,
                "cannot give back the disk space reserved past an event file's end"
            );
        }
        seal(&path);
    }
    Ok(report)
}

/// Gives back the space reserved past the end of `path`, a complete file of `len` bytes; a file
/// whose length changed meanwhile is left alone.
fn release_unused(path: &Path, len: u64, faults: &FaultInjection) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    if file.metadata()?.len() != len {
        return Ok(());
    }
    faults.release(&file, len)
}

/// The length of the longest prefix of `path` made of complete lines that each hold one JSON
/// value, and the file's length. Reads one line at a time.
fn valid_prefix(path: &Path) -> io::Result<(u64, u64)> {
    let file = File::open(path)?;
    let total = file.metadata()?.len();
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    let mut valid = 0u64;
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line)?;
        if read == 0 || line.last() != Some(&b'\n') {
            break;
        }
        let json = &line[..line.len() - 1];
        if json.is_empty() || serde_json::from_slice::<serde::de::IgnoredAny>(json).is_err() {
            break;
        }
        valid += read as u64;
    }
    Ok((valid, total))
}

/// Whether a file can be created and written under `dir` now (the health check).
pub(super) fn probe_writable(dir: &Path) -> io::Result<()> {
    // A dot name without the `.ndjson` suffix, so `bq load dir/*.ndjson` never picks it up.
    let sequence = NEXT_PROBE.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!(".health-probe-{}-{sequence}", process::id()));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut file| file.write_all(b"\n"));
    let removed = fs::remove_file(&path);
    written.and(removed)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn file_names_carry_time_pid_and_sequence() {
        let created = Utc.with_ymd_and_hms(2026, 11, 23, 1, 45, 0).single();
        let name = created.map(|created| file_name(created, 4242, 7));
        assert_eq!(
            name.as_deref(),
            Some("events-20261123T014500Z-4242-000007.ndjson")
        );
    }

    #[test]
    fn file_names_sort_by_time_then_sequence() {
        let earlier = Utc.with_ymd_and_hms(2026, 11, 23, 1, 45, 0).single();
        let later = Utc.with_ymd_and_hms(2026, 11, 23, 1, 45, 1).single();
        let (Some(earlier), Some(later)) = (earlier, later) else {
            panic!("valid dates")
        };
        let mut names = vec![
            file_name(later, 9, 3),
            file_name(earlier, 9, 2),
            file_name(earlier, 9, 1),
        ];
        names.sort();
        assert_eq!(
            names,
            vec![
                file_name(earlier, 9, 1),
                file_name(earlier, 9, 2),
                file_name(later, 9, 3)
            ]
        );
    }
}
