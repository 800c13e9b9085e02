//! `telemetry-gateway replay`: delivers NDJSON written by the file sink (and dead letters whose
//! events pass the current rules) to the configured cloud sinks, resumably
//! (`docs/operations.md#recovering-events`).
//!
//! Each input file has a checkpoint (the byte offset up to which every line was delivered or
//! skipped) in the checkpoint directory, written after each batch; a rerun starts there. Input
//! files are only read. Lines are delivered with the event ID as the de-duplication key
//! (BigQuery's `insertId`; Pub/Sub consumers de-duplicate by `event.id`), so delivering a line
//! twice (after a crash between a batch and its checkpoint) is harmless downstream.

use std::fs;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use clap::Args;
use sha2::{Digest, Sha256};
use telemetry_gateway_proto::from_json;
use telemetry_gateway_proto::v1::identifier::Identifier;
use telemetry_gateway_proto::v1::{Event, RecordEventsRequestMetadata};
use telemetry_gateway_server::dead_letter::payload_parts;
use telemetry_gateway_server::pipeline::{attributes, prepare_single};
use telemetry_gateway_server::{Source, SourceKind};
use telemetry_gateway_sink::{EventSink, PreparedEvent, PublishOutcome};

use crate::config::Config;

/// At most this many problems (failed or skipped lines) are printed one by one per file.
const SHOWN_PROBLEMS: usize = 20;

/// Deliver NDJSON files written by the file sink, and dead letters whose events pass the
/// current rules, to the configured Pub/Sub topic and/or BigQuery table; resumable, never
/// deletes input. Exits 1 if any line failed, 2 if the command line or configuration is wrong.
#[derive(Clone, Debug, Args)]
pub struct ReplayArgs {
    /// NDJSON files, or directories whose `*.ndjson` files are read in name order.
    #[arg(value_name = "PATH", required = true)]
    pub inputs: Vec<PathBuf>,

    /// Where the per-file checkpoints are kept (created if missing).
    #[arg(long, value_name = "DIR", default_value = "./data/replay-checkpoints")]
    pub checkpoint_dir: PathBuf,

    /// Lines handed to the sinks at once (and between checkpoints).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub batch_lines: u64,

    /// Stop after about this many lines (whole batches) and leave the rest for the next run; 0: no
    /// limit.
    #[arg(long, default_value_t = 0)]
    pub max_lines: u64,
}

/// What happened to the lines of a run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Handed to every sink.
    pub delivered: u64,
    /// Not delivered and to be retried by the next run.
    pub failed: u64,
    /// Never to be delivered: unreadable lines, dead letters still refused.
    pub skipped: u64,
}

/// Runs the command; `config` supplies the sinks.
pub fn run(args: ReplayArgs, config: Config) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("replay: starting the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let sink = match build_sink(&config).await {
            Ok(sink) => sink,
            Err(err) => {
                eprintln!("replay: {err:#}");
                return ExitCode::from(2);
            }
        };
        eprintln!("replay: delivering to {}", sink.describe());
        let result = replay(&args, sink.as_ref()).await;
        let _ = sink.shutdown().await;
        match result {
            Ok((counts, finished)) => {
                println!(
                    "delivered {}, failed {}, skipped {}",
                    counts.delivered, counts.failed, counts.skipped
                );
                if !finished {
                    println!(
                        "stopped after --max-lines {}: run again to resume",
                        args.max_lines
                    );
                }
                if counts.failed > 0 {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(err) => {
                eprintln!("replay: {err:#}");
                ExitCode::from(2)
            }
        }
    })
}

/// The configured sinks, which must be cloud sinks.
async fn build_sink(config: &Config) -> anyhow::Result<Arc<dyn EventSink>> {
    let kinds = config.events.selected_sinks()?;
    if kinds.iter().any(|kind| !kind.is_cloud()) {
        anyhow::bail!(
            "replay delivers to Pub/Sub and/or BigQuery, but the configured sinks are {kinds:?}: \
             set TELEMETRY_GATEWAY_EVENTS_SINKS=pubsub, bigquery or pubsub,bigquery with their settings"
        );
    }
    crate::sinks::build(&config.events).await
}

/// Replays every input; returns the counts and whether everything was read (not stopped by
/// `--max-lines`).
pub async fn replay(args: &ReplayArgs, sink: &dyn EventSink) -> anyhow::Result<(Counts, bool)> {
    let mut files = Vec::new();
    for input in &args.inputs {
        files.extend(input_files(input)?);
    }
    fs::create_dir_all(&args.checkpoint_dir).map_err(|err| {
        anyhow::anyhow!(
            "cannot create the checkpoint directory {}: {err}",
            args.checkpoint_dir.display()
        )
    })?;
    let mut total = Counts::default();
    let mut budget = (args.max_lines > 0).then_some(args.max_lines);
    for file in files {
        let finished = replay_file(&file, args, sink, &mut total, &mut budget).await?;
        if !finished {
            return Ok((total, false));
        }
    }
    Ok((total, true))
}

