//! The chroot: one directory per host that its agent reads over SFTP.
//!
//! ```text
//! <chroot_dir>/states.txt              host=<expected system basename>
//! <chroot_dir>/<host>/                 root:root 0755 (sshd ChrootDirectory rule)
//!     last_change_date                 mtime = publication time; content = revision
//!     .releases/<revision>/            immutable release + .bento-release.json
//!     .releases/current -> <revision>  swapped atomically
//!     config -> .releases/current
//!     logs/                            owned by the host's user
//!     cache/                           the host's own signed binary cache (hard
//!                                      links into <chroot_dir>/.nar-store)
//! ```
//!
//! Adding a host needs root once ([`Chroot::ensure_host`]); publishing works as the
//! unprivileged owner of `.releases/`, `last_change_date` and `states.txt`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::closure::{NarStore, CACHE_DIR, NAR_STORE_DIR};
use crate::release::{Damage, Manifest, MANIFEST_FILE};
use crate::signing::{SigningKey, SIGNATURE_FILE};
use crate::HostName;

pub const STATES_FILE: &str = "states.txt";
pub const LAST_CHANGE_FILE: &str = "last_change_date";
pub const RELEASES_DIR: &str = ".releases";
pub const CURRENT_LINK: &str = "current";
pub const CONFIG_LINK: &str = "config";
/// The held watch of `bento sftp`, a name no file on disk has (OpenSSH's server
/// answers "no such file", and the agent reads `current` every `watch_interval`
/// instead). A host opens it and reads: the first read answers at once with the
/// revision `current` points to, and each later read on the same handle is held
/// until that changes, or for [`WATCH_HOLD`], and answers with it again. A
/// watching host then costs the server one answer a minute instead of one every
/// few seconds, and learns of a release the moment it is published.
pub const WATCH_FILE: &str = ".releases/.watch";
/// The longest `bento sftp` holds a read of [`WATCH_FILE`]; the agent waits this
/// long plus its own `timeout` for the answer.
pub const WATCH_HOLD: std::time::Duration = std::time::Duration::from_secs(60);

/// The answer to a read of [`WATCH_FILE`]: the revision and a newline (a newline
/// alone when nothing is published), so it is never empty (an empty read is
/// the end of a file).
pub fn watch_answer(current: Option<&str>) -> Vec<u8> {
    format!("{}\n", current.unwrap_or("")).into_bytes()
}

/// The revision in an answer of [`watch_answer`]; `None` when nothing is published.
pub fn parse_watch_answer(data: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(data).ok()?.strip_suffix('\n')?;
    (!s.is_empty()).then(|| s.trim_end_matches('/').to_owned())
}
pub const LOGS_DIR: &str = "logs";

