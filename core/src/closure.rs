//! A host's system closure as a signed Nix binary cache in its own chroot.
//!
//! `bento deploy` exports every built system with Nix's own machinery (`nix copy
//! --to file://…?compression=zstd&secret-key=…`) into one binary cache under the
//! chroot directory, [`NAR_STORE_DIR`], so each NAR is written once whatever the
//! number of hosts sharing it, and nix skips what is already there. Each host's
//! chroot then gets its own cache directory, [`CACHE_DIR`], holding hard links to
//! the narinfos and NARs of *its* closure only: a host can never fetch another
//! host's paths. The release manifest names the toplevel and every path with its
//! NAR's name and size ([`Closure`]), and the manifest is signed, so an agent knows
//! exactly what to fetch and how big each file may be before it asks; nix itself
//! checks every narinfo signature and NAR hash when the agent imports.
//!
//! Pruning: a host's cache keeps the closures of its kept releases; a NAR of the
//! shared store with no link left in any host cache is removed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cmd::Cmd;
use crate::release::{Manifest, MANIFEST_FILE};
use crate::signing::{PublicKey, SigningKey};

/// The shared binary cache, directly under the chroot directory. Not a valid host
/// name (it starts with a dot), so no host's chroot is ever this directory.
pub const NAR_STORE_DIR: &str = ".nar-store";
/// A host's own binary cache, at the root of its chroot.
pub const CACHE_DIR: &str = "cache";
/// `nix-cache-info` of every host cache.
pub const CACHE_INFO: &str = "StoreDir: /nix/store\nWantMassQuery: 0\nPriority: 50\n";
/// A narinfo is a few lines: anything larger is not one.
pub const MAX_NARINFO_BYTES: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClosureError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Nix(String),
    #[error("{path}: {reason}")]
    NarInfo { path: PathBuf, reason: String },
    #[error("{0}")]
    Path(String),
}

fn io_err(p: &Path) -> impl FnOnce(io::Error) -> ClosureError + '_ {
    move |source| ClosureError::Io {
        path: p.to_owned(),
        source,
    }
}

/// One store path of a closure: where its NAR is in the host's cache and its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NarRef {
    /// The narinfo's `URL`, relative to the cache (`nar/<filehash>.nar.zst`).
    pub url: String,
    /// Bytes of the compressed NAR (`FileSize`).
    pub file_size: u64,
    /// Bytes of the NAR once decompressed (`NarSize`).
    pub nar_size: u64,
}

/// What a release says about its system's closure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closure {
    /// The system to activate, exactly.
    pub toplevel: String,
    /// Every store path of the closure (the toplevel included).
    pub paths: BTreeMap<String, NarRef>,
    /// The name of the key the narinfos (and the manifest) are signed with.
    pub key: String,
    /// The cache's directory in the chroot.
    pub cache: String,
}

impl Closure {
    /// Bytes of every NAR.
    pub fn file_bytes(&self) -> u64 {
        self.paths.values().map(|n| n.file_size).sum()
    }

    /// Checks what an agent relies on before fetching anything: plain store paths
    /// under `/nix/store`, NAR names that are plain files of `nar/`, the toplevel
    /// among the paths.
    pub fn check(&self) -> Result<(), String> {
        if self.cache != CACHE_DIR {
            return Err(format!(
                "the closure's cache is {:?}, not {CACHE_DIR:?}",
                self.cache
            ));
        }
        if !self.paths.contains_key(&self.toplevel) {
            return Err(format!(
                "the closure does not contain its toplevel {}",
                self.toplevel
            ));
        }
        for (p, n) in &self.paths {
            store_hash(p).ok_or_else(|| format!("not a store path: {p:?}"))?;
            if !valid_nar_url(&n.url) {
                return Err(format!("{p}: bad NAR name {:?}", n.url));
            }
        }
        Ok(())
    }
}

/// The hash part of `/nix/store/<hash>-<name>`, when `p` is a plain store path.
pub fn store_hash(p: &str) -> Option<&str> {
    let base = p.strip_prefix("/nix/store/")?;
    if base.contains('/') || base.len() > 211 {
        return None;
    }
    let (hash, name) = base.split_once('-')?;
    let nix32 = |b: u8| b.is_ascii_digit() || (b.is_ascii_lowercase() && !b"eotu".contains(&b));
    let name_ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b));
    (hash.len() == 32 && hash.bytes().all(nix32) && name_ok).then_some(hash)
}

