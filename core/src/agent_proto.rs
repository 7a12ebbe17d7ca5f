//! The local protocol between `bento-agent` and the desktop (`bento-tray`, scripts).
//!
//! JSON lines over a Unix socket (`<runtime_dir>/agent.sock`): the client writes one
//! [`Request`] per line; the agent answers each with one [`Response`] line. After
//! `subscribe`, the agent pushes one [`Response::Event`] line per [`Event`] until the
//! client disconnects. The same [`AgentStatus`] is also written atomically to
//! `<runtime_dir>/status.json` for readers that do not want a socket.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::report::ReportStatus;

/// File name of the socket inside the agent's runtime directory.
pub const SOCKET_NAME: &str = "agent.sock";
/// File name of the status snapshot inside the agent's runtime directory.
pub const STATUS_FILE: &str = "status.json";

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// The current [`AgentStatus`].
    Status,
    /// Current status, then every [`Event`] as it happens.
    Subscribe,
    /// Poll the server now (root and the configured group only).
    CheckNow,
    /// Move a scheduled reboot later (root and the configured group only); never
    /// past the deadline of the admin's reboot policy.
    PostponeReboot { seconds: u64 },
}

/// What the agent answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Response {
    Status {
        status: Box<AgentStatus>,
    },
    Event {
        event: Event,
    },
    Ok {
        message: String,
    },
    /// The request was understood but refused (e.g. not allowed for this peer).
    Denied {
        message: String,
    },
    Error {
        message: String,
    },
}

/// The agent's activity right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Activity {
    #[default]
    Idle,
    Checking,
    Downloading,
    Building,
    Activating,
    Rebooting,
}

/// One past update as the agent remembers it (newest first in [`AgentStatus::history`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRecord {
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub status: ReportStatus,
    pub revision: Option<String>,
    /// Store path basename of the system after this update.
    pub system: Option<String>,
    /// One-line reason when it failed or rolled back.
    pub error: Option<String>,
    /// Number of store paths that changed, when known.
    pub changed_packages: Option<u32>,
}

/// A reboot the agent will perform at `at` unless postponed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledReboot {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The latest time postponing may reach (the admin's policy).
    #[serde(with = "time::serde::rfc3339")]
    pub deadline: OffsetDateTime,
}

/// Everything a desktop needs to show about this machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub host: String,
    pub agent_version: String,
    pub activity: Activity,
    /// Revision of the release currently applied.
    pub revision: Option<String>,
    /// Store path basename of the running system.
    pub system: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_check: Option<OffsetDateTime>,
    /// Whether the last check reached the server.
    pub server_reachable: Option<bool>,
    pub last_update: Option<UpdateRecord>,
    pub history: Vec<UpdateRecord>,
    pub reboot_required: bool,
    pub reboot_scheduled: Option<ScheduledReboot>,
    /// Last lines of the last update's log.
    pub log_tail: Vec<String>,
    /// Short human summary of what changed in the last update (closure diff lines).
    pub last_changes: Vec<String>,
    /// How the running system was obtained by the last update that installed one:
    /// the server's closure fetched, or built here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub obtained: Option<crate::report::Obtained>,
    /// Whether it is exactly the system the server built (`None`: not known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<bool>,
}

/// Something that happened, pushed to subscribers in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Event {
    CheckStarted,
    CheckFinished {
        new_release: bool,
    },
    UpdateStarted {
        revision: String,
    },
    UpdateFinished {
        record: UpdateRecord,
    },
    UpdateFailed {
        record: UpdateRecord,
    },
    RolledBack {
        record: UpdateRecord,
    },
    RebootRequired,
    RebootScheduled {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
        #[serde(with = "time::serde::rfc3339")]
        deadline: OffsetDateTime,
    },
    RebootPostponed {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
}

impl Request {
    /// Encodes as one protocol line (with the trailing newline).
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("requests always serialize");
        s.push('\n');
        s
    }
}

impl Response {
    /// Encodes as one protocol line (with the trailing newline).
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("responses always serialize");
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_round_trip() {
        for r in [
            Request::Status,
            Request::Subscribe,
            Request::CheckNow,
            Request::PostponeReboot { seconds: 3600 },
        ] {
            let line = r.to_line();
            assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
            assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), r);
        }
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"check-now"}"#).unwrap(),
            Request::CheckNow
        );
    }

    #[test]
    fn unknown_request_is_an_error() {
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"rm-rf"}"#).is_err());
    }
}
