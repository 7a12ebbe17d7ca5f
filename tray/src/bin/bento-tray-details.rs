//! `bento-tray-details` (also `bento-tray details`): the window with the recent
//! updates, what changed, the log tail and the restart state. A program of its
//! own, started by the tray, so the idle tray never loads GTK or a web view; it
//! follows the agent itself and pushes each new [`Details`] to the page.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use bento_core::agent_proto::{AgentStatus, Request, Response};
use tauri::{Emitter, Manager};
use time::{OffsetDateTime, UtcOffset};
use tokio::sync::mpsc;

use bento_tray::agent::{self, Update};
use bento_tray::model::{self, Details, LastKnown};
use bento_tray::version::Versions;
use clap::Parser;

/// Event name the page listens to.
const EVENT: &str = "details";
/// Relative times ("today at …") go stale; redraw this often even without news.
const REDRAW: Duration = Duration::from_secs(60);

struct Shared {
    latest: Mutex<Details>,
}

/// The page asks for the current details once when it loads; later ones are pushed.
#[tauri::command]
fn snapshot(shared: tauri::State<'_, Shared>) -> Details {
    shared
        .latest
        .lock()
        .map(|d| d.clone())
        .unwrap_or_else(|e| e.into_inner().clone())
}

/// The page says what it shows after each redraw (logged, so tests and people
/// reading the log can tell the window is up to date, and what it says).
#[tauri::command]
fn rendered(headline: String, rows: usize, text: String) {
    tracing::info!("details window shows: {headline} ({rows} updates listed)");
    tracing::debug!("details window text: {text:?}");
}

/// Opens the window with this computer's update details.
#[derive(Parser)]
#[command(name = "bento-tray-details", version)]
struct Cli {
    /// The update agent's socket.
    #[arg(long, env = "BENTO_TRAY_SOCKET", default_value = bento_tray::DEFAULT_SOCKET)]
    socket: PathBuf,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    bento_tray::init_logging();
    // GTK panics without a display; say it plainly instead.
    if std::env::var_os("DISPLAY").is_none() && std::env::var_os("WAYLAND_DISPLAY").is_none() {
        tracing::error!("no graphical display (neither DISPLAY nor WAYLAND_DISPLAY is set): cannot open the window");
        return std::process::ExitCode::FAILURE;
    }
    // Before tauri starts its threads (see `bento_tray::local_offset`).
    let tz = bento_tray::local_offset();
    match run(cli.socket, tz) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Opens the window and runs until it is closed.
fn run(socket: PathBuf, tz: UtcOffset) -> anyhow::Result<()> {
    let initial = model::details(
        None,
        None,
        &Versions::default(),
        OffsetDateTime::now_utc(),
        tz,
    );
    tauri::Builder::default()
        .manage(Shared {
            latest: Mutex::new(initial),
        })
        .invoke_handler(tauri::generate_handler![snapshot, rendered])
        .setup(move |app| {
            let handle = app.handle().clone();
            tauri::async_runtime::spawn(follow(socket, tz, handle));
            Ok(())
        })
        .run(tauri::generate_context!())
        .map_err(|e| anyhow::anyhow!("cannot open the details window: {e}"))
}

async fn follow(socket: PathBuf, tz: UtcOffset, app: tauri::AppHandle) {
    let (tx, mut rx) = mpsc::channel(64);
    tauri::async_runtime::spawn(agent::follow(socket.clone(), tx));
    let mut status: Option<AgentStatus> = None;
    let mut last: Option<LastKnown> = None;
    let mut versions = Versions::from_env();
    let mut redraw = tokio::time::interval(REDRAW);
    loop {
        tokio::select! {
            update = rx.recv() => match update {
                Some(Update::Connected(s)) => {
                    status = Some(*s);
                    last = None;
                }
                Some(Update::Event(e)) => {
                    if let Some(s) = status.as_mut() {
                        model::apply(s, &e, OffsetDateTime::now_utc());
                    }
                    // Events do not carry the log and the change list: ask for them.
                    if let Ok(Response::Status { status: fresh }) = agent::request(&socket, &Request::Status).await {
                        status = Some(*fresh);
                    }
                }
                Some(Update::Lost) => match status.take() {
                    Some(s) => last = Some(LastKnown { status: s, at: OffsetDateTime::now_utc() }),
                    // Opened while the agent is away: what it last wrote down.
                    None if last.is_none() => last = agent::status_file(&socket),
                    None => {}
                },
                None => return,
            },
            _ = redraw.tick() => {}
        }
        if let Some(s) = status.as_ref().or(last.as_ref().map(|l| &l.status)) {
            versions.learn(s);
        }
        let d = model::details(
            status.as_ref(),
            last.as_ref(),
            &versions,
            OffsetDateTime::now_utc(),
            tz,
        );
        if let Some(shared) = app.try_state::<Shared>() {
            if let Ok(mut latest) = shared.latest.lock() {
                *latest = d.clone();
            }
        }
        if let Err(e) = app.emit(EVENT, &d) {
            tracing::warn!("cannot update the details window: {e}");
        }
    }
}
