//! A small tmpfs mounted for a test, so that "the disk is full" is real.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Result;

/// A tmpfs mounted at a test's path, unmounted when dropped.
pub struct SmallFs(PathBuf);

impl SmallFs {
    /// `None` (with a loud message) when this machine cannot mount; CI must.
    pub fn mount(at: &Path, size: &str) -> Result<Option<SmallFs>> {
        fs::create_dir_all(at)?;
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(at)
            .output()?;
        if out.status.success() {
            return Ok(Some(SmallFs(at.to_owned())));
        }
        let why = String::from_utf8_lossy(&out.stderr).into_owned();
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            anyhow::bail!("CI must be able to mount a tmpfs for the disk-full tests: {why}");
        }
        eprintln!("\n!!! SKIPPED: cannot mount a tmpfs here ({why}); the disk-full test did not run !!!\n");
        Ok(None)
    }

    /// Free bytes for an unprivileged writer.
    pub fn free(&self) -> Result<u64> {
        let st = nix::sys::statvfs::statvfs(&self.0)?;
        Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}
