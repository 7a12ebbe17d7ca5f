//! The server, over the system OpenSSH client speaking SFTP (`ssh ... -s sftp`), so
//! `~/.ssh/config`, `ProxyCommand`, `known_hosts`, VPNs and Tor all work. No shell
//! command ever runs on the server (it has none: `ForceCommand internal-sftp`).

use std::collections::HashSet;
use std::ffi::OsString;
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::stream::{FuturesOrdered, StreamExt};
use openssh_sftp_client::error::SftpErrorKind;
use openssh_sftp_client::file::File as SftpFile;
use openssh_sftp_client::{Error as SftpError, Sftp, SftpOptions};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::process::{Child, Command};

use bento_core::chroot::{parse_watch_answer, WATCH_FILE, WATCH_HOLD};

use crate::settings::Config;
use crate::wire::{Guarded, Violation};

/// The release bounds, shared with `bento deploy` (which refuses to publish past
/// them): bytes count as actually received, whatever the server's listing or
/// `fstat` says.
pub use bento_core::limits::{
    MAX_MANIFEST_BYTES, MAX_RELEASE_BYTES, MAX_RELEASE_DEPTH, MAX_RELEASE_ENTRIES, MAX_RELEASE_PATH,
};
/// Largest SFTP packet accepted from the server, as OpenSSH's own client
/// (`SFTP_MAX_MSG_LENGTH`): the SFTP library trusts packet lengths and element
/// counts, so they are checked on the wire before it reads them.
pub const MAX_PACKET: u32 = 256 * 1024;
/// One READ request. Servers that advertise less (`limits@openssh.com`) get
/// their own limit; the library shortens the reads. (255 KiB reads, as much as
/// the servers allow, made the agent's peak RSS exceed 32 MiB on a slow disk.)
const CHUNK: u32 = 64 * 1024;
/// READ requests in flight per file: a 1 MiB window keeps long links busy while
/// memory stays bounded.
const IN_FLIGHT: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("cannot connect to {target}: {reason}")]
    Connect { target: String, reason: String },
    #[error("the server did not answer within {secs}s ({what})")]
    Timeout { what: String, secs: u64 },
    #[error("{what} {path}: {message}")]
    Sftp {
        what: &'static str,
        path: String,
        message: String,
    },
    #[error("{0}")]
    Refused(String),
    #[error("{path}: {source}")]
    Local {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl RemoteError {
    fn sftp(what: &'static str, path: &str, e: SftpError) -> Self {
        let message = match &e {
            SftpError::SftpError(kind, msg) => format!("{kind:?}: {msg}"),
            other => other.to_string(),
        };
        RemoteError::Sftp {
            what,
            path: path.to_owned(),
            message,
        }
    }
}

fn not_found(e: &SftpError) -> bool {
    matches!(e, SftpError::SftpError(SftpErrorKind::NoSuchFile, _))
}

/// One SFTP session (one ssh process).
pub struct Remote {
    sftp: Option<Sftp>,
    child: Child,
    timeout: Duration,
    violation: Violation,
}

/// Longest answer of the held watch read: a revision is far shorter.
const WATCH_ANSWER_MAX: u32 = 512;

/// An open held watch of `bento sftp` ([`Remote::watch`]).
pub struct Watch {
    file: SftpFile,
}

/// What a recursive download fetched.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fetched {
    pub files: usize,
    pub bytes: u64,
}

/// The `ssh` argument list (after the program name) for an SFTP session. The admin's
/// options come first: ssh keeps the first value it sees for an option.
pub fn ssh_args(cfg: &Config) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    for o in &cfg.ssh_options {
        a.push("-o".into());
        a.push(o.into());
    }
    let secs = cfg.timeout.as_secs().max(1);
    for o in [
        "BatchMode=yes".to_owned(),
        format!("ConnectTimeout={secs}"),
        format!("ServerAliveInterval={}", secs.max(5)),
        "ServerAliveCountMax=3".to_owned(),
        // As sftp(1) does: an SFTP session never forwards anything.
        "ClearAllForwardings=yes".to_owned(),
        "ForwardAgent=no".to_owned(),
        "ForwardX11=no".to_owned(),
        "PermitLocalCommand=no".to_owned(),
    ] {
        a.push("-o".into());
        a.push(o.into());
    }
    if let Some(p) = cfg.port {
        a.push("-p".into());
        a.push(p.to_string().into());
    }
    if let Some(k) = &cfg.identity_file {
        a.push("-i".into());
        a.push(k.into());
    }
    a.push("-l".into());
    a.push((&cfg.user).into());
    // `--` keeps a server name from ever being read as an option.
    a.push("-s".into());
    a.push("--".into());
    a.push((&cfg.server).into());
    a.push("sftp".into());
    a
}

