//! The file sink: delivered means written and fsynced, exactly once, as one NDJSON line.

mod common;

use std::collections::HashMap;
use std::fs;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use telemetry_gateway_sink::file::{FaultInjection, Step};
use telemetry_gateway_sink::{
    EventSink, FailureCause, FileSink, FileSinkConfig, PreparedEvent, PublishOutcome, SinkError,
};
use tempfile::TempDir;

use common::{event, event_files, event_with_payload, events, lines_of, stored_bytes};

fn config(dir: &TempDir) -> FileSinkConfig {
    FileSinkConfig {
        dir: dir.path().join("events"),
        ..FileSinkConfig::default()
    }
}

fn open(dir: &TempDir) -> FileSink {
    FileSink::open(config(dir)).expect("open the file sink")
}

fn open_with_faults(dir: &TempDir) -> (FileSink, FaultInjection) {
    let faults = FaultInjection::new();
    let sink = FileSink::open_with_faults(config(dir), faults.clone()).expect("open the file sink");
    (sink, faults)
}

fn all_delivered(outcomes: &[PublishOutcome]) -> bool {
    outcomes.iter().all(PublishOutcome::is_delivered)
}

fn all_retryable(outcomes: &[PublishOutcome]) -> bool {
    outcomes
        .iter()
        .all(|outcome| matches!(outcome, PublishOutcome::Retryable(_)))
}

#[tokio::test]
async fn delivered_events_are_stored_once_byte_identical_one_json_per_line() {
    let dir = TempDir::new().expect("temp dir");
    let sink = open(&dir);
    let first = events("a", 3);
    let second = events("b", 2);

    assert_eq!(
        sink.publish(&first).await,
        vec![PublishOutcome::Delivered; 3]
    );
    assert_eq!(
        sink.publish(&second).await,
        vec![PublishOutcome::Delivered; 2]
    );

    let stored = stored_bytes(sink.dir());
    let expected: Vec<u8> = [lines_of(&first), lines_of(&second)].concat();
    assert_eq!(stored, expected);
    for line in stored
        .split(|&byte| byte == b'\n')
        .filter(|line| !line.is_empty())
    {
        serde_json::from_slice::<serde_json::Value>(line).expect("each line is JSON");
    }
}

#[tokio::test]
async fn empty_batch_returns_no_outcomes_without_touching_the_disk() {
    let dir = TempDir::new().expect("temp dir");
    let sink = open(&dir);

    assert!(sink.publish(&[]).await.is_empty());

    assert_eq!(sink.syncs(), 0);
    assert!(stored_bytes(sink.dir()).is_empty());
}

#[tokio::test]
async fn files_are_named_events_time_pid_sequence_ndjson() {
    let dir = TempDir::new().expect("temp dir");
    let sink = open(&dir);
    let path = sink.current_path().expect("a current file");
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .expect("a UTF-8 name");

    let parts: Vec<&str> = name
        .strip_suffix(".ndjson")
        .expect(".ndjson suffix")
        .split('-')
        .collect();
    assert_eq!(parts.len(), 4, "{name}");
    assert_eq!(parts[0], "events");
    assert_eq!(parts[1].len(), "20261123T014500Z".len(), "{name}");
    assert_eq!(parts[2], std::process::id().to_string());
    assert_eq!(parts[3].len(), 6, "{name}");
}

#[tokio::test]
async fn files_rotate_by_size_without_splitting_a_line() {
    let dir = TempDir::new().expect("temp dir");
    let max_file_bytes = 300;
    let sink = FileSink::open(FileSinkConfig {
        max_file_bytes,
        ..config(&dir)
    })
    .expect("open the file sink");

    let mut published = Vec::new();
    for batch in 0..20 {
        let batch = events(&format!("rot{batch}"), 1 + batch % 3);
        assert!(all_delivered(&sink.publish(&batch).await));
        published.extend(batch);
    }

    let files = event_files(sink.dir());
    assert!(files.len() > 1, "expected rotation, got {files:?}");
    assert_eq!(files, sink.files());
    for file in &files {
        let contents = fs::read(file).expect("read an event file");
        assert!(contents.len() as u64 <= max_file_bytes, "{file:?} too big");
        assert!(contents.ends_with(b"\n"), "{file:?} ends mid-line");
    }
    assert_eq!(stored_bytes(sink.dir()), lines_of(&published));
}

