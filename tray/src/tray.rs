//! The tray process: the StatusNotifierItem (ksni), the loop that follows the agent,
//! and the glue to notifications, restarts and the details window. Decisions are
//! in `model`; this file only carries them out.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bento_core::agent_proto::{AgentStatus, Request, Response};
use ksni::menu::StandardItem;
use ksni::{MenuItem, TrayMethods};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::agent::{self, AgentError, Update};
use crate::model::{
    self, Answer, Asked, Condition, Decider, LastKnown, Notice, NoticeAction, View,
};
use crate::notify::Notifier;
use crate::seen::SeenFile;
use crate::version::Versions;
use crate::{icons, Settings};

/// How often the tooltip's relative times are redrawn without news.
const REFRESH: std::time::Duration = std::time::Duration::from_secs(600);

/// What the user did, from the menu or a notification button.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Click {
    CheckNow,
    ShowDetails,
    RebootNow,
    Postpone(u64),
    Quit,
}

impl From<NoticeAction> for Click {
    fn from(a: NoticeAction) -> Click {
        match a {
            NoticeAction::RebootNow => Click::RebootNow,
            NoticeAction::Postpone(s) => Click::Postpone(s),
            NoticeAction::ShowDetails => Click::ShowDetails,
        }
    }
}

/// Results of work done in the background, back into the loop.
enum Done {
    Answer(Asked, Answer),
    RebootFailed(String),
}

/// The SNI item: shows a [`View`], sends clicks into the loop.
struct Item {
    view: View,
    clicks: mpsc::UnboundedSender<Click>,
    /// Set once "no tray host" was logged, so it is said once.
    told_no_host: Arc<AtomicBool>,
}

impl Item {
    fn entry(&self, label: &str, click: Click, enabled: bool) -> MenuItem<Self> {
        StandardItem {
            label: label.to_owned(),
            enabled,
            activate: Box::new(move |item: &mut Item| {
                let _ = item.clicks.send(click);
            }),
            ..Default::default()
        }
        .into()
    }
}

impl ksni::Tray for Item {
    fn id(&self) -> String {
        "bento-tray".to_owned()
    }

    fn category(&self) -> ksni::Category {
        ksni::Category::SystemServices
    }

    fn title(&self) -> String {
        self.view.title.clone()
    }

    fn status(&self) -> ksni::Status {
        if self.view.condition.needs_attention() {
            ksni::Status::NeedsAttention
        } else {
            ksni::Status::Active
        }
    }

    // No icon names at all: a host prefers a theme's icon over the pixmap, and
    // no theme has all six states, so names would mix the theme's style with
    // ours. Our pixmaps (see `icons`) are the one set, for every state.
    fn icon_name(&self) -> String {
        String::new()
    }

    fn icon_pixmap(&self) -> Vec<ksni::Icon> {
        pixmaps(self.view.condition)
    }

    fn attention_icon_name(&self) -> String {
        String::new()
    }

    fn attention_icon_pixmap(&self) -> Vec<ksni::Icon> {
        pixmaps(self.view.condition)
    }

    fn tool_tip(&self) -> ksni::ToolTip {
        ksni::ToolTip {
            icon_name: String::new(),
            icon_pixmap: pixmaps(self.view.condition),
            title: self.view.title.clone(),
            description: self.view.tooltip.clone(),
        }
    }

    fn activate(&mut self, _x: i32, _y: i32) {
        let _ = self.clicks.send(Click::ShowDetails);
    }

    fn menu(&self) -> Vec<MenuItem<Self>> {
        let m = &self.view.menu;
        let mut items = vec![
            StandardItem {
                label: self.view.title.clone(),
                enabled: false,
                ..Default::default()
            }
            .into(),
            MenuItem::Separator,
            self.entry(model::MENU_CHECK, Click::CheckNow, m.check_enabled),
            self.entry(model::MENU_DETAILS, Click::ShowDetails, true),
        ];
        if m.reboot_now || m.postpone.is_some() {
            items.push(MenuItem::Separator);
        }
        if m.reboot_now {
            items.push(self.entry(model::MENU_REBOOT, Click::RebootNow, true));
        }
        if let Some((label, secs)) = &m.postpone {
            items.push(self.entry(label, Click::Postpone(*secs), true));
        }
        items.push(MenuItem::Separator);
        items.push(self.entry(model::MENU_QUIT, Click::Quit, true));
        items
    }