impl Remote {
    /// Starts `ssh -s sftp` and speaks SFTP over its stdio.
    pub async fn connect(cfg: &Config) -> Result<Remote, RemoteError> {
        let target = format!("{}@{}", cfg.user, cfg.server);
        let connect_err = |reason: String| RemoteError::Connect {
            target: target.clone(),
            reason,
        };
        let args = ssh_args(cfg);
        tracing::debug!(
            "running ssh {}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut child = Command::new("ssh")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| connect_err(format!("cannot start ssh: {e}")))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let mut err_pipe = child.stderr.take().expect("piped");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            while let Ok(n) = err_pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                if s.len() < 16 * 1024 {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        let options = SftpOptions::new().flush_interval(Duration::ZERO);
        let violation = Violation::default();
        let stdout = Guarded::new(stdout, MAX_PACKET, violation.clone());
        // The handshake may take ConnectTimeout plus authentication.
        let limit = cfg.timeout * 2 + Duration::from_secs(5);
        let sftp = match tokio::time::timeout(limit, Sftp::new(stdin, stdout, options)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                // Let ssh finish saying why before reading its stderr.
                let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
                let said = last_line(&stderr.lock().unwrap_or_else(|e| e.into_inner()));
                return Err(connect_err(said.unwrap_or_else(|| e.to_string())));
            }
            Err(_) => {
                let said = last_line(&stderr.lock().unwrap_or_else(|e| e.into_inner()));
                return Err(connect_err(said.unwrap_or_else(|| {
                    format!("no SFTP session within {}s", limit.as_secs())
                })));
            }
        };
        Ok(Remote {
            sftp: Some(sftp),
            child,
            timeout: cfg.timeout,
            violation,
        })
    }

    fn sftp(&self) -> &Sftp {
        self.sftp.as_ref().expect("open until close")
    }

    /// An SFTP failure; when the wire guard ended the session, what the server did.
    fn err(&self, what: &'static str, path: &str, e: SftpError) -> RemoteError {
        match self.violation.get() {
            Some(v) => RemoteError::Refused(format!("{what} {path}: {v}")),
            None => RemoteError::sftp(what, path, e),
        }
    }

    fn timeout_err(&self, what: String) -> RemoteError {
        RemoteError::Timeout {
            what,
            secs: self.timeout.as_secs(),
        }
    }

