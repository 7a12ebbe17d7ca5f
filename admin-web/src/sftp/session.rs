//! One host's SFTP session: protocol version 3 as OpenSSH's `sftp-server` speaks it,
//! plus `posix-rename@openssh.com` and `limits@openssh.com`, over [`Jail`].

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bento_core::chroot::{watch_answer, CURRENT_LINK, RELEASES_DIR, WATCH_FILE, WATCH_HOLD};
use bento_core::jail::{fstat_file, DirReader, FileStat, Jail, JailError, VPath, WriteMode};
use bento_core::report::HEARTBEAT_FILE;
use bento_core::HostName;
use russh_sftp::protocol::{
    Attrs, Data, ExtendedReply, FileAttributes, Handle, Name, OpenFlags, Packet, Status,
    StatusCode, Version,
};
use russh_sftp::server::StatusReply;
use tracing::{debug, warn};

use super::limits::{FdBudget, FdPermit};
use super::watch::Publications;
use super::{HostShared, SessionPlace};

/// Largest SFTP packet a client may send: russh-sftp's own bound.
const MAX_PACKET: u32 = 256 * 1024;
/// Largest read answered (and write taken) at once: a packet's worth, less room
/// for its header, as OpenSSH's sftp-server does. Advertised by
/// `limits@openssh.com`, so clients ask for that much per request instead of a
/// conservative 20 KiB.
const MAX_READ: u32 = MAX_PACKET - 1024;
/// Open handles per session.
const MAX_HANDLES: usize = 64;
/// Entries per READDIR answer.
const DIR_BATCH: usize = 128;
const POSIX_RENAME: &str = "posix-rename@openssh.com";
const LIMITS: &str = russh_sftp::extensions::LIMITS;
/// How often a held watch looks at `current` when inotify cannot tell it.
const WATCH_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

enum Open {
    Read(File),
    /// The held watch: what its last read answered (`None` before the first).
    Watch(Option<Option<String>>),
    Write {
        file: File,
        path: VPath,
    },
    Dir(DirReader),
}

/// What bounds a session beyond itself: its host's handles over all its
/// sessions, the server's descriptors, and its place on its connection.
pub struct Bounds {
    pub host: Arc<HostShared>,
    pub max_handles_per_host: usize,
    pub fds: Arc<FdBudget>,
    /// `[sftp] keep_reports`.
    pub keep_reports: usize,
    pub publications: Arc<Publications>,
    /// Ends (its sender dropped) when the session's channel or connection
    /// does: a held watch read then stops waiting.
    pub closed: tokio::sync::watch::Receiver<()>,
    pub _place: SessionPlace,
}

/// One handle's share of the host's handles and the server's descriptors.
struct HandlePermit {
    host: Arc<HostShared>,
    _fds: FdPermit,
}

impl Drop for HandlePermit {
    fn drop(&mut self) {
        self.host.handles.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Slot {
    open: Open,
    _permit: HandlePermit,
}

pub struct SftpSession {
    host: HostName,
    jail: Jail,
    bounds: Bounds,
    handles: HashMap<String, Slot>,
    next_handle: u64,
    initialized: bool,
}

impl Drop for SftpSession {
    /// The session's listings and buffers are freed here, in the SFTP task,
    /// which may end after its connection did: the memory is given back to the
    /// system now, or the connection's own return would come too early for it.
    fn drop(&mut self) {
        self.handles = HashMap::new();
        super::return_freed_memory();
        debug!(target: "bento::sftp", host = %self.host, "SFTP session ended");
    }
}

fn ok(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Ok".into(),
        language_tag: "en-US".into(),
    }
}

fn attrs_of(st: &FileStat) -> FileAttributes {
    FileAttributes {
        size: Some(st.st_size as u64),
        uid: Some(st.st_uid),
        user: None,
        gid: Some(st.st_gid),
        group: None,
        permissions: Some(st.st_mode),
        atime: Some(st.st_atime.clamp(0, u32::MAX as i64) as u32),
        mtime: Some(st.st_mtime.clamp(0, u32::MAX as i64) as u32),
    }
}

/// `ls -l`'s line, as OpenSSH's server sends it.
fn long_name(name: &str, st: &FileStat) -> String {
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFREG => '-',
        libc::S_IFIFO => 'p',
        libc::S_IFSOCK => 's',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        _ => '?',
    };
    let mut perms = String::with_capacity(10);
    perms.push(kind);
    for shift in [6, 3, 0] {
        let bits = (st.st_mode >> shift) & 7;
        perms.push(if bits & 4 != 0 { 'r' } else { '-' });
        perms.push(if bits & 2 != 0 { 'w' } else { '-' });
        perms.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    let when = time::OffsetDateTime::from_unix_timestamp(st.st_mtime)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[month repr:short] [day padding:space] [hour]:[minute]"
            ))
            .ok()
        })
        .unwrap_or_default();
    format!(
        "{perms} {:>4} {:<8} {:<8} {:>8} {when} {name}",
        st.st_nlink, st.st_uid, st.st_gid, st.st_size
    )
}

