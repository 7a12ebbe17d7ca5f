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
