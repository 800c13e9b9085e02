//! How the real binary reads its configuration as templated deployments write it: empty values,
//! typos, flags after the subcommand, every problem at once, and `check-config`.

mod support;

use support::{GatewayProcess, run_to_completion as run};

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn check_config_prints_the_effective_settings_with_their_origin_and_secrets_redacted() {
    let output = run(
        &[
            ("ENVIRONMENT_ID", "prod"),
            ("SENTRY_DSN", "https://public-key@sentry.invalid/1"),
            ("DIAGNOSTICS_SECRET", "diagnostics-secret-value"),
        ],
        &["check-config", "--port", "0"],
    );
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    for line in [
        "PORT=0 (flag)",
        "ENVIRONMENT_ID=prod (environment)",
        "MSP=false (default)",
        "SENTRY_DSN=<redacted> (environment)",
        "DIAGNOSTICS_SECRET=<redacted> (environment)",
        "TELEMETRY_GATEWAY_SAMS_CLIENT_ID= (unset)",
        "configuration OK",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
    assert!(!text.contains("public-key") && !text.contains("diagnostics-secret-value"));
}

#[test]
fn an_empty_environment_value_means_unset() {
    let output = run(
        &[
            ("PORT", ""),
            ("DIAGNOSTICS_SECRET", ""),
            ("TELEMETRY_GATEWAY_EVENTS_PUBSUB_PROJECT_ID", ""),
            ("TELEMETRY_GATEWAY_EVENTS_PUBSUB_ENABLED", ""),
            ("MSP", ""),
            ("TELEMETRY_GATEWAY_SHUTDOWN_TIMEOUT", ""),
            ("TELEMETRY_GATEWAY_SAMS_CLIENT_ID", ""),
        ],
        &["check-config"],
    );
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    for line in [
        "PORT=10085 (default)",
        "DIAGNOSTICS_SECRET= (unset)",
        "TELEMETRY_GATEWAY_EVENTS_PUBSUB_PROJECT_ID= (unset)",
        "MSP=false (default)",
        "TELEMETRY_GATEWAY_SHUTDOWN_TIMEOUT=10s (default)",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
}

#[test]
fn every_problem_is_reported_at_once_and_check_config_exits_2() {
    let env = [
        ("TELEMETRY_GATEWAY_EVENTS_PUBSUB_ENABLED", "true"),
        ("TELEMETRY_GATEWAY_EVENTS_BIGQUERY_TABLE_ID", "events"),
        ("TELEMETRY_GATEWAY_SAMS_CLIENT_ID", "sams_cid_x"),
        ("TELEMETRY_GATEWAY_LICENSE_PUBLIC_KEY", "not a key"),
        ("PORT", "0"),
    ];
    let expected = [
        "TELEMETRY_GATEWAY_EVENTS_PUBSUB_PROJECT_ID: required by the pubsub sink",
        "TELEMETRY_GATEWAY_EVENTS_PUBSUB_TOPIC_ID: required by the pubsub sink",
        "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_PROJECT_ID: required by the bigquery sink",
        "TELEMETRY_GATEWAY_EVENTS_BIGQUERY_DATASET_ID: required by the bigquery sink",
        "TELEMETRY_GATEWAY_SAMS_CLIENT_SECRET: required when TELEMETRY_GATEWAY_SAMS_CLIENT_ID is set",
        "TELEMETRY_GATEWAY_LICENSE_PUBLIC_KEY: ",
    ];
    let checked = run(&env, &["check-config"]);
    let text = stdout(&checked);
    assert_eq!(checked.status.code(), Some(2), "{text}");
    let served = run(&env, &[]);
    assert_eq!(served.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&served.stderr);
    for problem in expected {
        assert!(
            text.contains(problem),
            "check-config lacks {problem:?}:\n{text}"
        );
        assert!(
            stderr.contains(problem),
            "serve lacks {problem:?}:\n{stderr}"
        );
    }
}

#[test]
fn an_unknown_gateway_variable_is_a_warning() {
    let typo = ("TELEMETRY_GATEWAY_EVENTS_PUBSUB_TOPIC", "events");
    let output = run(&[typo], &["check-config"]);
    let text = stdout(&output);
    assert_eq!(
        output.status.code(),
        Some(0),
        "a typo alone is not fatal:\n{text}"
    );
    assert!(
        text.contains(
            "warning: TELEMETRY_GATEWAY_EVENTS_PUBSUB_TOPIC is not a setting of the gateway"
        ),
        "{text}"
    );

    let mut gateway = GatewayProcess::start(&[typo]);
    gateway.address();
    let warned = gateway.lines().into_iter().any(|line| {
        line["variable"] == "TELEMETRY_GATEWAY_EVENTS_PUBSUB_TOPIC" && line["level"] == "WARN"
    });
    assert!(warned, "no warning logged: {:#?}", gateway.lines());
    assert!(gateway.terminate().success());
}

#[test]
fn settings_may_follow_the_serve_subcommand() {
    let output = run(&[], &["serve", "--port", "0", "--sanity-check", "true"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        stdout(&output).trim(),
        "Sanity check passed, exiting without error"
    );
}

#[test]
fn durations_take_the_forms_operators_write() {
    for (value, ok) in [
        ("1m30s", true),
        ("250ms", true),
        ("1h", true),
        ("10", true),
        ("0.5", true),
        ("ten seconds", false),
    ] {
        let output = run(
            &[("TELEMETRY_GATEWAY_SHUTDOWN_TIMEOUT", value)],
            &["check-config"],
        );
        assert_eq!(output.status.success(), ok, "{value}: {output:?}");
        if !ok {
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                stderr.contains("TELEMETRY_GATEWAY_SHUTDOWN_TIMEOUT"),
                "{stderr}"
            );
        }
    }
}

/// The gateway raises its soft open-file limit to the hard one, and warns when the connection
/// limit would not leave file descriptors for the rest below it.
#[test]
fn a_connection_limit_at_the_open_file_limit_is_a_warning() {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
    let hard: u64 = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(4))
        .and_then(|hard| hard.parse().ok())
        .expect("a hard open-file limit");
    let near = (hard.saturating_sub(100)).max(1).to_string();
    let mut gateway = GatewayProcess::start(&[("TELEMETRY_GATEWAY_MAX_CONNECTIONS", &near)]);
    gateway.address();
    let warning = gateway
        .lines()
        .into_iter()
        .find(|line| {
            line["level"] == "WARN"
                && line["message"]
                    .as_str()
                    .is_some_and(|text| text.starts_with("TELEMETRY_GATEWAY_MAX_CONNECTIONS"))
        })
        .unwrap_or_else(|| panic!("no warning logged: {:#?}", gateway.lines()));
    assert_eq!(
        warning["open_file_limit"], hard,
        "raised to the hard limit: {warning}"
    );
    assert!(gateway.terminate().success());

    // The default (4,096) leaves room under this machine's limit, if it is high enough.
    if hard >= 4096 + 256 {
        let mut gateway = GatewayProcess::start(&[]);
        gateway.address();
        let warned = gateway.lines().into_iter().any(|line| {
            line["message"]
                .as_str()
                .is_some_and(|text| text.starts_with("TELEMETRY_GATEWAY_MAX_CONNECTIONS"))
        });
        assert!(!warned, "{:#?}", gateway.lines());
        assert!(gateway.terminate().success());
    }
}

#[test]
fn the_memory_senders_can_make_it_hold_is_logged_at_start() {
    let mut gateway = GatewayProcess::start(&[
        ("TELEMETRY_GATEWAY_MAX_INFLIGHT_BYTES", "67108864"),
        ("TELEMETRY_GATEWAY_MAX_CONNECTIONS", "100"),
    ]);
    gateway.address();
    let line = gateway
        .lines()
        .into_iter()
        .find(|line| line["bound_mib"].is_number())
        .unwrap_or_else(|| panic!("no memory bound logged: {:#?}", gateway.lines()));
    // 64 MiB of budget; 100 connections of three 1 MiB windows and 100 streams of 16 KiB of
    // headers and 20 KiB of state each (6,672 KiB); 8 MiB of health and reflection calls.
    assert_eq!(line["connection_kib"], 3 * 1024 + 100 * 36, "{line}");
    assert_eq!(
        line["bound_mib"],
        64 + (100 * 6672_u64).div_ceil(1024) + 8,
        "{line}"
    );
    assert_eq!(line["max_connections"], 100, "{line}");
    assert!(gateway.terminate().success());

    // With the connection limit off, nothing bounds it, and the gateway says so.
    let mut gateway = GatewayProcess::start(&[("TELEMETRY_GATEWAY_MAX_CONNECTIONS", "0")]);
    gateway.address();
    let warned = gateway.lines().into_iter().any(|line| {
        line["level"] == "WARN"
            && line["message"]
                .as_str()
                .is_some_and(|text| text.contains("is not bounded"))
    });
    assert!(warned, "{:#?}", gateway.lines());
    assert!(gateway.terminate().success());
}
