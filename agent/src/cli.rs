//! Command line: `run-once`, `daemon`, `status`, `check-config`, and the socket
//! clients `check-now` and `postpone-reboot`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bento_core::agent_proto::{AgentStatus, Request, Response, STATUS_FILE};
use clap::{Parser, Subcommand};

use crate::agent::{Agent, PollResult};
use crate::report::{init_local_offset, now_local, Outbox};
use crate::settings::{
    Config, SettingsFile, DEFAULT_CONFIG, DEFAULT_RUNTIME_DIR, DEFAULT_STATE_DIR,
};
use crate::state::StateDir;
use crate::status::StatusHandle;

/// Exit codes: 0 the host is on the published release, 1 an update failed or was
/// rolled back, 2 bad settings or usage, 3 the server could not be reached, 4 refused.
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_UNREACHABLE: u8 = 3;
pub const EXIT_DENIED: u8 = 4;

#[derive(Debug, Parser)]
#[command(
    name = "bento-agent",
    version,
    about = "Keeps this NixOS host on the release its bento server published"
)]
pub struct Cli {
    /// Settings file (default /etc/bento/agent.toml; flags override its keys).
    #[arg(long, short = 'c', global = true, env = "BENTO_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: SettingsFile,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Poll once (for a systemd timer): apply a new release if there is one.
    RunOnce,
    /// Poll on the configured interval and serve the local status socket.
    Daemon,
    /// Show what the agent knows: applied release, last update, reboot.
    Status {
        /// The status as JSON (the socket's `AgentStatus`).
        #[arg(long)]
        json: bool,
    },
    /// Check the settings and print them, then exit (0 when valid).
    CheckConfig,
    /// Ask the running daemon to poll now.
    CheckNow,
    /// Ask the running daemon to postpone the scheduled reboot.
    PostponeReboot {
        /// By how many seconds.
        seconds: u64,
    },
}

