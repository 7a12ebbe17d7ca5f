//! Installing the host's secrets from a verified release, before activation.
//!
//! Every secret is decrypted in memory first ([`prepare`], right after the release
//! is verified): one that cannot be decrypted fails the update before anything is
//! built or activated, with its name. [`Prepared::install`] then writes the whole
//! set into a fresh generation directory (`<secrets_dir>.d/<generation>/`: each
//! file written to a temporary name, fchown, fchmod, fsync, renamed) and swaps the
//! `<secrets_dir>` symlink to it in one rename, so a killed agent leaves the
//! complete old set or the complete new set. A secret with its own `path` gets a
//! symlink there to `<secrets_dir>/<NAME>` (as agenix does), which stays right
//! across generations. Secrets no longer declared go with the old generation
//! (and their symlinks). Units named by `--restart` of a changed or new secret
//! are restarted with `restart_command UNIT` (no shell).
//!
//! A release is only recorded as applied after all this, so an agent killed
//! between the swap and the symlinks does everything again at its next poll.
//!
//! Secrets follow the system: the generation of the last successful update is
//! kept (named in `<secrets_dir>.d/.committed`) until the next one succeeds
//! ([`commit`]). When the update fails or rolls back to the last good system,
//! [`restore`] puts that generation back, with its links, and restarts the units
//! whose secrets change back, so the old system runs with its own secrets.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bento_core::secrets::{sha256_hex, Identities, Index, SecretMeta, INDEX_FILE, RELEASE_DIR};
use serde::{Deserialize, Serialize};

use crate::report::UpdateLog;
use crate::settings::Config;

pub const DEFAULT_SECRETS_DIR: &str = "/run/bento/secrets";
/// What a generation holds, for the next install (no values: hashes).
const RECORD_FILE: &str = ".bento-installed.json";
/// In the generations directory: the name of the generation of the last
/// successful update, the one a failed update goes back to.
const COMMITTED_FILE: &str = ".committed";
/// Units still to restart, while they are restarted: a killed agent restarts
/// them at its next install even though the secrets are then unchanged.
const PENDING_FILE: &str = ".bento-restart-pending.json";

/// One installed secret, as recorded in its generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Installed {
    sha256: String,
    #[serde(default)]
    path: Option<String>,
    /// Units to restart when this secret changes (back, at a restore).
    #[serde(default)]
    restart: Vec<String>,
}

/// A decrypted secret, in memory only.
struct Plain {
    meta: SecretMeta,
    value: Vec<u8>,
    uid: u32,
    gid: u32,
}

impl Drop for Plain {
    fn drop(&mut self) {
        self.value.fill(0);
    }
}

/// The release's secrets, decrypted and checked, ready to install.
pub struct Prepared {
    secrets: BTreeMap<String, Plain>,
}

/// Takes the secrets out of the verified release `release` (so they never reach
/// the Nix store with a flake's source) and decrypts each. `None` for a release
/// of the original tool (unverified): the installed secrets are left alone.
pub fn prepare(cfg: &Config, release: &Path, legacy: bool) -> Result<Option<Prepared>, String> {
    let dir = release.join(RELEASE_DIR);
    if legacy {
        if dir.exists() {
            return Err(format!(
                "the release holds {RELEASE_DIR} but has no manifest: refused"
            ));
        }
        return Ok(None);
    }
    if !dir.exists() {
        return Ok(Some(Prepared {
            secrets: BTreeMap::new(),
        }));
    }
    let r = decrypt_all(cfg, &dir);
    // Ciphertexts only; whatever the outcome they leave the release directory.
    let _ = fs::remove_dir_all(&dir);
    r.map(Some)
}