#[tokio::test]
async fn batch_larger_than_the_limit_goes_alone_into_a_fresh_file() {
    let dir = TempDir::new().expect("temp dir");
    let sink = FileSink::open(FileSinkConfig {
        max_file_bytes: 100,
        ..config(&dir)
    })
    .expect("open the file sink");
    let small = vec![event("small-1")];
    let large = events("large", 4);
    let after = vec![event("small-2")];

    for batch in [&small, &large, &after] {
        assert!(all_delivered(&sink.publish(batch).await));
    }

    let contents: Vec<Vec<u8>> = event_files(sink.dir())
        .iter()
        .map(|path| fs::read(path).expect("read an event file"))
        .collect();
    assert_eq!(
        contents,
        vec![lines_of(&small), lines_of(&large), lines_of(&after)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_publishers_are_all_stored_and_share_fsyncs() {
    const PUBLISHERS: usize = 32;
    const BATCHES: usize = 50;
    let dir = TempDir::new().expect("temp dir");
    let (sink, faults) = open_with_faults(&dir);
    // A slow disk makes batches queue up behind each fsync, as under real load.
    faults.delay_syncs(Duration::from_millis(2));
    let sink = Arc::new(sink);

    let mut tasks = Vec::new();
    for publisher in 0..PUBLISHERS {
        let sink = Arc::clone(&sink);
        tasks.push(tokio::spawn(async move {
            for batch in 0..BATCHES {
                let batch = events(&format!("p{publisher}-b{batch}"), 3);
                let outcomes = sink.publish(&batch).await;
                assert_eq!(outcomes, vec![PublishOutcome::Delivered; 3]);
            }
        }));
    }
    for task in tasks {
        task.await.expect("publisher task");
    }

    let stored = stored_bytes(sink.dir());
    let mut seen: HashMap<&[u8], usize> = HashMap::new();
    for line in stored
        .split(|&byte| byte == b'\n')
        .filter(|line| !line.is_empty())
    {
        *seen.entry(line).or_default() += 1;
    }
    assert_eq!(seen.len(), PUBLISHERS * BATCHES * 3);
    assert!(seen.values().all(|&count| count == 1));
    assert!(
        sink.syncs() < (PUBLISHERS * BATCHES) as u64,
        "{} fsyncs for {} batches",
        sink.syncs(),
        PUBLISHERS * BATCHES
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn groups_of_concurrent_batches_rotate_within_the_limit() {
    const PUBLISHERS: usize = 16;
    const BATCHES: usize = 20;
    let dir = TempDir::new().expect("temp dir");
    let max_file_bytes = 1000;
    let faults = FaultInjection::new();
    faults.delay_syncs(Duration::from_millis(1));
    let config = FileSinkConfig {
        max_file_bytes,
        ..config(&dir)
    };
    let sink = Arc::new(FileSink::open_with_faults(config, faults).expect("open the file sink"));

    let mut tasks = Vec::new();
    for publisher in 0..PUBLISHERS {
        let sink = Arc::clone(&sink);
        tasks.push(tokio::spawn(async move {
            for batch in 0..BATCHES {
                let batch = events(&format!("g{publisher}-b{batch}"), 1 + batch % 4);
                assert!(all_delivered(&sink.publish(&batch).await));
            }
        }));
    }
    for task in tasks {
        task.await.expect("publisher task");
    }

    let mut lines = 0;
    for file in event_files(sink.dir()) {
        let contents = fs::read(&file).expect("read an event file");
        assert!(contents.len() as u64 <= max_file_bytes, "{file:?} too big");
        assert!(contents.ends_with(b"\n"), "{file:?} ends mid-line");
        lines += contents.iter().filter(|&&byte| byte == b'\n').count();
    }
    let expected: usize = (0..BATCHES).map(|batch| 1 + batch % 4).sum::<usize>() * PUBLISHERS;
    assert_eq!(lines, expected);
}

#[tokio::test]
async fn restart_writes_a_new_file_and_keeps_the_old_ones() {
    let dir = TempDir::new().expect("temp dir");
    let before = events("before", 2);
    let after = events("after", 2);

    let first = open(&dir);
    assert!(all_delivered(&first.publish(&before).await));
    first.shutdown().await.expect("shutdown");
    let old_files = first.files();

    let second = open(&dir);
    assert!(all_delivered(&second.publish(&after).await));
    second.shutdown().await.expect("shutdown");

    let new_files = second.files();
    assert!(new_files.iter().all(|path| !old_files.contains(path)));
    for path in &old_files {
        assert_eq!(fs::read(path).expect("old file"), lines_of(&before));
    }
    assert_eq!(
        stored_bytes(second.dir()),
        [lines_of(&before), lines_of(&after)].concat()
    );
}

#[tokio::test]
async fn failed_write_is_retryable_and_leaves_no_partial_line() {
    let dir = TempDir::new().expect("temp dir");
    let (sink, faults) = open_with_faults(&dir);
    let stored = events("stored", 2);
    let failed = events("failed", 3);
    let later = events("later", 2);
    assert!(all_delivered(&sink.publish(&stored).await));

    faults.fail_writes(true);
    let outcomes = sink.publish(&failed).await;
    assert_eq!(outcomes.len(), 3);
    assert!(all_retryable(&outcomes), "{outcomes:?}");
    assert_eq!(stored_bytes(sink.dir()), lines_of(&stored));

    faults.fail_writes(false);
    assert!(all_delivered(&sink.publish(&later).await));
    assert_eq!(
        stored_bytes(sink.dir()),
        [lines_of(&stored), lines_of(&later)].concat()
    );
}

#[tokio::test]
async fn failed_fsync_is_retryable_and_later_events_go_to_a_fresh_file() {
    let dir = TempDir::new().expect("temp dir");
    let (sink, faults) = open_with_faults(&dir);
    let stored = events("stored", 2);
    let failed = events("failed", 2);
    let later = events("later", 2);
    assert!(all_delivered(&sink.publish(&stored).await));
    let first_file = sink.current_path().expect("a current file");

    faults.fail_syncs(true);
    let outcomes = sink.publish(&failed).await;
    assert!(all_retryable(&outcomes), "{outcomes:?}");
    assert_eq!(
        fs::read(&first_file).expect("first file"),
        lines_of(&stored)
    );

    faults.fail_syncs(false);
    assert!(all_delivered(&sink.publish(&later).await));
    assert_ne!(sink.current_path(), Some(first_file));
    assert_eq!(
        stored_bytes(sink.dir()),
        [lines_of(&stored), lines_of(&later)].concat()
    );
}

#[tokio::test]
async fn failure_on_a_fresh_file_leaves_no_empty_file_behind() {
    let dir = TempDir::new().expect("temp dir");
    let (sink, faults) = open_with_faults(&dir);

    faults.fail_syncs(true);
    assert!(all_retryable(&sink.publish(&events("failed", 2)).await));

    assert!(event_files(sink.dir()).is_empty());
    assert!(sink.files().is_empty());
}

#[tokio::test]
async fn payload_that_is_not_one_line_is_rejected_permanently() {
    let dir = TempDir::new().expect("temp dir");
    let sink = open(&dir);
    let good = event("good");
    let batch = vec![
        good.clone(),
        event_with_payload("broken", b"{\"a\":\n1}".to_vec()),
        event_with_payload("empty", Vec::new()),
    ];

    let outcomes = sink.publish(&batch).await;

    assert_eq!(outcomes[0], PublishOutcome::Delivered);
    assert!(matches!(outcomes[1], PublishOutcome::Permanent(_)));
    assert!(matches!(outcomes[2], PublishOutcome::Permanent(_)));
    assert_eq!(stored_bytes(sink.dir()), lines_of(&[good]));
}

/// `events` as the gateway hands them over: their payloads rendered one after another into one
/// NDJSON text, each event's payload a slice of it.
fn rendered_together(events: &[PreparedEvent]) -> (Vec<PreparedEvent>, Bytes) {
    let text = Bytes::from(lines_of(events));
    let mut start = 0;
    let events = events
        .iter()
        .map(|event| {
            let end = start + event.payload.len();
            let payload = text.slice(start..end);
            start = end + 1;
            PreparedEvent {
                payload,
                ..event.clone()
            }
        })
        .collect();
    (events, text)
}

#[tokio::test]
async fn the_events_ndjson_text_is_written_as_it_is() {
    let dir = TempDir::new().expect("temp dir");
    let (sink, faults) = open_with_faults(&dir);
    let (first, text) = rendered_together(&events("a", 3));
    // Payloads that are not slices of the text but equal to its lines are just as good.
    let second = events("b", 2);
    let second_text = Bytes::from(lines_of(&second));

    assert_eq!(
        sink.publish_ndjson(&first, &text).await,
        vec![PublishOutcome::Delivered; 3]
    );
    assert_eq!(
        sink.publish_ndjson(&second, &second_text).await,
        vec![PublishOutcome::Delivered; 2]
    );

    assert_eq!(
        stored_bytes(sink.dir()),
        [lines_of(&first), lines_of(&second)].concat()
    );
    // One buffer per batch, not two per line.
    assert_eq!(faults.buffers_written(), 2);
}

#[tokio::test]
async fn ndjson_text_that_is_not_the_events_lines_is_not_written() {
    let (events, text) = rendered_together(&events("a", 3));
    let mut other_bytes = text.to_vec();
    other_bytes[2] ^= 1;
    let mut extra_line = text.to_vec();
    extra_line.extend_from_slice(b"{\"smuggled\":true}\n");
    let reordered: Vec<PreparedEvent> = events.iter().rev().cloned().collect();
    let cases: [(&str, &[PreparedEvent], Bytes); 5] = [
        ("other bytes", &events, Bytes::from(other_bytes)),
        ("an extra line", &events, Bytes::from(extra_line)),
        ("no last line break", &events, text.slice(..text.len() - 1)),
        (
            "a line missing",
            &events,
            text.slice(..text.len() - events[2].payload.len() - 1),
        ),
        ("the events in another order", &reordered, text.clone()),
    ];
    for (case, events, text) in cases {
        let dir = TempDir::new().expect("temp dir");
        let (sink, faults) = open_with_faults(&dir);
        assert_eq!(
            sink.publish_ndjson(events, &text).await,
            vec![PublishOutcome::Delivered; 3],
            "{case}"
        );
        assert_eq!(stored_bytes(sink.dir()), lines_of(events), "{case}");
        // Written a line at a time: each line and its break.
        assert_eq!(faults.buffers_written(), 6, "{case}");
    }
}

#[tokio::test]
async fn ndjson_text_cannot_carry_a_payload_that_is_not_one_line() {
    let dir = TempDir::new().expect("temp dir");
    let sink = open(&dir);
    let good = event("good");
    // As text, the broken payload and its line break look like two complete lines.
    let (batch, text) = rendered_together(&[
        good.clone(),
        event_with_payload("broken", b"{}\n{}".to_vec()),
    ]);

    let outcomes = sink.publish_ndjson(&batch, &text).await;

    assert_eq!(outcomes[0], PublishOutcome::Delivered);
    assert!(
        matches!(&outcomes[1], PublishOutcome::Permanent(failure) if failure.cause == FailureCause::Invalid),
        "{outcomes:?}"
    );
    assert_eq!(stored_bytes(sink.dir()), lines_of(&[good]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_drains_queued_batches() {
    let dir = TempDir::new().expect("temp dir");
    let (sink, faults) = open_with_faults(&dir);
    faults.delay_syncs(Duration::from_millis(100));
    let sink = Arc::new(sink);

    let (queued_tx, mut queued_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for publisher in 0..8 {
        let sink = Arc::clone(&sink);
        let queued_tx = queued_tx.clone();
        tasks.push(tokio::spawn(async move {
            let batch = events(&format!("queued{publisher}"), 2);
            let outcomes = {
                let mut publish = sink.publish(&batch);
                // One poll queues the batch: with the queue's byte budget free (and this new
                // task's cooperative budget unspent) the publish takes its share at once, sends
                // the batch to the writer and only then waits, for the answer.
                let first_poll = futures::poll!(&mut publish);
                queued_tx
                    .send(())
                    .expect("the test waits for every publisher");
                match first_poll {
                    Poll::Ready(outcomes) => outcomes,
                    Poll::Pending => publish.await,
                }
            };
            (outcomes, batch)
        }));
    }
    drop(queued_tx);
    // Shut down only once every batch is queued (one published after shutdown is refused, which
    // is not what this test is about); with the fsyncs slowed, they are still being written.
    for _ in 0..8 {
        queued_rx.recv().await.expect("a publisher's batch queued");
    }
    sink.shutdown().await.expect("shutdown");

    let stored = stored_bytes(sink.dir());
    for task in tasks {
        let (outcomes, batch) = task.await.expect("publisher task");
        assert_eq!(outcomes, vec![PublishOutcome::Delivered; 2]);
        let lines = lines_of(&batch);
        assert!(stored.windows(lines.len()).any(|window| window == lines));
    }
    assert_eq!(sink.current_path(), None);
}

#[tokio::test]
async fn publish_after_shutdown_is_retryable() {
    let dir = TempDir::new().expect("temp dir");
    let sink = open(&dir);
    sink.shutdown().await.expect("shutdown");

    let outcomes = sink.publish(&events("late", 2)).await;

    assert_eq!(
        outcomes,
        vec![PublishOutcome::retryable(FailureCause::ShutDown, "file sink is shut down"); 2]
    );
}

#[tokio::test]
async fn shutdown_without_events_leaves_no_empty_file() {
    let dir = TempDir::new().expect("temp dir");
    let sink = open(&dir);

    sink.shutdown().await.expect("shutdown");

    assert!(event_files(sink.dir()).is_empty());
}

#[tokio::test]
async fn healthy_while_running_and_unhealthy_after_shutdown() {
    let dir = TempDir::new().expect("temp dir");
    let sink = open(&dir);
    sink.health().await.expect("healthy");

    sink.shutdown().await.expect("shutdown");

    assert!(matches!(
        sink.health().await,
        Err(SinkError::Unhealthy { sink: "file", .. })
    ));
}

#[tokio::test]
async fn unhealthy_when_the_directory_is_gone() {
    let dir = TempDir::new().expect("temp dir");
    let sink = open(&dir);

    fs::remove_dir_all(sink.dir()).expect("remove the directory");

    assert!(matches!(
        sink.health().await,
        Err(SinkError::Unhealthy { sink: "file", .. })
    ));
}

#[tokio::test]
async fn health_probe_leaves_no_file_behind() {
    let dir = TempDir::new().expect("temp dir");
    let sink = open(&dir);

    sink.health().await.expect("healthy");

    let entries = fs::read_dir(sink.dir()).expect("read dir").count();
    assert_eq!(entries, 1, "only the current event file");
}

#[test]
fn open_creates_missing_directories() {
    let dir = TempDir::new().expect("temp dir");
    let nested = dir.path().join("a/b/c");

    let sink = FileSink::open(FileSinkConfig {
        dir: nested.clone(),
        ..FileSinkConfig::default()
    })
    .expect("open the file sink");

    assert!(nested.is_dir());
    assert_eq!(
        sink.current_path().map(|path| path.starts_with(&nested)),
        Some(true)
    );
}

#[test]
fn open_fails_when_the_directory_is_a_file() {
    let dir = TempDir::new().expect("temp dir");
    let file = dir.path().join("not-a-dir");
    fs::write(&file, b"").expect("write a file");

    let opened = FileSink::open(FileSinkConfig {
        dir: file,
        ..FileSinkConfig::default()
    });

    assert!(matches!(
        opened,
        Err(SinkError::Config { sink: "file", .. })
    ));
}

#[test]
fn open_rejects_a_zero_size_limit() {
    let dir = TempDir::new().expect("temp dir");

    let opened = FileSink::open(FileSinkConfig {
        max_file_bytes: 0,
        ..config(&dir)
    });

    assert!(matches!(
        opened,
        Err(SinkError::Config { sink: "file", .. })
    ));
}

#[test]
fn default_config_rotates_at_128_mib() {
    assert_eq!(FileSinkConfig::default().max_file_bytes, 128 * 1024 * 1024);
}

#[test]
fn names_and_describes_itself() {
    let dir = TempDir::new().expect("temp dir");
    let sink = open(&dir);

    assert_eq!(sink.name(), "file");
    assert_eq!(
        sink.describe(),
        format!(
            "NDJSON files under {} (rotated at 128 MiB)",
            dir.path().join("events").display()
        )
    );
}

/// Every event file under `dir` is complete NDJSON: non-empty, each line one JSON value ending
/// in a newline. Returns the lines of all files, in name order.
fn assert_complete_ndjson(dir: &std::path::Path) -> Vec<String> {
    let mut lines = Vec::new();
    for path in event_files(dir) {
        let bytes = fs::read(&path).expect("read an event file");
        assert!(
            !bytes.is_empty() && bytes.ends_with(b"\n"),
            "{} is empty or ends in a partial line",
            path.display()
        );
        for line in bytes[..bytes.len() - 1].split(|&b| b == b'\n') {
            let line = std::str::from_utf8(line).expect("UTF-8 line");
            serde_json::from_str::<serde_json::Value>(line)
                .unwrap_or_else(|err| panic!("{}: {err}: {line:?}", path.display()));
            lines.push(line.to_string());
        }
    }
    lines
}

fn is_sealed(path: &std::path::Path) -> bool {
    fs::metadata(path)
        .expect("an event file")
        .permissions()
        .readonly()
}

fn lines_of_events(events: &[telemetry_gateway_sink::PreparedEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| String::from_utf8(e.payload.to_vec()).expect("UTF-8"))
        .collect()
}

/// How many times `step` was taken.
fn count_steps(faults: &FaultInjection, step: Step) -> usize {
    faults
        .steps()
        .iter()
        .filter(|taken| **taken == step)
        .count()
}

/// The steps from the last write on.
fn steps_since_last_write(faults: &FaultInjection) -> Vec<Step> {
    let steps = faults.steps();
    let last_write = steps
        .iter()
        .rposition(|step| *step == Step::Write)
        .expect("a write");
    steps[last_write..].to_vec()
}

#[tokio::test]
async fn a_failed_write_is_cut_back_and_the_cut_made_durable_before_the_next_write() {
    let dir = TempDir::new().expect("temp dir");
    let (sink, faults) = open_with_faults(&dir);
    let stored = events("stored", 2);
    assert!(all_delivered(&sink.publish(&stored).await));

    faults.fail_writes(true);
    assert!(all_retryable(&sink.publish(&events("failed", 3)).await));
    assert_eq!(
        steps_since_last_write(&faults),
        vec![Step::Write, Step::Truncate, Step::Sync]
    );
    faults.fail_writes(false);
    let later = events("later", 2);
    assert!(all_delivered(&sink.publish(&later).await));
    sink.shutdown().await.expect("shutdown");

    let lines = assert_complete_ndjson(sink.dir());
    assert_eq!(
        lines,
        [lines_of_events(&stored), lines_of_events(&later)].concat()
    );
    assert!(sink.files().iter().all(|path| is_sealed(path)));
    // The cut freed the space reserved past it; what the next group reserved is given back.
    #[cfg(target_os = "linux")]
    for path in sink.files() {
        assert!(allocated_bytes(&path) <= 64 * 1024, "{}", path.display());
    }
}

#[tokio::test]
async fn a_failed_fsync_is_cut_back_durably_and_the_file_sealed() {
    let dir = TempDir::new().expect("temp dir");
    let (sink, faults) = open_with_faults(&dir);
    let stored = events("stored", 2);
    assert!(all_delivered(&sink.publish(&stored).await));
    let first = sink.current_path().expect("a current file");

    faults.fail_next_syncs(1);
    assert!(all_retryable(&sink.publish(&events("failed", 2)).await));
    assert_eq!(
        steps_since_last_write(&faults),
        vec![Step::Write, Step::Sync, Step::Truncate, Step::Sync]
    );
    assert!(
        is_sealed(&first),
        "nothing more goes into a file whose fsync failed"
    );
    assert_eq!(fs::read(&first).expect("first file"), lines_of(&stored));

    let later = events("later", 2);
    assert!(all_delivered(&sink.publish(&later).await));
    sink.shutdown().await.expect("shutdown");
    let lines = assert_complete_ndjson(sink.dir());
    assert_eq!(
        lines,
        [lines_of_events(&stored), lines_of_events(&later)].concat()
    );
}

#[tokio::test]
async fn a_cut_that_cannot_be_made_durable_leaves_the_file_to_the_next_start() {
    let dir = TempDir::new().expect("temp dir");
    let (sink, faults) = open_with_faults(&dir);
    let stored = events("stored", 2);
    assert!(all_delivered(&sink.publish(&stored).await));
    let first = sink.current_path().expect("a current file");

    // Every fsync fails: neither the group nor its cut is durable.
    faults.fail_syncs(true);
    assert!(all_retryable(&sink.publish(&events("failed", 2)).await));
    assert!(!is_sealed(&first), "an uncertain file is not sealed");
    assert_eq!(sink.current_path(), None);
    faults.fail_syncs(false);
    sink.shutdown().await.expect("shutdown");

    let reopened = open(&dir);
    assert!(is_sealed(&first), "checked and sealed at start");
    assert_eq!(fs::read(&first).expect("first file"), lines_of(&stored));
    reopened.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_failed_truncate_leaves_a_torn_tail_that_the_next_start_cuts_off() {
    let dir = TempDir::new().expect("temp dir");
    let (sink, faults) = open_with_faults(&dir);
    let stored = events("stored", 2);
    assert!(all_delivered(&sink.publish(&stored).await));
    let first = sink.current_path().expect("a current file");

    // Half of the batch reaches the file and it cannot be cut back.
    faults.fail_writes(true);
    faults.fail_truncates(true);
    let failed = events("failed", 4);
    assert!(all_retryable(&sink.publish(&failed).await));
    faults.fail_writes(false);
    faults.fail_truncates(false);
    assert!(!is_sealed(&first));
    let later = events("later", 2);
    assert!(all_delivered(&sink.publish(&later).await));
    assert_ne!(
        sink.current_path().as_ref(),
        Some(&first),
        "the torn file is given up"
    );
    sink.shutdown().await.expect("shutdown");

    let reopened = open(&dir);
    reopened.shutdown().await.expect("shutdown");
    let lines = assert_complete_ndjson(&dir.path().join("events"));
    // The documented tail: complete lines of unacknowledged events may follow the acknowledged
    // ones in the repaired file (their senders resend them); the torn line is gone.
    let first_lines = assert_complete_ndjson_file(&first);
    assert_eq!(first_lines[..2], lines_of_events(&stored)[..]);
    let failed_lines = lines_of_events(&failed);
    assert!(
        first_lines[2..]
            .iter()
            .all(|line| failed_lines.contains(line))
    );
    assert!(
        first_lines.len() < 2 + failed.len(),
        "the torn line was cut"
    );
    assert!(lines.ends_with(&lines_of_events(&later)));
    assert!(is_sealed(&first));
}

fn assert_complete_ndjson_file(path: &std::path::Path) -> Vec<String> {
    let dir = TempDir::new().expect("temp dir");
    fs::copy(path, dir.path().join("events-copy.ndjson")).expect("copy");
    assert_complete_ndjson(dir.path())
}

/// Fills a small file, makes the rotation to a new one fail with `fault`, and checks that the
/// events are retryable, the full file sealed, no other file left behind, and that the next
/// publish (fault off) goes into a fresh file.
async fn assert_a_failed_rotation_leaves_no_file_behind(fault: impl Fn(&FaultInjection, bool)) {
    let dir = TempDir::new().expect("temp dir");
    let faults = FaultInjection::new();
    let config = FileSinkConfig {
        max_file_bytes: 200,
        ..config(&dir)
    };
    let sink = FileSink::open_with_faults(config, faults.clone()).expect("open");
    let stored = events("stored", 2);
    assert!(all_delivered(&sink.publish(&stored).await));
    let first = sink.current_path().expect("a current file");

    fault(&faults, true);
    assert!(all_retryable(&sink.publish(&events("rotated", 3)).await));
    assert!(
        is_sealed(&first),
        "the full file was finished before rotating"
    );
    assert_eq!(event_files(sink.dir()), vec![first.clone()]);
    fault(&faults, false);

    let later = events("later", 3);
    assert!(all_delivered(&sink.publish(&later).await));
    sink.shutdown().await.expect("shutdown");
    let lines = assert_complete_ndjson(sink.dir());
    assert_eq!(
        lines,
        [lines_of_events(&stored), lines_of_events(&later)].concat()
    );
}

#[tokio::test]
async fn a_failed_rotation_is_retryable_and_leaves_no_file_behind() {
    assert_a_failed_rotation_leaves_no_file_behind(FaultInjection::fail_creates).await;
}

/// The new file's name cannot be made durable, so the file is not used (and removed).
#[tokio::test]
async fn a_failed_directory_fsync_leaves_no_file_behind() {
    assert_a_failed_rotation_leaves_no_file_behind(FaultInjection::fail_dir_syncs).await;
}

#[tokio::test]
async fn files_left_unfinished_by_a_crash_are_repaired_at_start() {
    let dir = TempDir::new().expect("temp dir");
    let events_dir = dir.path().join("events");
    fs::create_dir_all(&events_dir).expect("mkdir");
    let good = "{\"event\":{\"id\":\"a\"}}\n{\"event\":{\"id\":\"b\"}}\n";
    // A crash during a write: a partial last line.
    let torn = events_dir.join("events-20260101T000000Z-1-000001.ndjson");
    fs::write(&torn, format!("{good}{{\"event\":{{\"id\":\"c")).expect("write");
    // A crash before an fsync: the file grew, but a block of its tail never reached the disk.
    let holed = events_dir.join("events-20260101T000000Z-1-000002.ndjson");
    let mut bytes = good.as_bytes().to_vec();
    bytes.extend(std::iter::repeat_n(0u8, 4096));
    bytes.extend_from_slice(b"{\"event\":{\"id\":\"d\"}}\n");
    fs::write(&holed, bytes).expect("write");
    // A crash right after creating a file.
    let empty = events_dir.join("events-20260101T000000Z-1-000003.ndjson");
    fs::write(&empty, b"").expect("write");
    // A file finished cleanly is sealed and never read again.
    let sealed = events_dir.join("events-20260101T000000Z-1-000004.ndjson");
    fs::write(&sealed, good).expect("write");
    let mut permissions = fs::metadata(&sealed).expect("meta").permissions();
    permissions.set_readonly(true);
    fs::set_permissions(&sealed, permissions).expect("seal");
    // Not an event file: untouched.
    let other = events_dir.join("notes.txt");
    fs::write(&other, b"partial").expect("write");

    let sink = open(&dir);
    sink.shutdown().await.expect("shutdown");

    assert_eq!(fs::read_to_string(&torn).expect("torn"), good);
    assert_eq!(fs::read_to_string(&holed).expect("holed"), good);
    assert!(!empty.exists(), "an empty file is removed");
    assert_eq!(fs::read_to_string(&sealed).expect("sealed"), good);
    assert_eq!(fs::read(&other).expect("other"), b"partial");
    for path in [&torn, &holed, &sealed] {
        assert!(is_sealed(path), "{} sealed", path.display());
    }
    assert_complete_ndjson(&events_dir);
}

/// The bytes of disk `path` takes: its allocated blocks, reserved ones included.
#[cfg(target_os = "linux")]
fn allocated_bytes(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).expect("metadata").blocks() * 512
}

/// What the file sink reserves ahead of a file's end at a time (8 MiB).
#[cfg(target_os = "linux")]
const RESERVE_STEP: u64 = 8 * 1024 * 1024;

#[cfg(target_os = "linux")]
#[tokio::test]
async fn space_is_reserved_ahead_of_the_file_and_given_back_when_it_is_finished() {
    let dir = TempDir::new().expect("temp dir");
    let sink = open(&dir);
    let batch = events("reserved", 20);
    assert!(all_delivered(&sink.publish(&batch).await));
    let path = sink.current_path().expect("a current file");

    let len = fs::metadata(&path).expect("metadata").len();
    assert_eq!(
        len,
        lines_of(&batch).len() as u64,
        "the length is the lines'"
    );
    assert!(
        allocated_bytes(&path) >= RESERVE_STEP,
        "an open file has {RESERVE_STEP} bytes reserved ahead of its end, {} has {} (does the \
         file system under {} support fallocate?)",
        path.display(),
        allocated_bytes(&path),
        dir.path().display()
    );

    sink.shutdown().await.expect("shutdown");
    assert!(is_sealed(&path));
    assert!(
        allocated_bytes(&path) <= 64 * 1024,
        "a finished file gives its reserved space back: {} bytes allocated for {len}",
        allocated_bytes(&path)
    );
    assert_eq!(stored_bytes(sink.dir()), lines_of(&batch));
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn no_more_is_reserved_than_the_rotation_size() {
    let dir = TempDir::new().expect("temp dir");
    let max_file_bytes = 100 * 1024;
    let sink = FileSink::open(FileSinkConfig {
        max_file_bytes,
        ..config(&dir)
    })
    .expect("open the file sink");
    assert!(all_delivered(&sink.publish(&events("small", 3)).await));
    let path = sink.current_path().expect("a current file");

    let allocated = allocated_bytes(&path);
    assert!(
        (max_file_bytes..max_file_bytes + 64 * 1024).contains(&allocated),
        "reserved up to the rotation size ({max_file_bytes}), not beyond: {allocated}"
    );
    sink.shutdown().await.expect("shutdown");
    assert!(allocated_bytes(&path) < max_file_bytes, "given back");
}

#[tokio::test]
async fn a_file_system_that_cannot_reserve_space_loses_nothing_and_is_asked_once_per_file() {
    let dir = TempDir::new().expect("temp dir");
    let (sink, faults) = open_with_faults(&dir);
    faults.fail_reserves(true);

    let mut published = Vec::new();
    for round in 0..5 {
        let batch = events(&format!("unreserved{round}"), 4);
        assert!(all_delivered(&sink.publish(&batch).await));
        published.extend(batch);
    }
    sink.shutdown().await.expect("shutdown");

    assert_eq!(stored_bytes(sink.dir()), lines_of(&published));
    assert_eq!(
        count_steps(&faults, Step::Reserve),
        1,
        "after a failure the file grows as it is written"
    );
    // What a failed reservation may have reserved before failing is given back all the same.
    assert_eq!(count_steps(&faults, Step::Release), 1);
}

#[tokio::test]
async fn space_that_cannot_be_given_back_leaves_the_file_whole_and_sealed() {
    let dir = TempDir::new().expect("temp dir");
    let (sink, faults) = open_with_faults(&dir);
    faults.fail_releases(true);
    let batch = events("kept", 6);
    assert!(all_delivered(&sink.publish(&batch).await));
    let path = sink.current_path().expect("a current file");

    sink.shutdown().await.expect("shutdown");

    assert!(faults.steps().contains(&Step::Release));
    assert!(is_sealed(&path));
    assert_eq!(stored_bytes(sink.dir()), lines_of(&batch));
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn space_reserved_by_a_crashed_run_is_given_back_at_start() {
    use rustix::fs::{FallocateFlags, fallocate};

    let dir = TempDir::new().expect("temp dir");
    let events_dir = dir.path().join("events");
    fs::create_dir_all(&events_dir).expect("mkdir");
    let good = "{\"event\":{\"id\":\"a\"}}\n";
    let path = events_dir.join("events-20260101T000000Z-1-000001.ndjson");
    fs::write(&path, good).expect("write");
    let file = fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    fallocate(&file, FallocateFlags::KEEP_SIZE, 0, RESERVE_STEP).expect("fallocate");
    drop(file);
    assert!(allocated_bytes(&path) >= RESERVE_STEP);

    let sink = open(&dir);
    sink.shutdown().await.expect("shutdown");

    assert_eq!(fs::read_to_string(&path).expect("read"), good);
    assert!(is_sealed(&path));
    assert!(
        allocated_bytes(&path) <= 64 * 1024,
        "{} bytes still allocated",
        allocated_bytes(&path)
    );
}
