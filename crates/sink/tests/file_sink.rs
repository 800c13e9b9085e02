//! The file sink: delivered means written and fsynced, exactly once, as one NDJSON line.

mod common;

use std::collections::HashMap;
use std::fs;
use std::sync::Arc;
use std::time::Duration;

use telemetry_gateway_sink::file::FaultInjection;
use telemetry_gateway_sink::{EventSink, FileSink, FileSinkConfig, PublishOutcome, SinkError};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_drains_queued_batches() {
    let dir = TempDir::new().expect("temp dir");
    let (sink, faults) = open_with_faults(&dir);
    faults.delay_syncs(Duration::from_millis(100));
    let sink = Arc::new(sink);

    let mut tasks = Vec::new();
    for publisher in 0..8 {
        let sink = Arc::clone(&sink);
        tasks.push(tokio::spawn(async move {
            let batch = events(&format!("queued{publisher}"), 2);
            (sink.publish(&batch).await, batch)
        }));
    }
    // The first group is still in its slow fsync; the rest wait in the queue.
    tokio::time::sleep(Duration::from_millis(30)).await;
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
        vec![PublishOutcome::Retryable("file sink is shut down".to_string()); 2]
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
