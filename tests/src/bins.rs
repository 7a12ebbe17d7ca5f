//! Paths of the workspace's binaries. `cargo test` builds only the package under
//! test, so CI runs `cargo build --workspace` first (see `.ci/run`).

use std::path::PathBuf;

/// `target/<profile>/<name>`, found next to the running test executable (in
/// `target/<profile>/deps/`) or program (in `target/<profile>/`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current executable");
    let mut profile_dir = exe.parent().expect("executable has a directory");
    if profile_dir.ends_with("deps") {
        profile_dir = profile_dir.parent().expect("target/<profile>");
    }
    let p = profile_dir.join(name);
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace` before the tests",
        p.display()
    );
    p
}

/// For the benchmarks: `BENTO_AGENT_BIN` / `BENTO_BIN` (the name in capitals),
/// else the release build, else the debug one.
pub fn measured(name: &str) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    let var = format!("{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Some(p) = std::env::var_os(&var) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let target = exe
        .ancestors()
        .find(|p| p.join("release").is_dir() || p.join("debug").is_dir())
        .map(std::path::Path::to_owned)
        .context("no target directory above the bench")?;
    ["release", "debug"]
        .iter()
        .map(|p| target.join(p).join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} is not built: cargo build --release -p {name}"))
}

/// `ssh -V`, for the benchmarks' tables.
pub fn ssh_version() -> String {
    std::process::Command::new("ssh")
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
        .unwrap_or_default()
}
