//! The admin side of bento: the `bento` command and (in `web`) the panel.

pub mod cli;
pub mod commands;
pub mod rollouts;
pub mod sftp;
pub mod table;
pub mod web;
