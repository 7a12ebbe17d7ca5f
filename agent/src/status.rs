//! The agent's local status: one [`AgentStatus`] kept in memory, rewritten atomically
//! to `<runtime_dir>/status.json` on every change, and the [`Event`]s pushed to the
//! socket's subscribers in the order they happen.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bento_core::agent_proto::{Activity, AgentStatus, Event, UpdateRecord, STATUS_FILE};
use tokio::sync::broadcast;

use crate::state::replace;

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Clone)]
pub struct StatusHandle {
    inner: Arc<Mutex<AgentStatus>>,
    tx: broadcast::Sender<Event>,
    file: Option<PathBuf>,
}

impl StatusHandle {
    /// A status written to `<runtime_dir>/status.json` (when a runtime dir is given).
    pub fn new(initial: AgentStatus, runtime_dir: Option<&Path>) -> Self {
        let (tx, _) = broadcast::channel(256);
        let file = runtime_dir.and_then(|d| {
            if let Err(e) = ensure_runtime_dir(d) {
                tracing::warn!("cannot create the runtime directory {}: {e}", d.display());
                return None;
            }
            Some(d.join(STATUS_FILE))
        });
        let h = StatusHandle {
            inner: Arc::new(Mutex::new(initial)),
            tx,
            file,
        };
        h.update(|_| {});
        h
    }

    pub fn empty(host: &str) -> AgentStatus {
        AgentStatus {
            host: host.to_owned(),
            agent_version: AGENT_VERSION.to_owned(),
            activity: Activity::Idle,
            revision: None,
            system: None,
            last_check: None,
            server_reachable: None,
            last_update: None,
            history: Vec::new(),
            reboot_required: false,
            reboot_scheduled: None,
            log_tail: Vec::new(),
            last_changes: Vec::new(),
            obtained: None,
            exact: None,
        }
    }

    pub fn snapshot(&self) -> AgentStatus {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The current status and every event after it, with nothing lost in between.
    pub fn subscribe(&self) -> (AgentStatus, broadcast::Receiver<Event>) {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let rx = self.tx.subscribe();
        (g.clone(), rx)
    }

    /// Changes the status (no event).
    pub fn update(&self, f: impl FnOnce(&mut AgentStatus)) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g);
        self.write(&g);
    }

    pub fn set_activity(&self, a: Activity) {
        self.update(|s| s.activity = a);
    }

    /// Changes the status and announces `event`, under one lock so subscribers see
    /// events in the order the status changed.
    pub fn emit(&self, event: Event, f: impl FnOnce(&mut AgentStatus)) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g);
        let _ = self.tx.send(event);
        self.write(&g);
    }

    pub fn record(s: &mut AgentStatus, r: &UpdateRecord, history: Vec<UpdateRecord>) {
        s.last_update = Some(r.clone());
        s.history = history;
    }

    /// Called with the lock held: one writer at a time, snapshots in order.
    fn write(&self, snap: &AgentStatus) {
        let Some(file) = &self.file else { return };
        let data = match serde_json::to_vec_pretty(snap) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("cannot encode the status: {e}");
                return;
            }
        };
        // The runtime dir is a tmpfs and the file is rewritten often: no fsync.
        if let Err(e) = replace(file, &data, false) {
            tracing::warn!("cannot write {}: {e}", file.display());
        }
    }
}

/// The runtime directory is readable by everyone: desktop users read the status.
fn ensure_runtime_dir(d: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(d)?;
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
}
