//! Activating a system: set the system profile, run `switch-to-configuration`,
//! roll back to a given system, tell whether a reboot is needed. Used by
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

/// Keeps `system` from the garbage collector while the symlink `root` exists
/// (`nix-store --realise --add-root`; `nix-collect-garbage -d` must not take the system a
/// rollback needs).
pub fn add_gc_root(root: &Path, system: &Path) -> Result<(), CmdError> {
    Cmd::new("nix-store")
        .arg("--realise")
        .arg(system)
        .arg("--add-root")
        .arg(root)
        .arg("--indirect")
        .run()
        .map(|_| ())
}

/// The generations of `profile` (`<profile>-<N>-link`), oldest first, with the store
/// path each holds. Dangling links are left out.
pub fn generations(profile: &Path) -> Vec<(u64, PathBuf)> {
    let (Some(dir), Some(name)) = (profile.parent(), profile.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}-", name.to_string_lossy());
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut gens: Vec<(u64, PathBuf)> = rd
        .flatten()
        .filter_map(|e| {
            let file = e.file_name();
            let number = file
                .to_str()?
                .strip_prefix(&prefix)?
                .strip_suffix("-link")?
                .parse()
                .ok()?;
            Some((number, fs::canonicalize(e.path()).ok()?))
        })
        .collect();
    gens.sort();
    gens
}

/// How [`point_profile_at`] made the profile name a system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileChange {
    /// It already did.
    Unchanged,
    /// Switched to the existing generation with this number.
    Generation(u64),
    /// Added a new generation.
    NewGeneration,
}

/// Makes the profile name `system`: the newest generation that holds it when there is
/// one (`nix-env --switch-generation`, so a rollback does not add a duplicate boot
/// entry), else a new generation.
pub fn point_profile_at(profile: &Path, system: &Path) -> Result<ProfileChange, CmdError> {
    if resolve_system(profile).as_deref() == Some(system) {
        return Ok(ProfileChange::Unchanged);
    }
    let holding = generations(profile)
        .into_iter()
        .rev()
        .find(|(_, s)| s == system)
        .map(|(n, _)| n);
    match holding {
        Some(n) => {
            Cmd::new("nix-env")
                .arg("-p")
                .arg(profile)
                .arg("--switch-generation")
                .arg(n.to_string())
                .run()?;
            Ok(ProfileChange::Generation(n))
        }
        None => {
            set_profile(profile, system)?;
            Ok(ProfileChange::NewGeneration)
        }
    }
}

/// Where a rollback stopped.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    /// The profile still names the system that failed.
    #[error("cannot point the system profile at {}: {}", .system.display(), .source.summary())]
    Profile { system: PathBuf, source: CmdError },
    /// The profile names `system`, but its activation did not finish.
    #[error("switch-to-configuration of {} failed: {}", .system.display(), .source.summary())]
    Switch { system: PathBuf, source: CmdError },
}

/// Rolls back to exactly `system` (a system known to work): points the profile at it,
/// then runs its `switch-to-configuration switch`.
pub fn roll_back_to(
    profile: &Path,
    system: &Path,
    on_line: impl FnMut(&str),
) -> Result<ProfileChange, RollbackError> {
    let change = point_profile_at(profile, system).map_err(|source| RollbackError::Profile {
        system: system.to_owned(),
        source,
    })?;
    switch_to_configuration(system, SwitchAction::Switch, on_line).map_err(|source| {
        RollbackError::Switch {
            system: system.to_owned(),
            source,
        }
    })?;
    Ok(change)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn generations_are_read_from_the_profile_links() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("sys-a"), dir.path().join("sys-b"));
        fs::create_dir(&a).unwrap();
        fs::create_dir(&b).unwrap();
        let profile = dir.path().join("system");
        symlink(&a, dir.path().join("system-1-link")).unwrap();
        symlink(&b, dir.path().join("system-10-link")).unwrap();
        symlink(&a, dir.path().join("system-2-link")).unwrap();
        symlink("system-10-link", &profile).unwrap();
        // Neither generations of this profile nor live ones.
        symlink(&a, dir.path().join("system-x-link")).unwrap();
        symlink(&a, dir.path().join("other-3-link")).unwrap();
        symlink(dir.path().join("gone"), dir.path().join("system-4-link")).unwrap();

        let a = fs::canonicalize(a).unwrap();
        let b = fs::canonicalize(b).unwrap();
        assert_eq!(generations(&profile), [(1, a.clone()), (2, a), (10, b)]);
        assert_eq!(generations(&dir.path().join("none")), []);
    }
}
