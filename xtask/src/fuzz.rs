//! `cargo xtask fuzz [--seconds N] [TARGET...]`: runs the cargo-fuzz targets of `fuzz/`, one after
//! the other, each for N seconds from a corpus seeded from `testdata/` (docs/fuzzing.md).
//!
//! libFuzzer needs nightly compiler flags; on a stable toolchain they are unlocked with
//! `RUSTC_BOOTSTRAP=1`, which this sets for the fuzz build only.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// The fuzz targets, in `fuzz/Cargo.toml`.
const TARGETS: &[&str] = &[
    "license_key",
    "record_events",
    "json_differential",
    "grpc_framing",
];

/// Arguments of `cargo xtask fuzz`.
#[derive(clap::Args, Debug)]
pub struct FuzzArgs {
    /// How long to fuzz each target, in seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// The sanitizer to build with (`none`, `address`, ...); safe Rust needs none.
    #[arg(long, default_value = "none")]
    sanitizer: String,
    /// libFuzzer's memory limit per run, in MiB.
    #[arg(long, default_value_t = 4096)]
    rss_limit_mb: u64,
    /// Targets to run (all by default).
    targets: Vec<String>,
}

/// Builds and runs each target; fails on the first target that finds a crash.
pub fn fuzz(root: &Path, args: FuzzArgs) -> Result<()> {
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        args.targets.iter().map(String::as_str).collect()
    };
    if let Some(unknown) = targets.iter().find(|t| !TARGETS.contains(t)) {
        bail!("unknown fuzz target {unknown}; the targets are {TARGETS:?}");
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let has_cargo_fuzz = Command::new(&cargo)
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !has_cargo_fuzz {
        bail!("cargo-fuzz is not installed: run `cargo install cargo-fuzz --locked`");
    }
    for target in targets {
        let corpus = root.join("target/fuzz-corpus").join(target);
        let status = Command::new(&cargo)
            .current_dir(root)
            .args(["run", "--quiet", "--package", "telemetry-gateway-fuzz"])
            .args(["--example", "fuzz-seeds", "--", target])
            .arg(&corpus)
            .status()
            .context("writing the seed corpus")?;
        if !status.success() {
            bail!("writing the seeds of {target} failed");
        }
        // Built first, so that the time printed below is the fuzzing time alone.
        let status = cargo_fuzz(&cargo, root, "build", target, &args.sanitizer)
            .status()
            .context("running cargo fuzz build")?;
        if !status.success() {
            bail!("building the fuzz target {target} failed");
        }
        println!("fuzz: {target} for {} s", args.seconds);
        let started = Instant::now();
        let status = cargo_fuzz(&cargo, root, "run", target, &args.sanitizer)
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={}", args.seconds))
            .arg(format!("-rss_limit_mb={}", args.rss_limit_mb))
            .arg("-print_final_stats=1")
            .status()
            .context("running cargo fuzz")?;
        if !status.success() {
            bail!(
                "{target} failed after {:.0?}: the input is under fuzz/artifacts/{target}/; \
                 fix the bug, then copy the input into fuzz/regressions/{target}/ so that the \
                 replay tests keep it",
                started.elapsed()
            );
        }
        println!(
            "fuzz: {target} ran {:.0?} without a failure",
            started.elapsed()
        );
    }
    Ok(())
}

/// `cargo fuzz <subcommand> <target>` with libFuzzer's nightly flags unlocked.
fn cargo_fuzz(
    cargo: &str,
    root: &Path,
    subcommand: &str,
    target: &str,
    sanitizer: &str,
) -> Command {
    let mut command = Command::new(cargo);
    command
        .current_dir(root)
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["fuzz", subcommand, target, "--features", "libfuzzer"])
        .args(["--sanitizer", sanitizer]);
    command
}
