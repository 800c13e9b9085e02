//! Project chores: `cargo xtask codegen [--check]`, `cargo xtask docs [--check]`,
//! `cargo xtask handbook [--check]`, `cargo xtask bench`, `cargo xtask compare --peer DIR`,
//! `cargo xtask fuzz [--seconds N]`; and,
//! as its tests, the checks of the deployment as code (`deploy_checks.rs`).
//!
//! Nothing at runtime depends on this crate, and it depends on none of ours: code generation must
//! work even when the checked-in generated code is stale or broken. (Its tests use testkit's PyPI
//! installer for checkov and hadolint.)

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod bench;
mod compare;
#[cfg(test)]
mod deploy_checks;
mod deployment;
mod fuzz;
mod handbook;

#[derive(Parser)]
#[command(name = "xtask", about = "Telemetry Gateway project chores")]
struct Cli {
    #[command(subcommand)]
    command: Chore,
}

#[derive(Subcommand)]
enum Chore {
    /// Regenerate the protocol crate's Rust code and descriptor from `proto/` (no protoc needed).
    Codegen {
        /// Fail if the checked-in generated code differs from what the proto would generate.
        #[arg(long)]
        check: bool,
    },
    /// Benchmark the gateway with the load generator (release build, pinned cores).
    Bench(bench::BenchArgs),
    /// Compare the gateway with the Go reference-equivalent peer, side by side, under the peer's
    /// load generator (docs/performance.md).
    Compare(compare::CompareArgs),
    /// Run the cargo-fuzz targets of `fuzz/` (needs cargo-fuzz; see docs/fuzzing.md).
    Fuzz(fuzz::FuzzArgs),
    /// Regenerate `docs/configuration.md` from the gateway's setting definitions.
    Docs {
        /// Fail if the checked-in document is stale.
        #[arg(long)]
        check: bool,
    },
    /// Regenerate `docs/operations-handbook.md` from the deployment as code (deploy/terraform).
    Handbook {
        /// Fail if the checked-in handbook is stale.
        #[arg(long)]
        check: bool,
    },
}