/// `path` itself, or the `*.ndjson` files of the directory `path` in name order.
fn input_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let metadata = fs::metadata(path)
        .map_err(|err| anyhow::anyhow!("cannot read {}: {err}", path.display()))?;
    if !metadata.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = fs::read_dir(path)
        .map_err(|err| anyhow::anyhow!("cannot list {}: {err}", path.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "ndjson") && path.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// The checkpoint file of `file`: named after a hash of its absolute path.
fn checkpoint_path(dir: &Path, file: &Path) -> PathBuf {
    let absolute = fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    let hash = hex::encode(&Sha256::digest(absolute.to_string_lossy().as_bytes())[..8]);
    let name = file
        .file_name()
        .map_or_else(String::new, |name| name.to_string_lossy().into_owned());
    dir.join(format!("{name}.{hash}.checkpoint"))
}

fn read_checkpoint(path: &Path) -> anyhow::Result<u64> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let json: serde_json::Value = serde_json::from_str(&text).map_err(|err| {
                anyhow::anyhow!("checkpoint {} is corrupt: {err}", path.display())
            })?;
            json["offset"]
                .as_u64()
                .ok_or_else(|| anyhow::anyhow!("checkpoint {} has no offset", path.display()))
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(err) => Err(anyhow::anyhow!(
            "cannot read checkpoint {}: {err}",
            path.display()
        )),
    }
}

/// Writes the checkpoint atomically (a temporary file renamed over it).
fn write_checkpoint(path: &Path, file: &Path, offset: u64) -> anyhow::Result<()> {
    let json = serde_json::json!({ "file": file.to_string_lossy(), "offset": offset });
    let temporary = path.with_extension("checkpoint.tmp");
    let mut out = fs::File::create(&temporary)?;
    out.write_all(json.to_string().as_bytes())?;
    out.sync_all()?;
    fs::rename(&temporary, path)?;
    Ok(())
}

/// One line's fate before delivery.
enum Line {
    Deliver(PreparedEvent),
    Skip(String),
}

/// Replays one file from its checkpoint; `false` when `budget` ran out first.
async fn replay_file(
    file: &Path,
    args: &ReplayArgs,
    sink: &dyn EventSink,
    total: &mut Counts,
    budget: &mut Option<u64>,
) -> anyhow::Result<bool> {
    let checkpoint = checkpoint_path(&args.checkpoint_dir, file);
    let start = read_checkpoint(&checkpoint)?;
    let mut reader = fs::File::open(file)
        .map(BufReader::new)
        .map_err(|err| anyhow::anyhow!("cannot open {}: {err}", file.display()))?;
    let size = reader.get_ref().metadata().map_or(0, |m| m.len());
    if start > size {
        anyhow::bail!(
            "{} is shorter ({size} bytes) than its checkpoint ({start}): remove {} to replay it from the start",
            file.display(),
            checkpoint.display()
        );
    }
    reader.seek(SeekFrom::Start(start))?;
    if start > 0 {
        eprintln!(
            "replay: {}: resuming at byte {start} of {size}",
            file.display()
        );
    }
    let mut offset = start;
    let mut counts = Counts::default();
    let mut shown = 0usize;
    let mut clean = true;
    let mut line = Vec::new();
    loop {
        let mut batch = Vec::new();
        let mut batch_end = offset;
        let mut lines = 0u64;
        while lines < args.batch_lines {
            line.clear();
            let read = reader.read_until(b'\n', &mut line)?;
            if read == 0 || line.last() != Some(&b'\n') {
                // The end, or a line still being written: left for a later run.
                break;
            }
            batch_end += read as u64;
            lines += 1;
            line.pop();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match parse_line(&line) {
                Line::Deliver(event) => batch.push(event),
                Line::Skip(reason) => {
                    counts.skipped += 1;
                    if shown < SHOWN_PROBLEMS {
                        shown += 1;
                        eprintln!(
                            "replay: {}: skipped a line before byte {batch_end}: {reason}",
                            file.display()
                        );
                    }
                }
            }
        }
        if batch_end == offset {
            break;
        }
        let outcomes = if batch.is_empty() {
            Vec::new()
        } else {
            sink.publish(&batch).await
        };
        for (index, event) in batch.iter().enumerate() {
            match outcomes.get(index) {
                Some(PublishOutcome::Delivered) => counts.delivered += 1,
                other => {
                    counts.failed += 1;
                    clean = false;
                    if shown < SHOWN_PROBLEMS {
                        shown += 1;
                        let reason = match other {
                            Some(PublishOutcome::Retryable(e) | PublishOutcome::Permanent(e)) => {
                                e.message.as_str()
                            }
                            _ => "no outcome",
                        };
                        eprintln!(
                            "replay: {}: event {} failed: {reason}",
                            file.display(),
                            event.id
                        );
                    }
                }
            }
        }
        // The checkpoint passes only lines that were all delivered or skipped.
        if clean {
            write_checkpoint(&checkpoint, file, batch_end).map_err(|err| {
                anyhow::anyhow!("writing checkpoint {}: {err}", checkpoint.display())
            })?;
        }
        offset = batch_end;
        eprintln!(
            "replay: {}: {offset}/{size} bytes, delivered {}, failed {}, skipped {}",
            file.display(),
            counts.delivered,
            counts.failed,
            counts.skipped
        );
        if let Some(left) = budget {
            *left = left.saturating_sub(lines);
            if *left == 0 {
                add(total, counts);
                return Ok(false);
            }
        }
    }
    add(total, counts);
    Ok(true)
}

