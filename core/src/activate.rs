//! Activating a system: set the system profile, run `switch-to-configuration`,
//! roll back to the previous generation, tell whether a reboot is needed. Used by
//! `bento build test|switch` and by the agent.

use std::fs;
use std::path::{Path, PathBuf};

use crate::cmd::{Cmd, CmdError};
use crate::release::{sha256_file, TreeListing};
use crate::report::BootFiles;

/// The `switch-to-configuration` verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchAction {
    Switch,
    Boot,
    Test,
}

impl SwitchAction {
    pub fn as_str(self) -> &'static str {
        match self {
            SwitchAction::Switch => "switch",
            SwitchAction::Boot => "boot",
            SwitchAction::Test => "test",
        }
    }
}

/// The default NixOS system profile.
pub const SYSTEM_PROFILE: &str = "/nix/var/nix/profiles/system";
/// The system the machine booted.
pub const BOOTED_SYSTEM: &str = "/run/booted-system";

/// The store path a profile (or `/run/booted-system`) points to.
pub fn resolve_system(link: &Path) -> Option<PathBuf> {
    fs::canonicalize(link).ok()
}

/// Points the profile at `system` as a new generation (`nix-env -p P --set S`).
pub fn set_profile(profile: &Path, system: &Path) -> Result<(), CmdError> {
    if let Some(parent) = profile.parent() {
        let _ = fs::create_dir_all(parent);
    }
    Cmd::new("nix-env")
        .arg("-p")
        .arg(profile)
        .arg("--set")
        .arg(system)
        .run()
        .map(|_| ())
}

/// Runs `<system>/bin/switch-to-configuration <action>`, passing each output line on.
pub fn switch_to_configuration(
    system: &Path,
    action: SwitchAction,
    on_line: impl FnMut(&str),
) -> Result<(), CmdError> {
    Cmd::new(system.join("bin/switch-to-configuration"))
        .arg(action.as_str())
        .env("NIXOS_INSTALL_BOOTLOADER", "")
        .run_streaming(on_line)
        .map(|_| ())
}

/// Sets the profile to `system`, then switches to it.
pub fn activate(
    profile: &Path,
    system: &Path,
    action: SwitchAction,
    on_line: impl FnMut(&str),
) -> Result<(), CmdError> {
    if action != SwitchAction::Test {
        set_profile(profile, system)?;
    }
    switch_to_configuration(system, action, on_line)
}

/// Rolls the profile back one generation and switches to it; returns the system
/// now active.
pub fn rollback(profile: &Path, on_line: impl FnMut(&str)) -> Result<PathBuf, CmdError> {
    Cmd::new("nix-env")
        .arg("-p")
        .arg(profile)
        .arg("--rollback")
        .run()?;
    let system = resolve_system(profile).ok_or_else(|| CmdError::Io {
        cmd: format!("readlink {}", profile.display()),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "profile has no target"),
    })?;
    switch_to_configuration(&system, SwitchAction::Switch, on_line)?;
    Ok(system)
}

/// Identity of a boot file: its link target on NixOS (a store path), else a hash of
/// its content, so two systems sharing a kernel compare equal.
fn identity(p: &Path) -> Option<String> {
    if let Ok(t) = fs::read_link(p) {
        return Some(t.to_string_lossy().into_owned());
    }
    let md = fs::metadata(p).ok()?;
    if md.is_dir() {
        return TreeListing::read(p)
            .ok()
            .map(|l| format!("tree:{}", l.revision()));
    }
    sha256_file(p).ok().map(|h| format!("sha256:{h}"))
}

/// Kernel, initrd and kernel modules of a system.
pub fn boot_files(system: &Path) -> BootFiles {
    BootFiles {
        kernel: identity(&system.join("kernel")),
        initrd: identity(&system.join("initrd")),
        kernel_modules: identity(&system.join("kernel-modules")),
    }
}

/// Whether booting `built` needs a reboot from `booted` (any of the three differ).
pub fn reboot_required(booted: &BootFiles, built: &BootFiles) -> bool {
    booted != built
}
