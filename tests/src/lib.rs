//! Shared helpers for the end-to-end tests.
//!
//! - [`nixenv`]: the environment that makes the Debian `nix` 2.8 work offline, as root.
//! - [`toy`]: the one generator of toy NixOS systems (flake and non-flake hosts).
//! - [`sshd`]: a real OpenSSH server with one chroot SFTP user per test host.
//! - [`embedded`]: bento's own SFTP server (`bento sftp`), one key per test host.
//! - [`endpoint`]: what both servers offer the tests (ports, keys, `sftp -b`).
//! - here: [`TestDir`], [`wait_until`] / [`wait_for`] and [`run`].

pub mod bins;
pub mod cli;
pub mod embedded;
pub mod endpoint;
pub mod nixenv;
pub mod release;
pub mod reports;
pub mod smallfs;
pub mod sshd;
pub mod toy;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Set this environment variable (to anything) to keep every [`TestDir`] after the test,
/// for post-mortem inspection; its path is printed.
pub const KEEP_ENV: &str = "BENTO_KEEP_TEST_DIRS";

/// A temporary directory unique to one test, removed when dropped (unless [`KEEP_ENV`] is set).
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
}

impl TestDir {
    /// Creates `$TMPDIR/bento-<label>-XXXXXX`; `label` only helps a human find it.
    pub fn new(label: &str) -> Result<TestDir> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("bento-{label}-"))
            .tempdir()
            .context("creating a test directory")?;
        Ok(TestDir { dir: Some(dir) })
    }

    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("TestDir used after drop").path()
    }

    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path().join(rel)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            if std::env::var_os(KEEP_ENV).is_some() {
                eprintln!("keeping test directory {}", dir.keep().display());
            }
        }
    }
}

/// Calls `ready` every few milliseconds until it returns true or `timeout` has passed;
/// returns whether it became true. Tests wait on conditions, never on fixed sleeps.
pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    wait_for(timeout, || ready().then_some(())).is_some()
}

/// Like [`wait_until`], for a condition that yields a value.
pub fn wait_for<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    // Start fast so quick conditions cost little, back off so slow ones don't spin.
    let mut interval = Duration::from_millis(5);
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(interval.min(deadline - now));
        interval = (interval * 2).min(Duration::from_millis(100));
    }
}

/// Runs a command to completion; a non-zero exit becomes an error carrying the command
/// line and its stderr, so a failing test says why.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let output = cmd
        .output()
        .with_context(|| format!("starting {}", describe(cmd)))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}):\n{}{}",
            describe(cmd),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

/// The command line of `cmd`, for error messages.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}
