//! The server's closure: the store paths this host lacks, fetched from its own
//! cache in the chroot over the SFTP session, then imported by nix itself.
//!
//! Downloads go to a local binary cache (`nar_cache_dir`), streamed to disk and
//! resumable: a NAR cut off by a lost connection continues from its offset at the
//! next poll, and finished NARs stay until the update ends. Every narinfo must
//! match the signed manifest (NAR name and size) and carry a valid signature by a
//! trusted key (checked here, whatever the local nix daemon's settings), and
//! `nix copy` checks them again with `require-sigs` and the pinned keys, and checks
//! every NAR's hash. Nix imports each path atomically, so a killed agent leaves no
//! partial path in the store.

use std::path::{Path, PathBuf};

use bento_core::closure::{self, Closure, NarInfo, CACHE_INFO, MAX_NARINFO_BYTES};
use bento_core::cmd::Cmd;
use bento_core::signing::PublicKey;

use futures_util::{StreamExt, TryStreamExt};

use crate::remote::{Remote, RemoteError};

/// Paths fetched at once: a closure of many small paths is not one round trip
/// after another (over Tor each costs a second). A large NAR's reads are
/// pipelined on their own, so memory stays bounded by this many read windows
/// (8 × 1 MiB at most).
const PARALLEL: usize = 8;

/// What a fetch did.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    /// The paths the store lacked.
    pub missing: Vec<String>,
    /// How many.
    pub paths: u64,
    /// Bytes received over the wire now (narinfos and NARs).
    pub bytes: u64,
}

/// Why a closure could not be fetched.
#[derive(Debug)]
pub enum FetchError {
    /// The release is bad (a narinfo that does not match, a bad signature): refused.
    Refused(String),
    /// The server went away or a local problem: try again later, keeping what arrived.
    Interrupted(String),
}

impl FetchError {
    fn of(e: RemoteError) -> Self {
        match e {
            RemoteError::Refused(m) => FetchError::Refused(m),
            e => FetchError::Interrupted(e.to_string()),
        }
    }
}

/// The store paths of `closure` the local store does not have.
pub fn missing_paths(closure: &Closure) -> Result<Vec<String>, String> {
    let paths: Vec<&String> = closure.paths.keys().collect();
    let mut missing = Vec::new();
    // Bounded argument lists: a closure has thousands of paths.
    for chunk in paths.chunks(500) {
        let out = Cmd::new("nix-store")
            .args(["--check-validity", "--print-invalid"])
            .args(chunk.iter().map(|p| p.as_str()))
            .run()
            .map_err(|e| e.message())?;
        missing.extend(out.stdout.lines().map(str::to_owned));
    }
    for p in &missing {
        if !closure.paths.contains_key(p) {
            return Err(format!("nix-store named {p}, which is not in the closure"));
        }
    }
    Ok(missing)
}

/// Downloads the narinfos and NARs of `missing` into the local cache `cache`.
pub async fn download(
    remote: &Remote,
    closure: &Closure,
    missing: &[String],
    cache: &Path,
    trusted: &[PublicKey],
    log: &dyn Fn(String),
) -> Result<Fetched, FetchError> {
    let nar_dir = cache.join("nar");
    std::fs::create_dir_all(&nar_dir).map_err(|e| local(e, &nar_dir))?;
    let info = cache.join("nix-cache-info");
    std::fs::write(&info, CACHE_INFO).map_err(|e| local(e, &info))?;
    let mut got = Fetched {
        missing: missing.to_vec(),
        paths: missing.len() as u64,
        bytes: 0,
    };
    let total: u64 = missing
        .iter()
        .filter_map(|p| closure.paths.get(p))
        .map(|n| n.file_size)
        .sum();
    log(format!(
        "fetching {} of the closure's {} paths ({}) from the server's cache",
        missing.len(),
        closure.paths.len(),
        bento_core::report::human_bytes(total)
    ));
    got.bytes = futures_util::stream::iter(missing)
        .map(|p| fetch_path(remote, closure, cache, trusted, log, p))
        .buffer_unordered(PARALLEL)
        .try_fold(0u64, |sum, n| async move { Ok(sum + n) })
        .await?;
    Ok(got)
}

