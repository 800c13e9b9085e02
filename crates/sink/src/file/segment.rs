//! Event files on disk: their names, their creation and the directory's writability.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};

/// Numbers the files of this process, so that names sort by creation within one second.
static NEXT_SEQUENCE: AtomicU64 = AtomicU64::new(1);

/// Numbers health probes, so that concurrent probes never share a file.
static NEXT_PROBE: AtomicU64 = AtomicU64::new(1);

/// How many taken names to skip before giving up (a restart within the same second with the
/// same process ID, as PID 1 in a container, finds the names of the previous run taken).
const NAME_ATTEMPTS: usize = 100_000;

/// One open event file, appended to by the writer only.
#[derive(Debug)]
pub(super) struct Segment {
    pub(super) path: PathBuf,
    pub(super) file: File,
    /// Bytes of delivered (written and synced) lines; the file holds exactly these.
    pub(super) len: u64,
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
pub(super) fn create(dir: &Path) -> io::Result<Segment> {
    for _ in 0..NAME_ATTEMPTS {
        let sequence = NEXT_SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(file_name(Utc::now(), process::id(), sequence));
        // Append mode: after a failed group is cut off with `set_len`, the next write lands at
        // the new end without any seeking.
        match OpenOptions::new().append(true).create_new(true).open(&path) {
            Ok(file) => {
                if let Err(error) = sync_dir(dir) {
                    let _ = fs::remove_file(&path);
                    return Err(error);
                }
                return Ok(Segment { path, file, len: 0 });
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

/// Makes the directory's entries durable (a new file's name survives a crash only after this).
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Directories cannot be opened for syncing on this platform.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
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