    fn watcher_online(&self) {
        tracing::info!("a tray host appeared; the icon is shown");
    }

    fn watcher_offline(&self, reason: ksni::OfflineReason) -> bool {
        if !self.told_no_host.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "no system tray on this desktop ({reason:?}); notifications still work, the icon appears when a tray does"
            );
        }
        true
    }
}

fn pixmaps(c: Condition) -> Vec<ksni::Icon> {
    icons::pixmaps(c)
        .iter()
        .map(|p| ksni::Icon {
            width: p.size as i32,
            height: p.size as i32,
            data: p.argb.clone(),
        })
        .collect()
}

/// Runs the tray until "Quit" or SIGTERM/SIGINT.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let tz = settings.tz;
    let seen_file = settings.state_dir.as_deref().map(SeenFile::in_dir);
    if seen_file.is_none() {
        tracing::warn!("no state directory (set --state-dir or HOME): notifications may repeat after a restart");
    }
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let mut decider =
        Decider::new(seen_file.as_ref().map(SeenFile::load).unwrap_or_default()).in_boot(&boot);

    let (click_tx, mut clicks) = mpsc::unbounded_channel::<Click>();
    let (action_tx, mut actions) = mpsc::unbounded_channel::<NoticeAction>();
    let (done_tx, mut done) = mpsc::unbounded_channel::<Done>();
    let (agent_tx, mut agent_rx) = mpsc::channel::<Update>(64);

    let mut versions = Versions::from_env();
    let mut shown = model::view(None, None, &versions, now(), tz);
    let item = Item {
        view: shown.clone(),
        clicks: click_tx,
        told_no_host: Arc::new(AtomicBool::new(false)),
    };
    let handle = item
        .assume_sni_available(true)
        .spawn()
        .await
        .map_err(|e| anyhow::anyhow!("cannot put an icon on the session bus: {e}"))?;
    tokio::spawn(agent::follow(settings.socket.clone(), agent_tx));

    let mut notifier = Notifier::new(action_tx);
    let details = DetailsLauncher::new(settings.socket.clone());
    let mut status: Option<AgentStatus> = None;
    let mut last: Option<LastKnown> = None;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // "today at 14:05" becomes "yesterday" at midnight without any event.
    let mut refresh = tokio::time::interval(REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        let wakeup = decider.next_wakeup(status.as_ref());
        let reminder = async {
            match wakeup {
                Some(at) => {
                    let wait = (at - now()).max(time::Duration::ZERO);
                    tokio::time::sleep(wait.unsigned_abs()).await;
                }
                None => std::future::pending().await,
            }
        };
        // A notice that could not be shown is tried again on the next connection;
        // a reminder is not (its timer would fire again at once).
        let mut retry_failed = true;
        let notices: Vec<Notice> = tokio::select! {
            Some(update) = agent_rx.recv() => match update {
                Update::Connected(s) => {
                    decider.actions = notifier.supports_actions().await;
                    versions.learn(&s);
                    let n = decider.on_status(&s, &versions, now(), tz);
                    status = Some(*s);
                    last = None;
                    n
                }
                Update::Event(e) => {
                    tracing::info!("agent event: {e:?}");
                    match status.as_mut() {
                        Some(s) => {
                            model::apply(s, &e, now());
                            versions.learn(s);
                            decider.on_event(s, &e, &versions, now(), tz)
                        }
                        None => Vec::new(),
                    }
                }
                Update::Lost => {
                    match status.take() {
                        Some(s) => last = Some(LastKnown { status: s, at: now() }),
                        // Started while the agent is away: what it last wrote down.
                        None if last.is_none() => {
                            last = agent::status_file(&settings.socket);
                            if let Some(l) = &last {
                                versions.learn(&l.status);
                            }
                        }
                        None => {}
                    }
                    Vec::new()
                }
            },
            Some(click) = clicks.recv() => {
                if click == Click::Quit {
                    tracing::info!("quit from the menu");
                    break;
                }
                act(click, &settings, &details, &done_tx);
                Vec::new()
            }
            Some(action) = actions.recv() => {
                act(action.into(), &settings, &details, &done_tx);
                Vec::new()
            }
            Some(d) = done.recv() => match d {
                Done::Answer(asked, answer) => model::answer_notice(asked, &answer).into_iter().collect(),
                Done::RebootFailed(why) => vec![model::reboot_failed_notice(&why)],
            },
            () = reminder => {
                retry_failed = false;
                decider.on_tick(status.as_ref(), now(), tz)
            }
            _ = refresh.tick() => Vec::new(),
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        };

        let view = model::view(status.as_ref(), last.as_ref(), &versions, now(), tz);
        if view != shown {
            shown = view.clone();
            // ksni compares the properties and signals what changed.
            handle.update(|item: &mut Item| item.view = view).await;
        }

        for n in &notices {
            if let Err(e) = notifier.show(n).await {
                tracing::warn!("could not show the notification {:?}: {e}", n.summary);
                if let Some(k) = n.key.as_deref().filter(|_| retry_failed) {
                    decider.forget(k);
                }
            }
        }
        // After the new notices: one that replaced a warning has already taken its place.
        notifier.withdraw_over(status.as_ref()).await;
        if let Some(f) = &seen_file {
            if notices.iter().any(|n| n.key.is_some()) {
                if let Err(e) = f.save(decider.seen()) {
                    tracing::warn!("cannot save {}: {e}", f.path().display());
                }
            }
        }
    }
    handle.shutdown().await;
    Ok(())
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// Starts what a click asks for; answers come back through `done`.
fn act(
    click: Click,
    settings: &Settings,
    details: &DetailsLauncher,
    done: &mpsc::UnboundedSender<Done>,
) {
    tracing::info!("user asked: {click:?}");
    let socket = settings.socket.clone();
    let done = done.clone();
    match click {
        Click::CheckNow => {
            tokio::spawn(async move {
                let answer = ask(&socket, &Request::CheckNow).await;
                let _ = done.send(Done::Answer(Asked::CheckNow, answer));
            });
        }
        Click::Postpone(seconds) => {
            tokio::spawn(async move {
                let answer = ask(&socket, &Request::PostponeReboot { seconds }).await;
                let _ = done.send(Done::Answer(Asked::Postpone, answer));
            });
        }
        Click::RebootNow => {
            let rebooter = settings.rebooter.clone();
            tokio::spawn(async move {
                if let Err(why) = rebooter.reboot().await {
                    tracing::warn!("restart refused: {why}");
                    let _ = done.send(Done::RebootFailed(why));
                }
            });
        }
        Click::ShowDetails => details.open(),
        Click::Quit => {}
    }
}

