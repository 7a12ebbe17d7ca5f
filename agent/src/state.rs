//! What the agent remembers between polls, in its state directory:
//!
//! ```text
//! <state_dir>/lock              taken for the length of a poll
//! <state_dir>/state.json        applied revision, refused revision, self-update time,
//!                               last good system, mixed state
//! <state_dir>/last-good         GC root of the last good system (a rollback needs it)
//! <state_dir>/history.json      the last updates, newest first
//! <state_dir>/last-log.txt      tail of the last update's log
//! <state_dir>/staging/          downloads in progress (wiped before each download)
//! <state_dir>/releases/<rev>/   verified releases (the applied one and the newest)
//! <state_dir>/outbox/           reports not yet uploaded (sent oldest first)
//! ```
//!
//! Every file is replaced atomically (temporary file, fsync, rename), so a kill at
//! any moment leaves the old content or the new one.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use bento_core::agent_proto::UpdateRecord;
use bento_core::report::ReportStatus;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub const HISTORY_LEN: usize = 20;
pub const LOG_TAIL_LINES: usize = 60;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub revision: String,
    /// Store path basename of the system it gave.
    pub system: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// When the applied release's manifest was made: older ones are refused.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub created: Option<OffsetDateTime>,
}

/// A release that failed or rolled back: not retried until another is published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub revision: String,
    pub status: ReportStatus,
    pub error: Option<String>,
}

/// An activation under way: if the agent dies before it is concluded, the next poll
/// activates (and checks) the system again instead of taking the profile's word.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activating {
    pub system: std::path::PathBuf,
    pub previous: Option<std::path::PathBuf>,
}

/// An activation or a rollback stopped half-way: what runs is a mix the agent cannot
/// name, so it claims no system until one is activated in full.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mixed {
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    pub error: String,
    /// What the system profile named then: a profile changed since (a `nixos-rebuild
    /// switch` by hand) ends the mixed state.
    pub profile: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedState {
    pub applied: Option<Applied>,
    pub refused: Option<Refused>,
    #[serde(default)]
    pub activating: Option<Activating>,
    /// The last system that activated and passed its health checks: the only one a
    /// failed update rolls back to.
    #[serde(default)]
    pub last_good: Option<PathBuf>,
    #[serde(default)]
    pub mixed: Option<Mixed>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_self_update: Option<OffsetDateTime>,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn staging(&self) -> PathBuf {
        self.root.join("staging")
    }
    pub fn releases(&self) -> PathBuf {
        self.root.join("releases")
    }
    pub fn release(&self, rev: &str) -> PathBuf {
        self.releases().join(rev)
    }
    pub fn outbox(&self) -> PathBuf {
        self.root.join("outbox")
    }
    fn state_file(&self) -> PathBuf {
        self.root.join("state.json")
    }
    fn history_file(&self) -> PathBuf {
        self.root.join("history.json")
    }
    fn log_tail_file(&self) -> PathBuf {
        self.root.join("last-log.txt")
    }
    /// GC root of [`PersistedState::last_good`].
    pub fn last_good_root(&self) -> PathBuf {
        self.root.join("last-good")
    }

    /// Creates the directories (root only: 0700, the releases may hold secrets).
    pub fn ensure(&self) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)?;
        for d in [self.releases(), self.outbox()] {
            fs::create_dir_all(d)?;
        }
        Ok(())
    }

    /// Takes the poll lock (waits while another agent process polls).
    pub fn lock(&self) -> io::Result<fs::File> {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join("lock"))?;
        if f.try_lock().is_err() {
            tracing::info!("another bento-agent is polling; waiting for it to finish");
            f.lock()?;
        }
        Ok(f)
    }

    pub fn load(&self) -> PersistedState {
        read_json(&self.state_file()).unwrap_or_default()
    }

    pub fn save(&self, s: &PersistedState) -> io::Result<()> {
        write_atomic(&self.state_file(), &serde_json::to_vec_pretty(s)?)
    }

    pub fn history(&self) -> Vec<UpdateRecord> {
        read_json(&self.history_file()).unwrap_or_default()
    }

    /// Adds a record (newest first, at most [`HISTORY_LEN`]); returns the new history.
    pub fn push_history(&self, r: &UpdateRecord) -> io::Result<Vec<UpdateRecord>> {
        let mut h = self.history();
        h.insert(0, r.clone());
        h.truncate(HISTORY_LEN);
        write_atomic(&self.history_file(), &serde_json::to_vec_pretty(&h)?)?;
        Ok(h)
    }

    pub fn log_tail(&self) -> Vec<String> {
        fs::read_to_string(self.log_tail_file())
            .map(|s| s.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    pub fn save_log_tail(&self, lines: &[String]) -> io::Result<()> {
        let mut text = lines.join("\n");
        text.push('\n');
        write_atomic(&self.log_tail_file(), text.as_bytes())
    }

    /// Keeps `keep` (the applied release) and `newest`, removes other releases.
    pub fn prune_releases(&self, keep: &[&str]) {
        let Ok(rd) = fs::read_dir(self.releases()) else {
            return;
        };
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name.as_str()) {
                let _ = fs::remove_dir_all(ent.path());
            }
        }
    }
}

fn read_json<T: serde::de::DeserializeOwned>(p: &Path) -> Option<T> {
    let bytes = fs::read(p).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!("{}: unreadable, starting afresh: {e}", p.display());
            None
        }
    }
}

/// Replaces `path` with `data`: temporary file in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    bento_core::fsutil::write_atomic(path, data, None)
}

/// Replaces `path` with `data` (temporary file, rename), fsync'ed when `durable`.
pub fn replace(path: &Path, data: &[u8], durable: bool) -> io::Result<()> {
    bento_core::fsutil::replace(path, data, None, durable)
}

/// Removes a directory tree if it exists.
pub fn remove_tree(p: &Path) -> io::Result<()> {
    match fs::remove_dir_all(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
