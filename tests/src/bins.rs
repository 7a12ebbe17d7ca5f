//! Paths of the workspace's binaries. `cargo test` builds only the package under
//! test, so CI runs `cargo build --workspace` first (see `.ci/run`).

use std::path::PathBuf;

/// `target/<profile>/<name>`, found next to the running test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let p = profile_dir.join(name);
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace` before the tests",
        p.display()
    );
    p
}
