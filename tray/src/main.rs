use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use bento_tray::{reboot::Rebooter, seen, Settings};

/// Shows this computer's software updates: a tray icon, notifications, and a
/// details window.
#[derive(Parser)]
#[command(name = "bento-tray", version)]
struct Cli {
    /// The update agent's socket.
    #[arg(long, global = true, env = "BENTO_TRAY_SOCKET", default_value = bento_tray::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Where to remember which events were already notified
    /// [default: $XDG_STATE_HOME/bento-tray]
    #[arg(long, env = "BENTO_TRAY_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Restart with this command (words split on spaces, no shell) instead of
    /// asking logind.
    #[arg(long, env = "BENTO_TRAY_REBOOT_COMMAND", value_name = "COMMAND")]
    reboot_command: Option<String>,
    #[command(subcommand)]
    mode: Option<Mode>,
}

#[derive(Subcommand)]
enum Mode {
    /// Open the details window (the tray does this on "Show details…").
    Details,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(Mode::Details) = cli.mode {
        // The window is its own program; become it.
        let e = bento_tray::tray::details_command(&cli.socket).exec();
        eprintln!("bento-tray: cannot open the details window: {e}");
        return std::process::ExitCode::FAILURE;
    }
    bento_tray::init_logging();
    let settings = Settings {
        socket: cli.socket,
        state_dir: cli.state_dir.or_else(seen::default_dir),
        rebooter: Rebooter::from_setting(cli.reboot_command.as_deref()),
        // Before the runtime starts any thread.
        tz: bento_tray::local_offset(),
    };
    // One thread is plenty for a tray and keeps it small.
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(bento_tray::tray::run(settings)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
