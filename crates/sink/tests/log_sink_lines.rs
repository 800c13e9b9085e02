//! The log sink's line for each event. Alone in its test binary: `tracing` caches whether a
//! callsite is enabled process-wide, and another test publishing through the log sink on another
//! thread, without this test's subscriber, could cache it as disabled between this test's setting
//! of its subscriber and its publish (which made this test fail, rarely, under load).

mod common;

use std::io;
use std::sync::{Arc, Mutex};

use telemetry_gateway_sink::{EventSink, LogSink};

use common::event;

/// Collects what the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("capture lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().expect("capture lock").clone()).expect("UTF-8 log")
    }
}

#[tokio::test]
async fn each_event_is_logged_as_a_debug_publish_line_with_payload_and_attributes() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .json()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let sent = event("logged-1");
    LogSink::new().publish(std::slice::from_ref(&sent)).await;

    let log = captured.text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON log line"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    let payload = String::from_utf8(sent.payload.to_vec()).expect("UTF-8 payload");
    assert_eq!(lines[0]["level"], "DEBUG");
    assert_eq!(lines[0]["fields"]["message"], "Publish");
    assert_eq!(lines[0]["fields"]["payload"], payload.as_str());
    assert_eq!(
        lines[0]["fields"]["attributes"],
        r#"{"event.feature": "cody", "publisher.source": "test"}"#
    );
}
