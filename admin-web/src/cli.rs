//! Command-line parsing and dispatch; each subcommand lives in `commands/`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use bento_core::HostName;

#[derive(Debug, Parser)]
#[command(
    name = "bento",
    version,
    about = "Pull-based deployment for fleets of NixOS machines"
)]
pub struct Cli {
    /// The bento directory (default: the current directory).
    #[arg(long, short = 'C', env = "BENTO_DIR", global = true)]
    pub dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// Host selection shared by the commands that build.
#[derive(Debug, clap::Args, Clone, Default)]
pub struct HostFilter {
    /// Only this host (repeatable). The variable NAME works as with the original tool.
    #[arg(long = "host", short = 'H', env = "NAME", value_delimiter = ',')]
    pub hosts: Vec<HostName>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum BuildAction {
    /// Evaluate only.
    #[value(name = "dry-build", alias = "dry-run")]
    DryBuild,
    /// Build every host's system.
    #[default]
    Build,
    /// Build one host and activate it here without making it the boot default.
    Test,
    /// Build one host and make it this machine's system.
    Switch,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new bento directory (bento.toml, hosts/example/, utils/).
    Init {
        /// Where to create it (default: the bento directory or the current directory).
        path: Option<PathBuf>,
    },
    /// Build every host's system; `test` and `switch` activate one host locally.
    Build {
        #[arg(value_enum, default_value_t)]
        action: BuildAction,
        #[command(flatten)]
        filter: HostFilter,
        /// Do not ask before test/switch.
        #[arg(long, short = 'y')]
        yes: bool,
        /// System profile for test/switch.
        #[arg(long, default_value = bento_core::activate::SYSTEM_PROFILE)]
        profile: PathBuf,
    },
    /// Build, then publish every host that changed into its chroot.
    Deploy {
        #[command(flatten)]
        filter: HostFilter,
        /// Hash every file of each unchanged host's live release (instead of
        /// checking sizes, modes and times) and republish a damaged one.
        #[arg(long)]
        verify: bool,
        /// Follow the rollout: publish wave by wave ([rollout] in bento.toml), print
        /// each host's outcome, exit 1 when any host failed, rolled back or gave no
        /// answer. Implied when [rollout] has more than one wave.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up on hosts that have not concluded after SECS seconds
        /// (they count as "no answer").
        #[arg(long, value_name = "SECS", requires = "wait")]
        timeout: Option<u64>,
        /// The panel's database, where the rollout is recorded (default: `[web]
        /// database_url`).
        #[arg(long)]
        database: Option<String>,
    },
    /// Rollouts: list, show, abort, resume (every deploy is one).
    Rollout {
        #[command(subcommand)]
        action: crate::commands::rollout::RolloutAction,
        /// The panel's database (default: `[web] database_url`).
        #[arg(long, global = true)]
        database: Option<String>,
    },
    /// Show the fleet: what each host runs and its state.
    Status {
        /// One JSON array of host objects, for scripts.
        #[arg(long)]
        json: bool,
        /// Print once even in a terminal (by default a terminal redraws on changes).
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        filter: HostFilter,
    },
    /// Closure differences between what each host runs and what it should run.
    Diff {
        #[command(flatten)]
        filter: HostFilter,
    },
    /// Update every flake's lock file, or one input.
    FlakeUpdate {
        /// The input to update (default: all).
        input: Option<String>,
    },
    /// Check the bento directory's settings and host names, then exit.
    CheckConfig {
        /// Also check every host's live release in the chroot against its
        /// manifest (hashing every file); exit 1 if one is damaged.
        #[arg(long)]
        chroot: bool,
    },
    /// Print the fleet's public signing key (agents pin it), making the key pair
    /// first when there is none (`signing_key` in bento.toml).
    SigningKey,
    /// Serve the web panel (fleet, hosts, jobs, audit log, JSON API, metrics).
    Serve(crate::commands::serve::ServeArgs),
    /// Serve every host its chroot over SFTP, without sshd or system users.
    Sftp(crate::commands::sftp::SftpArgs),
    /// Accounts of the web panel.
    User {
        #[command(subcommand)]
        action: crate::commands::user::UserAction,
    },
    /// Secrets encrypted to each host's SSH keys, installed by its agent.
    Secret {
        #[command(subcommand)]
        action: crate::commands::secret::SecretAction,
    },
    /// Bearer tokens for the panel's API and /metrics.
    Token {
        #[command(subcommand)]
        action: crate::commands::token::TokenAction,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BENTO_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match crate::commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bento: error: {}", error_chain(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes on one line, each said once: our errors often carry
/// their cause in their own message already ("cannot read X: No such file…"), so
/// a cause whose text is already there is not repeated.
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