fn add(total: &mut Counts, counts: Counts) {
    total.delivered += counts.delivered;
    total.failed += counts.failed;
    total.skipped += counts.skipped;
}

/// A file-sink line (`{"event":…,"metadata":…}`, delivered byte for byte) or a dead letter
/// (delivered if its event passes the current rules).
fn parse_line(line: &[u8]) -> Line {
    if let Some((event, metadata)) = payload_parts(line) {
        return match file_sink_line(line, event, metadata) {
            Ok(event) => Line::Deliver(event),
            Err(reason) => Line::Skip(reason),
        };
    }
    match dead_letter(line) {
        Ok(event) => Line::Deliver(event),
        Err(reason) => Line::Skip(reason),
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|err| format!("not UTF-8: {err}"))
}

fn file_sink_line(line: &[u8], event: &[u8], metadata: &[u8]) -> Result<PreparedEvent, String> {
    let event: Event = from_json(utf8(event)?).map_err(|err| format!("not an event: {err}"))?;
    let metadata: RecordEventsRequestMetadata =
        from_json(utf8(metadata)?).map_err(|err| format!("not request metadata: {err}"))?;
    let source = source_of(&metadata)?;
    Ok(PreparedEvent {
        attributes: attributes(&event, &source),
        id: event.id,
        feature: event.feature,
        action: event.action,
        timestamp: event.timestamp.unwrap_or_default(),
        payload: Bytes::copy_from_slice(line),
    })
}

fn dead_letter(line: &[u8]) -> Result<PreparedEvent, String> {
    let record: serde_json::Value =
        serde_json::from_slice(line).map_err(|err| format!("not JSON: {err}"))?;
    let (Some(reason), Some(protobuf)) =
        (record["reason"].as_str(), record["event_protobuf"].as_str())
    else {
        return Err("neither a file-sink line nor a dead letter".into());
    };
    if reason == "policy" {
        return Err("dead letter refused by the license's export policy: never replayed".into());
    }
    if record["truncated"] == true {
        return Err("dead letter truncated: the event is incomplete".into());
    }
    if record["metadata"].is_null() {
        return Err("dead letter without the sender's metadata".into());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(protobuf)
        .map_err(|err| format!("event_protobuf is not base64: {err}"))?;
    let event: Event = prost::Message::decode(bytes.as_slice())
        .map_err(|err| format!("event_protobuf is not an event: {err}"))?;
    let metadata: RecordEventsRequestMetadata = from_json(&record["metadata"].to_string())
        .map_err(|err| format!("not request metadata: {err}"))?;
    let source = source_of(&metadata)?;
    let mut sizes = Vec::new();
    match prepare_single(event, &source, &mut sizes) {
        Ok(Ok(prepared)) => Ok(prepared),
        Ok(Err(_oversized)) => Err(format!("dead letter ({reason}) still oversized")),
        Err(error) => Err(format!("dead letter ({reason}) still refused: {error}")),
    }
}

/// The sender as far as the metadata tells (the license itself is not checked again).
fn source_of(metadata: &RecordEventsRequestMetadata) -> Result<Source, String> {
    let kind = match metadata
        .identifier
        .as_ref()
        .and_then(|identifier| identifier.identifier.as_ref())
    {
        Some(Identifier::LicensedInstance(licensed)) => SourceKind::LicensedInstance {
            instance_id: licensed.instance_id.clone(),
            external_url: licensed.external_url.clone(),
            license: Box::default(),
        },
        Some(Identifier::UnlicensedInstance(unlicensed)) => SourceKind::UnlicensedInstance {
            instance_id: unlicensed.instance_id.clone(),
            external_url: unlicensed.external_url.clone(),
        },
        Some(Identifier::ManagedService(service)) => SourceKind::ManagedService {
            service_id: service.service_id.clone(),
            environment: service.service_environment.clone(),
        },
        None => return Err("the metadata has no identifier".into()),
    };
    Ok(Source::new(kind, metadata))
}