    async fn timed<T>(
        &self,
        what: &str,
        f: impl Future<Output = Result<T, RemoteError>>,
    ) -> Result<T, RemoteError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(RemoteError::Timeout {
                what: what.to_owned(),
                secs: self.timeout.as_secs(),
            }),
        }
    }

    /// The target of a symlink; `None` when it does not exist.
    pub async fn read_link(&self, path: &str) -> Result<Option<String>, RemoteError> {
        let mut fs = self.sftp().fs();
        self.timed(&format!("readlink {path}"), async {
            match fs.read_link(path).await {
                Ok(t) => Ok(Some(t.to_string_lossy().into_owned())),
                Err(e) if not_found(&e) => Ok(None),
                Err(e) => Err(RemoteError::sftp("readlink", path, e)),
            }
        })
        .await
    }

    /// A small file's content and mtime (unix seconds); `None` when it does not exist.
    pub async fn read_small(
        &self,
        path: &str,
        cap: u64,
    ) -> Result<Option<(Vec<u8>, u64)>, RemoteError> {
        let mut fs = self.sftp().fs();
        let mtime = self
            .timed(&format!("stat {path}"), async {
                let md = match fs.metadata(path).await {
                    Ok(m) => m,
                    Err(e) if not_found(&e) => return Ok(None),
                    Err(e) => return Err(RemoteError::sftp("stat", path, e)),
                };
                if md.len().unwrap_or(0) > cap {
                    return Err(RemoteError::Refused(format!(
                        "{path} is larger than {cap} bytes"
                    )));
                }
                Ok(Some(
                    md.modified()
                        .map(|t| t.as_duration().as_secs())
                        .unwrap_or(0),
                ))
            })
            .await?;
        let Some(mtime) = mtime else {
            return Ok(None);
        };
        let mut data = Vec::new();
        self.stream_file(path, 0, None, cap, |chunk| {
            data.extend_from_slice(chunk);
            Ok(())
        })
        .await?;
        Ok(Some((data, mtime)))
    }

    /// The whole of `path`, at most `cap` bytes (`None`: it does not exist), without
    /// a stat first: one round trip less than [`Remote::read_small`].
    pub async fn read_capped(&self, path: &str, cap: u64) -> Result<Option<Vec<u8>>, RemoteError> {
        let Some(file) = self.open_read(path).await? else {
            return Ok(None);
        };
        let mut data = Vec::new();
        self.stream_open(file, path, 0, None, cap, |chunk| {
            data.extend_from_slice(chunk);
            Ok(())
        })
        .await?;
        Ok(Some(data))
    }

    /// `bento sftp`'s held watch ([`WATCH_FILE`]); `None` from a server that has
    /// none (OpenSSH's), where the caller reads `current` itself.
    pub async fn watch(&self) -> Result<Option<Watch>, RemoteError> {
        Ok(self.open_read(WATCH_FILE).await?.map(|file| Watch { file }))
    }

    /// The next answer of a held watch: the published revision (`None`: nothing
    /// is), at once on the first call, then when it changes or after the hold.
    pub async fn watch_next(&self, w: &mut Watch) -> Result<Option<String>, RemoteError> {
        let wait = WATCH_HOLD + self.timeout;
        let answer = match tokio::time::timeout(
            wait,
            w.file.read(WATCH_ANSWER_MAX, BytesMut::with_capacity(256)),
        )
        .await
        {
            Ok(Ok(Some(data))) => data,
            Ok(Ok(None)) => {
                return Err(RemoteError::Refused(format!(
                    "{WATCH_FILE}: the server answered nothing"
                )))
            }
            Ok(Err(e)) => return Err(self.err("read", WATCH_FILE, e)),
            Err(_) => {
                return Err(RemoteError::Timeout {
                    what: format!("read {WATCH_FILE}"),
                    secs: wait.as_secs(),
                })
            }
        };
        if answer.len() >= WATCH_ANSWER_MAX as usize || !answer.ends_with(b"\n") {
            return Err(RemoteError::Refused(format!(
                "{WATCH_FILE}: the server's answer is not a revision"
            )));
        }
        Ok(parse_watch_answer(&answer))
    }

    /// Whether `path` is a directory (`None`: it does not exist).
    pub async fn is_dir(&self, path: &str) -> Result<Option<bool>, RemoteError> {
        let mut fs = self.sftp().fs();
        self.timed(&format!("stat {path}"), async {
            match fs.metadata(path).await {
                Ok(m) => Ok(Some(m.file_type().is_some_and(|t| t.is_dir()))),
                Err(e) if not_found(&e) => Ok(None),
                Err(e) => Err(RemoteError::sftp("stat", path, e)),
            }
        })
        .await
    }

    /// Downloads the directory `remote` into `local` (which must not exist), keeping
    /// the executable bit. Symlinks and special files are refused: releases have none.
    ///
    /// Every file is streamed to disk ([`Remote::fetch_file`]); the bytes actually
    /// received count against [`MAX_RELEASE_BYTES`], whatever sizes the server lists.
    /// Entries, depth and path lengths are capped, so memory and time stay bounded
    /// for any release. Partial files live in a sibling `.<name>.incoming/`, so a
    /// release's own names can never collide with them.
    pub async fn download_dir(&self, remote: &str, local: &Path) -> Result<Fetched, RemoteError> {
        let incoming = local.with_file_name(format!(
            ".{}.incoming",
            local.file_name().unwrap_or_default().to_string_lossy()
        ));
        let _ = std::fs::remove_dir_all(&incoming);
        std::fs::create_dir_all(&incoming).map_err(local_err(&incoming))?;
        let r = self.download_tree(remote, local, &incoming).await;
        let _ = std::fs::remove_dir_all(&incoming);
        r
    }

    async fn download_tree(
        &self,
        remote: &str,
        local: &Path,
        incoming: &Path,
    ) -> Result<Fetched, RemoteError> {
        let mut fetched = Fetched::default();
        let mut entries = 0usize;
        // (remote dir, local dir, path relative to the release, depth)
        let mut stack: Vec<(String, PathBuf, String, usize)> =
            vec![(remote.to_owned(), local.to_owned(), String::new(), 0)];
        while let Some((rdir, ldir, rel, depth)) = stack.pop() {
            std::fs::create_dir(&ldir).map_err(local_err(&ldir))?;
            let list = self.list_dir(&rdir, MAX_RELEASE_ENTRIES - entries).await?;
            entries += list.len();
            for (name, kind, size, exec) in list {
                let rpath = format!("{rdir}/{name}");
                let lpath = ldir.join(&name);
                let relpath = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                if relpath.len() > MAX_RELEASE_PATH {
                    return Err(RemoteError::Refused(format!(
                        "{remote} holds a path longer than {MAX_RELEASE_PATH} bytes ({}…)",
                        &relpath[..relpath.floor_char_boundary(80)]
                    )));
                }
                match kind {
                    EntryKind::Dir => {
                        if depth + 1 > MAX_RELEASE_DEPTH {
                            return Err(RemoteError::Refused(format!(
                                "{remote} is nested more than {MAX_RELEASE_DEPTH} directories deep ({}…)",
                                &relpath[..relpath.floor_char_boundary(80)]
                            )));
                        }
                        stack.push((rpath, lpath, relpath, depth + 1))
                    }
                    EntryKind::File => {
                        let budget = MAX_RELEASE_BYTES - fetched.bytes;
                        if size.is_some_and(|s| s > budget) {
                            return Err(RemoteError::Refused(format!(
                                "{remote} is larger than {MAX_RELEASE_BYTES} bytes ({rpath} is listed as {} bytes)",
                                size.unwrap_or(0)
                            )));
                        }
                        let part = incoming.join(fetched.files.to_string());
                        let got = self
                            .fetch_file(&rpath, &part, &lpath, size, budget, exec)
                            .await
                            .map_err(|e| match e {
                                RemoteError::Refused(m) if m.starts_with(OVER_BUDGET) => {
                                    RemoteError::Refused(format!(
                                        "{remote} is larger than {MAX_RELEASE_BYTES} bytes (received while reading {rpath})"
                                    ))
                                }
                                e => e,
                            })?;
                        fetched.bytes += got;
                        fetched.files += 1;
                    }
                    EntryKind::Other => {
                        return Err(RemoteError::Refused(format!(
                            "{rpath} is a symlink or special file; a release holds only files and directories"
                        )))
                    }
                }
            }
            // The renames into this directory survive a crash once it is synced.
            sync_dir(&ldir).await?;
        }
        Ok(fetched)
    }

    /// Downloads one file to `dest`: streamed into `part`, synced, then renamed, so
    /// `dest` is either absent or complete. At most `max` bytes are accepted, and
    /// never more than `listed` (what the directory listing said) when it is known.
    /// Returns the bytes received. (Large downloads resume: [`Remote::fetch_resumable`].)
    pub async fn fetch_file(
        &self,
        rpath: &str,
        part: &Path,
        dest: &Path,
        listed: Option<u64>,
        max: u64,
        executable: bool,
    ) -> Result<u64, RemoteError> {
        use std::os::unix::fs::OpenOptionsExt;
        let mode = if executable { 0o755 } else { 0o644 };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(part)
            .map_err(local_err(part))?;
        let got = self
            .stream_into(rpath, 0, listed, max, &mut f, part)
            .await?;
        // The umask may have narrowed the mode given at creation.
        finish_download(f, part, dest, Some(mode)).await?;
        Ok(got)
    }

    /// Downloads `rpath`, exactly `size` bytes, to `dest`, resuming from what an
    /// interrupted download left in `part`: the reads start at its length. `dest`
    /// is either absent or complete (synced, then renamed). Returns the bytes
    /// received now (not counting what `part` already held).
    pub async fn fetch_resumable(
        &self,
        rpath: &str,
        part: &Path,
        dest: &Path,
        size: u64,
    ) -> Result<u64, RemoteError> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(part)
            .map_err(local_err(part))?;
        let mut have = f.metadata().map_err(local_err(part))?.len();
        if have > size {
            // Not a prefix of this file: start again.
            f.set_len(0).map_err(local_err(part))?;
            have = 0;
        }
        let got = if have < size {
            let r = self
                .stream_into(rpath, have, Some(size - have), size - have, &mut f, part)
                .await;
            // Whatever arrived stays in `part` for the next attempt.
            let _ = f.sync_data();
            r?
        } else {
            0
        };
        if have + got != size {
            return Err(RemoteError::Refused(format!(
                "{rpath} ended after {} bytes, the signed manifest says {size}",
                have + got
            )));
        }
        finish_download(f, part, dest, None).await?;
        Ok(got)
    }

    /// [`Remote::stream_file`] from `start` into `f`, the local file `part`: a
    /// local write error names `part`.
    async fn stream_into(
        &self,
        rpath: &str,
        start: u64,
        listed: Option<u64>,
        max: u64,
        f: &mut std::fs::File,
        part: &Path,
    ) -> Result<u64, RemoteError> {
        match self
            .stream_file(rpath, start, listed, max, |chunk| f.write_all(chunk))
            .await
        {
            Err(RemoteError::Local { source, .. }) => Err(RemoteError::Local {
                path: part.to_owned(),
                source,
            }),
            r => r,
        }
    }

    /// Reads `rpath` from `start` to its end (or `listed` bytes when that is known
    /// and within `max`), `CHUNK` bytes per request with up to `IN_FLIGHT` requests
    /// pending, handing each chunk to `sink` in order. Each request gets the
    /// session's timeout. Fails (refused) once more than `max` bytes (or more than
    /// `listed`) arrive, or when the server answers a request with more than it asked.
    async fn stream_file(
        &self,
        rpath: &str,
        start: u64,
        listed: Option<u64>,
        max: u64,
        sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<u64, RemoteError> {
        let file = self
            .open_read(rpath)
            .await?
            .ok_or_else(|| RemoteError::Sftp {
                what: "open",
                path: rpath.to_owned(),
                message: "NoSuchFile: no such file".into(),
            })?;
        self.stream_open(file, rpath, start, listed, max, sink)
            .await
    }

    /// Opens `rpath` for reading (`None`: it does not exist).
    async fn open_read(&self, rpath: &str) -> Result<Option<SftpFile>, RemoteError> {
        self.timed(&format!("open {rpath}"), async {
            match self.sftp().options().read(true).open(rpath).await {
                Ok(f) => Ok(Some(f)),
                Err(e) if not_found(&e) => Ok(None),
                Err(e) => Err(self.err("open", rpath, e)),
            }
        })
        .await
    }

    /// [`Remote::stream_file`] on the file already opened.
    async fn stream_open(
        &self,
        file: SftpFile,
        rpath: &str,
        start: u64,
        listed: Option<u64>,
        max: u64,
        mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<u64, RemoteError> {
        // Never ask for more than the cap allows, plus one chunk to see the end.
        let limit = listed.map_or(max, |l| l.min(max));
        // The library silently shortens reads to the server's limit (20 KiB for a
        // server without `limits@openssh.com`), and consecutive requests need the
        // real size: the first answer, alone in flight, tells it.
        let mut chunk_len = CHUNK;
        let mut probed = false;
        let mut next: u64 = start;
        let limit = limit.saturating_add(start);
        let mut pending = FuturesOrdered::new();
        let mut received: u64 = 0;
        let issue = |offset: u64, len: u32| {
            let mut f: SftpFile = file.clone();
            async move {
                let r = match f.seek(std::io::SeekFrom::Start(offset)).await {
                    Ok(_) => f.read(len, BytesMut::with_capacity(len as usize)).await,
                    Err(e) => Err(SftpError::IOError(e)),
                };
                (offset, len, r)
            }
        };
        // A known size needs no read past it to see the end: one round trip less per
        // file (a closure has hundreds; over Tor each costs a second).
        let exact = listed.is_some_and(|l| l <= max);
        loop {
            if exact && next >= limit && received + start >= limit {
                break;
            }
            let window = if probed { IN_FLIGHT } else { 1 };
            while pending.len() < window && (next < limit || (!exact && next == limit)) {
                pending.push_back(issue(next, chunk_len));
                next += u64::from(chunk_len);
            }
            // The oldest request was sent first: its answer is due within the timeout.
            let (offset, asked, answer) =
                match tokio::time::timeout(self.timeout, pending.next()).await {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(_) => {
                        return Err(self.timeout_err(format!(
                            "read {rpath} at offset {}",
                            next - pending.len() as u64 * u64::from(chunk_len)
                        )))
                    }
                };
            let chunk = match answer {
                Ok(Some(c)) => c,
                // The end of the file: later requests can only say the same.
                Ok(None) => break,
                Err(e) => return Err(self.err("read", rpath, e)),
            };
            if chunk.len() > asked as usize {
                return Err(RemoteError::Refused(format!(
                    "the server answered a read of {asked} bytes of {rpath} with {} bytes",
                    chunk.len()
                )));
            }
            if chunk.is_empty() {
                return Err(RemoteError::Refused(format!(
                    "the server answered a read of {rpath} with no data"
                )));
            }
            received += chunk.len() as u64;
            if received > max {
                return Err(RemoteError::Refused(format!(
                    "{OVER_BUDGET}: {rpath} sent more than {max} bytes"
                )));
            }
            if let Some(l) = listed.filter(|l| received > *l) {
                return Err(RemoteError::Refused(format!(
                    "the server sent more of {rpath} than the {l} bytes it listed"
                )));
            }
            sink(&chunk).map_err(|source| RemoteError::Local {
                path: PathBuf::from(rpath),
                source,
            })?;
            let end = offset + chunk.len() as u64;
            if !probed {
                probed = true;
                chunk_len = chunk.len() as u32;
                next = end;
            } else if chunk.len() < chunk_len as usize {
                // A short read before the end: ask again for the rest, in order.
                pending = FuturesOrdered::new();
                next = end;
            }
        }
        drop(pending);
        // The handle's close is sent when its last clone goes; its answer is not
        // waited for: the data is complete.
        drop(file);
        Ok(received)
    }
    /// One directory's entries (at most `room`), checked: names are plain UTF-8
    /// path components, each listed once. Each page of the listing gets the
    /// session's timeout.
    async fn list_dir(
        &self,
        path: &str,
        room: usize,
    ) -> Result<Vec<(String, EntryKind, Option<u64>, bool)>, RemoteError> {
        let dir = self
            .timed(&format!("opendir {path}"), async {
                self.sftp()
                    .fs()
                    .open_dir(path)
                    .await
                    .map_err(|e| self.err("opendir", path, e))
            })
            .await?;
        let mut stream = std::pin::pin!(dir.read_dir());
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        loop {
            let next =
                std::future::poll_fn(|cx| futures_core::Stream::poll_next(stream.as_mut(), cx));
            let ent = match tokio::time::timeout(self.timeout, next).await {
                Ok(Some(ent)) => ent.map_err(|e| self.err("readdir", path, e))?,
                Ok(None) => break,
                Err(_) => return Err(self.timeout_err(format!("list {path}"))),
            };
            let Some(name) = ent.filename().to_str().map(str::to_owned) else {
                return Err(RemoteError::Refused(format!(
                    "{path}: entry name {:?} is not UTF-8",
                    ent.filename()
                )));
            };
            if name == "." || name == ".." {
                continue;
            }
            if name.is_empty() || name.contains(['/', '\0']) || name.len() > 255 {
                return Err(RemoteError::Refused(format!(
                    "{path}: malformed entry name {:?}",
                    &name[..name.floor_char_boundary(80)]
                )));
            }
            if out.len() >= room {
                return Err(RemoteError::Refused(format!(
                    "the release has more than {MAX_RELEASE_ENTRIES} entries (listing {path})"
                )));
            }
            if !seen.insert(name.clone()) {
                return Err(RemoteError::Refused(format!(
                    "{path}: the server listed {name:?} twice"
                )));
            }
            let md = ent.metadata();
            let kind = match md.file_type() {
                Some(t) if t.is_dir() => EntryKind::Dir,
                Some(t) if t.is_file() => EntryKind::File,
                _ => EntryKind::Other,
            };
            let exec = md.permissions().is_some_and(|p| {
                p.execute_by_owner() || p.execute_by_group() || p.execute_by_other()
            });
            out.push((name, kind, md.len(), exec));
        }
        Ok(out)
    }

    /// Writes `data` to `dir/name` under a temporary name the server's readers skip
    /// (`.<name>.part`), then renames it into place: never half a file.
    pub async fn put_atomic(&self, dir: &str, name: &str, data: &[u8]) -> Result<(), RemoteError> {
        let tmp = format!("{dir}/.{name}.part");
        let dst = format!("{dir}/{name}");
        let mut fs = self.sftp().fs();
        let sftp = self.sftp();
        self.timed(&format!("upload {dst}"), async {
            let err = |e| RemoteError::sftp("write", &tmp, e);
            let mut f = sftp
                .options()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .await
                .map_err(err)?;
            f.write_all(data).await.map_err(err)?;
            // Closed before the rename is sent: one request in flight at a time keeps
            // Nagle's algorithm on ssh's (non-interactive) connection from stalling.
            f.close().await.map_err(err)?;
            fs.rename(&tmp, &dst)
                .await
                .map_err(|e| RemoteError::sftp("rename", &tmp, e))
        })
        .await
    }

    /// Ends the session and the ssh process.
    /// Ends the session at once, with requests in flight (a held watch read):
    /// the ssh process is killed rather than waited for.
    pub async fn abort(mut self) {
        let _ = self.child.kill().await;
        drop(self.sftp.take());
    }

    pub async fn close(mut self) {
        if let Some(s) = self.sftp.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), s.close()).await;
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum EntryKind {
    Dir,
    File,
    Other,
}

/// How a refusal for too many bytes starts, so the caller can name the whole release.
const OVER_BUDGET: &str = "over the byte budget";

/// Syncs a complete download (with `mode`, when given) and renames it into place.
async fn finish_download(
    f: std::fs::File,
    part: &Path,
    dest: &Path,
    mode: Option<u32>,
) -> Result<(), RemoteError> {
    let (p, d) = (part.to_owned(), dest.to_owned());
    tokio::task::spawn_blocking(move || {
        if let Some(m) = mode {
            f.set_permissions(std::fs::Permissions::from_mode(m))?;
        }
        f.sync_all()?;
        drop(f);
        std::fs::rename(&p, &d)
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))
    .and_then(|r| r)
    .map_err(local_err(dest))
}

fn local_err(p: &Path) -> impl FnOnce(std::io::Error) -> RemoteError {
    let p = p.to_owned();
    move |source| RemoteError::Local { path: p, source }
}

async fn sync_dir(dir: &Path) -> Result<(), RemoteError> {
    let d = dir.to_owned();
    tokio::task::spawn_blocking(move || std::fs::File::open(&d)?.sync_all())
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r)
        .map_err(local_err(dir))
}

fn last_line(s: &str) -> Option<String> {
    s.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
}
