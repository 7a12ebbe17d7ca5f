//! Releases: a host's files copied following symlinks, a content revision over
//! them, and the manifest `.bento-release.json` an agent verifies before use.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// File name of the manifest at the root of every release.
pub const MANIFEST_FILE: &str = ".bento-release.json";

/// Names never copied into a release: build results and VCS metadata. `result` is
/// what `nixos-rebuild build` leaves behind, a symlink into the store.
const SKIPPED_NAMES: &[&str] = &[
    ".git",
    "result",
    MANIFEST_FILE,
    crate::signing::SIGNATURE_FILE,
];

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("symlink loop at {path}")]
    SymlinkLoop { path: PathBuf },
    #[error("{path} links to {target}, outside the bento directory {root}; copy the file into the bento directory instead")]
    OutsideRoot {
        path: PathBuf,
        target: PathBuf,
        root: PathBuf,
    },
    #[error("{path} is a broken symlink")]
    BrokenLink { path: PathBuf },
    #[error(
        "{path} is neither a file nor a directory (sockets, devices and fifos cannot be published)"
    )]
    SpecialFile { path: PathBuf },
    #[error("{path}: file name is not UTF-8")]
    NonUtf8 { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Limit(#[from] crate::limits::LimitError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ReleaseError + '_ {
    move |source| ReleaseError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Copies `src` into `dst` (which must not exist), following symlinks as the
/// original tool's `rsync -L` did. Every link must resolve inside `root`; a loop
/// is an error rather than an endless copy.
pub fn stage_tree(src: &Path, dst: &Path, root: &Path) -> Result<(), ReleaseError> {
    let root = fs::canonicalize(root).map_err(io_err(root))?;
    let canon_src = fs::canonicalize(src).map_err(io_err(src))?;
    let mut ancestors = vec![canon_src.clone()];
    fs::create_dir(dst).map_err(io_err(dst))?;
    // The agent's bounds are checked while copying: a tree it would refuse is
    // never published, nor copied whole first.
    let mut budget = crate::limits::TreeBudget::new();
    copy_dir(src, dst, &root, &mut ancestors, &mut budget, "")
}

fn copy_dir(
    src: &Path,
    dst: &Path,
    root: &Path,
    ancestors: &mut Vec<PathBuf>,
    budget: &mut crate::limits::TreeBudget,
    prefix: &str,
) -> Result<(), ReleaseError> {
    let mut entries: Vec<_> = fs::read_dir(src)
        .map_err(io_err(src))?
        .collect::<Result<_, _>>()
        .map_err(io_err(src))?;
    entries.sort_by_key(|e| e.file_name());
    for ent in entries {
        let name = ent.file_name();
        let Some(name_str) = name.to_str() else {
            return Err(ReleaseError::NonUtf8 { path: ent.path() });
        };
        if SKIPPED_NAMES.contains(&name_str) {
            continue;
        }
        let path = ent.path();
        let ft = ent.file_type().map_err(io_err(&path))?;
        let real = if ft.is_symlink() {
            let target = match fs::canonicalize(&path) {
                Ok(t) => t,
                Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                    return Err(ReleaseError::SymlinkLoop { path })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(ReleaseError::BrokenLink { path })
                }
                Err(e) => return Err(ReleaseError::Io { path, source: e }),
            };
            if !target.starts_with(root) {
                return Err(ReleaseError::OutsideRoot {
                    path,
                    target,
                    root: root.to_owned(),
                });
            }
            target
        } else {
            path.clone()
        };
        let md = fs::metadata(&real).map_err(io_err(&path))?;
        let out = dst.join(&name);
        let rel = if prefix.is_empty() {
            name_str.to_owned()
        } else {
            format!("{prefix}/{name_str}")
        };
        budget.entry(&rel, md.is_dir(), if md.is_file() { md.len() } else { 0 })?;
        if md.is_dir() {
            let canon = fs::canonicalize(&real).map_err(io_err(&path))?;
            if ancestors.contains(&canon) {
                return Err(ReleaseError::SymlinkLoop { path });
            }
            fs::create_dir(&out).map_err(io_err(&out))?;
            ancestors.push(canon);
            copy_dir(&real, &out, root, ancestors, budget, &rel)?;
            ancestors.pop();
        } else if md.is_file() {
            fs::copy(&real, &out).map_err(io_err(&out))?;
            let exec = md.permissions().mode() & 0o111 != 0;
            fs::set_permissions(
                &out,
                fs::Permissions::from_mode(if exec { 0o755 } else { 0o644 }),
            )
            .map_err(io_err(&out))?;
        } else {
            return Err(ReleaseError::SpecialFile { path });
        }
    }
    Ok(())
}

/// One file of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub sha256: String,
    pub size: u64,
    #[serde(default)]
    pub executable: bool,
}