async fn ask(socket: &std::path::Path, req: &Request) -> Answer {
    match agent::request(socket, req).await {
        Ok(Response::Denied { message }) => Answer::Denied(message),
        Ok(Response::Error { message }) => Answer::Error(message),
        Ok(_) => Answer::Ok,
        Err(AgentError::Unreachable { .. }) => Answer::Unreachable,
        Err(e) => Answer::Error(e.to_string()),
    }
}

/// Starts `bento-tray details` as a child, at most one at a time, so the idle tray
/// never loads a web view.
struct DetailsLauncher {
    socket: PathBuf,
    open: Arc<AtomicBool>,
}

impl DetailsLauncher {
    fn new(socket: PathBuf) -> DetailsLauncher {
        DetailsLauncher {
            socket,
            open: Arc::new(AtomicBool::new(false)),
        }
    }

    fn open(&self) {
        if self.open.swap(true, Ordering::SeqCst) {
            tracing::info!("the details window is already open");
            return;
        }
        let child = tokio::process::Command::from(details_command(&self.socket))
            // The window goes when the tray goes (Quit, logout).
            .kill_on_drop(true)
            .spawn();
        let open = self.open.clone();
        match child {
            Ok(mut child) => {
                tokio::spawn(async move {
                    match child.wait().await {
                        Ok(st) if !st.success() => {
                            tracing::warn!("the details window ended with {st}")
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!("waiting for the details window: {e}"),
                    }
                    open.store(false, Ordering::SeqCst);
                });
            }
            Err(e) => {
                tracing::warn!("cannot open the details window: {e}");
                open.store(false, Ordering::SeqCst);
            }
        }
    }
}

/// The command that opens the details window: `bento-tray-details` beside this
/// program (as installed and as cargo builds it), else from `PATH`.
pub fn details_command(socket: &std::path::Path) -> std::process::Command {
    const NAME: &str = "bento-tray-details";
    let beside = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name(NAME))
        .filter(|p| p.is_file());
    let mut cmd =
        std::process::Command::new(beside.as_deref().unwrap_or(std::path::Path::new(NAME)));
    cmd.arg("--socket").arg(socket);
    cmd
}