/// Reads an SSH string (u32 length, bytes) from `data`.
fn ssh_string(data: &mut &[u8]) -> Option<String> {
    let (len, rest) = data.split_first_chunk::<4>()?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return None;
    }
    let (s, rest) = rest.split_at(len);
    *data = rest;
    String::from_utf8(s.to_vec()).ok()
}

impl SftpSession {
    pub fn new(host: HostName, jail: Jail, bounds: Bounds) -> Self {
        SftpSession {
            host,
            jail,
            bounds,
            handles: HashMap::new(),
            next_handle: 0,
            initialized: false,
        }
    }

    /// The reply to a failed operation; refusals are logged.
    fn fail(&self, op: &str, path: &str, e: JailError) -> StatusReply {
        match e {
            JailError::NotFound => {
                debug!(target: "bento::sftp", host = %self.host, op, path, "no such file");
                StatusCode::NoSuchFile.into()
            }
            JailError::Denied(why) => {
                warn!(target: "bento::sftp", host = %self.host, op, path, "refused: {why}");
                StatusCode::PermissionDenied.with_message(why)
            }
            JailError::Cap(why) => {
                warn!(target: "bento::sftp", host = %self.host, op, path, "refused: {why}");
                StatusCode::Failure.with_message(why)
            }
            JailError::InvalidPath(why) => {
                warn!(target: "bento::sftp", host = %self.host, op, "refused: invalid path ({why})");
                StatusCode::BadMessage.with_message(format!("invalid path: {why}"))
            }
            JailError::Io(e) => {
                warn!(target: "bento::sftp", host = %self.host, op, path, "failed: {e}");
                StatusCode::Failure.with_message("server error")
            }
        }
    }

    fn refuse(&self, op: &str, path: &str, why: &str) -> StatusReply {
        self.fail(op, path, JailError::Denied(why.into()))
    }

    fn path(&self, op: &str, p: &str) -> Result<VPath, StatusReply> {
        VPath::parse(p).map_err(|e| self.fail(op, p, e))
    }

