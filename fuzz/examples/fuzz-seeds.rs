//! Writes a target's seed inputs and saved findings into a corpus directory:
//! `cargo run -p telemetry-gateway-fuzz --example fuzz-seeds -- <target> <dir>` (used by
//! `cargo xtask fuzz`). An example rather than a `bin`: cargo-fuzz builds every binary of the
//! crate as a fuzz target.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(target), Some(dir)) = (args.next(), args.next()) else {
        eprintln!("usage: fuzz-seeds <target> <corpus-dir>");
        return ExitCode::from(2);
    };
    if !telemetry_gateway_fuzz::TARGETS.contains(&target.as_str()) {
        eprintln!(
            "unknown target {target}; targets: {:?}",
            telemetry_gateway_fuzz::TARGETS
        );
        return ExitCode::from(2);
    }
    let dir = PathBuf::from(dir);
    let written = (|| -> std::io::Result<usize> {
        std::fs::create_dir_all(&dir)?;
        let mut inputs = telemetry_gateway_fuzz::seeds(&target)?;
        inputs.extend(telemetry_gateway_fuzz::regressions(&target)?);
        for (name, bytes) in &inputs {
            std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
        }
        Ok(inputs.len())
    })();
    match written {
        Ok(n) => {
            println!("{n} seeds for {target} in {}", dir.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!(
                "cannot write the seeds of {target} to {}: {err}",
                dir.display()
            );
            ExitCode::FAILURE
        }
    }
}
