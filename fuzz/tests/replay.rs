//! Every seed and every saved finding of every fuzz target, run as an ordinary test: the
//! README's test command replays the corpora on the stable toolchain (docs/fuzzing.md).

use telemetry_gateway_fuzz::{TARGETS, regressions, run, seeds};

fn replay(target: &str) {
    let seeds = seeds(target).expect("the seeds can be built from testdata/");
    assert!(
        seeds.len() >= 3,
        "{target} has only {} seeds: is testdata/ there?",
        seeds.len()
    );
    let regressions = regressions(target).expect("fuzz/regressions/ is readable");
    for (name, input) in seeds.iter().chain(&regressions) {
        let outcome = std::panic::catch_unwind(|| run(target, input));
        assert!(
            matches!(outcome, Ok(true)),
            "{target} fails on {name} ({} bytes)",
            input.len()
        );
    }
}

#[test]
fn license_key_corpus_replays() {
    replay("license_key");
}

#[test]
fn record_events_corpus_replays() {
    replay("record_events");
}

#[test]
fn json_differential_corpus_replays() {
    replay("json_differential");
}

#[test]
fn grpc_framing_corpus_replays() {
    replay("grpc_framing");
}

#[test]
fn every_target_is_replayed() {
    assert_eq!(
        TARGETS,
        [
            "license_key",
            "record_events",
            "json_differential",
            "grpc_framing"
        ]
    );
    assert!(!run("no_such_target", b""));
}
