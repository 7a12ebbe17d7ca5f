//! `bento-agent`: keeps a NixOS host on the release its admin published.
//!
//! - [`agent`]: one poll (fetch, verify, build, activate, health, roll back, report);
//! - [`remote`]: the server over the system OpenSSH client speaking SFTP, with
//!   [`wire`] checking every packet it sends;
//! - [`report`]: report logs, sidecars and the outbox;
//! - [`state`]: what the agent remembers between polls;
//! - [`status`]: the local status (`status.json`) and events;
//! - [`daemon`]: the interval loop, the local socket, scheduled reboots;
//! - [`reboot`]: the reboot policy; [`settings`]: the settings file and flags.

pub mod agent;
pub mod cli;
pub mod daemon;
pub mod fetch;
pub mod reboot;
pub mod remote;
pub mod report;
pub mod secrets;
pub mod settings;
pub mod state;
pub mod status;
pub mod watch;
pub mod wire;
