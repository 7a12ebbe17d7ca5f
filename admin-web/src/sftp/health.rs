//! Whether the embedded SFTP server is up, for `bento serve`'s `/healthz` and
//! `/metrics`: the panel restarts a server that stopped, and says so meanwhile.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// The health of the SFTP server `bento serve` runs, for every page's banner.
static PANEL: OnceLock<Health> = OnceLock::new();

#[derive(Default)]
struct Inner {
    up: AtomicBool,
    restarts: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// Shared between the supervisor of the SFTP server and the panel.
#[derive(Clone, Default)]
pub struct Health(Arc<Inner>);

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("up", &self.is_up())
            .field("restarts", &self.restarts())
            .finish()
    }
}

impl Health {
    /// Makes this the SFTP server the panel's pages report on (once per process).
    pub fn publish(&self) {
        let _ = PANEL.set(self.clone());
    }

    /// Why the panel's SFTP server is down, while it is down.
    pub fn panel_down() -> Option<String> {
        let h = PANEL.get()?;
        (!h.is_up()).then(|| h.last_error().unwrap_or_else(|| "starting".into()))
    }

    pub fn set_up(&self) {
        self.0.up.store(true, Ordering::Release);
    }

    /// The server stopped (or could not start) with `error`.
    pub fn set_down(&self, error: String) {
        self.0.up.store(false, Ordering::Release);
        *self.0.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
    }

    pub fn restarted(&self) {
        self.0.restarts.fetch_add(1, Ordering::AcqRel);
    }

    pub fn is_up(&self) -> bool {
        self.0.up.load(Ordering::Acquire)
    }

    /// How often the server was started again after it stopped.
    pub fn restarts(&self) -> u64 {
        self.0.restarts.load(Ordering::Acquire)
    }

    /// Why the server last stopped, for the log and the panel's banner.
    pub fn last_error(&self) -> Option<String> {
        self.0
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
