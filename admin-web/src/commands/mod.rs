//! One module per subcommand.

pub mod build;
pub mod check_config;
pub mod diff;
pub mod flake_update;
pub mod init;
pub mod rollout;
pub mod secret;
pub mod serve;
pub mod sftp;
pub mod status;
pub mod token;
pub mod user;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bento_core::bentodir::BentoDir;

use crate::cli::{Cli, Command};

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let dir = cli.dir.clone();
    match cli.command {
        Command::Init { path } => init::run(&path.or(dir).unwrap_or_else(|| PathBuf::from("."))),
        Command::Build {
            action,
            filter,
            yes,
            profile,
        } => build::build(&open(dir)?, action, &filter, yes, &profile),
        Command::Deploy {
            filter,
            verify,
            wait,
            timeout,
            database,
        } => {
            let b = open(dir)?;
            let db = database.unwrap_or_else(|| b.database_url());
            if rollout::wanted(&b, wait) {
                rollout::deploy_wait(&b, &filter, verify, timeout, &db)
            } else {
                build::deploy(&b, &filter, verify, &db)
            }
        }
        Command::Rollout { action, database } => {
            let b = open(dir)?;
            let db = database.unwrap_or_else(|| b.database_url());
            rollout::run(&b, action, &db)
        }
        Command::Status { json, once, filter } => status::run(&open(dir)?, json, once, &filter),
        Command::Diff { filter } => diff::run(&open(dir)?, &filter),
        Command::FlakeUpdate { input } => flake_update::run(&open(dir)?, input.as_deref()),
        Command::Serve(args) => serve::run(dir, args),
        Command::Sftp(args) => sftp::run(dir, args),
        Command::User { action } => user::run(dir, action),
        Command::Token { action } => token::run(dir, action),
        Command::Secret { action } => secret::run(&open(dir)?, action),
        Command::CheckConfig { chroot } => check_config::run(&open(dir)?, chroot),
        Command::SigningKey => check_config::signing_key(&open(dir)?),
    }
}

/// Opens the bento directory given by `--dir`/`BENTO_DIR`, else the current one.
pub fn open(dir: Option<PathBuf>) -> anyhow::Result<BentoDir> {
    let dir = dir.unwrap_or_else(|| PathBuf::from("."));
    BentoDir::open(&dir)
        .with_context(|| format!("cannot open the bento directory {}", dir.display()))
}
