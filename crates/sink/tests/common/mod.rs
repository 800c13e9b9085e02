//! Events and file reading shared by the sink tests.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

use telemetry_gateway_sink::PreparedEvent;

/// An event whose payload is compact single-line JSON naming `id`.
pub fn event(id: &str) -> PreparedEvent {
    let payload = format!(r#"{{"event":{{"id":"{id}","feature":"cody","action":"submit"}}}}"#);
    event_with_payload(id, payload.into_bytes())
}

/// An event carrying exactly `payload`.
pub fn event_with_payload(id: &str, payload: Vec<u8>) -> PreparedEvent {
    PreparedEvent::builder(id)
        .feature("cody")
        .action("submit")
        .payload(payload)
        .attribute("event.feature", "cody")
        .attribute("publisher.source", "test")
        .build()
}

/// `count` events with IDs `<prefix>-0`, `<prefix>-1`, ...
pub fn events(prefix: &str, count: usize) -> Vec<PreparedEvent> {
    (0..count)
        .map(|i| event(&format!("{prefix}-{i}")))
        .collect()
}

/// The NDJSON lines `events` must appear as.
pub fn lines_of(events: &[PreparedEvent]) -> Vec<u8> {
    let mut lines = Vec::new();
    for event in events {
        lines.extend_from_slice(&event.payload);
        lines.push(b'\n');
    }
    lines
}

/// The event files under `dir`, in name order.
pub fn event_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read the event directory")
        .map(|entry| entry.expect("read a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "ndjson"))
        .collect();
    files.sort();
    files
}

/// The contents of every event file under `dir`, concatenated in name order.
pub fn stored_bytes(dir: &Path) -> Vec<u8> {
    event_files(dir)
        .iter()
        .flat_map(|path| fs::read(path).expect("read an event file"))
        .collect()
}