/// Fetches one missing path's narinfo (checked against the manifest and the
/// trusted keys) and NAR (resumable) into the local cache. Returns the bytes
/// received.
async fn fetch_path(
    remote: &Remote,
    closure: &Closure,
    cache: &Path,
    trusted: &[PublicKey],
    log: &dyn Fn(String),
    p: &str,
) -> Result<u64, FetchError> {
    let want = closure
        .paths
        .get(p)
        .ok_or_else(|| FetchError::Refused(format!("{p} is not in the closure")))?;
    let hash = closure::store_hash(p)
        .ok_or_else(|| FetchError::Refused(format!("not a store path: {p}")))?;
    let ni_name = format!("{hash}.narinfo");
    let ni_path = cache.join(&ni_name);
    let remote_ni = format!("{}/{ni_name}", closure.cache);
    let text = remote
        .read_capped(&remote_ni, MAX_NARINFO_BYTES)
        .await
        .map_err(FetchError::of)?
        .ok_or_else(|| {
            FetchError::Refused(format!("{p}: the server's cache has no narinfo for it"))
        })?;
    let mut bytes = text.len() as u64;
    let text = String::from_utf8(text)
        .map_err(|_| FetchError::Refused(format!("{p}: its narinfo is not text")))?;
    let ni =
        NarInfo::parse(&text).map_err(|e| FetchError::Refused(format!("{p}: bad narinfo: {e}")))?;
    if ni.store_path != *p || ni.url != want.url || ni.file_size != want.file_size {
        return Err(FetchError::Refused(format!(
            "{p}: its narinfo does not match the signed manifest"
        )));
    }
    ni.check_signatures(trusted)
        .map_err(|e| FetchError::Refused(format!("{p}: refused: {e}")))?;
    std::fs::write(&ni_path, text.as_bytes()).map_err(|e| local(e, &ni_path))?;
    let dest = cache.join(&want.url);
    if std::fs::metadata(&dest).is_ok_and(|m| m.len() == want.file_size) {
        return Ok(bytes);
    }
    let part = part_path(&dest);
    let resumed = std::fs::metadata(&part).map_or(0, |m| m.len());
    if resumed > 0 && resumed < want.file_size {
        log(format!(
            "resuming {} at byte {resumed} of {}",
            want.url, want.file_size
        ));
    }
    let remote_nar = format!("{}/{}", closure.cache, want.url);
    let n = remote
        .fetch_resumable(&remote_nar, &part, &dest, want.file_size)
        .await
        .map_err(FetchError::of)?;
    bytes += n;
    Ok(bytes)
}

/// A local file could not be written: the download can go on later.
fn local(e: std::io::Error, p: &Path) -> FetchError {
    FetchError::Interrupted(format!("{}: {e}", p.display()))
}

fn part_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

/// Imports the fetched paths from the local cache with nix's own signature checks.
pub fn import(
    missing: &[String],
    cache: &Path,
    trusted: &[PublicKey],
    extra_args: &[String],
    on_line: impl FnMut(&str),
) -> Result<(), String> {
    let keys: Vec<String> = trusted.iter().map(PublicKey::to_nix).collect();
    let from = cache
        .to_str()
        .filter(|s| !s.bytes().any(|b| b"?&=%# ".contains(&b)))
        .ok_or_else(|| format!("{}: not usable in a nix store URI", cache.display()))?;
    Cmd::new("nix")
        .args(["--extra-experimental-features", "nix-command"])
        .arg("copy")
        .args(extra_args)
        .args(["--option", "require-sigs", "true"])
        .args(["--option", "trusted-public-keys", &keys.join(" ")])
        .args(["--from", &format!("file://{from}")])
        // Only the paths fetched: the others are in the store, and the local cache
        // holds no narinfo of theirs.
        .arg("--no-recursive")
        .args(missing)
        .run_streaming(on_line)
        .map(|_| ())
        .map_err(|e| format!("nix copy refused the closure: {}", e.message()))
}

/// Removes the local cache (the update ended).
pub fn clear(cache: &Path) {
    let _ = std::fs::remove_dir_all(cache);
}