/// `nar/<name>` with a plain file name.
pub fn valid_nar_url(url: &str) -> bool {
    let Some(name) = url.strip_prefix("nar/") else {
        return false;
    };
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

/// The fields of a narinfo bento reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    pub store_path: String,
    pub url: String,
    pub file_size: u64,
    pub nar_hash: String,
    pub nar_size: u64,
    /// Base names of the referenced store paths.
    pub references: Vec<String>,
    pub sigs: Vec<String>,
}

impl NarInfo {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut f: BTreeMap<&str, &str> = BTreeMap::new();
        let mut sigs = Vec::new();
        for line in text.lines() {
            let Some((k, v)) = line.split_once(": ") else {
                continue;
            };
            if k == "Sig" {
                sigs.push(v.to_owned());
            } else {
                f.insert(k, v);
            }
        }
        let get = |k: &str| f.get(k).copied().ok_or_else(|| format!("no {k}"));
        let num = |k: &str| -> Result<u64, String> {
            get(k)?.parse().map_err(|_| format!("{k} is not a number"))
        };
        Ok(NarInfo {
            store_path: get("StorePath")?.to_owned(),
            url: get("URL")?.to_owned(),
            file_size: num("FileSize")?,
            nar_hash: get("NarHash")?.to_owned(),
            nar_size: num("NarSize")?,
            references: f
                .get("References")
                .map(|r| r.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default(),
            sigs,
        })
    }

    /// What Nix signs: `1;<path>;<nar hash>;<nar size>;<references, full paths>`.
    pub fn fingerprint(&self) -> String {
        let refs: Vec<String> = self
            .references
            .iter()
            .map(|r| format!("/nix/store/{r}"))
            .collect();
        format!(
            "1;{};{};{};{}",
            self.store_path,
            self.nar_hash,
            self.nar_size,
            refs.join(",")
        )
    }

    /// The name of a trusted key whose signature of this narinfo is valid, else why
    /// not (no signature, only unknown keys, a signature that does not match).
    pub fn check_signatures(&self, trusted: &[PublicKey]) -> Result<String, String> {
        if self.sigs.is_empty() {
            return Err("it has no signature".into());
        }
        let fp = self.fingerprint();
        let mut names = Vec::new();
        for s in &self.sigs {
            let Some((name, sig)) = s.split_once(':') else {
                continue;
            };
            if let Some(k) = trusted.iter().find(|k| k.name == name) {
                if k.verifies(fp.as_bytes(), sig) {
                    return Ok(name.to_owned());
                }
                return Err(format!(
                    "its signature by {name} does not match its content"
                ));
            }
            names.push(crate::text::display_safe(name));
        }
        Err(format!(
            "it is signed only by keys this host does not trust ({})",
            names.join(", ")
        ))
    }

    fn read(path: &Path) -> Result<Self, ClosureError> {
        let text = fs::read_to_string(path).map_err(io_err(path))?;
        NarInfo::parse(&text).map_err(|reason| ClosureError::NarInfo {
            path: path.to_owned(),
            reason,
        })
    }
}

/// `file://` URI of a local directory, refused when the path has characters
/// nix's store URI parser gives a meaning to.
fn file_uri(dir: &Path, params: &[(&str, &Path)]) -> Result<String, ClosureError> {
    let plain = |p: &Path| -> Result<String, ClosureError> {
        let s = p.to_str().filter(|s| s.starts_with('/')).ok_or_else(|| {
            ClosureError::Path(format!("{}: not an absolute UTF-8 path", p.display()))
        })?;
        if s.bytes()
            .any(|b| b"?&=%#+ ".contains(&b) || b.is_ascii_control())
        {
            return Err(ClosureError::Path(format!(
                "{s}: nix cannot take this path in a store URI (it has one of ? & = % # + or a space)"
            )));
        }
        Ok(s.to_owned())
    };
    let mut uri = format!("file://{}?compression=zstd", plain(dir)?);
    for (k, v) in params {
        uri.push_str(&format!("&{k}={}", plain(v)?));
    }
    Ok(uri)
}

/// The shared binary cache of a chroot directory.
#[derive(Debug, Clone)]
pub struct NarStore {
    dir: PathBuf,
}

/// What an export did.
#[derive(Debug, Clone)]
pub struct Exported {
    pub closure: Closure,
    /// Paths of the closure that were not in the shared cache yet.
    pub new_paths: usize,
}