    /// A place for one more handle of `fds` descriptors, before it is opened.
    fn handle_permit(&self, op: &str, path: &str, fds: usize) -> Result<HandlePermit, StatusReply> {
        if self.handles.len() >= MAX_HANDLES {
            return Err(self.fail(
                op,
                path,
                JailError::Cap(format!("at most {MAX_HANDLES} open handles per session")),
            ));
        }
        let host = &self.bounds.host;
        let max = self.bounds.max_handles_per_host;
        if host
            .handles
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            return Err(self.fail(
                op,
                path,
                JailError::Cap(format!(
                    "at most {max} open handles per host (max_handles_per_host)"
                )),
            ));
        }
        let permit = |fds| HandlePermit {
            host: host.clone(),
            _fds: fds,
        };
        match self.bounds.fds.take(fds) {
            Some(f) => Ok(permit(f)),
            None => {
                host.handles.fetch_sub(1, Ordering::AcqRel);
                Err(self.fail(
                    op,
                    path,
                    JailError::Cap("the server has no file descriptors left; try again".into()),
                ))
            }
        }
    }

    fn add_handle(&mut self, open: Open, permit: HandlePermit) -> String {
        self.next_handle += 1;
        let name = self.next_handle.to_string();
        self.handles.insert(
            name.clone(),
            Slot {
                open,
                _permit: permit,
            },
        );
        name
    }

    /// After a report landed at `p`: the oldest past `keep_reports` go.
    fn rotate_after(&self, p: &VPath) {
        if !p.log_name().is_some_and(super::rotate::is_report_file) {
            return;
        }
        let removed = super::rotate::rotate(&self.jail, self.bounds.keep_reports);
        if !removed.is_empty() {
            debug!(
                target: "bento::sftp", host = %self.host,
                "rotated {} old reports away (keep_reports = {}), oldest {}",
                removed.len(), self.bounds.keep_reports, removed[0]
            );
        }
    }

    /// What `current` points to now (`None`: nothing is published).
    fn current(&self) -> Result<Option<String>, StatusReply> {
        let p = self.path("readlink", &format!("{RELEASES_DIR}/{CURRENT_LINK}"))?;
        match self.jail.readlink(&p) {
            Ok(t) => Ok(Some(t)),
            Err(JailError::NotFound) => Ok(None),
            Err(e) => Err(self.fail("watch", WATCH_FILE, e)),
        }
    }

    /// A read of the held watch: at once the first time, then when `current`
    /// differs from the last answer, or after [`WATCH_HOLD`].
    async fn watch_read(
        &mut self,
        id: u32,
        handle: &str,
        last: Option<Option<String>>,
    ) -> Result<Data, StatusReply> {
        let mut sub = self.bounds.publications.subscribe(&self.host);
        let mut closed = self.bounds.closed.clone();
        let deadline = tokio::time::Instant::now() + WATCH_HOLD;
        let mut holding = false;
        let current = loop {
            let current = self.current()?;
            if last.as_ref() != Some(&current) || tokio::time::Instant::now() >= deadline {
                break current;
            }
            if !holding {
                holding = true;
                debug!(target: "bento::sftp", host = %self.host, "watch held");
            }
            let wake = if sub.told {
                deadline
            } else {
                deadline.min(tokio::time::Instant::now() + WATCH_RECHECK)
            };
            tokio::select! {
                r = sub.moved.changed(), if sub.told => {
                    if r.is_err() {
                        // The server's watcher is gone: look again now and then.
                        sub.told = false;
                    }
                }
                () = tokio::time::sleep_until(wake) => {}
                // Nobody is left to answer: the session's task and its
                // descriptors are freed now, not at the end of the hold.
                _ = closed.changed() => {
                    return Err(StatusCode::ConnectionLost.with_message("the session ended"));
                }
            }
        };
        let data = watch_answer(current.as_deref());
        if let Some(Slot {
            open: Open::Watch(last),
            ..
        }) = self.handles.get_mut(handle)
        {
            *last = Some(current);
        }
        Ok(Data { id, data })
    }

    fn bad_handle() -> StatusReply {
        StatusCode::Failure.with_message("invalid handle")
    }

    fn do_rename(
        &mut self,
        id: u32,
        old: &str,
        new: &str,
        replace: bool,
    ) -> Result<Status, StatusReply> {
        let a = self.path("rename", old)?;
        let b = self.path("rename", new)?;
        self.jail
            .rename_log(&a, &b, replace)
            .map_err(|e| self.fail("rename", &format!("{a} -> {b}"), e))?;
        self.rotate_after(&b);
        Ok(ok(id))
    }
}

impl russh_sftp::server::Handler for SftpSession {
    type Error = StatusReply;

    fn unimplemented(&self) -> Self::Error {
        StatusCode::OpUnsupported.into()
    }