/// `.bento-release.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub revision: String,
    pub host: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    /// Store path of the system the server built for this release (flakes only).
    pub expected_system: Option<String>,
    /// Relative path (with `/`) → entry, for every regular file.
    pub files: BTreeMap<String, FileEntry>,
    /// Every directory, empty ones included.
    #[serde(default)]
    pub dirs: BTreeSet<String>,
    /// Each file's times as published, so `bento deploy` can tell an untouched
    /// release from a damaged one without reading it. Not part of the revision;
    /// agents ignore it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stamps: BTreeMap<String, Stamp>,
    /// The system's closure, exported as the host's own signed binary cache: the
    /// agent fetches it instead of building (see `closure`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closure: Option<crate::closure::Closure>,
}

/// A published file's modification and change times, in nanoseconds. The change
/// time cannot be set back by hand, so an edit that restores the mtime still shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub mtime: i64,
    pub ctime: i64,
}

impl Stamp {
    pub fn of(md: &fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            mtime: md.mtime().saturating_mul(1_000_000_000) + md.mtime_nsec(),
            ctime: md.ctime().saturating_mul(1_000_000_000) + md.ctime_nsec(),
        }
    }
}

/// How a published release differs from its manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    #[error("manifest {0}")]
    Manifest(String),
    #[error("file {0} changed")]
    Changed(String),
    #[error("file {0} missing")]
    Missing(String),
    #[error("file {0} added")]
    Added(String),
    #[error("file {0} mode changed")]
    Mode(String),
    #[error("{0} is not a regular file or directory")]
    Special(String),
    #[error("cannot read it: {0}")]
    Io(String),
}

/// What a release tree contains, read once.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TreeListing {
    pub files: BTreeMap<String, FileEntry>,
    pub dirs: BTreeSet<String>,
    /// Entries that are neither files nor directories (symlinks, ...), by path.
    pub others: Vec<String>,
}

impl TreeListing {
    /// Reads `dir` without following symlinks, hashing every file. The manifest
    /// itself is left out.
    pub fn read(dir: &Path) -> Result<Self, ReleaseError> {
        let mut l = TreeListing::default();
        walk(dir, "", &mut l, None)?;
        Ok(l)
    }

    /// Like [`TreeListing::read`] without reading any file: `sha256` is left
    /// empty, and each file's [`Stamp`] is returned instead.
    pub fn read_stat(dir: &Path) -> Result<(Self, BTreeMap<String, Stamp>), ReleaseError> {
        let mut l = TreeListing::default();
        let mut stamps = BTreeMap::new();
        walk(dir, "", &mut l, Some(&mut stamps))?;
        Ok((l, stamps))
    }

    /// The content revision: a hash over relative paths, modes and bytes.
    pub fn revision(&self) -> String {
        revision_of(&self.files, &self.dirs)
    }
}

/// With `stamps`, files are only stat'ed (their stamps collected), not hashed.
fn walk(
    dir: &Path,
    prefix: &str,
    l: &mut TreeListing,
    mut stamps: Option<&mut BTreeMap<String, Stamp>>,
) -> Result<(), ReleaseError> {
    for ent in fs::read_dir(dir).map_err(io_err(dir))? {
        let ent = ent.map_err(io_err(dir))?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else {
            return Err(ReleaseError::NonUtf8 { path: ent.path() });
        };
        let rel = if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}/{name}")
        };
        if rel == MANIFEST_FILE || rel == crate::signing::SIGNATURE_FILE {
            continue;
        }
        let path = ent.path();
        let ft = ent.file_type().map_err(io_err(&path))?;
        if ft.is_dir() {
            l.dirs.insert(rel.clone());
            walk(&path, &rel, l, stamps.as_deref_mut())?;
        } else if ft.is_file() {
            let md = ent.metadata().map_err(io_err(&path))?;
            let sha256 = match stamps.as_deref_mut() {
                Some(st) => {
                    st.insert(rel.clone(), Stamp::of(&md));
                    String::new()
                }
                None => sha256_file(&path).map_err(io_err(&path))?,
            };
            l.files.insert(
                rel,
                FileEntry {
                    sha256,
                    size: md.len(),
                    executable: md.permissions().mode() & 0o111 != 0,
                },
            );
        } else {
            l.others.push(rel);
        }
    }
    Ok(())
}

fn revision_of(files: &BTreeMap<String, FileEntry>, dirs: &BTreeSet<String>) -> String {
    let mut h = Sha256::new();
    for d in dirs {
        h.update(b"D\0");
        h.update(d.as_bytes());
        h.update(b"\n");
    }
    for (p, f) in files {
        h.update(b"F\0");
        h.update(p.as_bytes());
        h.update(if f.executable { b"\0x\0" } else { b"\0-\0" });
        h.update(f.sha256.as_bytes());
        h.update(b"\n");
    }
    hex::encode(&h.finalize()[..16])
}

pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Why a downloaded release was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("release manifest is missing or unreadable: {0}")]
    Manifest(String),
    #[error(
        "release manifest does not match its own revision (claims {claimed}, lists {computed})"
    )]
    Revision { claimed: String, computed: String },
    #[error("release file {0} is missing")]
    Missing(String),
    #[error("release file {0} is not in the manifest")]
    Extra(String),
    #[error("release file {0} does not match the manifest (altered or incomplete)")]
    Altered(String),
    #[error("release entry {0} is not a regular file or directory")]
    Special(String),
    #[error("cannot read the release: {0}")]
    Io(String),
}

impl Manifest {
    pub const FORMAT: u32 = 1;

    /// Builds the manifest of a staged tree.
    pub fn for_tree(
        listing: &TreeListing,
        host: &str,
        created: OffsetDateTime,
        expected_system: Option<String>,
    ) -> Self {
        Manifest {
            format: Self::FORMAT,
            revision: listing.revision(),
            host: host.to_owned(),
            created,
            expected_system,
            files: listing.files.clone(),
            dirs: listing.dirs.clone(),
            stamps: BTreeMap::new(),
            closure: None,
        }
    }

    /// This manifest with the stamps of the files as they are now in `dir`, the
    /// release it describes (called right after writing the files).
    pub fn stamped(&self, dir: &Path) -> Result<Manifest, ReleaseError> {
        let (_, stamps) = TreeListing::read_stat(dir)?;
        let mut m = self.clone();
        m.stamps = stamps
            .into_iter()
            .filter(|(p, _)| m.files.contains_key(p))
            .collect();
        Ok(m)
    }

    /// Checks a published release in `dir`, whose directory name says it is
    /// `revision`, against its own manifest. The cheap check (`full` false)
    /// reads no file whose size, mode and stamps are as published: it stats the
    /// tree and hashes only files whose stamps moved (a copied chroot, or an
    /// edit). `full` hashes every file.
    pub fn check_published(dir: &Path, revision: &str, full: bool) -> Result<Manifest, Damage> {
        let m = Manifest::read_from(dir).map_err(|e| Damage::Manifest(e.to_string()))?;
        if m.revision != revision {
            return Err(Damage::Manifest(format!(
                "claims revision {}, its directory is {revision}",
                m.revision
            )));
        }
        if revision_of(&m.files, &m.dirs) != revision {
            return Err(Damage::Manifest("does not match its revision".into()));
        }
        let (l, stamps) = TreeListing::read_stat(dir).map_err(|e| Damage::Io(e.to_string()))?;
        if let Some(o) = l.others.first() {
            return Err(Damage::Special(o.clone()));
        }
        if let Some(p) = m.files.keys().find(|p| !l.files.contains_key(*p)) {
            return Err(Damage::Missing(p.clone()));
        }
        if let Some(p) = l.files.keys().find(|p| !m.files.contains_key(*p)) {
            return Err(Damage::Added(p.clone()));
        }
        if let Some(d) = m.dirs.iter().find(|d| !l.dirs.contains(*d)) {
            return Err(Damage::Missing(format!("{d}/")));
        }
        if let Some(d) = l.dirs.iter().find(|d| !m.dirs.contains(*d)) {
            return Err(Damage::Added(format!("{d}/")));
        }
        for (p, want) in &m.files {
            let path = dir.join(p);
            let md = fs::symlink_metadata(&path).map_err(|e| Damage::Io(format!("{p}: {e}")))?;
            if md.len() != want.size {
                return Err(Damage::Changed(p.clone()));
            }
            // Publication writes exactly these modes; the agent (another user)
            // must be able to read every file.
            let mode = md.permissions().mode() & 0o7777;
            if mode != if want.executable { 0o755 } else { 0o644 }
                && !crate::secrets::published_mode_ok(p, mode)
            {
                return Err(Damage::Mode(p.clone()));
            }
            let moved = !m.stamps.is_empty() && m.stamps.get(p) != stamps.get(p);
            if full || moved {
                let got = sha256_file(&path).map_err(|e| Damage::Io(format!("{p}: {e}")))?;
                if got != want.sha256 {
                    return Err(Damage::Changed(p.clone()));
                }
            }
        }
        Ok(m)
    }