impl NarStore {
    pub fn new(chroot_dir: &Path) -> Self {
        NarStore {
            dir: chroot_dir.join(NAR_STORE_DIR),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn narinfo_path(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}.narinfo"))
    }

    /// Exports the closure of `toplevel` (signed with `key`) and describes it.
    /// Paths already in the shared cache are not written again.
    /// `owner`: when root exports for an unprivileged publisher, every file and
    /// directory nix wrote is handed to it, so the publisher's later deploys can
    /// link and prune them.
    pub fn export(
        &self,
        toplevel: &Path,
        key: &SigningKey,
        extra_args: &[String],
        owner: Option<(u32, u32)>,
    ) -> Result<Exported, ClosureError> {
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let top = toplevel
            .to_str()
            .ok_or_else(|| ClosureError::Path(format!("{}: not UTF-8", toplevel.display())))?;
        let out = Cmd::new("nix-store")
            .args(["--query", "--requisites"])
            .arg(toplevel)
            .run()
            .map_err(|e| ClosureError::Nix(e.message()))?;
        let paths: BTreeSet<String> = out.stdout.lines().map(str::to_owned).collect();
        let missing: Vec<&String> = paths
            .iter()
            .filter(|p| store_hash(p).is_none_or(|h| !self.narinfo_path(h).is_file()))
            .collect();
        if !missing.is_empty() {
            let uri = file_uri(&self.dir, &[("secret-key", key.path.as_path())])?;
            Cmd::new("nix")
                .args(["--extra-experimental-features", "nix-command"])
                .arg("copy")
                .args(extra_args)
                .args(["--to", &uri])
                .arg(top)
                .run()
                .map_err(|e| ClosureError::Nix(e.message()))?;
        }
        let mut refs = BTreeMap::new();
        for p in &paths {
            let hash = store_hash(p)
                .ok_or_else(|| ClosureError::Path(format!("nix listed {p:?}, not a store path")))?;
            let ni_path = self.narinfo_path(hash);
            let ni = NarInfo::read(&ni_path)?;
            if ni.store_path != *p || !valid_nar_url(&ni.url) {
                return Err(ClosureError::NarInfo {
                    path: ni_path,
                    reason: format!("describes {} at {}", ni.store_path, ni.url),
                });
            }
            if !ni
                .sigs
                .iter()
                .any(|s| s.split(':').next() == Some(key.name.as_str()))
            {
                return Err(ClosureError::NarInfo {
                    path: ni_path,
                    reason: format!(
                        "is not signed by {} (made with another key? remove {} to export again)",
                        key.name,
                        self.dir.display()
                    ),
                });
            }
            let nar = self.dir.join(&ni.url);
            let md = fs::metadata(&nar).map_err(io_err(&nar))?;
            if md.len() != ni.file_size {
                return Err(ClosureError::NarInfo {
                    path: nar,
                    reason: format!("is {} bytes, its narinfo says {}", md.len(), ni.file_size),
                });
            }
            for f in [&ni_path, &nar] {
                fs::set_permissions(f, fs::Permissions::from_mode(0o644)).map_err(io_err(f))?;
                chown(f, owner)?;
            }
            refs.insert(
                p.clone(),
                NarRef {
                    url: ni.url,
                    file_size: ni.file_size,
                    nar_size: ni.nar_size,
                },
            );
        }
        if owner.is_some() {
            for e in fs::read_dir(&self.dir)
                .map_err(io_err(&self.dir))?
                .flatten()
            {
                if e.file_type().is_ok_and(|t| t.is_dir()) || e.file_name() == "nix-cache-info" {
                    chown(&e.path(), owner)?;
                }
            }
            chown(&self.dir, owner)?;
        }
        Ok(Exported {
            closure: Closure {
                toplevel: top.to_owned(),
                paths: refs,
                key: key.name.clone(),
                cache: CACHE_DIR.to_owned(),
            },
            new_paths: missing.len(),
        })
    }

    /// Gives `host_dir`'s cache every narinfo and NAR of `closure` (hard links into
    /// the shared cache; a copy across file systems). Existing links are kept.
    pub fn link_into(&self, host_dir: &Path, closure: &Closure) -> Result<(), ClosureError> {
        let cache = host_dir.join(CACHE_DIR);
        let nar_dir = cache.join("nar");
        for d in [&cache, &nar_dir] {
            match fs::create_dir(d) {
                Ok(()) => {
                    fs::set_permissions(d, fs::Permissions::from_mode(0o755)).map_err(io_err(d))?;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(d)(e)),
            }
        }
        let info = cache.join("nix-cache-info");
        if fs::read_to_string(&info).ok().as_deref() != Some(CACHE_INFO) {
            crate::fsutil::write_atomic(&info, CACHE_INFO.as_bytes(), Some(0o644))
                .map_err(io_err(&info))?;
        }
        for (p, n) in &closure.paths {
            let hash = store_hash(p).ok_or_else(|| ClosureError::Path(p.clone()))?;
            let name = format!("{hash}.narinfo");
            link(&self.dir.join(&name), &cache.join(&name))?;
            link(&self.dir.join(&n.url), &cache.join(&n.url))?;
        }
        Ok(())
    }

    /// Removes from `host_dir`'s cache what no release in `keep` needs.
    pub fn prune_host(&self, host_dir: &Path, keep: &[Closure]) -> Result<(), ClosureError> {
        let cache = host_dir.join(CACHE_DIR);
        if !cache.is_dir() {
            return Ok(());
        }
        let mut names: BTreeSet<String> = BTreeSet::new();
        for c in keep {
            for (p, n) in &c.paths {
                if let Some(h) = store_hash(p) {
                    names.insert(format!("{h}.narinfo"));
                }
                names.insert(n.url.clone());
            }
        }
        for (dir, prefix) in [(cache.clone(), ""), (cache.join("nar"), "nar/")] {
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for ent in rd.flatten() {
                let name = ent.file_name().to_string_lossy().into_owned();
                let keep_it = name == "nix-cache-info" && prefix.is_empty()
                    || names.contains(&format!("{prefix}{name}"))
                    || ent.file_type().is_ok_and(|t| t.is_dir());
                if !keep_it {
                    let _ = fs::remove_file(ent.path());
                }
            }
        }
        Ok(())
    }

    /// Removes every narinfo (and its NAR) of the shared cache that no host cache
    /// links to: its link count is 1. Returns how many paths went.
    pub fn collect(&self) -> Result<usize, ClosureError> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Ok(0);
        };
        let mut removed = 0;
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".narinfo") {
                continue;
            }
            let path = ent.path();
            let Ok(md) = fs::metadata(&path) else {
                continue;
            };
            if md.nlink() > 1 {
                continue;
            }
            if let Ok(ni) = NarInfo::read(&path) {
                if valid_nar_url(&ni.url) {
                    let nar = self.dir.join(&ni.url);
                    if fs::metadata(&nar).is_ok_and(|m| m.nlink() == 1) {
                        let _ = fs::remove_file(&nar);
                    }
                }
            }
            let _ = fs::remove_file(&path);
            removed += 1;
        }
        Ok(removed)
    }
}