    async fn init(
        &mut self,
        _version: u32,
        _extensions: HashMap<String, String>,
    ) -> Result<Version, Self::Error> {
        if self.initialized {
            return Err(StatusCode::BadMessage.into());
        }
        self.initialized = true;
        let mut v = Version::new();
        v.extensions.insert(POSIX_RENAME.into(), "1".into());
        v.extensions.insert(LIMITS.into(), "1".into());
        Ok(v)
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        _attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        let p = self.path("open", &filename)?;
        let writing = pflags.intersects(
            OpenFlags::WRITE | OpenFlags::APPEND | OpenFlags::CREATE | OpenFlags::TRUNCATE,
        );
        if p.to_string().trim_start_matches('/') == WATCH_FILE {
            if writing {
                return Err(self.refuse("write", &filename, "the watch is read-only"));
            }
            let permit = self.handle_permit("open", &filename, 0)?;
            let handle = self.add_handle(Open::Watch(None), permit);
            return Ok(Handle { id, handle });
        }
        let permit = self.handle_permit("open", &filename, 1)?;
        let open = if writing {
            let mode = WriteMode {
                create: pflags.contains(OpenFlags::CREATE),
                truncate: pflags.contains(OpenFlags::TRUNCATE),
                exclusive: pflags.contains(OpenFlags::EXCLUDE),
                append: pflags.contains(OpenFlags::APPEND),
            };
            let file = self
                .jail
                .open_log(&p, mode)
                .map_err(|e| self.fail("write", &filename, e))?;
            Open::Write { file, path: p }
        } else {
            Open::Read(
                self.jail
                    .open_read(&p)
                    .map_err(|e| self.fail("read", &filename, e))?,
            )
        };
        let handle = self.add_handle(open, permit);
        Ok(Handle { id, handle })
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        match self.handles.remove(&handle) {
            Some(Slot {
                open: Open::Write { file, path },
                ..
            }) => {
                // A report written under its final name (the original shell client).
                drop(file);
                self.rotate_after(&path);
                Ok(ok(id))
            }
            Some(_) => Ok(ok(id)),
            None => Err(Self::bad_handle()),
        }
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, Self::Error> {
        let f = match self.handles.get(&handle) {
            Some(Slot {
                open: Open::Read(f),
                ..
            }) => f,
            Some(Slot {
                open: Open::Watch(last),
                ..
            }) => {
                let last = last.clone();
                return self.watch_read(id, &handle, last).await;
            }
            _ => return Err(Self::bad_handle()),
        };
        let mut buf = vec![0u8; len.min(MAX_READ) as usize];
        let mut n = 0;
        while n < buf.len() {
            match f.read_at(&mut buf[n..], offset + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.fail("read", &handle, JailError::Io(e))),
            }
        }
        if n == 0 && len > 0 {
            return Err(StatusCode::Eof.into());
        }
        buf.truncate(n);
        Ok(Data { id, data: buf })
    }

    async fn write(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Status, Self::Error> {
        let Some(Slot {
            open: Open::Write { file, path },
            ..
        }) = self.handles.get(&handle)
        else {
            return Err(Self::bad_handle());
        };
        let keep_reserve = path.log_name() != Some(HEARTBEAT_FILE);
        match self.jail.write_log(file, offset, &data, keep_reserve) {
            Ok(()) => Ok(ok(id)),
            Err(e @ JailError::Cap(_)) => {
                // A capped upload is removed: a truncated report would be misread.
                let path = path.clone();
                self.handles.remove(&handle);
                let _ = self.jail.remove_log(&path);
                Err(self.fail("write", &path.to_string(), e))
            }
            Err(JailError::Io(e))
                if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) =>
            {
                // The disk is full: the partial upload is removed, so it holds
                // no space and is never read as a report.
                let path = path.clone();
                self.handles.remove(&handle);
                let _ = self.jail.remove_log(&path);
                warn!(target: "bento::sftp", host = %self.host, path = %path, "upload refused: {e}; the partial file was removed");
                Err(StatusCode::Failure.with_message("no space left on the server"))
            }
            Err(e) => {
                let path = path.to_string();
                Err(self.fail("write", &path, e))
            }
        }
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let p = self.path("lstat", &path)?;
        let st = self
            .jail
            .lstat(&p)
            .map_err(|e| self.fail("lstat", &path, e))?;
        Ok(Attrs {
            id,
            attrs: attrs_of(&st),
        })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let p = self.path("stat", &path)?;
        let st = self
            .jail
            .stat(&p)
            .map_err(|e| self.fail("stat", &path, e))?;
        Ok(Attrs {
            id,
            attrs: attrs_of(&st),
        })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        let f = match self.handles.get(&handle).map(|s| &s.open) {
            Some(Open::Read(f)) | Some(Open::Write { file: f, .. }) => f,
            _ => return Err(Self::bad_handle()),
        };
        let st = fstat_file(f).map_err(|e| self.fail("fstat", &handle, JailError::Io(e)))?;
        Ok(Attrs {
            id,
            attrs: attrs_of(&st),
        })
    }