pub fn main() -> ExitCode {
    // Before any thread exists: the time zone can only be read then.
    init_local_offset();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BENTO_AGENT_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// The settings file merged with the flags (a missing default file is no error).
fn settings(cli: &Cli) -> anyhow::Result<(SettingsFile, PathBuf)> {
    let (path, explicit) = match &cli.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    let file = match SettingsFile::read(&path) {
        Ok(f) => f,
        Err(crate::settings::SettingsError::Read { source, .. })
            if !explicit && source.kind() == std::io::ErrorKind::NotFound =>
        {
            SettingsFile::default()
        }
        Err(e) => return Err(e.into()),
    };
    Ok((file.merged(&cli.settings), path))
}

fn config(cli: &Cli) -> anyhow::Result<Config> {
    let (s, path) = settings(cli)?;
    Ok(s.resolve(&path)?)
}

fn runtime(multi: bool) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = if multi {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    if multi {
        b.worker_threads(1);
    }
    Ok(b.enable_all().max_blocking_threads(8).build()?)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::RunOnce => {
            let cfg = config(&cli)?;
            let rt = runtime(false)?;
            let code = rt.block_on(run_once(cfg))?;
            rt.shutdown_timeout(Duration::from_secs(1));
            Ok(code)
        }
        Command::Daemon => {
            let cfg = config(&cli)?;
            let rt = runtime(false)?;
            rt.block_on(async {
                let agent = Arc::new(Agent::new(cfg).context("cannot set up the state directory")?);
                crate::daemon::run(agent).await
            })?;
            rt.shutdown_timeout(Duration::from_secs(1));
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig => check_config(&cli),
        Command::Status { json } => status(&cli, *json),
        Command::CheckNow => request(&cli, &Request::CheckNow),
        Command::PostponeReboot { seconds } => {
            request(&cli, &Request::PostponeReboot { seconds: *seconds })
        }
    }
}

async fn run_once(cfg: Config) -> anyhow::Result<ExitCode> {
    let agent = Agent::new(cfg).context("cannot set up the state directory")?;
    let result = agent.poll().await;
    if agent.status.snapshot().reboot_required {
        reboot_if_allowed(&agent).await;
    }
    Ok(match result {
        PollResult::NothingNew | PollResult::NoRelease | PollResult::Updated(_) => {
            ExitCode::SUCCESS
        }
        PollResult::Failed(_, _) => ExitCode::from(EXIT_FAILED),
        PollResult::Unreachable(_) => ExitCode::from(EXIT_UNREACHABLE),
    })
}

/// In run-once mode a reboot happens now or not at all: the next run inside the
/// window does it.
async fn reboot_if_allowed(agent: &Agent) {
    let now = now_local();
    let Some(plan) = crate::reboot::plan(
        &agent.cfg.reboot,
        agent.release_asks_reboot(),
        now,
        Duration::ZERO,
    ) else {
        tracing::info!("a reboot is required; the reboot policy leaves it to the admin");
        return;
    };
    if plan.at > now + time::Duration::seconds(1) {
        tracing::info!(
            "a reboot is required; it will happen inside the reboot window (from {})",
            plan.at
        );
        return;
    }
    let cmd = &agent.cfg.reboot_command;
    tracing::info!("rebooting: {}", cmd.join(" "));
    agent
        .status
        .set_activity(bento_core::agent_proto::Activity::Rebooting);
    match tokio::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .status()
        .await
    {
        Ok(s) if s.success() => {}
        Ok(s) => tracing::error!("the reboot command failed ({s})"),
        Err(e) => tracing::error!("cannot run the reboot command {}: {e}", cmd[0]),
    }
    agent
        .status
        .set_activity(bento_core::agent_proto::Activity::Idle);
}

fn check_config(cli: &Cli) -> anyhow::Result<ExitCode> {
    let cfg = match config(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bento-agent: invalid settings: {e:#}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let ssh: Vec<String> = crate::remote::ssh_args(&cfg)
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    println!("host:            {}", cfg.host);
    println!("server:          ssh {}", ssh.join(" "));
    println!(
        "interval:        {}s (+ up to {}s)",
        cfg.interval.as_secs(),
        cfg.jitter.as_secs()
    );
    println!("state dir:       {}", cfg.state_dir.display());
    println!("runtime dir:     {}", cfg.runtime_dir.display());
    println!("system profile:  {}", cfg.system_profile.display());
    println!("booted system:   {}", cfg.booted_system.display());
    println!(
        "reboot:          {:?} (command: {})",
        cfg.reboot,
        cfg.reboot_command.join(" ")
    );
    println!("health checks:   {}", cfg.health_checks.len());
    println!("settings OK");
    Ok(ExitCode::SUCCESS)
}

fn status(cli: &Cli, json: bool) -> anyhow::Result<ExitCode> {
    let (s, _) = settings(cli)?;
    let runtime_dir = s
        .runtime_dir
        .clone()
        .unwrap_or_else(|| DEFAULT_RUNTIME_DIR.into());
    let state_dir = s
        .state_dir
        .clone()
        .unwrap_or_else(|| DEFAULT_STATE_DIR.into());
    let st = read_status(&runtime_dir, &state_dir, s.host.as_deref());
    let outbox = Outbox::new(StateDir::new(&state_dir).outbox())
        .pending()
        .len();
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(ExitCode::SUCCESS);
    }
    let fmt_time = |t: Option<time::OffsetDateTime>| {
        t.and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "never".into())
    };
    println!("host:         {}", st.host);
    println!("activity:     {:?}", st.activity);
    println!(
        "revision:     {}",
        st.revision.as_deref().unwrap_or("none applied")
    );
    println!(
        "system:       {}",
        st.system.as_deref().unwrap_or("unknown")
    );
    if let Some(m) = StateDir::new(&state_dir).load().mixed {
        println!(
            "mixed state:  since {}: {}",
            fmt_time(Some(m.since)),
            m.error
        );
    }
    println!(
        "last check:   {}{}",
        fmt_time(st.last_check),
        match st.server_reachable {
            Some(true) => " (server reachable)",
            Some(false) => " (server unreachable)",
            None => "",
        }
    );
    match &st.last_update {
        Some(u) => println!(
            "last update:  {} {} revision {}{}",
            u.status,
            fmt_time(Some(u.time)),
            u.revision.as_deref().unwrap_or("-"),
            u.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ),
        None => println!("last update:  none"),
    }
    println!(
        "reboot:       {}",
        match (&st.reboot_scheduled, st.reboot_required) {
            (Some(r), _) => format!("scheduled at {} (at the latest {})", r.at, r.deadline),
            (None, true) => "required".into(),
            (None, false) => "not required".into(),
        }
    );
    if outbox > 0 {
        println!("outbox:       {outbox} report(s) waiting to be uploaded");
    }
    Ok(ExitCode::SUCCESS)
}

/// `status.json` when an agent wrote one, else what the state directory holds.
fn read_status(runtime_dir: &Path, state_dir: &Path, host: Option<&str>) -> AgentStatus {
    if let Ok(bytes) = std::fs::read(runtime_dir.join(STATUS_FILE)) {
        if let Ok(s) = serde_json::from_slice::<AgentStatus>(&bytes) {
            return s;
        }
    }
    let state = StateDir::new(state_dir);
    let mut s = StatusHandle::empty(host.unwrap_or("unknown"));
    s.revision = state.load().applied.map(|a| a.revision);
    s.history = state.history();
    s.last_update = s.history.first().cloned();
    s.log_tail = state.log_tail();
    s
}

/// Sends one request to the daemon's socket and prints its answer.
fn request(cli: &Cli, req: &Request) -> anyhow::Result<ExitCode> {
    let (s, _) = settings(cli)?;
    let runtime_dir = s.runtime_dir.unwrap_or_else(|| DEFAULT_RUNTIME_DIR.into());
    let path = crate::daemon::socket_path(&runtime_dir);
    let mut stream = std::os::unix::net::UnixStream::connect(&path).with_context(|| {
        format!(
            "cannot reach the agent at {} (is `bento-agent daemon` running?)",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(req.to_line().as_bytes())?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let resp: Response = serde_json::from_str(&line).context("unexpected answer from the agent")?;
    Ok(match resp {
        Response::Ok { message } => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Response::Denied { message } => {
            eprintln!("bento-agent: denied: {message}");
            ExitCode::from(EXIT_DENIED)
        }
        Response::Error { message } => {
            eprintln!("bento-agent: {message}");
            ExitCode::from(EXIT_FAILED)
        }
        other => {
            println!("{}", serde_json::to_string(&other)?);
            ExitCode::SUCCESS
        }
    })
}