#[derive(Debug, thiserror::Error)]
pub enum ChrootError {
    #[error("host {host} is not set up in the chroot {dir}: run `bento deploy` once as root (or add the host to services.bento.server.hosts)")]
    NotSetUp { host: String, dir: PathBuf },
    #[error("user {user:?} does not exist: every host needs a system user in the fleet (set hosts.{host}.user or default_user in bento.toml)")]
    NoSuchUser { user: String, host: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("closure: {0}")]
    Closure(String),
    #[error("{host}: release {revision} is no longer kept in the chroot (keep_releases prunes older ones): deploy the configuration it was built from instead")]
    NotKept { host: String, revision: String },
    #[error("{host}: the kept release {revision} cannot be published again: {why}")]
    Unusable {
        host: String,
        revision: String,
        why: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ChrootError + '_ {
    move |source| ChrootError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Who owns what when a host is added.
#[derive(Debug, Clone, Copy)]
pub struct Owners {
    /// Owner of the chroot directory and of the host's directory: root for sshd's
    /// `ChrootDirectory`, the server's user for the embedded SFTP server.
    pub dirs: (u32, u32),
    /// Owner of `logs/` (the host's user and its group).
    pub logs: (u32, u32),
    /// Owner of `.releases/`, `last_change_date` and `states.txt` (the publisher).
    pub publisher: (u32, u32),
}

/// Looks up a user's uid and primary gid.
pub fn lookup_user(user: &str) -> Option<(u32, u32)> {
    nix::unistd::User::from_name(user)
        .ok()
        .flatten()
        .map(|u| (u.uid.as_raw(), u.gid.as_raw()))
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Changes a path's owner only when it differs, so an unprivileged owner passes.
fn set_owner(p: &Path, uid: u32, gid: u32) -> Result<(), ChrootError> {
    use std::os::unix::fs::MetadataExt;
    let md = fs::symlink_metadata(p).map_err(io_err(p))?;
    if md.uid() != uid || md.gid() != gid {
        std::os::unix::fs::chown(p, Some(uid), Some(gid)).map_err(io_err(p))?;
    }
    Ok(())
}

/// The outcome of publishing a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// The release content did not change; nothing was touched.
    Unchanged { revision: String },
    /// A new release is live.
    New {
        revision: String,
        previous: Option<String>,
        /// The content had not changed but the live release was damaged (what
        /// was wrong with it): it was published again from the build.
        repaired: Option<String>,
    },
}

impl Published {
    pub fn revision(&self) -> &str {
        match self {
            Published::Unchanged { revision } | Published::New { revision, .. } => revision,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Chroot {
    root: PathBuf,
    /// Signs every manifest written (`.bento-release.sig`).
    signer: Option<std::sync::Arc<SigningKey>>,
}

impl Chroot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Chroot {
            root: root.into(),
            signer: None,
        }
    }

    /// This chroot, signing every manifest it writes with `key`.
    pub fn with_signer(mut self, key: std::sync::Arc<SigningKey>) -> Self {
        self.signer = Some(key);
        self
    }

    /// A host's own binary cache.
    pub fn cache_dir(&self, h: &HostName) -> PathBuf {
        self.host_dir(h).join(CACHE_DIR)
    }

    /// The binary cache shared by every host, under the chroot directory.
    pub fn nar_store(&self) -> NarStore {
        NarStore::new(&self.root)
    }

    /// Writes `m` into the release directory `dir`, and its signature when this
    /// chroot signs (else removes a stale one).
    fn write_manifest(&self, m: &Manifest, dir: &Path) -> Result<(), ChrootError> {
        m.write_to(dir).map_err(io_err(dir))?;
        let sig = dir.join(SIGNATURE_FILE);
        match &self.signer {
            Some(key) => {
                let bytes = fs::read(dir.join(MANIFEST_FILE)).map_err(io_err(dir))?;
                let text = key.sign_manifest(&bytes);
                crate::fsutil::write_atomic(&sig, text.as_bytes(), Some(0o644))
                    .map_err(io_err(&sig))
            }
            None => match fs::remove_file(&sig) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&sig)(e)),
                _ => Ok(()),
            },
        }
    }

    /// Whether the live release in `dir` is signed as this chroot would sign it.
    fn signature_damage(&self, dir: &Path) -> Option<Damage> {
        let key = self.signer.as_ref()?;
        let bytes = fs::read(dir.join(MANIFEST_FILE)).ok()?;
        let sig = fs::read_to_string(dir.join(SIGNATURE_FILE)).ok();
        crate::signing::verify_manifest(&[key.public()], &bytes, sig.as_deref())
            .err()
            .map(|e| Damage::Manifest(e.to_string()))
    }

    /// `manifest`, created strictly after the host's current release, so an agent
    /// that refuses older manifests takes it (a clock set back, two deploys within
    /// the clock's resolution).
    fn after_current(&self, h: &HostName, manifest: &Manifest) -> Manifest {
        let mut m = manifest.clone();
        if let Some(cur) = self.current_revision(h) {
            if let Ok(prev) = Manifest::read_from(&self.releases_dir(h).join(cur)) {
                if m.created <= prev.created {
                    m.created = prev.created + time::Duration::microseconds(1);
                }
            }
        }
        m
    }

    /// Links the closure of `manifest` into the host's cache, before the release
    /// that names it becomes current.
    fn link_closure(&self, h: &HostName, manifest: &Manifest) -> Result<(), ChrootError> {
        if let Some(c) = &manifest.closure {
            self.nar_store()
                .link_into(&self.host_dir(h), c)
                .map_err(|e| ChrootError::Closure(e.to_string()))?;
        }
        Ok(())
    }

