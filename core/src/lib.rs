//! `bento-core`: the protocol shared by the admin command, the agent and the tray.
//!
//! Nothing here knows about HTTP, D-Bus or terminals, and nothing here prints or
//! exits: functions return typed errors and the binaries decide what to show.

pub mod activate;
pub mod agent_proto;
pub mod alerts;
pub mod bentodir;
pub mod buildstate;
pub mod check;
pub mod chroot;
pub mod closure;
pub mod cmd;
pub mod config;
pub mod deploy;
pub mod fsutil;
pub mod hostname;
pub mod jail;
pub mod limits;
pub mod nix;
pub mod release;
pub mod report;
pub mod rollout;
pub mod secrets;
pub mod signing;
pub mod status;
pub mod text;

pub use hostname::{HostName, HostNameError};