/// The closures of every release kept in a host's `.releases/`.
pub fn kept_closures(releases_dir: &Path) -> Vec<Closure> {
    let Ok(rd) = fs::read_dir(releases_dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            !n.starts_with(".tmp-")
                && !n.starts_with(".current-")
                && e.path().join(MANIFEST_FILE).is_file()
        })
        .filter_map(|e| Manifest::read_from(&e.path()).ok())
        .filter_map(|m| m.closure)
        .collect()
}

fn chown(p: &Path, owner: Option<(u32, u32)>) -> Result<(), ClosureError> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(p, Some(uid), Some(gid)).map_err(io_err(p))?;
    }
    Ok(())
}

fn link(src: &Path, dst: &Path) -> Result<(), ClosureError> {
    if let (Ok(a), Ok(b)) = (fs::metadata(src), fs::metadata(dst)) {
        if a.ino() == b.ino() && a.dev() == b.dev() {
            return Ok(());
        }
    }
    let tmp = dst.with_file_name(format!(
        ".link-{}-{}",
        std::process::id(),
        dst.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let _ = fs::remove_file(&tmp);
    match fs::hard_link(src, &tmp) {
        Ok(()) => {}
        // Another file system: a copy (the bytes twice, still only this host's).
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            fs::copy(src, &tmp).map_err(io_err(&tmp))?;
        }
        Err(e) => return Err(io_err(src)(e)),
    }
    fs::rename(&tmp, dst).map_err(io_err(dst))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_paths_and_nar_names() {
        assert_eq!(
            store_hash("/nix/store/cci9cj0w916p149423aqd3pl3jslpnmd-pkg"),
            Some("cci9cj0w916p149423aqd3pl3jslpnmd")
        );
        for bad in [
            "/nix/store/cci9cj0w916p149423aqd3pl3jslpnmd-pkg/bin",
            "/nix/store/../etc-passwd",
            "/tmp/cci9cj0w916p149423aqd3pl3jslpnmd-pkg",
            "/nix/store/short-pkg",
            "/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-pkg",
        ] {
            assert_eq!(store_hash(bad), None, "{bad}");
        }
        assert!(valid_nar_url("nar/0qk0rv9dk5.nar.zst"));
        for bad in ["nar/../x", "../nar/x", "nar/", "nar/a/b", "x.nar"] {
            assert!(!valid_nar_url(bad), "{bad}");
        }
    }

    #[test]
    fn narinfo_fields() {
        let t = "StorePath: /nix/store/cci9cj0w916p149423aqd3pl3jslpnmd-pkg\nURL: nar/0q.nar.zst\nCompression: zstd\nFileSize: 88\nNarHash: sha256:1xmr\nNarSize: 120\nReferences: \nSig: k-1:abc\n";
        let n = NarInfo::parse(t).unwrap();
        assert_eq!(n.url, "nar/0q.nar.zst");
        assert_eq!((n.file_size, n.nar_size), (88, 120));
        assert_eq!(n.sigs, ["k-1:abc"]);
        assert!(NarInfo::parse("URL: x\n")
            .unwrap_err()
            .contains("StorePath"));
        assert!(NarInfo::parse(&t.replace("NarSize", "X")).is_err());
        assert!(NarInfo::parse(&t.replace("88", "x"))
            .unwrap_err()
            .contains("FileSize"));
    }

    #[test]
    fn uris_refuse_what_nix_would_misread() {
        let k = Path::new("/b/signing-key.sec");
        assert_eq!(
            file_uri(Path::new("/srv/c/.nar-store"), &[("secret-key", k)]).unwrap(),
            "file:///srv/c/.nar-store?compression=zstd&secret-key=/b/signing-key.sec"
        );
        assert!(file_uri(Path::new("/srv/a?b"), &[]).is_err());
        assert!(file_uri(Path::new("relative"), &[]).is_err());
    }

    /// A narinfo and key made by the real nix 2.8 (`nix-store
    /// --generate-binary-cache-key fleet-1`, `nix copy --to file://…?secret-key=`).
    #[test]
    fn checks_nix_signatures() {
        let ni = NarInfo::parse(
            "StorePath: /nix/store/rfcx4khdim6i0ibc8izwcfn92xpnl5yy-top
URL: nar/0kackzj0l8nwin2rp5s1jag3wnkv69f7wylrwa32s019iddsgjmc.nar.zst
Compression: zstd
FileHash: sha256:0kackzj0l8nwin2rp5s1jag3wnkv69f7wylrwa32s019iddsgjmc
FileSize: 127
NarHash: sha256:036lgd66nrwx5ym6r5xwj8qjadnvydq8qs9y9jv2rjcld2gcngqm
NarSize: 160
References: cci9cj0w916p149423aqd3pl3jslpnmd-pkg
Deriver: hdwig1lysagdgq20987z7vgfrpkb8x5s-top.drv
Sig: fleet-1:ZAiS6eQ3AIZYLJKGyzisr2HJ9uxYMj8Ere2/+jTeJhLy5oYAqGHUgIDDzOT0ksgFFkNZvvKSipKdQaOQGLX9Cw==
",
        )
        .unwrap();
        let key = PublicKey::parse("fleet-1:RzE4Dqq5BtEcO1wKtggRiyYxdIgVFeLgxvH5hbZ8q5k=").unwrap();
        assert_eq!(
            ni.check_signatures(std::slice::from_ref(&key)).unwrap(),
            "fleet-1"
        );
        let mut bad = ni.clone();
        bad.nar_size += 1;
        assert!(bad
            .check_signatures(std::slice::from_ref(&key))
            .unwrap_err()
            .contains("does not match"));
        let mut unsigned = ni.clone();
        unsigned.sigs.clear();
        assert!(unsigned
            .check_signatures(&[key])
            .unwrap_err()
            .contains("no signature"));
        let other =
            PublicKey::parse("other-1:RzE4Dqq5BtEcO1wKtggRiyYxdIgVFeLgxvH5hbZ8q5k=").unwrap();
        assert!(ni
            .check_signatures(&[other])
            .unwrap_err()
            .contains("fleet-1"));
    }
}
