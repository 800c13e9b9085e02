//! Which settings select the Pub/Sub sink, and what it is configured with.

use std::time::Duration;

use clap::Parser;
use telemetry_gateway::config::{Cli, SinkKind};

fn parse(args: &[&str]) -> Cli {
    Cli::try_parse_from(std::iter::once("telemetry-gateway").chain(args.iter().copied()))
        .expect("the flags parse")
}

const TOPIC: [&str; 4] = [
    "--events-pubsub-project-id",
    "project",
    "--events-pubsub-topic-id",
    "events",
];

fn with_topic(args: &[&'static str]) -> Vec<&'static str> {
    TOPIC.iter().chain(args).copied().collect()
}

#[test]
fn enabled_with_a_project_and_topic_selects_pubsub() {
    let cli = parse(&with_topic(&["--events-pubsub-enabled", "true"]));
    assert_eq!(
        cli.config.events.selected_sinks().expect("valid"),
        vec![SinkKind::Pubsub]
    );
}

#[test]
fn a_project_and_topic_without_enabled_select_pubsub_as_in_the_original() {
    let cli = parse(&with_topic(&[]));
    assert_eq!(
        cli.config.events.selected_sinks().expect("valid"),
        vec![SinkKind::Pubsub]
    );
}

#[test]
fn enabled_false_selects_the_log_sink_even_with_a_topic() {
    let cli = parse(&with_topic(&["--events-pubsub-enabled", "false"]));
    assert_eq!(
        cli.config.events.selected_sinks().expect("valid"),
        vec![SinkKind::Log]
    );
}

#[test]
fn an_explicit_sink_list_wins_over_enabled() {
    let cli = parse(&with_topic(&[
        "--events-pubsub-enabled",
        "true",
        "--events-sinks",
        "file",
    ]));
    assert_eq!(
        cli.config.events.selected_sinks().expect("valid"),
        vec![SinkKind::File]
    );
    let cli = parse(&with_topic(&["--events-sinks", "pubsub,file"]));
    assert_eq!(
        cli.config.events.selected_sinks().expect("valid"),
        vec![SinkKind::Pubsub, SinkKind::File]
    );
}

#[test]
fn pubsub_without_a_topic_names_the_missing_variable() {
    let cli = parse(&[
        "--events-pubsub-enabled",
        "true",
        "--events-pubsub-project-id",
        "project",
    ]);
    let err = cli
        .config
        .events
        .selected_sinks()
        .expect_err("no topic")
        .to_string();
    assert_eq!(
        err,
        "TELEMETRY_GATEWAY_EVENTS_PUBSUB_TOPIC_ID: required by the pubsub sink"
    );
}

#[test]
fn the_sink_gets_the_emulator_host_concurrency_and_timeout() {
    let cli = parse(&with_topic(&[
        "--pubsub-emulator-host",
        "127.0.0.1:8085",
        "--events-stream-publish-concurrency",
        "40",
        "--events-pubsub-publish-timeout-seconds",
        "5",
    ]));
    let config = cli.config.events.settings.pubsub.config().expect("valid");
    assert_eq!(config.topic_name(), "projects/project/topics/events");
    assert_eq!(config.emulator_host.as_deref(), Some("127.0.0.1:8085"));
    assert_eq!(config.publish_concurrency, 40);
    assert_eq!(config.publish_timeout, Duration::from_secs(5));
}

#[test]
fn a_concurrency_of_zero_or_less_means_250_as_in_the_original() {
    for setting in ["0", "-3"] {
        let cli = parse(&with_topic(&[
            "--events-stream-publish-concurrency",
            setting,
        ]));
        let config = cli.config.events.settings.pubsub.config().expect("valid");
        assert_eq!(config.publish_concurrency, 250, "{setting}");
    }
}

#[test]
fn only_the_selected_sinks_settings_are_checked() {
    // The file sink is not selected, so its rotation size does not matter.
    let cli = parse(&with_topic(&["--events-file-max-bytes", "0"]));
    assert_eq!(
        cli.config.events.selected_sinks().expect("valid"),
        vec![SinkKind::Pubsub]
    );
    // Selected, it does; and so does a BigQuery sink without its table.
    let cli = parse(&with_topic(&[
        "--events-file-max-bytes",
        "0",
        "--events-sinks",
        "pubsub,file,bigquery",
    ]));
    let err = cli
        .config
        .events
        .selected_sinks()
        .expect_err("two sinks misconfigured")
        .to_string();
    assert_eq!(
        err,
        "TELEMETRY_GATEWAY_EVENTS_FILE_MAX_BYTES: must be greater than 0\n\
         TELEMETRY_GATEWAY_EVENTS_BIGQUERY_PROJECT_ID: required by the bigquery sink\n\
         TELEMETRY_GATEWAY_EVENTS_BIGQUERY_DATASET_ID: required by the bigquery sink\n\
         TELEMETRY_GATEWAY_EVENTS_BIGQUERY_TABLE_ID: required by the bigquery sink"
    );
}

#[test]
fn a_dead_letter_directory_is_rotated_as_the_file_sink_and_checked_so() {
    let cli = parse(&with_topic(&[
        "--events-file-max-bytes",
        "0",
        "--events-deadletter-dir",
        "/tmp/dead-letters",
    ]));
    let err = cli
        .config
        .dead_letters
        .destination(&cli.config.events)
        .expect_err("no rotation size")
        .to_string();
    assert_eq!(
        err,
        "TELEMETRY_GATEWAY_EVENTS_FILE_MAX_BYTES: must be greater than 0"
    );
}
