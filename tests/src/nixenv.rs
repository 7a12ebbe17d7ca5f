//! Running the real Debian `nix` (2.8) offline, single user, as root.
//!
//! `substituters =` keeps nix from trying the public cache (each build would wait on
//! DNS retries), `sandbox = false` because the test machines have no user namespaces
//! for it, `build-users-group =` because there is no `nixbld` group. Nix 2.8 has no
//! `--print-out-paths`: build with `nix build --json --no-link` and read the JSON
//! ([`parse_build_json`]).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The `NIX_CONFIG` every nix invocation of the tests gets.
pub const NIX_CONFIG: &str = "experimental-features = nix-command flakes
sandbox = false
substituters =
build-users-group =";

/// The environment variables to set on any process that runs nix (directly, or through
/// a bento binary). Works with `std` and `tokio` commands alike: `cmd.envs(nix_env())`.
pub fn nix_env() -> Vec<(&'static str, String)> {
    vec![("NIX_CONFIG", NIX_CONFIG.to_owned())]
}

/// Adds [`nix_env`] to `cmd`.
pub fn apply(cmd: &mut Command) -> &mut Command {
    cmd.envs(nix_env())
}

/// `Command::new(program)` with [`nix_env`] applied (`nix`, `nix-build`, `nix-env`, …).
pub fn nix_command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    apply(&mut cmd);
    cmd
}

/// The output paths in `nix build --json` output, in order: `[{"drvPath":…,
/// "outputs":{"out":"/nix/store/…"}}, …]`.
pub fn parse_build_json(stdout: &[u8]) -> Result<Vec<PathBuf>> {
    let json: serde_json::Value =
        serde_json::from_slice(stdout).context("parsing `nix build --json` output")?;
    let Some(items) = json.as_array() else {
        bail!("`nix build --json` printed no list: {json}");
    };
    let mut paths = Vec::new();
    for item in items {
        let Some(outputs) = item.get("outputs").and_then(|o| o.as_object()) else {
            bail!("`nix build --json` item without outputs: {item}");
        };
        for path in outputs.values() {
            let Some(path) = path.as_str() else {
                bail!("`nix build --json` output is not a string: {item}");
            };
            paths.push(PathBuf::from(path));
        }
    }
    Ok(paths)
}

/// Runs a `nix build --json --no-link …` command and returns its single output path.
pub fn build_single(cmd: &mut Command) -> Result<PathBuf> {
    let output = crate::run(cmd)?;
    let mut paths = parse_build_json(&output.stdout)?;
    if paths.len() != 1 {
        bail!(
            "{} built {} outputs, expected one: {paths:?}",
            crate::describe(cmd),
            paths.len()
        );
    }
    Ok(paths.remove(0))
}

/// Runs `nix-store ARGS` offline; its stdout, or its stderr as the error.
pub fn nix_store<I, S>(args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = Command::new("nix-store")
        .args(args)
        .envs(nix_env())
        .output()
        .context("running nix-store")?;
    if !out.status.success() {
        bail!("nix-store: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `path` is valid in the store.
pub fn valid(path: &str) -> bool {
    nix_store(["--check-validity", path]).is_ok()
}

/// Deletes `paths` from the store (a test's own paths, exported already).
pub fn delete(paths: &[&str]) -> Result<()> {
    nix_store(std::iter::once("--delete").chain(paths.iter().copied()))?;
    if let Some(p) = paths.iter().find(|p| valid(p)) {
        bail!("{p} is still in the store");
    }
    Ok(())
}
