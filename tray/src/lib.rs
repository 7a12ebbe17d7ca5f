//! `bento-tray`: what a person at a bento workstation sees of the agent — a tray
//! icon, notifications, and a details window.
//!
//! [`model`] decides everything shown and said from the agent's status and events
//! (and the NixOS versions [`version`] reads from the store);
//! the other modules are thin shells: [`agent`] (the socket), [`tray`] (ksni and the
//! main loop), [`notify`] (notify-rust), [`reboot`] (logind). The details window
//! is its own program (`src/bin/bento-tray-details.rs`, tauri), so the tray's
//! binary does not link GTK or WebKit at all.

pub mod agent;
pub mod icons;
pub mod model;
pub mod notify;
pub mod reboot;
pub mod seen;
pub mod tray;
pub mod version;

use std::path::PathBuf;

/// Everything the tray is told at start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The agent's socket.
    pub socket: PathBuf,
    /// Where the notified-events file lives; `None`: memory only.
    pub state_dir: Option<PathBuf>,
    pub rebooter: reboot::Rebooter,
    /// Local time zone for the times shown, read once at start (reading it later is
    /// unreliable once threads run).
    pub tz: time::UtcOffset,
}

/// Where the agent listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/bento/agent.sock";

/// Logs to stderr, filtered by `BENTO_TRAY_LOG`, else `RUST_LOG`.
pub fn init_logging() {
    let filter = std::env::var("BENTO_TRAY_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "warn,bento_tray=info,bento_tray_details=info".to_owned());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
}

/// The local time zone's offset. Call it before any thread starts: afterwards it
/// cannot be read safely and this falls back to UTC.
pub fn local_offset() -> time::UtcOffset {
    time::UtcOffset::current_local_offset().unwrap_or(time::UtcOffset::UTC)
}