    /// Drops from the host's cache what no kept release needs. What no host needs
    /// any more leaves the shared store in [`Chroot::collect_nars`], once per deploy.
    fn prune_closures(&self, h: &HostName) -> Result<(), ChrootError> {
        let keep = crate::closure::kept_closures(&self.releases_dir(h));
        self.nar_store()
            .prune_host(&self.host_dir(h), &keep)
            .map_err(|e| ChrootError::Closure(e.to_string()))
    }

    /// Removes the shared store's NARs no host cache links to; how many paths went.
    pub fn collect_nars(&self) -> Result<usize, ChrootError> {
        self.nar_store()
            .collect()
            .map_err(|e| ChrootError::Closure(e.to_string()))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn host_dir(&self, h: &HostName) -> PathBuf {
        self.root.join(h.as_str())
    }
    pub fn releases_dir(&self, h: &HostName) -> PathBuf {
        self.host_dir(h).join(RELEASES_DIR)
    }
    pub fn logs_dir(&self, h: &HostName) -> PathBuf {
        self.host_dir(h).join(LOGS_DIR)
    }
    pub fn last_change_path(&self, h: &HostName) -> PathBuf {
        self.host_dir(h).join(LAST_CHANGE_FILE)
    }
    pub fn states_path(&self) -> PathBuf {
        self.root.join(STATES_FILE)
    }

    /// Whether the host's directory exists with the layout publication needs.
    pub fn is_set_up(&self, h: &HostName) -> bool {
        self.releases_dir(h).is_dir() && self.logs_dir(h).is_dir()
    }

    /// Creates (or repairs) a host's directory with the ownership and modes sshd's
    /// `ChrootDirectory` needs (root, for OpenSSH), or all owned by the server's
    /// user (embedded SFTP, no root needed). A chroot made by the original tool (a
    /// plain `config/` directory) is converted.
    pub fn ensure_host(&self, h: &HostName, owners: Owners) -> Result<(), ChrootError> {
        let owned_dir = |p: &Path, (uid, gid): (u32, u32)| -> Result<(), ChrootError> {
            match fs::create_dir(p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(p)(e)),
            }
            set_owner(p, uid, gid)?;
            fs::set_permissions(p, fs::Permissions::from_mode(0o755)).map_err(io_err(p))
        };
        if !self.root.exists() {
            fs::create_dir_all(&self.root).map_err(io_err(&self.root))?;
        }
        owned_dir(&self.root, owners.dirs)?;
        let hd = self.host_dir(h);
        owned_dir(&hd, owners.dirs)?;
        owned_dir(&self.releases_dir(h), owners.publisher)?;
        owned_dir(&self.logs_dir(h), owners.logs)?;
        owned_dir(&self.cache_dir(h), owners.publisher)?;
        owned_dir(&self.cache_dir(h).join("nar"), owners.publisher)?;
        owned_dir(&self.root.join(NAR_STORE_DIR), owners.publisher)?;
        let owned_file = |p: &Path, (uid, gid): (u32, u32)| -> Result<(), ChrootError> {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(io_err(p))?;
            set_owner(p, uid, gid)?;
            fs::set_permissions(p, fs::Permissions::from_mode(0o644)).map_err(io_err(p))
        };
        owned_file(&self.last_change_path(h), owners.publisher)?;
        owned_file(&self.states_path(), owners.publisher)?;
        let config = hd.join(CONFIG_LINK);
        match fs::symlink_metadata(&config) {
            Ok(md) if md.file_type().is_symlink() => {}
            Ok(md) if md.is_dir() => {
                fs::remove_dir_all(&config).map_err(io_err(&config))?;
                symlink(Path::new(RELEASES_DIR).join(CURRENT_LINK), &config)
                    .map_err(io_err(&config))?;
            }
            Ok(_) => {
                fs::remove_file(&config).map_err(io_err(&config))?;
                symlink(Path::new(RELEASES_DIR).join(CURRENT_LINK), &config)
                    .map_err(io_err(&config))?;
            }
            Err(_) => symlink(Path::new(RELEASES_DIR).join(CURRENT_LINK), &config)
                .map_err(io_err(&config))?,
        }
        Ok(())
    }

