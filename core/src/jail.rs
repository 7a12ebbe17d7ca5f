//! One host's view of its chroot, for the embedded SFTP server.
//!
//! A client path is first normalized lexically ([`VPath::parse`]): relative paths
//! start at the host's root, `.` and empty components vanish, and `..` stops at the
//! root, as it does inside a real `chroot(2)`. The kernel then resolves the result
//! against the host's directory with `openat2(RESOLVE_IN_ROOT)`, so a symlink in a
//! release (absolute or full of `..`) is followed *inside* the host's directory and
//! can never reach another host's files, whatever is renamed meanwhile.
//!
//! Everything is read-only except plain files directly in `logs/`, which are
//! reached with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` and capped in size and count.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::fcntl::{
    openat, openat2, readlinkat, renameat2, OFlag, OpenHow, RenameFlags, ResolveFlag,
};
pub use nix::sys::stat::FileStat;
use nix::sys::stat::{fstat, fstatat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::chroot::LOGS_DIR;

/// Longest client path accepted, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("no such file")]
    NotFound,
    /// The operation is not allowed; the text says why (it is logged and sent).
    #[error("{0}")]
    Denied(String),
    /// A cap on `logs/` was reached.
    #[error("{0}")]
    Cap(String),
    #[error("invalid path: {0}")]
    InvalidPath(&'static str),
    #[error("{0}")]
    Io(io::Error),
}

impl From<Errno> for JailError {
    fn from(e: Errno) -> Self {
        match e {
            Errno::ENOENT | Errno::ENOTDIR => JailError::NotFound,
            // RESOLVE_NO_SYMLINKS / RESOLVE_NO_XDEV / a path that escaped (cannot
            // happen with RESOLVE_IN_ROOT, but the kernel's answer is final).
            Errno::ELOOP => JailError::Denied("symbolic links are not followed here".into()),
            Errno::EXDEV => JailError::Denied("path leaves the host's directory".into()),
            Errno::EACCES | Errno::EPERM => JailError::Denied("permission denied".into()),
            e => JailError::Io(io::Error::from(e)),
        }
    }
}

/// A normalized path inside a host's root: no `.`, no `..`, no empty component.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct VPath(Vec<String>, bool);

impl VPath {
    /// Normalizes a client path. Relative paths are relative to the root (the
    /// session's working directory); `..` above the root stays at the root.
    pub fn parse(path: &str) -> Result<VPath, JailError> {
        if path.len() > MAX_PATH {
            return Err(JailError::InvalidPath("longer than 4096 bytes"));
        }
        if path.contains('\0') {
            return Err(JailError::InvalidPath("contains a NUL byte"));
        }
        let mut parts: Vec<String> = Vec::new();
        // `link/` and `link/.` name the directory a link points to, as in POSIX.
        let dir = path.ends_with('/') || path.ends_with("/.") || path == ".";
        for c in path.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                c => parts.push(c.to_owned()),
            }
        }
        Ok(VPath(parts, dir))
    }

    /// Whether the client wrote a trailing `/`: the last component is followed.
    pub fn names_a_directory(&self) -> bool {
        self.1
    }

    pub fn components(&self) -> &[String] {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The path relative to the root, `.` for the root itself.
    pub fn relative(&self) -> String {
        if self.0.is_empty() {
            ".".into()
        } else {
            self.0.join("/")
        }
    }

    /// The parent's path and the last component (`None` for the root).
    pub fn split_last(&self) -> Option<(VPath, &str)> {
        let (last, parent) = self.0.split_last()?;
        Some((VPath(parent.to_vec(), true), last))
    }

    /// The file name when this path is a file directly in `logs/`.
    pub fn log_name(&self) -> Option<&str> {
        match self.0.as_slice() {
            [dir, name] if dir == LOGS_DIR => Some(name),
            _ => None,
        }
    }
}