fn decrypt_all(cfg: &Config, dir: &Path) -> Result<Prepared, String> {
    let index = Index::read(dir).map_err(|e| format!("the release's secrets are refused: {e}"))?;
    for ent in fs::read_dir(dir).map_err(|e| e.to_string())? {
        let n = ent.map_err(|e| e.to_string())?.file_name();
        let n = n.to_string_lossy();
        let declared = n
            .strip_suffix(".age")
            .is_some_and(|s| index.secrets.contains_key(s));
        if n != INDEX_FILE && !declared {
            return Err(format!(
                "the release's secrets are refused: {RELEASE_DIR}/{n} is not declared in its index"
            ));
        }
    }
    if index.secrets.is_empty() {
        return Ok(Prepared {
            secrets: BTreeMap::new(),
        });
    }
    let identity = cfg.secret_identity.as_ref().ok_or_else(|| {
        format!(
            "secret {} cannot be decrypted: no identity configured (set secret_identity, e.g. /etc/ssh/ssh_host_ed25519_key, or identity_file)",
            index.secrets.keys().next().expect("not empty")
        )
    })?;
    let ids = Identities::load(identity).map_err(|e| {
        format!(
            "secret {} cannot be decrypted: {e}",
            index.secrets.keys().next().expect("not empty")
        )
    })?;
    let mut secrets = BTreeMap::new();
    for (name, meta) in index.secrets {
        let fail = |m: String| format!("secret {name} cannot be installed: {m}");
        let p = dir.join(format!("{name}.age"));
        let ct = fs::read(&p).map_err(|e| fail(format!("{}: {e}", p.display())))?;
        if sha256_hex(&ct) != meta.sha256 {
            return Err(fail("its ciphertext does not match the index".into()));
        }
        let value = ids
            .decrypt(&ct)
            .map_err(|e| format!("secret {name} cannot be decrypted: {e}"))?;
        let uid = nix::unistd::User::from_name(&meta.owner)
            .ok()
            .flatten()
            .ok_or_else(|| fail(format!("no user {:?} on this host", meta.owner)))?
            .uid
            .as_raw();
        let gid = nix::unistd::Group::from_name(&meta.group)
            .ok()
            .flatten()
            .ok_or_else(|| fail(format!("no group {:?} on this host", meta.group)))?
            .gid
            .as_raw();
        secrets.insert(
            name,
            Plain {
                meta,
                value,
                uid,
                gid,
            },
        );
    }
    Ok(Prepared { secrets })
}

fn generations_dir(base: &Path) -> PathBuf {
    let mut name = base.file_name().unwrap_or_default().to_owned();
    name.push(".d");
    base.with_file_name(name)
}

fn sync_dir(p: &Path) {
    if let Ok(f) = fs::File::open(p) {
        let _ = f.sync_all();
    }
}