    /// The owners for the embedded SFTP server: everything belongs to the publisher
    /// (`publish_user` when root deploys, else whoever runs `bento deploy`).
    pub fn embedded_owners(publisher: Option<(u32, u32)>) -> Owners {
        let me = publisher.unwrap_or_else(|| {
            (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            )
        });
        Owners {
            dirs: me,
            logs: me,
            publisher: me,
        }
    }

    /// The revision `current` points to.
    pub fn current_revision(&self, h: &HostName) -> Option<String> {
        let target = fs::read_link(self.releases_dir(h).join(CURRENT_LINK)).ok()?;
        target.to_str().map(str::to_owned)
    }

    /// Publishes the staged tree `staged` (with its manifest) as the host's current
    /// release. Atomic: an agent sees the old release or the new one whatever moment
    /// this is interrupted at. An unchanged revision touches nothing, unless the
    /// live release is damaged (the cheap check of [`Manifest::check_published`]).
    pub fn publish(
        &self,
        h: &HostName,
        staged: &Path,
        manifest: &Manifest,
        keep: usize,
    ) -> Result<Published, ChrootError> {
        self.publish_checked(h, staged, manifest, keep, false)
    }

    /// Makes the kept release `revision` the host's current release again (a
    /// rollback): its files as they are, checked against its manifest (and, when
    /// this chroot signs, against the signature it was published with), the
    /// manifest re-created now and signed again, so an agent that refuses older
    /// manifests takes it. The rest is [`Chroot::publish`]'s atomic swap.
    pub fn republish(
        &self,
        h: &HostName,
        revision: &str,
        keep: usize,
    ) -> Result<Published, ChrootError> {
        let unusable = |why: String| ChrootError::Unusable {
            host: h.to_string(),
            revision: revision.to_owned(),
            why,
        };
        let dir = self.releases_dir(h).join(revision);
        let plain = !revision.is_empty()
            && revision
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !plain || !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            return Err(ChrootError::NotKept {
                host: h.to_string(),
                revision: revision.to_owned(),
            });
        }
        let mut manifest = Manifest::read_from(&dir).map_err(|e| unusable(e.to_string()))?;
        if manifest.revision != revision || manifest.host != h.as_str() {
            return Err(unusable(format!(
                "its manifest names revision {:?} of host {:?}",
                manifest.revision, manifest.host
            )));
        }
        manifest.verify(&dir).map_err(|e| unusable(e.to_string()))?;
        if let Some(d) = self.signature_damage(&dir) {
            return Err(unusable(format!("{d} (not signed by this fleet's key)")));
        }
        manifest.created = time::OffsetDateTime::now_utc();
        self.publish_checked(h, &dir, &manifest, keep, false)
    }

    /// Checks the current release of a host against its manifest (`full`: hash
    /// every file). `None` when there is no current release.
    pub fn check_current(&self, h: &HostName, full: bool) -> Option<Result<(), Damage>> {
        let revision = self.current_revision(h)?;
        let dir = self.releases_dir(h).join(&revision);
        Some(Manifest::check_published(&dir, &revision, full).map(|_| ()))
    }

    /// [`Chroot::publish`], hashing every file of an unchanged release with `full`.
    pub fn publish_checked(
        &self,
        h: &HostName,
        staged: &Path,
        manifest: &Manifest,
        keep: usize,
        full: bool,
    ) -> Result<Published, ChrootError> {
        if !self.is_set_up(h) {
            return Err(ChrootError::NotSetUp {
                host: h.to_string(),
                dir: self.root.clone(),
            });
        }
        let rel = self.releases_dir(h);
        let revision = manifest.revision.clone();
        let previous = self.current_revision(h);
        let final_dir = rel.join(&revision);
        if previous.as_deref() == Some(revision.as_str()) {
            let damage = match Manifest::check_published(&final_dir, &revision, full) {
                Err(d) => Some(d),
                Ok(live) if live.host != manifest.host => {
                    Some(Damage::Manifest(format!("names host {:?}", live.host)))
                }
                Ok(live) if live.expected_system != manifest.expected_system => Some(
                    Damage::Manifest("names another expected system than the build".into()),
                ),
                Ok(live) if live.closure != manifest.closure => Some(Damage::Manifest(
                    "names another closure than the build".into(),
                )),
                Ok(_) => self.signature_damage(&final_dir),
            };
            if let Some(damage) = damage {
                self.remove_leftovers(&rel)?;
                let manifest = &self.after_current(h, manifest);
                self.link_closure(h, manifest)?;
                self.replace_release(&rel, staged, manifest, &final_dir)?;
                self.write_last_change(h, &revision)?;
                self.prune(h, keep)?;
                return Ok(Published::New {
                    revision,
                    previous,
                    repaired: Some(damage.to_string()),
                });
            }
            // A deploy killed after the swap may have left last_change_date behind.
            if fs::read_to_string(self.last_change_path(h))
                .map(|s| s.trim() != revision)
                .unwrap_or(true)
            {
                self.write_last_change(h, &revision)?;
            }
            self.link_closure(h, manifest)?;
            return Ok(Published::Unchanged { revision });
        }
        self.remove_leftovers(&rel)?;
        let manifest = &self.after_current(h, manifest);
        self.link_closure(h, manifest)?;
        if final_dir.exists() {
            // An older release with the same content is still kept: reuse it if intact.
            let intact = Manifest::read_from(&final_dir)
                .map(|m| m.revision == revision && m.verify(&final_dir).is_ok())
                .unwrap_or(false);
            if intact {
                // Its manifest records when it was first made; refresh it so pruning
                // keeps it and the agent sees the new expected system.
                let stamped = manifest
                    .stamped(&final_dir)
                    .map_err(|e| io_err(&final_dir)(io::Error::other(e.to_string())))?;
                self.write_manifest(&stamped, &final_dir)?;
            } else {
                fs::remove_dir_all(&final_dir).map_err(io_err(&final_dir))?;
            }
        }
        if !final_dir.exists() {
            let tmp = self.write_release(&rel, staged, manifest)?;
            fs::rename(&tmp, &final_dir).map_err(io_err(&final_dir))?;
        }
        touch_dir(&final_dir);
        let link_tmp = rel.join(format!(".current-{}", std::process::id()));
        let _ = fs::remove_file(&link_tmp);
        symlink(&revision, &link_tmp).map_err(io_err(&link_tmp))?;
        fs::rename(&link_tmp, rel.join(CURRENT_LINK)).map_err(io_err(&rel))?;
        sync_dir(&rel);
        self.write_last_change(h, &revision)?;
        self.prune(h, keep)?;
        Ok(Published::New {
            revision,
            previous,
            repaired: None,
        })
    }

    /// Writes a complete release (files, then the manifest with their stamps) in
    /// a temporary directory of `rel`, and returns it.
    fn write_release(
        &self,
        rel: &Path,
        staged: &Path,
        manifest: &Manifest,
    ) -> Result<PathBuf, ChrootError> {
        let tmp = rel.join(format!(".tmp-{}-{}", manifest.revision, std::process::id()));
        copy_tree(staged, &tmp).map_err(io_err(&tmp))?;
        let stamped = manifest
            .stamped(&tmp)
            .map_err(|e| io_err(&tmp)(io::Error::other(e.to_string())))?;
        self.write_manifest(&stamped, &tmp)?;
        sync_dir(&tmp);
        Ok(tmp)
    }

    /// Puts a fresh copy of the release in place of the damaged live one at
    /// `final_dir`. The damaged directory is never written to: a new directory
    /// is built beside it and the two are exchanged in one `renameat2`, so an
    /// agent sees one complete directory or the other under the same name (the
    /// revision, which `current` and the agents go by).
    fn replace_release(
        &self,
        rel: &Path,
        staged: &Path,
        manifest: &Manifest,
        final_dir: &Path,
    ) -> Result<(), ChrootError> {
        let tmp = self.write_release(rel, staged, manifest)?;
        match exchange(&tmp, final_dir) {
            Ok(()) => {}
            // A filesystem without RENAME_EXCHANGE: `current` dangles between the
            // two renames, which an agent polling then sees as a failed poll.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
                let aside = rel.join(format!(".tmp-damaged-{}", std::process::id()));
                fs::rename(final_dir, &aside).map_err(io_err(final_dir))?;
                fs::rename(&tmp, final_dir).map_err(io_err(final_dir))?;
                let _ = fs::remove_dir_all(&aside);
                sync_dir(rel);
                return Ok(());
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                return Err(io_err(final_dir)(e));
            }
        }
        sync_dir(rel);
        // `tmp` now holds the damaged release.
        let _ = fs::remove_dir_all(&tmp);
        Ok(())
    }

    /// Rewrites `last_change_date` in place (its directory belongs to root).
    fn write_last_change(&self, h: &HostName, revision: &str) -> Result<(), ChrootError> {
        let p = self.last_change_path(h);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .create(true)
            .open(&p)
            .map_err(io_err(&p))?;
        f.write_all(format!("{revision}\n").as_bytes())
            .map_err(io_err(&p))?;
        f.sync_all().map_err(io_err(&p))
    }

    fn remove_leftovers(&self, rel: &Path) -> Result<(), ChrootError> {
        for ent in fs::read_dir(rel).map_err(io_err(rel))? {
            let ent = ent.map_err(io_err(rel))?;
            let name = ent.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".tmp-") {
                let _ = fs::remove_dir_all(ent.path());
            } else if name.starts_with(".current-") {
                let _ = fs::remove_file(ent.path());
            }
        }
        Ok(())
    }

    /// Keeps the `keep` newest releases (the current one always).
    pub fn prune(&self, h: &HostName, keep: usize) -> Result<(), ChrootError> {
        let rel = self.releases_dir(h);
        let current = self.current_revision(h);
        let mut dirs: Vec<(SystemTime, PathBuf, String)> = Vec::new();
        for ent in fs::read_dir(&rel).map_err(io_err(&rel))? {
            let ent = ent.map_err(io_err(&rel))?;
            let name = ent.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name == CURRENT_LINK {
                continue;
            }
            let md = ent.metadata().map_err(io_err(&rel))?;
            if md.is_dir() {
                dirs.push((
                    md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    ent.path(),
                    name,
                ));
            }
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
        let mut kept = 0;
        for (_, path, name) in dirs {
            if Some(&name) == current.as_ref() {
                continue;
            }
            kept += 1;
            if kept >= keep {
                fs::remove_dir_all(&path).map_err(io_err(&path))?;
            }
        }
        self.prune_closures(h)
    }

    /// Reads `states.txt`: host → expected system basename.
    pub fn read_states(&self) -> BTreeMap<String, String> {
        parse_states(&fs::read_to_string(self.states_path()).unwrap_or_default())
    }

    /// Sets (or clears) hosts' expected systems in `states.txt`, keeping the others.
    /// Rewritten in place under an advisory lock: the chroot directory belongs to root.
    pub fn update_states(
        &self,
        changes: &BTreeMap<HostName, Option<String>>,
    ) -> Result<(), ChrootError> {
        let p = self.states_path();
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
            .map_err(io_err(&p))?;
        f.lock().map_err(io_err(&p))?;
        let mut text = String::new();
        io::Read::read_to_string(&mut f, &mut text).map_err(io_err(&p))?;
        let mut states = parse_states(&text);
        for (h, v) in changes {
            match v {
                Some(v) => states.insert(h.to_string(), v.clone()),
                None => states.remove(h.as_str()),
            };
        }
        let mut out = String::new();
        for (h, v) in &states {
            out.push_str(&format!("{h}={v}\n"));
        }
        f.set_len(0).map_err(io_err(&p))?;
        io::Seek::seek(&mut f, io::SeekFrom::Start(0)).map_err(io_err(&p))?;
        f.write_all(out.as_bytes()).map_err(io_err(&p))?;
        f.sync_all().map_err(io_err(&p))
    }

    /// Every host directory in the chroot (names that are valid host names).
    pub fn hosts(&self) -> io::Result<Vec<HostName>> {
        let mut v = Vec::new();
        for ent in fs::read_dir(&self.root)? {
            let ent = ent?;
            if !ent.file_type()?.is_dir() {
                continue;
            }
            if let Some(h) = ent.file_name().to_str().and_then(|n| HostName::new(n).ok()) {
                v.push(h);
            }
        }
        v.sort();
        Ok(v)
    }
}

