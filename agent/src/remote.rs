//! The server, over the system OpenSSH client speaking SFTP (`ssh ... -s sftp`), so
//! `~/.ssh/config`, `ProxyCommand`, `known_hosts`, VPNs and Tor all work. No shell
//! command ever runs on the server (it has none: `ForceCommand internal-sftp`).

use std::ffi::OsString;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openssh_sftp_client::error::SftpErrorKind;
use openssh_sftp_client::{Error as SftpError, Sftp, SftpOptions};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

use crate::settings::Config;

/// Largest release the agent downloads (a compromised server could send anything).
pub const MAX_RELEASE_BYTES: u64 = 2 << 30;
pub const MAX_RELEASE_ENTRIES: usize = 200_000;

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
        })
    }

    fn sftp(&self) -> &Sftp {
        self.sftp.as_ref().expect("open until close")
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
        self.timed(&format!("read {path}"), async {
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
            let mtime = md
                .modified()
                .map(|t| t.as_duration().as_secs())
                .unwrap_or(0);
            let data = fs
                .read(path)
                .await
                .map_err(|e| RemoteError::sftp("read", path, e))?;
            Ok(Some((data.to_vec(), mtime)))
        })
        .await
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
    pub async fn download_dir(&self, remote: &str, local: &Path) -> Result<Fetched, RemoteError> {
        let local_err = |p: &Path| {
            let p = p.to_owned();
            move |source| RemoteError::Local { path: p, source }
        };
        let mut fetched = Fetched::default();
        let mut entries = 0usize;
        let mut stack: Vec<(String, PathBuf)> = vec![(remote.to_owned(), local.to_owned())];
        while let Some((rdir, ldir)) = stack.pop() {
            std::fs::create_dir(&ldir).map_err(local_err(&ldir))?;
            let list = self.list_dir(&rdir).await?;
            for (name, kind, size, exec) in list {
                entries += 1;
                if entries > MAX_RELEASE_ENTRIES {
                    return Err(RemoteError::Refused(format!(
                        "{remote} has more than {MAX_RELEASE_ENTRIES} entries"
                    )));
                }
                let rpath = format!("{rdir}/{name}");
                let lpath = ldir.join(&name);
                match kind {
                    EntryKind::Dir => stack.push((rpath, lpath)),
                    EntryKind::File => {
                        fetched.bytes += size;
                        if fetched.bytes > MAX_RELEASE_BYTES {
                            return Err(RemoteError::Refused(format!(
                                "{remote} is larger than {MAX_RELEASE_BYTES} bytes"
                            )));
                        }
                        let data = self.read_file(&rpath).await?;
                        std::fs::write(&lpath, &data).map_err(local_err(&lpath))?;
                        let mode = if exec { 0o755 } else { 0o644 };
                        std::fs::set_permissions(&lpath, std::fs::Permissions::from_mode(mode))
                            .map_err(local_err(&lpath))?;
                        fetched.files += 1;
                    }
                    EntryKind::Other => {
                        return Err(RemoteError::Refused(format!(
                            "{rpath} is a symlink or special file; a release holds only files and directories"
                        )))
                    }
                }
            }
        }
        Ok(fetched)
    }

    async fn read_file(&self, path: &str) -> Result<Vec<u8>, RemoteError> {
        let mut fs = self.sftp().fs();
        // Large files take longer than one request's timeout: allow a generous rate.
        match fs.read(path).await {
            Ok(d) => Ok(d.to_vec()),
            Err(e) => Err(RemoteError::sftp("read", path, e)),
        }
    }

    async fn list_dir(
        &self,
        path: &str,
    ) -> Result<Vec<(String, EntryKind, u64, bool)>, RemoteError> {
        let mut fs = self.sftp().fs();
        self.timed(&format!("list {path}"), async {
            let dir = fs
                .open_dir(path)
                .await
                .map_err(|e| RemoteError::sftp("opendir", path, e))?;
            let mut stream = std::pin::pin!(dir.read_dir());
            let mut out = Vec::new();
            while let Some(ent) =
                std::future::poll_fn(|cx| futures_core::Stream::poll_next(stream.as_mut(), cx))
                    .await
            {
                let ent = ent.map_err(|e| RemoteError::sftp("readdir", path, e))?;
                let name = ent.filename().to_string_lossy().into_owned();
                if name == "." || name == ".." {
                    continue;
                }
                if name.contains('/') || name.is_empty() {
                    return Err(RemoteError::Refused(format!(
                        "{path}: malformed entry name {name:?}"
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
                out.push((name, kind, md.len().unwrap_or(0), exec));
            }
            Ok(out)
        })
        .await
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

fn last_line(s: &str) -> Option<String> {
    s.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
}