/// The record of the generation `dir` (or of the one `<secrets_dir>` points to).
fn current_record(dir: &Path) -> BTreeMap<String, Installed> {
    fs::read(dir.join(RECORD_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The generation `<secrets_dir>` points to, when it is one of ours.
fn current_generation(base: &Path) -> Option<PathBuf> {
    let target = fs::read_link(base).ok()?;
    let gens = generations_dir(base);
    (target.parent() == Some(gens.as_path()) && target.is_dir()).then_some(target)
}

/// The generation of the last successful update, when it is still there.
fn committed_generation(base: &Path) -> Option<PathBuf> {
    let gens = generations_dir(base);
    let name = fs::read_to_string(gens.join(COMMITTED_FILE)).ok()?;
    let name = name.trim();
    let valid = !name.is_empty() && !name.contains('/') && !name.starts_with('.');
    let p = gens.join(name);
    (valid && p.is_dir()).then_some(p)
}

fn write_committed(base: &Path, generation: &Path) -> io::Result<()> {
    let gens = generations_dir(base);
    let name = generation.file_name().unwrap_or_default().to_string_lossy();
    let tmp = gens.join(format!("{COMMITTED_FILE}.tmp"));
    fs::write(&tmp, format!("{name}\n"))?;
    fs::File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, gens.join(COMMITTED_FILE))?;
    sync_dir(&gens);
    Ok(())
}

/// Removes every generation but `keep` (and directories moved aside, which are
/// the admin's to look at).
fn prune_generations(base: &Path, keep: &[&Path]) {
    let Ok(entries) = fs::read_dir(generations_dir(base)) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("replaced-") || name.starts_with('.') {
            continue;
        }
        if !keep.contains(&e.path().as_path()) {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// The `--restart` units of the secrets of `now` that are new or changed since
/// `before`, each once.
fn changed_units<'a>(
    now: &'a BTreeMap<String, Installed>,
    before: &BTreeMap<String, Installed>,
) -> Vec<&'a str> {
    let mut units: Vec<&str> = Vec::new();
    for (name, s) in now {
        if before.get(name).is_some_and(|b| b.sha256 == s.sha256) {
            continue;
        }
        for u in &s.restart {
            if bento_core::secrets::validate_unit(u).is_ok() && !units.contains(&u.as_str()) {
                units.push(u);
            }
        }
    }
    units
}

/// Runs `restart_command UNIT` for each unit (no shell); a failure is a warning.
fn restart_units(cfg: &Config, log: &UpdateLog, units: &[&str], why: &str) {
    for u in units {
        let shown = format!("{} {u}", cfg.restart_command.join(" "));
        log.info(format!("restarting {u} ({why}): {shown}"));
        let out = std::process::Command::new(&cfg.restart_command[0])
            .args(&cfg.restart_command[1..])
            .arg(u)
            .stdin(std::process::Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => log.warn(format!(
                "`{shown}` failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => log.warn(format!("`{shown}` cannot start: {e}")),
        }
    }
}

/// Points each secret's own `path` at `<secrets_dir>/<NAME>`, and removes our
/// links of the secrets of `old` that `now` no longer has there.
fn relink(
    base: &Path,
    now: &BTreeMap<String, Installed>,
    old: &BTreeMap<String, Installed>,
) -> Result<(), String> {
    let prep =
        |e: io::Error, what: &Path| format!("cannot install secrets: {}: {e}", what.display());
    for (name, s) in now {
        if let Some(p) = &s.path {
            let p = Path::new(p);
            if let Some(dir) = p.parent() {
                fs::create_dir_all(dir).map_err(|e| prep(e, dir))?;
            }
            swap_link(&base.join(name), p)
                .map_err(|e| format!("secret {name} cannot be linked at {}: {e}", p.display()))?;
        }
    }
    for (name, o) in old {
        let moved = now.get(name).map(|s| s.path != o.path).unwrap_or(true);
        if let (true, Some(p)) = (moved, &o.path) {
            // Only our own link: never a file someone put there since.
            if fs::read_link(p).is_ok_and(|t| t == base.join(name)) {
                let _ = fs::remove_file(p);
            }
        }
    }
    Ok(())
}

/// After a successful update: its secrets are the ones to go back to from now
/// on; older generations go.
pub fn commit(cfg: &Config) {
    let base = &cfg.secrets_dir;
    let Some(current) = current_generation(base) else {
        return;
    };
    if let Err(e) = write_committed(base, &current) {
        tracing::warn!("cannot record the installed secrets as good: {e}");
        return;
    }
    prune_generations(base, &[&current]);
}

/// After a failed or rolled-back update that installed secrets: the set of the
/// last successful update comes back (none, if there was none), with its links,
/// and the units of the secrets that change back restart.
pub fn restore(cfg: &Config, log: &UpdateLog) {
    let base = &cfg.secrets_dir;
    let Some(failed) = current_generation(base) else {
        return;
    };
    let previous = committed_generation(base);
    if previous.as_deref() == Some(failed.as_path()) {
        return;
    }
    let now = current_record(&failed);
    let back = previous.as_deref().map(current_record).unwrap_or_default();
    let restored = match &previous {
        Some(p) => swap_link(p, base),
        None => fs::remove_file(base),
    };
    if let Err(e) = restored {
        log.warn(format!(
            "the secrets of the failed update stay in place: cannot restore the previous set at {}: {e}",
            base.display()
        ));
        return;
    }
    if let Some(parent) = base.parent() {
        sync_dir(parent);
    }
    if let Err(e) = relink(base, &back, &now) {
        log.warn(e);
    }
    let units = changed_units(&back, &now);
    match &previous {
        Some(_) => log.info(format!(
            "secrets restored to the set of the last good update ({} secrets)",
            back.len()
        )),
        None => log.info("secrets of the failed update removed: none were installed before it"),
    }
    restart_units(cfg, log, &units, "its secret changed back");
    let keep: Vec<&Path> = previous.iter().map(PathBuf::as_path).collect();
    prune_generations(base, &keep);
}

fn write_secret(dir: &Path, name: &str, s: &Plain) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&s.value)?;
    std::os::unix::fs::fchown(&f, Some(s.uid), Some(s.gid))?;
    f.set_permissions(fs::Permissions::from_mode(s.meta.mode.0))?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(name))
}

/// Replaces `link` by a symlink to `target` in one rename.
fn swap_link(target: &Path, link: &Path) -> io::Result<()> {
    let tmp = link.with_file_name(format!(
        ".{}.bento-tmp",
        link.file_name().unwrap_or_default().to_string_lossy()
    ));
    let _ = fs::remove_file(&tmp);
    symlink(target, &tmp)?;
    fs::rename(&tmp, link)
}

impl Prepared {
    pub fn names(&self) -> Vec<&str> {
        self.secrets.keys().map(String::as_str).collect()
    }

    /// What the report says of the set: names and ciphertext hashes.
    pub fn reported(&self) -> Vec<bento_core::report::ReportedSecret> {
        self.secrets
            .iter()
            .map(|(name, s)| bento_core::report::ReportedSecret {
                name: name.clone(),
                sha256: s.meta.sha256.clone(),
            })
            .collect()
    }

    /// Installs the set (see the module), removes what is no longer declared and
    /// restarts the units of changed secrets. Logs names and hashes, never values.
    pub fn install(&self, cfg: &Config, log: &UpdateLog) -> Result<(), String> {
        let base = &cfg.secrets_dir;
        let md = fs::symlink_metadata(base);
        if self.secrets.is_empty() && md.is_err() {
            return Ok(());
        }
        let old = current_record(base);
        // The set to go back to if this update fails: the last successful one's
        // (an agent that never recorded one: what is installed now).
        let previous = committed_generation(base).or_else(|| {
            let current = current_generation(base)?;
            write_committed(base, &current).ok()?;
            Some(current)
        });
        let pending: Vec<String> = fs::read(base.join(PENDING_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        // Refuse a destination that is a directory before anything changes.
        for (name, s) in &self.secrets {
            if let Some(p) = &s.meta.path {
                if fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) {
                    return Err(format!(
                        "secret {name} cannot be installed: {p} is a directory"
                    ));
                }
            }
        }
        let gens = generations_dir(base);
        let parent = base.parent().unwrap_or(Path::new("/"));
        let prep =
            |e: io::Error, what: &Path| format!("cannot install secrets: {}: {e}", what.display());
        fs::create_dir_all(parent).map_err(|e| prep(e, parent))?;
        fs::create_dir_all(&gens).map_err(|e| prep(e, &gens))?;
        fs::set_permissions(&gens, fs::Permissions::from_mode(0o751))
            .map_err(|e| prep(e, &gens))?;
        let stamp = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
        let gen = gens.join(format!("{stamp}-{}", std::process::id()));
        fs::create_dir(&gen).map_err(|e| prep(e, &gen))?;
        fs::set_permissions(&gen, fs::Permissions::from_mode(0o751)).map_err(|e| prep(e, &gen))?;
        let mut record = BTreeMap::new();
        for (name, s) in &self.secrets {
            write_secret(&gen, name, s)
                .map_err(|e| format!("secret {name} cannot be installed: {e}"))?;
            record.insert(
                name.clone(),
                Installed {
                    sha256: s.meta.sha256.clone(),
                    path: s.meta.path.clone(),
                    restart: s.meta.restart.clone(),
                },
            );
        }
        let rec = gen.join(RECORD_FILE);
        fs::write(
            &rec,
            serde_json::to_vec_pretty(&record).expect("record serializes"),
        )
        .and_then(|_| fs::File::open(&rec)?.sync_all())
        .map_err(|e| prep(e, &rec))?;
        sync_dir(&gen);
        // A plain directory left by hand (or another tool) is moved aside once.
        if let Ok(m) = &md {
            if !m.file_type().is_symlink() {
                let aside = gens.join(format!("replaced-{stamp}"));
                fs::rename(base, &aside).map_err(|e| prep(e, base))?;
                log.warn(format!(
                    "{} was a directory: moved to {}",
                    base.display(),
                    aside.display()
                ));
            }
        }
        swap_link(&gen, base).map_err(|e| prep(e, base))?;
        sync_dir(parent);
        relink(base, &record, &old)?;
        for (name, s) in &self.secrets {
            let at = s
                .meta
                .path
                .as_ref()
                .map(PathBuf::from)
                .unwrap_or_else(|| base.join(name));
            let how = match old.get(name) {
                None => "installed",
                Some(o) if o.sha256 != s.meta.sha256 => "rotated",
                Some(_) => "unchanged",
            };
            log.info(format!(
                "secret {name} {how} at {} ({}:{} {}, ciphertext sha256 {})",
                at.display(),
                s.meta.owner,
                s.meta.group,
                s.meta.mode,
                &s.meta.sha256[..16]
            ));
        }
        for name in old.keys() {
            if !self.secrets.contains_key(name) {
                log.info(format!("secret {name} removed"));
            }
        }
        // The new set and the one to go back to; the rest goes.
        let mut keep: Vec<&Path> = vec![&gen];
        keep.extend(previous.as_deref());
        prune_generations(base, &keep);
        let mut units: Vec<&str> = pending
            .iter()
            .map(String::as_str)
            .filter(|u| bento_core::secrets::validate_unit(u).is_ok())
            .collect();
        for u in changed_units(&record, &old) {
            if !units.contains(&u) {
                units.push(u);
            }
        }
        let pending_file = gen.join(PENDING_FILE);
        if !units.is_empty() {
            fs::write(
                &pending_file,
                serde_json::to_vec(&units).expect("units serialize"),
            )
            .and_then(|_| fs::File::open(&pending_file)?.sync_all())
            .map_err(|e| prep(e, &pending_file))?;
        }
        restart_units(cfg, log, &units, "its secret changed");
        let _ = fs::remove_file(&pending_file);
        Ok(())
    }
}