/// `host=value` lines; malformed lines are ignored.
pub fn parse_states(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(h, v)| !h.is_empty() && !v.trim().is_empty())
        .map(|(h, v)| (h.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// Copies a plain tree (no symlinks: staged releases have none), keeping modes.
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    fs::create_dir(dst)?;
    for ent in fs::read_dir(src)? {
        let ent = ent?;
        let ft = ent.file_type()?;
        let to = dst.join(ent.file_name());
        if ent.file_name() == MANIFEST_FILE {
            continue;
        }
        if ft.is_dir() {
            copy_tree(&ent.path(), &to)?;
        } else if ft.is_file() {
            fs::copy(ent.path(), &to)?;
        }
    }
    Ok(())
}

/// Swaps two directory entries atomically (Linux `RENAME_EXCHANGE`).
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
    renameat2(AT_FDCWD, a, AT_FDCWD, b, RenameFlags::RENAME_EXCHANGE)
        .map_err(|e| io::Error::from_raw_os_error(e as i32))
}

fn sync_dir(p: &Path) {
    if let Ok(f) = fs::File::open(p) {
        let _ = f.sync_all();
    }
}

fn touch_dir(p: &Path) {
    if let Ok(f) = fs::File::open(p) {
        let _ = f.set_modified(SystemTime::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::TreeListing;

    #[test]
    fn a_watch_answer_is_never_empty_and_reads_back() {
        assert_eq!(watch_answer(Some("r1")), b"r1\n");
        assert_eq!(watch_answer(None), b"\n");
        assert_eq!(parse_watch_answer(b"r1\n").as_deref(), Some("r1"));
        assert_eq!(parse_watch_answer(b"r1/\n").as_deref(), Some("r1"));
        assert_eq!(parse_watch_answer(b"\n"), None);
        // Cut short, or not text: nothing, never half a revision.
        assert_eq!(parse_watch_answer(b"r1"), None);
        assert_eq!(parse_watch_answer(b"\xff\n"), None);
    }

    fn staged(dir: &Path, content: &str) -> Manifest {
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("configuration.nix"), content).unwrap();
        let l = TreeListing::read(dir).unwrap();
        Manifest::for_tree(&l, "web", time::OffsetDateTime::now_utc(), None)
    }

    #[test]
    fn publish_swaps_atomically_and_prunes() {
        let t = tempfile::tempdir().unwrap();
        let c = Chroot::new(t.path().join("chroot"));
        let h = HostName::new("web").unwrap();
        c.ensure_host(&h, Chroot::embedded_owners(None)).unwrap();
        let s = t.path().join("stage");
        let mut revs = Vec::new();
        for i in 0..4 {
            let m = staged(&s, &format!("{{ v = {i}; }}"));
            let p = c.publish(&h, &s, &m, 2).unwrap();
            assert!(matches!(p, Published::New { .. }));
            revs.push(m.revision.clone());
            assert_eq!(
                fs::read_to_string(c.host_dir(&h).join("config/configuration.nix")).unwrap(),
                format!("{{ v = {i}; }}")
            );
            assert_eq!(
                fs::read_to_string(c.last_change_path(&h)).unwrap().trim(),
                m.revision
            );
        }
        let m = staged(&s, "{ v = 3; }");
        assert_eq!(
            c.publish(&h, &s, &m, 2).unwrap(),
            Published::Unchanged {
                revision: revs[3].clone()
            }
        );
        let left: Vec<_> = fs::read_dir(c.releases_dir(&h))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left.len(), 3, "{left:?}"); // current link + 2 releases
        assert!(left.contains(&revs[3]) && left.contains(&revs[2]));
    }

    #[test]
    fn states_file_keeps_other_hosts() {
        let t = tempfile::tempdir().unwrap();
        let c = Chroot::new(t.path());
        fs::write(c.states_path(), "a=sys-a\nb=sys-b\n").unwrap();
        let mut ch = BTreeMap::new();
        ch.insert(HostName::new("b").unwrap(), Some("sys-b2".to_owned()));
        ch.insert(HostName::new("c").unwrap(), Some("sys-c".to_owned()));
        c.update_states(&ch).unwrap();
        let s = c.read_states();
        assert_eq!(s["a"], "sys-a");
        assert_eq!(s["b"], "sys-b2");
        assert_eq!(s["c"], "sys-c");
    }
}
