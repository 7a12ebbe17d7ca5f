//! `bento-core`: the protocol shared by the admin command, the agent and the tray.
//!
//! Nothing here knows about HTTP, D-Bus or terminals, and nothing here prints or
//! exits: functions return typed errors and the binaries decide what to show.

pub mod agent_proto;
pub mod hostname;
pub mod report;

pub use hostname::{HostName, HostNameError};