impl fmt::Display for VPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("/");
        }
        for c in &self.0 {
            write!(f, "/{c}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for VPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

/// `fstat` of an open file.
pub fn fstat_file(f: &File) -> io::Result<FileStat> {
    fstat(f).map_err(io::Error::from)
}

/// Caps on what a host may put in its `logs/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// Largest file, in bytes.
    pub max_bytes: u64,
    /// Most entries in `logs/`.
    pub max_files: usize,
    /// Most bytes in `logs/`, all files together.
    pub max_total_bytes: u64,
    /// Free bytes the file system keeps for publication: an upload that would
    /// bring the free space under this is refused (0: no reserve). Hosts' logs
    /// never take the room `bento deploy` needs.
    pub min_free_bytes: u64,
}

/// What a host's `logs/` holds, shared by every session of that host: the count
/// and byte caps are checked and updated under its lock, so parallel uploads
/// cannot pass them together.
#[derive(Debug, Default)]
pub struct LogQuota {
    /// Bytes in `logs/`: counted again at every open, kept up to date by writes
    /// and removals in between (files removed by others only make it larger
    /// than true until the next open).
    used: Mutex<Option<u64>>,
}

impl LogQuota {
    fn lock(&self) -> MutexGuard<'_, Option<u64>> {
        self.used.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A directory being listed: entries are read from the kernel a batch at a
/// time, so an open listing costs two descriptors and libc's buffer, whatever
/// the directory holds.
pub struct DirReader {
    iter: nix::dir::OwningIter,
    /// The same directory, for `fstatat` (the iterator lends out no descriptor).
    fd: OwnedFd,
    /// `.` and `..` come first, with the directory's own stat.
    dots: Option<FileStat>,
}

impl DirReader {
    /// Up to `max` more entries (fewer only at the end), each with its `lstat`.
    pub fn next_batch(&mut self, max: usize) -> Result<Vec<Entry>, JailError> {
        let mut out = Vec::new();
        if let Some(own) = self.dots.take() {
            for name in [".", ".."] {
                out.push(Entry {
                    name: name.into(),
                    stat: own,
                });
            }
        }
        let mut names = Vec::new();
        while out.len() + names.len() < max {
            let Some(ent) = self.iter.next() else { break };
            let ent = ent?;
            let name = ent.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            // SFTP v3 names are UTF-8 here; release files always are.
            if let Ok(name) = std::str::from_utf8(name) {
                names.push(name.to_owned());
            }
        }
        for name in names {
            match fstatat(
                &self.fd,
                name.as_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(stat) => out.push(Entry { name, stat }),
                Err(Errno::ENOENT) => {} // removed meanwhile
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }
}

/// How a file in `logs/` is opened for writing.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteMode {
    pub create: bool,
    pub truncate: bool,
    pub exclusive: bool,
    pub append: bool,
}

/// A directory entry with its `lstat`.
pub struct Entry {
    pub name: String,
    pub stat: FileStat,
}

/// One host's root directory, held open: renaming or replacing the path afterwards
/// does not move the session elsewhere.
pub struct Jail {
    root: OwnedFd,
    limits: LogLimits,
    quota: Arc<LogQuota>,
}

fn in_root() -> ResolveFlag {
    ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS | ResolveFlag::RESOLVE_NO_XDEV
}

fn beneath_no_links() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH
        | ResolveFlag::RESOLVE_NO_SYMLINKS
        | ResolveFlag::RESOLVE_NO_MAGICLINKS
        | ResolveFlag::RESOLVE_NO_XDEV
}

fn is_kind(st: &FileStat, kind: SFlag) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == kind
}

impl Jail {
    /// Opens `dir` as a host's root, with a quota of its own.
    pub fn open(dir: &Path, limits: LogLimits) -> io::Result<Jail> {
        Jail::open_with_quota(dir, limits, Arc::default())
    }

    /// Opens `dir` as a host's root; `quota` is the one every session of the
    /// host shares.
    pub fn open_with_quota(
        dir: &Path,
        limits: LogLimits,
        quota: Arc<LogQuota>,
    ) -> io::Result<Jail> {
        let root = nix::fcntl::open(
            dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io::Error::from)?;
        Ok(Jail {
            root,
            limits,
            quota,
        })
    }

    fn resolve(&self, p: &VPath, flags: OFlag) -> Result<OwnedFd, JailError> {
        // openat2 refuses O_PATH with flags that have no meaning for it.
        let extra = if flags.contains(OFlag::O_PATH) {
            OFlag::O_CLOEXEC
        } else {
            OFlag::O_CLOEXEC | OFlag::O_NOCTTY
        };
        let how = OpenHow::new().flags(flags | extra).resolve(in_root());
        Ok(openat2(self.root.as_fd(), p.relative().as_str(), how)?)
    }

    /// `stat`, following symlinks (inside the root).
    pub fn stat(&self, p: &VPath) -> Result<FileStat, JailError> {
        let fd = self.resolve(p, OFlag::O_PATH)?;
        Ok(fstat(&fd)?)
    }

    /// `lstat`: the last component is not followed.
    pub fn lstat(&self, p: &VPath) -> Result<FileStat, JailError> {
        if p.names_a_directory() {
            return self.stat(p);
        }
        let Some((parent, name)) = p.split_last() else {
            return self.stat(p);
        };
        let dir = self.resolve(&parent, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
        Ok(fstatat(
            &dir,
            name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )?)
    }

    /// The target of a symlink, as stored (it is only text to the client).
    pub fn readlink(&self, p: &VPath) -> Result<String, JailError> {
        let Some((parent, name)) = p.split_last() else {
            return Err(JailError::Denied("the root is not a symbolic link".into()));
        };
        let dir = self.resolve(&parent, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
        let t = readlinkat(&dir, name).map_err(|e| match e {
            Errno::EINVAL => JailError::Denied("not a symbolic link".into()),
            e => e.into(),
        })?;
        Ok(t.to_string_lossy().into_owned())
    }

    /// Opens a regular file for reading.
    pub fn open_read(&self, p: &VPath) -> Result<File, JailError> {
        // O_NONBLOCK: a FIFO must not hang the session; it is refused below.
        let fd = self.resolve(p, OFlag::O_RDONLY | OFlag::O_NONBLOCK)?;
        let st = fstat(&fd)?;
        if !is_kind(&st, SFlag::S_IFREG) {
            return Err(JailError::Denied("not a regular file".into()));
        }
        Ok(File::from(fd))
    }

    /// Opens a directory for listing with [`DirReader::next_batch`].
    pub fn open_dir(&self, p: &VPath) -> Result<DirReader, JailError> {
        let fd = self.resolve(p, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        let own = fstat(&fd)?;
        let dup = fd.try_clone().map_err(JailError::Io)?;
        Ok(DirReader {
            iter: nix::dir::Dir::from_fd(dup)?.into_iter(),
            fd,
            dots: Some(own),
        })
    }

    /// The entries of a directory (`.` and `..` first), each with its `lstat`.
    pub fn read_dir(&self, p: &VPath) -> Result<Vec<Entry>, JailError> {
        let mut dir = self.open_dir(p)?;
        let mut out = Vec::new();
        loop {
            let batch = dir.next_batch(1024)?;
            if batch.is_empty() {
                return Ok(out);
            }
            out.extend(batch);
        }
    }

    fn logs_dir(&self) -> Result<OwnedFd, JailError> {
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(beneath_no_links());
        openat2(self.root.as_fd(), LOGS_DIR, how).map_err(|e| match e {
            Errno::ENOENT => JailError::Denied("the host has no logs/ directory".into()),
            Errno::ELOOP | Errno::EXDEV => {
                JailError::Denied("logs/ is a symbolic link: uploads refused".into())
            }
            e => e.into(),
        })
    }

    fn log_name<'a>(&self, p: &'a VPath) -> Result<&'a str, JailError> {
        p.log_name().ok_or_else(|| {
            JailError::Denied("read-only: only files directly in logs/ may be written".into())
        })
    }

    /// How many entries `logs/` holds and their bytes together.
    fn scan_logs(&self, logs: &OwnedFd) -> Result<(usize, u64), JailError> {
        let fd = openat(
            logs,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let mut dir = nix::dir::Dir::from_fd(fd)?.into_iter();
        let (mut n, mut bytes) = (0, 0u64);
        let names: Vec<_> = dir
            .by_ref()
            .filter_map(Result::ok)
            .filter(|e| !matches!(e.file_name().to_bytes(), b"." | b".."))
            .map(|e| e.file_name().to_owned())
            .collect();
        for name in names {
            n += 1;
            if let Ok(st) = fstatat(
                logs,
                name.as_c_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                bytes = bytes.saturating_add(st.st_size.max(0) as u64);
            }
        }
        Ok((n, bytes))
    }

    fn quota_cap(&self) -> JailError {
        JailError::Cap(format!(
            "logs/ may hold at most {} bytes in all (max_log_bytes_total)",
            self.limits.max_total_bytes
        ))
    }

    /// Opens (or creates) a file in `logs/` for writing.
    pub fn open_log(&self, p: &VPath, mode: WriteMode) -> Result<File, JailError> {
        let name = self.log_name(p)?;
        let logs = self.logs_dir()?;
        let mut used = self.quota.lock();
        let old_size = match fstatat(&logs, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if is_kind(&st, SFlag::S_IFREG) => Some(st.st_size.max(0) as u64),
            Ok(_) => return Err(JailError::Denied("not a regular file".into())),
            Err(Errno::ENOENT) => None,
            Err(e) => return Err(e.into()),
        };
        let (n, mut bytes) = self.scan_logs(&logs)?;
        *used = Some(bytes);
        if old_size.is_none() {
            if !mode.create {
                return Err(JailError::NotFound);
            }
            if n >= self.limits.max_files {
                return Err(JailError::Cap(format!(
                    "logs/ already holds {n} files, the most allowed ({})",
                    self.limits.max_files
                )));
            }
            if bytes >= self.limits.max_total_bytes {
                return Err(self.quota_cap());
            }
        }
        let mut flags = OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        if mode.create {
            flags |= OFlag::O_CREAT;
        }
        if mode.truncate {
            flags |= OFlag::O_TRUNC;
        }
        if mode.exclusive {
            flags |= OFlag::O_EXCL;
        }
        if mode.append {
            flags |= OFlag::O_APPEND;
        }
        let fd = openat(&logs, name, flags, Mode::from_bits_truncate(0o644))?;
        let st = fstat(&fd)?;
        if !is_kind(&st, SFlag::S_IFREG) {
            return Err(JailError::Denied("not a regular file".into()));
        }
        if let (Some(old), true) = (old_size, mode.truncate) {
            bytes = bytes.saturating_sub(old);
            *used = Some(bytes);
        }
        Ok(File::from(fd))
    }

    /// Whether a write of `len` bytes at `offset` stays under the size cap.
    pub fn check_write(&self, offset: u64, len: u64) -> Result<(), JailError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.limits.max_bytes => Ok(()),
            _ => Err(JailError::Cap(format!(
                "a file in logs/ may hold at most {} bytes",
                self.limits.max_bytes
            ))),
        }
    }

    /// Writes `data` at `offset` into a file of [`Jail::open_log`], under the size
    /// cap. The bound counts from the file's current end when that is further (a
    /// file opened for appending writes there, whatever the offset says).
    ///
    /// The host's byte quota is checked and counted under its lock, with the
    /// write itself, so parallel uploads cannot pass it together. With
    /// `keep_reserve`, a write that grows the file is refused when the file
    /// system would keep less than `min_free_bytes` free (the heartbeat, one
    /// small file rewritten at every poll, is written without it).
    pub fn write_log(
        &self,
        f: &File,
        offset: u64,
        data: &[u8],
        keep_reserve: bool,
    ) -> Result<(), JailError> {
        use std::os::unix::fs::FileExt;
        let mut used = self.quota.lock();
        let size = fstat(f)?.st_size.max(0) as u64;
        self.check_write(offset.max(size), data.len() as u64)?;
        let current = match *used {
            Some(b) => b,
            None => self.scan_logs(&self.logs_dir()?)?.1,
        };
        let growth = offset.max(size).saturating_add(data.len() as u64) - size;
        if current.saturating_add(growth) > self.limits.max_total_bytes {
            return Err(self.quota_cap());
        }
        if keep_reserve && growth > 0 && self.limits.min_free_bytes > 0 {
            let vfs = nix::sys::statvfs::fstatvfs(f)?;
            let free = (vfs.blocks_available() as u64).saturating_mul(vfs.fragment_size() as u64);
            if free < self.limits.min_free_bytes.saturating_add(growth) {
                return Err(JailError::Cap(format!(
                    "the server keeps {} bytes of its disk free for publication (min_free_bytes)",
                    self.limits.min_free_bytes
                )));
            }
        }
        let written = f.write_all_at(data, offset).map_err(JailError::Io);
        let after = fstat(f).map(|st| st.st_size.max(0) as u64).unwrap_or(size);
        *used = Some((current + after).saturating_sub(size));
        written
    }

    /// Removes a file from `logs/`.
    pub fn remove_log(&self, p: &VPath) -> Result<(), JailError> {
        let name = self.log_name(p)?;
        let logs = self.logs_dir()?;
        let mut used = self.quota.lock();
        let size = fstatat(&logs, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            .map(|st| st.st_size.max(0) as u64)
            .unwrap_or(0);
        unlinkat(&logs, name, UnlinkatFlags::NoRemoveDir)?;
        if let Some(b) = used.as_mut() {
            *b = b.saturating_sub(size);
        }
        Ok(())
    }

    /// Renames a file inside `logs/`; `replace` as POSIX `rename`, else the target
    /// must not exist (SFTP v3).
    pub fn rename_log(&self, from: &VPath, to: &VPath, replace: bool) -> Result<(), JailError> {
        let a = self.log_name(from)?;
        let b = self.log_name(to)?;
        let logs = self.logs_dir()?;
        let st = fstatat(&logs, a, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)?;
        if !is_kind(&st, SFlag::S_IFREG) {
            return Err(JailError::Denied("only regular files are renamed".into()));
        }
        let flags = if replace {
            RenameFlags::empty()
        } else {
            RenameFlags::RENAME_NOREPLACE
        };
        let mut used = self.quota.lock();
        let replaced = fstatat(&logs, b, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            .map(|st| st.st_size.max(0) as u64)
            .unwrap_or(0);
        renameat2(&logs, a, &logs, b, flags).map_err(|e| match e {
            Errno::EEXIST => JailError::Denied("the target exists".into()),
            e => e.into(),
        })?;
        if let Some(u) = used.as_mut() {
            *u = u.saturating_sub(replaced);
        }
        Ok(())
    }
}

/// The confinement property, for the fuzz target (`fuzz/`) and a unit test: whatever
/// path or operation a client sends, every file it gets a descriptor for lies inside
/// its root, and it writes only directly in `logs/`.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    /// Two hosts side by side and a secret beside them, with every kind of link
    /// out of host `a` planted in its tree.
    pub struct Tree {
        _dir: tempfile::TempDir,
        /// `a`'s root, canonical.
        pub root: PathBuf,
        pub jail: Jail,
    }

    impl Default for Tree {
        fn default() -> Self {
            Self::new()
        }
    }

    impl Tree {
        pub fn new() -> Tree {
            let dir = tempfile::tempdir().expect("tempdir");
            let base = dir.path().canonicalize().expect("canonical");
            let a = base.join("a");
            for d in ["a/logs", "a/.releases/r1/sub", "b/logs"] {
                std::fs::create_dir_all(base.join(d)).expect("mkdir");
            }
            std::fs::write(a.join(".releases/r1/file"), "a").expect("write");
            std::fs::write(base.join("b/secret"), "b").expect("write");
            std::fs::write(base.join("secret"), "outside").expect("write");
            let links: [(&str, PathBuf); 8] = [
                ("a/.releases/current", "r1".into()),
                ("a/config", ".releases/current".into()),
                ("a/.releases/r1/up", "../../../b/secret".into()),
                ("a/.releases/r1/abs", base.join("b/secret")),
                ("a/.releases/r1/sub/loop", "../sub/loop".into()),
                ("a/.releases/r1/root", "/".into()),
                ("a/logs/out", base.join("b/logs")),
                ("a/logs/dotdot", "..".into()),
            ];
            for (l, t) in links {
                symlink(t, base.join(l)).expect("symlink");
            }
            let jail = Jail::open(
                &a,
                LogLimits {
                    max_bytes: 1024,
                    max_files: 64,
                    max_total_bytes: 1 << 20,
                    min_free_bytes: 0,
                },
            )
            .expect("jail");
            Tree {
                _dir: dir,
                root: a,
                jail,
            }
        }

        fn assert_inside(&self, f: &impl AsRawFd, what: &str) {
            let real =
                std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())).expect("fd path");
            assert!(
                real.starts_with(&self.root),
                "{what} reached {} outside {}",
                real.display(),
                self.root.display()
            );
        }

        /// One client request: the first byte picks the operation, the rest is
        /// the path (a second path after a NUL for renames).
        pub fn check(&self, data: &[u8]) {
            let Some((&op, rest)) = data.split_first() else {
                return;
            };
            let text = String::from_utf8_lossy(rest);
            let (first, second) = text.split_once('\0').unwrap_or((&text, "logs/x"));
            let Ok(p) = VPath::parse(first) else {
                return;
            };
            // The lexical invariants.
            assert!(p
                .components()
                .iter()
                .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('/')));
            // Printing adds a leading `/`: a path at the length limit may not
            // parse again, which is fine (it is only ever printed).
            if p.to_string().len() <= MAX_PATH {
                assert_eq!(
                    VPath::parse(&p.to_string())
                        .map(|q| q.components().to_vec())
                        .ok(),
                    Some(p.components().to_vec())
                );
            }
            match op % 7 {
                0 => {
                    if let Ok(f) = self.jail.open_read(&p) {
                        self.assert_inside(&f, "open_read");
                    }
                }
                1 => {
                    let _ = self.jail.stat(&p);
                    let _ = self.jail.lstat(&p);
                    let _ = self.jail.readlink(&p);
                }
                2 => {
                    if let Ok(entries) = self.jail.read_dir(&p) {
                        assert!(entries.iter().all(|e| !e.name.contains('/')));
                    }
                }
                3 | 4 => {
                    let mode = WriteMode {
                        create: true,
                        truncate: op % 2 == 0,
                        ..Default::default()
                    };
                    if let Ok(f) = self.jail.open_log(&p, mode) {
                        self.assert_inside(&f, "open_log");
                        let real = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))
                            .expect("fd path");
                        assert_eq!(real.parent(), Some(self.root.join("logs").as_path()));
                        drop(f);
                        let _ = self.jail.remove_log(&p);
                    }
                }
                5 => {
                    if let Ok(q) = VPath::parse(second) {
                        if self.jail.rename_log(&p, &q, op % 2 == 1).is_ok() {
                            assert!(p.log_name().is_some() && q.log_name().is_some());
                            let _ = self.jail.rename_log(&q, &p, true);
                        }
                    }
                }
                _ => {
                    if self.jail.remove_log(&p).is_ok() {
                        assert!(p.log_name().is_some());
                    }
                }
            }
            // Nothing outside `a` was touched, and `a`'s own tree is intact.
            assert!(self.root.join("config/file").exists());
            assert!(!self
                .root
                .parent()
                .unwrap()
                .join("b/logs")
                .read_dir()
                .unwrap()
                .any(|_| true));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::symlink;

    fn limits() -> LogLimits {
        LogLimits {
            max_bytes: 100,
            max_files: 3,
            max_total_bytes: 250,
            min_free_bytes: 0,
        }
    }

    #[test]
    fn parse_stays_at_root() {
        for (input, want) in [
            ("", "/"),
            (".", "/"),
            ("/", "/"),
            ("..", "/"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("config/../../other/logs", "/other/logs"),
            ("a//b/./c/", "/a/b/c"),
            ("logs/x", "/logs/x"),
        ] {
            assert_eq!(VPath::parse(input).unwrap().to_string(), want, "{input}");
        }
        assert!(VPath::parse("a\0b").is_err());
        assert!(VPath::parse(&"a/".repeat(3000)).is_err());
        assert_eq!(VPath::parse("/logs/x").unwrap().log_name(), Some("x"));
        assert_eq!(VPath::parse("/logs/../x").unwrap().log_name(), None);
        assert_eq!(VPath::parse("/logs/a/b").unwrap().log_name(), None);
    }

    /// `<tmp>/a` is a host, `<tmp>/b` another one, `<tmp>/secret` outside both.
    fn tree() -> (tempfile::TempDir, Jail) {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        std::fs::create_dir_all(a.join("logs")).unwrap();
        std::fs::create_dir_all(a.join("rel")).unwrap();
        std::fs::write(a.join("rel/file"), "mine").unwrap();
        std::fs::create_dir_all(t.path().join("b/logs")).unwrap();
        std::fs::write(t.path().join("b/file"), "other host").unwrap();
        std::fs::write(t.path().join("secret"), "secret").unwrap();
        symlink("rel", a.join("config")).unwrap();
        symlink("../b/file", a.join("rel/up")).unwrap();
        symlink(t.path().join("secret"), a.join("rel/abs")).unwrap();
        symlink("/file", a.join("rel/rootabs")).unwrap();
        let jail = Jail::open(&a, limits()).unwrap();
        (t, jail)
    }

    fn read(j: &Jail, p: &str) -> Result<String, JailError> {
        let mut s = String::new();
        j.open_read(&VPath::parse(p).unwrap())?
            .read_to_string(&mut s)
            .unwrap();
        Ok(s)
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let (_t, j) = tree();
        assert_eq!(read(&j, "config/file").unwrap(), "mine");
        assert!(matches!(read(&j, "config/up"), Err(JailError::NotFound)));
        assert!(matches!(read(&j, "config/abs"), Err(JailError::NotFound)));
        // An absolute link means the host's own root.
        std::fs::write(_t.path().join("a/file"), "root file").unwrap();
        assert_eq!(read(&j, "config/rootabs").unwrap(), "root file");
        assert!(matches!(read(&j, "../b/file"), Err(JailError::NotFound)));
        let p = |s: &str| VPath::parse(s).unwrap();
        assert_eq!(j.readlink(&p("config")).unwrap(), "rel");
        assert!(is_kind(&j.lstat(&p("config")).unwrap(), SFlag::S_IFLNK));
        assert!(is_kind(&j.lstat(&p("config/")).unwrap(), SFlag::S_IFDIR));
        assert!(is_kind(&j.stat(&p("config")).unwrap(), SFlag::S_IFDIR));
        assert!(matches!(j.stat(&p("config/abs")), Err(JailError::NotFound)));
    }

    #[test]
    fn the_root_moving_does_not_move_the_session() {
        let (t, j) = tree();
        std::fs::rename(t.path().join("a"), t.path().join("moved")).unwrap();
        std::fs::create_dir(t.path().join("a")).unwrap();
        std::fs::write(t.path().join("a/file"), "impostor").unwrap();
        assert_eq!(read(&j, "config/file").unwrap(), "mine");
        assert!(matches!(read(&j, "file"), Err(JailError::NotFound)));
    }

    #[test]
    fn writes_only_in_logs_and_capped() {
        let (t, j) = tree();
        let w = WriteMode {
            create: true,
            truncate: true,
            ..Default::default()
        };
        let p = |s: &str| VPath::parse(s).unwrap();
        assert!(matches!(
            j.open_log(&p("rel/new"), w),
            Err(JailError::Denied(_))
        ));
        assert!(matches!(
            j.open_log(&p("config/file"), w),
            Err(JailError::Denied(_))
        ));
        assert!(matches!(
            j.remove_log(&p("rel/file")),
            Err(JailError::Denied(_))
        ));
        j.open_log(&p("logs/one"), w)
            .unwrap()
            .write_all(b"x")
            .unwrap();
        j.rename_log(&p("logs/one"), &p("logs/two"), false).unwrap();
        j.open_log(&p("logs/one"), w).unwrap();
        assert!(matches!(
            j.rename_log(&p("logs/one"), &p("logs/two"), false),
            Err(JailError::Denied(_))
        ));
        j.rename_log(&p("logs/one"), &p("logs/two"), true).unwrap();
        assert!(matches!(
            j.rename_log(&p("logs/two"), &p("rel/two"), true),
            Err(JailError::Denied(_))
        ));
        j.open_log(&p("logs/2"), w).unwrap();
        j.open_log(&p("logs/3"), w).unwrap();
        assert!(matches!(
            j.open_log(&p("logs/4"), w),
            Err(JailError::Cap(_))
        ));
        assert!(j.check_write(90, 10).is_ok());
        assert!(matches!(j.check_write(90, 11), Err(JailError::Cap(_))));
        assert!(matches!(j.check_write(u64::MAX, 1), Err(JailError::Cap(_))));
        // Appending at a stale offset still counts from the end of the file.
        let append = WriteMode {
            create: true,
            append: true,
            ..Default::default()
        };
        let f = j.open_log(&p("logs/2"), append).unwrap();
        for _ in 0..2 {
            j.write_log(&f, 0, &[b'x'; 40], true).unwrap();
        }
        assert!(matches!(
            j.write_log(&f, 0, &[b'x'; 40], true),
            Err(JailError::Cap(_))
        ));
        assert_eq!(
            std::fs::metadata(t.path().join("a/logs/2")).unwrap().len(),
            80
        );
        // A symlink planted in logs/ is neither written through nor followed.
        symlink(t.path().join("b/logs"), t.path().join("a/logs/evil")).unwrap();
        std::fs::remove_file(t.path().join("a/logs/3")).unwrap();
        assert!(j.open_log(&p("logs/evil"), w).is_err());
        // logs/ itself replaced by a link to another host's logs.
        std::fs::rename(t.path().join("a/logs"), t.path().join("a/oldlogs")).unwrap();
        symlink(t.path().join("b/logs"), t.path().join("a/logs")).unwrap();
        assert!(matches!(
            j.open_log(&p("logs/x"), w),
            Err(JailError::Denied(_))
        ));
        assert!(!t.path().join("b/logs/x").exists());
    }

    #[test]
    fn uploads_keep_the_disk_reserve_and_heartbeats_pass_it() {
        let (t, _) = tree();
        // A reserve larger than any disk: every growing upload is refused.
        let limits = LogLimits {
            max_bytes: 100,
            max_files: 8,
            max_total_bytes: 250,
            min_free_bytes: u64::MAX / 4,
        };
        let j = Jail::open(&t.path().join("a"), limits).unwrap();
        let p = |s: &str| VPath::parse(s).unwrap();
        let w = WriteMode {
            create: true,
            truncate: true,
            ..Default::default()
        };
        let f = j.open_log(&p("logs/report"), w).unwrap();
        match j.write_log(&f, 0, b"data", true) {
            Err(JailError::Cap(why)) => assert!(why.contains("min_free_bytes"), "{why}"),
            other => panic!("{other:?}"),
        }
        // Written without the reserve (the heartbeat), the same write passes.
        let hb = j.open_log(&p("logs/heartbeat.json"), w).unwrap();
        j.write_log(&hb, 0, b"{}", false).unwrap();
    }

    #[test]
    fn the_byte_quota_holds_over_all_files_and_parallel_sessions() {
        let (t, _) = tree();
        let quota = Arc::new(LogQuota::default());
        let limits = LogLimits {
            max_bytes: 100,
            max_files: 8,
            max_total_bytes: 250,
            min_free_bytes: 0,
        };
        let a = t.path().join("a");
        let w = WriteMode {
            create: true,
            truncate: true,
            ..Default::default()
        };
        // Twelve sessions of one host upload at once: never more than the caps.
        std::thread::scope(|s| {
            for i in 0..12 {
                let (a, quota) = (&a, quota.clone());
                s.spawn(move || {
                    let j = Jail::open_with_quota(a, limits, quota).unwrap();
                    let p = VPath::parse(&format!("logs/r{i}")).unwrap();
                    if let Ok(f) = j.open_log(&p, w) {
                        for k in 0..10 {
                            if j.write_log(&f, k * 10, &[b'x'; 10], true).is_err() {
                                break;
                            }
                        }
                    }
                });
            }
        });
        let files: Vec<_> = std::fs::read_dir(a.join("logs"))
            .unwrap()
            .flatten()
            .collect();
        let total: u64 = files.iter().map(|e| e.metadata().unwrap().len()).sum();
        assert!(files.len() <= 8, "{} files", files.len());
        assert!(total <= 250, "{total} bytes");
        // Removing a file gives its bytes back.
        let j = Jail::open_with_quota(&a, limits, quota.clone()).unwrap();
        for e in &files {
            let p = VPath::parse(&format!("logs/{}", e.file_name().to_str().unwrap())).unwrap();
            j.remove_log(&p).unwrap();
        }
        let f = j.open_log(&VPath::parse("logs/new").unwrap(), w).unwrap();
        j.write_log(&f, 0, &[b'y'; 100], true).unwrap();
        let g = j.open_log(&VPath::parse("logs/new2").unwrap(), w).unwrap();
        j.write_log(&g, 0, &[b'y'; 100], true).unwrap();
        let h = j.open_log(&VPath::parse("logs/new3").unwrap(), w).unwrap();
        assert!(matches!(
            j.write_log(&h, 0, &[b'y'; 51], true),
            Err(JailError::Cap(_))
        ));
        j.write_log(&h, 0, &[b'y'; 50], true).unwrap();
    }

    /// The fuzz target's property over many generated paths (the fuzzer explores
    /// further: `cargo +nightly fuzz run jail_paths` in `fuzz/`).
    #[test]
    fn generated_paths_never_leave_the_root() {
        let tree = fuzzing::Tree::new();
        let parts = [
            "..",
            ".",
            "",
            "config",
            "logs",
            "out",
            "dotdot",
            "up",
            "abs",
            "root",
            "sub",
            "loop",
            "file",
            "b",
            "secret",
            ".releases",
            "current",
            "r1",
            "x",
            "/",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let n = next();
            let mut data = vec![(n % 7) as u8];
            let len = (n >> 8) % 8;
            for _ in 0..len {
                let i = (next() % parts.len() as u64) as usize;
                if next() % 2 == 0 {
                    data.push(b'/');
                }
                data.extend_from_slice(parts[i].as_bytes());
            }
            if n % 5 == 0 {
                data.push(0);
                data.extend_from_slice(b"logs/");
                data.extend_from_slice(parts[(n >> 20) as usize % parts.len()].as_bytes());
            }
            tree.check(&data);
        }
    }

    #[test]
    fn fifos_do_not_hang() {
        let (t, j) = tree();
        nix::unistd::mkfifo(
            &t.path().join("a/rel/fifo"),
            Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        assert!(matches!(read(&j, "rel/fifo"), Err(JailError::Denied(_))));
        let names: Vec<String> = j
            .read_dir(&VPath::parse("config").unwrap())
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert!(names.contains(&"file".to_string()) && names.contains(&"fifo".to_string()));
    }
}