    async fn setstat(
        &mut self,
        _id: u32,
        path: String,
        _attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        Err(self.refuse("setstat", &path, "attributes are not changed here"))
    }

    async fn fsetstat(
        &mut self,
        _id: u32,
        handle: String,
        _attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        Err(self.refuse("fsetstat", &handle, "attributes are not changed here"))
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        let p = self.path("opendir", &path)?;
        // A listing holds the directory open (two descriptors) and reads it a
        // batch per READDIR: its memory does not grow with the directory.
        let permit = self.handle_permit("opendir", &path, 2)?;
        let dir = self
            .jail
            .open_dir(&p)
            .map_err(|e| self.fail("opendir", &path, e))?;
        let handle = self.add_handle(Open::Dir(dir), permit);
        Ok(Handle { id, handle })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        let Some(Slot {
            open: Open::Dir(dir),
            ..
        }) = self.handles.get_mut(&handle)
        else {
            return Err(Self::bad_handle());
        };
        let batch = dir.next_batch(DIR_BATCH);
        let files: Vec<_> = batch
            .map_err(|e| self.fail("readdir", &handle, e))?
            .into_iter()
            .map(|e| russh_sftp::protocol::File {
                longname: long_name(&e.name, &e.stat),
                attrs: attrs_of(&e.stat),
                filename: e.name,
            })
            .collect();
        if files.is_empty() {
            return Err(StatusCode::Eof.into());
        }
        Ok(Name { id, files })
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, Self::Error> {
        let p = self.path("remove", &filename)?;
        self.jail
            .remove_log(&p)
            .map_err(|e| self.fail("remove", &filename, e))?;
        Ok(ok(id))
    }

    async fn mkdir(
        &mut self,
        _id: u32,
        path: String,
        _attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        Err(self.refuse("mkdir", &path, "read-only: no directories are made here"))
    }

    async fn rmdir(&mut self, _id: u32, path: String) -> Result<Status, Self::Error> {
        Err(self.refuse("rmdir", &path, "read-only: no directories are removed here"))
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let p = self.path("realpath", &path)?;
        Ok(Name {
            id,
            files: vec![russh_sftp::protocol::File::dummy(p.to_string())],
        })
    }

    async fn rename(
        &mut self,
        id: u32,
        oldpath: String,
        newpath: String,
    ) -> Result<Status, Self::Error> {
        self.do_rename(id, &oldpath, &newpath, false)
    }

    async fn readlink(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let p = self.path("readlink", &path)?;
        let target = self
            .jail
            .readlink(&p)
            .map_err(|e| self.fail("readlink", &path, e))?;
        Ok(Name {
            id,
            files: vec![russh_sftp::protocol::File::dummy(target)],
        })
    }

    async fn symlink(
        &mut self,
        _id: u32,
        linkpath: String,
        _targetpath: String,
    ) -> Result<Status, Self::Error> {
        Err(self.refuse("symlink", &linkpath, "no symbolic links are made here"))
    }

    async fn extended(
        &mut self,
        id: u32,
        request: String,
        data: Vec<u8>,
    ) -> Result<Packet, Self::Error> {
        if request == LIMITS {
            return Ok(Packet::ExtendedReply(ExtendedReply {
                id,
                data: limits_reply(),
            }));
        }
        if request != POSIX_RENAME {
            debug!(target: "bento::sftp", host = %self.host, request, "unsupported extension");
            return Err(StatusCode::OpUnsupported.into());
        }
        let mut d = data.as_slice();
        let (Some(old), Some(new)) = (ssh_string(&mut d), ssh_string(&mut d)) else {
            return Err(StatusCode::BadMessage.into());
        };
        self.do_rename(id, &old, &new, true).map(Packet::Status)
    }
}

/// The answer to `limits@openssh.com`: four uint64s (packet, read, write,
/// handles), as OpenSSH's PROTOCOL file sets them out.
fn limits_reply() -> Vec<u8> {
    [
        u64::from(MAX_PACKET),
        u64::from(MAX_READ),
        u64::from(MAX_READ),
        MAX_HANDLES as u64,
    ]
    .iter()
    .flat_map(|v| v.to_be_bytes())
    .collect()
}