    pub fn write_to(&self, dir: &Path) -> io::Result<()> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = serde_json::to_vec_pretty(self).expect("manifest serializes");
        crate::limits::check_manifest(bytes.len())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let mut f = fs::File::create(&path)?;
        f.write_all(&bytes)?;
        f.sync_all()
    }

    pub fn read_from(dir: &Path) -> Result<Self, VerifyError> {
        crate::report::read_json_capped_n(&dir.join(MANIFEST_FILE), 64 << 20)
            .map_err(VerifyError::Manifest)
    }

    /// Checks a downloaded tree against this manifest: same files, same bytes, the
    /// revision consistent with the listed content, nothing extra.
    pub fn verify(&self, dir: &Path) -> Result<(), VerifyError> {
        let computed = revision_of(&self.files, &self.dirs);
        if computed != self.revision {
            return Err(VerifyError::Revision {
                claimed: self.revision.clone(),
                computed,
            });
        }
        let l = TreeListing::read(dir).map_err(|e| VerifyError::Io(e.to_string()))?;
        if let Some(o) = l.others.first() {
            return Err(VerifyError::Special(o.clone()));
        }
        for p in self.files.keys() {
            if !l.files.contains_key(p) {
                return Err(VerifyError::Missing(p.clone()));
            }
        }
        for (p, f) in &l.files {
            match self.files.get(p) {
                None => return Err(VerifyError::Extra(p.clone())),
                Some(want) if want != f => return Err(VerifyError::Altered(p.clone())),
                Some(_) => {}
            }
        }
        for d in &l.dirs {
            if !self.dirs.contains(d) {
                return Err(VerifyError::Extra(format!("{d}/")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("utils")).unwrap();
        fs::write(r.join("utils/common.nix"), "{ }").unwrap();
        fs::create_dir_all(r.join("hosts/web")).unwrap();
        fs::write(r.join("hosts/web/configuration.nix"), "{ }").unwrap();
        symlink("../../utils", r.join("hosts/web/utils")).unwrap();
        t
    }

    #[test]
    fn staging_follows_links_and_revision_tracks_content() {
        let t = tree();
        let r = t.path();
        let out = tempfile::tempdir().unwrap();
        stage_tree(&r.join("hosts/web"), &out.path().join("a"), r).unwrap();
        assert_eq!(
            fs::read_to_string(out.path().join("a/utils/common.nix")).unwrap(),
            "{ }"
        );
        let l1 = TreeListing::read(&out.path().join("a")).unwrap();
        fs::write(r.join("utils/common.nix"), "{ x = 1; }").unwrap();
        stage_tree(&r.join("hosts/web"), &out.path().join("b"), r).unwrap();
        let l2 = TreeListing::read(&out.path().join("b")).unwrap();
        assert_ne!(l1.revision(), l2.revision());
        stage_tree(&r.join("hosts/web"), &out.path().join("c"), r).unwrap();
        assert_eq!(
            TreeListing::read(&out.path().join("c")).unwrap().revision(),
            l2.revision()
        );
    }

    #[test]
    fn loops_and_escapes_are_clear_errors() {
        let t = tree();
        let r = t.path();
        let out = tempfile::tempdir().unwrap();
        symlink("..", r.join("hosts/web/up")).unwrap();
        let e = stage_tree(&r.join("hosts/web"), &out.path().join("x"), r).unwrap_err();
        assert!(matches!(e, ReleaseError::SymlinkLoop { .. }), "{e}");
        fs::remove_file(r.join("hosts/web/up")).unwrap();
        symlink("self", r.join("hosts/web/self")).unwrap();
        let e = stage_tree(&r.join("hosts/web"), &out.path().join("y"), r).unwrap_err();
        assert!(e.to_string().contains("symlink loop"), "{e}");
        fs::remove_file(r.join("hosts/web/self")).unwrap();
        symlink("/etc/hostname", r.join("hosts/web/h")).unwrap();
        let e = stage_tree(&r.join("hosts/web"), &out.path().join("z"), r).unwrap_err();
        assert!(e.to_string().contains("outside the bento directory"), "{e}");
    }

    #[test]
    fn verify_refuses_missing_extra_and_altered_files() {
        let t = tree();
        let d = t.path().join("hosts/web");
        fs::remove_file(d.join("utils")).unwrap();
        let l = TreeListing::read(&d).unwrap();
        let m = Manifest::for_tree(&l, "web", OffsetDateTime::UNIX_EPOCH, None);
        m.write_to(&d).unwrap();
        let m = Manifest::read_from(&d).unwrap();
        m.verify(&d).unwrap();
        fs::write(d.join("extra"), "x").unwrap();
        assert_eq!(m.verify(&d), Err(VerifyError::Extra("extra".into())));
        fs::remove_file(d.join("extra")).unwrap();
        fs::write(d.join("configuration.nix"), "{ evil }").unwrap();
        assert_eq!(
            m.verify(&d),
            Err(VerifyError::Altered("configuration.nix".into()))
        );
        fs::remove_file(d.join("configuration.nix")).unwrap();
        assert_eq!(
            m.verify(&d),
            Err(VerifyError::Missing("configuration.nix".into()))
        );
        let mut forged = m.clone();
        forged.files.clear();
        assert!(matches!(
            forged.verify(&d),
            Err(VerifyError::Revision { .. })
        ));
    }
}
