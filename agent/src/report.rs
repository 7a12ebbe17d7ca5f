//! Reports: the update's log (gzip, the original tool's name) and its JSON sidecar,
//! written to the outbox first and uploaded from there, oldest first. A report leaves
//! the outbox only once the server has it under its final name, so nothing is lost
//! when the agent is killed or the server is away.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use bento_core::chroot::LOGS_DIR;
use bento_core::report::{ReportMeta, ReportName};
use flate2::write::GzEncoder;
use time::{OffsetDateTime, UtcOffset};

use crate::remote::{Remote, RemoteError};
use crate::state::write_atomic;

static LOCAL_OFFSET: OnceLock<UtcOffset> = OnceLock::new();

/// Reads the local time zone; call once at start, before any thread exists (the `time`
/// crate refuses to read it later).
pub fn init_local_offset() {
    let off = UtcOffset::current_local_offset().unwrap_or(UtcOffset::UTC);
    let _ = LOCAL_OFFSET.set(off);
}

/// Now on the host's clock, as the original tool's report names use.
pub fn now_local() -> OffsetDateTime {
    OffsetDateTime::now_utc().to_offset(*LOCAL_OFFSET.get().unwrap_or(&UtcOffset::UTC))
}

/// The log of one update: every line goes to the report and to the journal.
#[derive(Clone, Default)]
pub struct UpdateLog {
    lines: Arc<Mutex<Vec<String>>>,
}

impl UpdateLog {
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&self, line: String) {
        let mut l = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        // A runaway build log must not exhaust memory: keep the head and the end.
        if l.len() >= 100_000 {
            l.drain(1000..50_000);
            l.insert(1000, "[... 49000 lines left out ...]".to_owned());
        }
        l.push(line);
    }

    /// A message of the agent itself.
    pub fn info(&self, msg: impl Into<String>) {
        let msg = msg.into();
        tracing::info!("{msg}");
        self.push(format!("bento-agent: {msg}"));
    }

    pub fn warn(&self, msg: impl Into<String>) {
        let msg = msg.into();
        tracing::warn!("{msg}");
        self.push(format!("bento-agent: warning: {msg}"));
    }

    pub fn error(&self, msg: impl Into<String>) {
        let msg = msg.into();
        tracing::error!("{msg}");
        self.push(format!("bento-agent: error: {msg}"));
    }

    /// A line of a command's output.
    pub fn output(&self, line: &str) {
        tracing::debug!("| {line}");
        self.push(line.to_owned());
    }

    pub fn tail(&self, n: usize) -> Vec<String> {
        let l = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        l[l.len().saturating_sub(n)..].to_vec()
    }

    pub fn gzip(&self) -> io::Result<Vec<u8>> {
        let l = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::default());
        for line in l.iter() {
            enc.write_all(line.as_bytes())?;
            enc.write_all(b"\n")?;
        }
        enc.finish()
    }
}

/// Reports waiting to be uploaded.
#[derive(Debug, Clone)]
pub struct Outbox {
    dir: PathBuf,
}

/// One report in the outbox.
#[derive(Debug, Clone)]
pub struct Pending {
    pub log_name: String,
    pub meta_name: String,
    queued: SystemTime,
}

impl Outbox {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Outbox { dir: dir.into() }
    }

    /// Queues a report. The sidecar is written last: a report counts as queued once it
    /// is there.
    pub fn add(&self, name: &ReportName, log_gz: &[u8], meta: &ReportMeta) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        write_atomic(&self.dir.join(name.log_file_name()), log_gz)?;
        write_atomic(
            &self.dir.join(name.sidecar_file_name()),
            &serde_json::to_vec_pretty(meta)?,
        )
    }

    /// Complete reports, oldest first.
    pub fn pending(&self) -> Vec<Pending> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut v: Vec<Pending> = rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_owned();
                let stem = name.strip_suffix(".log.gz")?;
                if name.starts_with('.') {
                    return None;
                }
                let meta_name = format!("{stem}.json");
                let queued = fs::metadata(self.dir.join(&meta_name))
                    .and_then(|m| m.modified())
                    .ok()?;
                Some(Pending {
                    log_name: name.clone(),
                    meta_name,
                    queued,
                })
            })
            .collect();
        v.sort_by(|a, b| a.queued.cmp(&b.queued).then(a.log_name.cmp(&b.log_name)));
        v
    }

    /// Uploads every pending report, oldest first; stops at the first error. Returns
    /// how many were delivered.
    pub async fn send(&self, remote: &Remote) -> Result<usize, RemoteError> {
        let mut sent = 0;
        for p in self.pending() {
            let read = |n: &str| -> Result<Vec<u8>, RemoteError> {
                let path = self.dir.join(n);
                fs::read(&path).map_err(|source| RemoteError::Local { path, source })
            };
            let (log, meta) = (read(&p.log_name)?, read(&p.meta_name)?);
            // Sidecar first: when the log appears, the server can read its sidecar.
            remote.put_atomic(LOGS_DIR, &p.meta_name, &meta).await?;
            remote.put_atomic(LOGS_DIR, &p.log_name, &log).await?;
            for n in [&p.log_name, &p.meta_name] {
                let _ = fs::remove_file(self.dir.join(n));
            }
            tracing::info!("report {} delivered", p.log_name);
            sent += 1;
        }
        Ok(sent)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