const PROTO_ROOT: &str = "proto";
const PROTO_FILES: &[&str] = &["telemetrygateway/v1/telemetrygateway.proto"];
const GEN_DIR: &str = "crates/proto/src/gen";
const DESCRIPTOR_FILE: &str = "descriptor.bin";
const CONFIG_DOC: &str = "docs/configuration.md";

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.command {
        Chore::Codegen { check } => codegen(&root, check),
        Chore::Docs { check } => docs(&root, check),
        Chore::Handbook { check } => handbook::handbook(&root, check),
        Chore::Bench(args) => bench::bench(&root, args),
        Chore::Compare(args) => compare::compare(&root, args),
        Chore::Fuzz(args) => fuzz::fuzz(&root, args),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn codegen(root: &Path, check: bool) -> Result<()> {
    let out = tempfile::tempdir()?;
    generate(root, out.path())?;
    let target = root.join(GEN_DIR);
    let mut generated: Vec<_> = std::fs::read_dir(out.path())?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    generated.sort();

    if check {
        let mut stale = Vec::new();
        for name in &generated {
            let fresh = std::fs::read(out.path().join(name))?;
            let current = std::fs::read(target.join(name)).unwrap_or_default();
            if fresh != current {
                stale.push(name.to_string_lossy().into_owned());
            }
        }
        if !stale.is_empty() {
            bail!(
                "generated protocol code is stale ({}): run `cargo xtask codegen` and commit the result",
                stale.join(", ")
            );
        }
        println!("codegen: {} files up to date in {GEN_DIR}", generated.len());
        return Ok(());
    }

    std::fs::create_dir_all(&target)?;
    for name in &generated {
        std::fs::copy(out.path().join(name), target.join(name))?;
    }
    println!("codegen: wrote {} files to {GEN_DIR}", generated.len());
    Ok(())
}

/// Compiles the proto with protox and writes the tonic/prost code plus the encoded descriptor set.
fn generate(root: &Path, out: &Path) -> Result<()> {
    let mut compiler = protox::Compiler::new([root.join(PROTO_ROOT)])?;
    compiler.include_imports(true).include_source_info(true);
    compiler
        .open_files(PROTO_FILES)
        .map_err(|e| anyhow::anyhow!("compiling {PROTO_FILES:?}: {e}"))?;
    let fds = compiler.file_descriptor_set();
    std::fs::write(
        out.join(DESCRIPTOR_FILE),
        prost::Message::encode_to_vec(&fds),
    )?;

    let pool = prost_reflect::DescriptorPool::from_file_descriptor_set(fds.clone())
        .context("building a descriptor pool")?;
    let mut builder = tonic_prost_build::configure()
        .out_dir(out)
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        // Ordered maps: the canonical JSON rendering emits map keys sorted, like Go's protojson.
        .btree_map(".")
        .emit_rerun_if_changed(false);
    for message in pool.all_messages() {
        let name = message.full_name();
        if name.starts_with("google.") {
            continue;
        }
        builder = builder
            .message_attribute(name, "#[derive(::prost_reflect::ReflectMessage)]")
            .message_attribute(
                name,
                format!(
                    r#"#[prost_reflect(descriptor_pool = "crate::DESCRIPTOR_POOL", message_name = "{name}")]"#
                ),
            );
    }
    builder.compile_fds(fds).context("generating Rust code")?;
    Ok(())
}

fn docs(root: &Path, check: bool) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(root)
        .args([
            "run",
            "--quiet",
            "--package",
            "telemetry-gateway",
            "--",
            "config-docs",
        ])
        .output()
        .context("running `telemetry-gateway config-docs`")?;
    if !output.status.success() {
        bail!(
            "`telemetry-gateway config-docs` failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let path = root.join(CONFIG_DOC);
    if check {
        let current = std::fs::read(&path).unwrap_or_default();
        if current != output.stdout {
            bail!("{CONFIG_DOC} is stale: run `cargo xtask docs` and commit the result");
        }
        println!("docs: {CONFIG_DOC} up to date");
        return Ok(());
    }
    std::fs::write(&path, &output.stdout)?;
    println!("docs: wrote {CONFIG_DOC}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch workspace holding a copy of the proto and of the checked-in generated code.
    fn scratch_workspace() -> tempfile::TempDir {
        let root = workspace_root();
        let scratch = tempfile::tempdir().expect("temp dir");
        for file in PROTO_FILES {
            let target = scratch.path().join(PROTO_ROOT).join(file);
            std::fs::create_dir_all(target.parent().expect("a parent")).expect("mkdir");
            std::fs::copy(root.join(PROTO_ROOT).join(file), target).expect("copy proto");
        }
        let gen_dir = scratch.path().join(GEN_DIR);
        std::fs::create_dir_all(&gen_dir).expect("mkdir");
        for entry in std::fs::read_dir(root.join(GEN_DIR)).expect("generated code") {
            let entry = entry.expect("entry");
            std::fs::copy(entry.path(), gen_dir.join(entry.file_name())).expect("copy");
        }
        scratch
    }

    #[test]
    fn checked_in_code_matches_the_proto() {
        let scratch = scratch_workspace();
        codegen(scratch.path(), true).expect("the checked-in code is current");
    }

    #[test]
    fn a_changed_proto_without_regeneration_is_detected() {
        let scratch = scratch_workspace();
        let proto = scratch.path().join(PROTO_ROOT).join(PROTO_FILES[0]);
        let mut text = std::fs::read_to_string(&proto).expect("read proto");
        text = text.replace(
            "message RecordEventResponse {}",
            "message RecordEventResponse {\n  string note = 1;\n}",
        );
        std::fs::write(&proto, text).expect("write proto");
        let err = codegen(scratch.path(), true).expect_err("drift must be detected");
        assert!(err.to_string().contains("stale"), "{err}");
    }
}
