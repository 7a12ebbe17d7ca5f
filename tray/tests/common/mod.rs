//! Real parts for the tray's tests: a private session bus, a StatusNotifierWatcher
//! and an org.freedesktop.Notifications server served with zbus, a test agent
//! speaking the real socket protocol (bento-core types), and the real binary.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bento_core::agent_proto::{Activity, AgentStatus, Event, Request, Response, UpdateRecord};
use bento_core::report::ReportStatus;
use time::OffsetDateTime;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::process::{Child, Command};
use tokio::sync::{broadcast, watch};
use zbus::object_server::SignalEmitter;
use zbus::zvariant::{OwnedValue, Structure, Value};
use zbus::Connection;

pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `probe` until it gives `Some`, or panics after [`DEADLINE`] with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if start.elapsed() > DEADLINE {
            panic!("timed out after {DEADLINE:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The first line `child` prints on its stdout (which must be piped), within
/// [`DEADLINE`]: how a daemon that picks its own address tells it. Panics with
/// `what` when none comes.
pub async fn first_line(child: &mut Child, what: &str) -> String {
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect(what)
        .unwrap()
        .expect(what)
}

// ---------------------------------------------------------------- the bus

/// A private `dbus-daemon --session` of this test, with no service activation.
pub struct Bus {
    pub address: String,
    _daemon: Child,
}

impl Bus {
    pub async fn start(dir: &Path) -> Bus {
        Bus::start_with(dir, false, &[]).await
    }

    /// `activation`: whether the bus may start the system's session services (the
    /// visual test needs xfconfd for the panel), which get `env`.
    pub async fn start_with(dir: &Path, activation: bool, env: &[(String, String)]) -> Bus {
        let conf = dir.join("bus.conf");
        let services = if activation {
            "<standard_session_servicedirs/>"
        } else {
            ""
        };
        std::fs::write(
            &conf,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:dir={}</listen>
  <auth>EXTERNAL</auth>
  {services}
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                dir.display()
            ),
        )
        .unwrap();
        let mut daemon = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--print-address=1"])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("dbus-daemon (Debian package dbus-daemon) must be installed");
        let address = first_line(&mut daemon, "dbus-daemon prints its address").await;
        Bus {
            address: address.trim().to_owned(),
            _daemon: daemon,
        }
    }

    pub async fn connect(&self) -> Connection {
        zbus::connection::Builder::address(self.address.as_str())
            .unwrap()
            .build()
            .await
            .unwrap()
    }
}

// ---------------------------------------------------------------- the watcher

#[derive(Default)]
pub struct Watcher {
    items: Arc<Mutex<Vec<String>>>,
}

#[zbus::interface(name = "org.kde.StatusNotifierWatcher")]
impl Watcher {
    async fn register_status_notifier_item(
        &self,
        service: String,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) {
        self.items.lock().unwrap().push(service.clone());
        let _ = Self::status_notifier_item_registered(&emitter, &service).await;
    }

    fn register_status_notifier_host(&self, _service: String) {}

    #[zbus(property)]
    fn registered_status_notifier_items(&self) -> Vec<String> {
        self.items.lock().unwrap().clone()
    }

    #[zbus(property)]
    fn is_status_notifier_host_registered(&self) -> bool {
        true
    }

    #[zbus(property)]
    fn protocol_version(&self) -> i32 {
        0
    }

    #[zbus(signal)]
    async fn status_notifier_item_registered(
        emitter: &SignalEmitter<'_>,
        service: &str,
    ) -> zbus::Result<()>;
}

/// Serves a watcher on its own connection; the items registered so far.
pub async fn serve_watcher(bus: &Bus) -> (Connection, Arc<Mutex<Vec<String>>>) {
    let watcher = Watcher::default();
    let items = watcher.items.clone();
    let conn = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .name("org.kde.StatusNotifierWatcher")
        .unwrap()
        .serve_at("/StatusNotifierWatcher", watcher)
        .unwrap()
        .build()
        .await
        .unwrap();
    (conn, items)
}

// ---------------------------------------------------------------- notifications

#[derive(Debug, Clone)]
pub struct Note {
    pub id: u32,
    pub app: String,
    pub icon: String,
    pub summary: String,
    pub body: String,
    /// Action keys and labels, flattened as on the wire.
    pub actions: Vec<String>,
    /// 0 low, 1 normal, 2 critical (absent: `None`).
    pub urgency: Option<u8>,
    /// The unique name of the connection that sent it.
    pub sender: String,
    /// The `replaces_id` it was sent with (0: a new notification).
    pub replaces: u32,
    pub at: Instant,
}

pub struct Notifications {
    log: Arc<Mutex<Vec<Note>>>,
    /// The ids `CloseNotification` was called for, in order.
    closed: Arc<Mutex<Vec<u32>>>,
    caps: Vec<String>,
}

#[zbus::interface(name = "org.freedesktop.Notifications")]
impl Notifications {
    #[allow(clippy::too_many_arguments)]
    fn notify(
        &self,
        app_name: String,
        replaces_id: u32,
        app_icon: String,
        summary: String,
        body: String,
        actions: Vec<String>,
        hints: HashMap<String, OwnedValue>,
        _expire_timeout: i32,
        #[zbus(header)] header: zbus::message::Header<'_>,
    ) -> u32 {
        let urgency = hints
            .get("urgency")
            .and_then(|v| v.downcast_ref::<u8>().ok());
        let mut log = self.log.lock().unwrap();
        // As the spec says: a replacement keeps the id it replaces.
        let id = if replaces_id != 0 && log.iter().any(|n| n.id == replaces_id) {
            replaces_id
        } else {
            log.len() as u32 + 1
        };
        log.push(Note {
            id,
            app: app_name,
            icon: app_icon,
            summary,
            body,
            actions,
            urgency,
            sender: header.sender().map(|s| s.to_string()).unwrap_or_default(),
            replaces: replaces_id,
            at: Instant::now(),
        });
        id
    }

    fn close_notification(&self, id: u32) {
        self.closed.lock().unwrap().push(id);
    }

    fn get_capabilities(&self) -> Vec<String> {
        self.caps.clone()
    }

    fn get_server_information(&self) -> (String, String, String, String) {
        (
            "test-notifications".into(),
            "bento".into(),
            "0".into(),
            "1.2".into(),
        )
    }
}

/// The test's notification server.
pub struct NoteServer {
    pub conn: Connection,
    pub log: Arc<Mutex<Vec<Note>>>,
    pub closed: Arc<Mutex<Vec<u32>>>,
}

impl NoteServer {
    /// `actions`: whether it announces the "actions" capability.
    pub async fn serve(bus: &Bus, actions: bool) -> NoteServer {
        let log = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(Mutex::new(Vec::new()));
        let mut caps = vec!["body".to_owned()];
        if actions {
            caps.push("actions".to_owned());
        }
        let conn = zbus::connection::Builder::address(bus.address.as_str())
            .unwrap()
            .name("org.freedesktop.Notifications")
            .unwrap()
            .serve_at(
                "/org/freedesktop/Notifications",
                Notifications {
                    log: log.clone(),
                    closed: closed.clone(),
                    caps,
                },
            )
            .unwrap()
            .build()
            .await
            .unwrap();
        NoteServer { conn, log, closed }
    }

    pub fn notes(&self) -> Vec<Note> {
        self.log.lock().unwrap().clone()
    }

    /// The ids the tray withdrew with `CloseNotification`.
    pub fn closed(&self) -> Vec<u32> {
        self.closed.lock().unwrap().clone()
    }

    /// What a person sees now: the latest notice of each id, without the
    /// withdrawn ones (critical notices stay until withdrawn or dismissed).
    pub fn on_screen(&self) -> Vec<Note> {
        let notes = self.notes();
        let closed = self.closed();
        let mut out: Vec<Note> = Vec::new();
        for n in notes {
            out.retain(|o| o.id != n.id);
            out.push(n);
        }
        out.retain(|n| !closed.contains(&n.id));
        out
    }

    /// Waits until at least `n` notifications arrived; returns all of them.
    pub async fn wait_count(&self, n: usize) -> Vec<Note> {
        wait_for(&format!("{n} notifications"), || async {
            let notes = self.notes();
            (notes.len() >= n).then_some(notes)
        })
        .await
    }

    /// Clicks a button of a notification, the way a server does: `ActionInvoked`
    /// sent to the notification's sender.
    pub async fn click(&self, note: &Note, key: &str) {
        self.conn
            .emit_signal(
                Some(note.sender.as_str()),
                "/org/freedesktop/Notifications",
                "org.freedesktop.Notifications",
                "ActionInvoked",
                &(note.id, key),
            )
            .await
            .unwrap();
    }
}

pub fn summaries(notes: &[Note]) -> Vec<&str> {
    notes.iter().map(|n| n.summary.as_str()).collect()
}

// ---------------------------------------------------------------- the agent

pub struct AgentState {
    status: AgentStatus,
    check_now: Response,
    postpone: Response,
    requests: Vec<Request>,
    subscribers: usize,
    /// Bumped by [`Agent::restart`]: connections of an earlier agent that end
    /// late do not count against the new one's subscribers.
    generation: u64,
}

/// A test agent on a real Unix socket, speaking `bento_core::agent_proto`.
pub struct Agent {
    pub socket: PathBuf,
    state: Arc<Mutex<AgentState>>,
    events: broadcast::Sender<Event>,
    stop: watch::Sender<bool>,
}

impl Agent {
    pub fn start(socket: &Path, status: AgentStatus) -> Agent {
        let state = Arc::new(Mutex::new(AgentState {
            status,
            check_now: Response::Ok {
                message: "checking".into(),
            },
            postpone: Response::Ok {
                message: "postponed".into(),
            },
            requests: Vec::new(),
            subscribers: 0,
            generation: 0,
        }));
        Agent::serve(socket, state)
    }

    fn serve(socket: &Path, state: Arc<Mutex<AgentState>>) -> Agent {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket).unwrap();
        let (events, _) = broadcast::channel(64);
        let (stop, stopped) = watch::channel(false);
        let agent = Agent {
            socket: socket.to_owned(),
            state: state.clone(),
            events: events.clone(),
            stop,
        };
        tokio::spawn(async move {
            let mut stopped_accept = stopped.clone();
            loop {
                let stream = tokio::select! {
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => return },
                    _ = stopped_accept.changed() => return,
                };
                tokio::spawn(connection(
                    stream,
                    state.clone(),
                    events.subscribe(),
                    stopped.clone(),
                ));
            }
        });
        agent
    }

    /// Stops serving: open connections close, the socket file goes away.
    pub fn stop(self) -> Arc<Mutex<AgentState>> {
        let _ = self.stop.send(true);
        let _ = std::fs::remove_file(&self.socket);
        self.state.clone()
    }

    /// A new agent on the same socket with the state of the stopped one (its
    /// subscribers are gone), changed by `f` before it serves.
    pub fn restart(
        socket: &Path,
        state: Arc<Mutex<AgentState>>,
        f: impl FnOnce(&mut AgentStatus),
    ) -> Agent {
        {
            let mut s = state.lock().unwrap();
            s.subscribers = 0;
            s.generation += 1;
            f(&mut s.status);
        }
        Agent::serve(socket, state)
    }

    /// Folds the event into the served status (as the real agent would), then pushes it.
    pub fn send(&self, event: Event) {
        bento_tray::model::apply(
            &mut self.state.lock().unwrap().status,
            &event,
            OffsetDateTime::now_utc(),
        );
        let _ = self.events.send(event);
    }

    pub fn set_status(&self, f: impl FnOnce(&mut AgentStatus)) {
        f(&mut self.state.lock().unwrap().status);
    }

    pub fn answer_check_now(&self, r: Response) {
        self.state.lock().unwrap().check_now = r;
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn subscribers(&self) -> usize {
        self.state.lock().unwrap().subscribers
    }

    pub async fn wait_subscribers(&self, n: usize) {
        wait_for(&format!("{n} subscriber(s) on the agent"), || async {
            (self.subscribers() >= n).then_some(())
        })
        .await
    }

    /// Waits until no tray follows the agent any more (a stopped tray's connection
    /// is closed), so that a tray started next is the one `wait_subscribers` counts.
    pub async fn wait_no_subscribers(&self) {
        wait_for("no subscriber left on the agent", || async {
            (self.subscribers() == 0).then_some(())
        })
        .await
    }

    pub async fn wait_request(&self, r: &Request) {
        wait_for(&format!("the agent to receive {r:?}"), || async {
            self.requests().contains(r).then_some(())
        })
        .await
    }
}

async fn connection(
    stream: tokio::net::UnixStream,
    state: Arc<Mutex<AgentState>>,
    mut events: broadcast::Receiver<Event>,
    mut stopped: watch::Receiver<bool>,
) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let line = tokio::select! {
        l = lines.next_line() => match l { Ok(Some(l)) => l, _ => return },
        _ = stopped.changed() => return,
    };
    let req: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => {
            let r = Response::Error {
                message: e.to_string(),
            };
            let _ = write.write_all(r.to_line().as_bytes()).await;
            return;
        }
    };
    let answer = {
        let mut s = state.lock().unwrap();
        s.requests.push(req.clone());
        match &req {
            Request::Status | Request::Subscribe => Response::Status {
                status: Box::new(s.status.clone()),
            },
            Request::CheckNow => s.check_now.clone(),
            Request::PostponeReboot { .. } => s.postpone.clone(),
        }
    };
    if write.write_all(answer.to_line().as_bytes()).await.is_err() || req != Request::Subscribe {
        return;
    }
    let generation = {
        let mut s = state.lock().unwrap();
        s.subscribers += 1;
        s.generation
    };
    loop {
        tokio::select! {
            e = events.recv() => match e {
                Ok(event) => {
                    if write.write_all(Response::Event { event }.to_line().as_bytes()).await.is_err() {
                        break;
                    }
                }
                Err(_) => break,
            },
            // The tray never writes after subscribing; EOF means it left.
            l = lines.next_line() => if !matches!(l, Ok(Some(_))) { break },
            _ = stopped.changed() => break,
        }
    }
    let mut s = state.lock().unwrap();
    if s.generation == generation {
        s.subscribers -= 1;
    }
}

// ---------------------------------------------------------------- statuses

pub const REV1: &str = "1111111111aaaaaaaaaa";
pub const REV2: &str = "2222222222bbbbbbbbbb";
/// The running system of [`status`] (the one an update to [`REV1`] installs),
/// and the NixOS version its toplevel says.
pub const SYSTEM1: &str = "1111-nixos-system-ws1";
pub const SYSTEM1_VERSION: &str = "24.05.20240612.1234abc";
/// The system an update to [`REV2`] installs (see [`record`]), and its version.
pub const SYSTEM2: &str = "2222-nixos-system-ws1";
pub const SYSTEM2_VERSION: &str = "24.11.20241231.edf04b7";

/// Lays out `<dir>/store` as a Nix store holds system toplevels, as far as the
/// tray reads them: `<system>/nixos-version`. The tray is pointed at it with
/// `NIX_STORE_DIR`. Systems not listed here have no version (not NixOS).
pub fn write_store(dir: &Path) -> PathBuf {
    let store = dir.join("store");
    for (system, version) in [(SYSTEM1, SYSTEM1_VERSION), (SYSTEM2, SYSTEM2_VERSION)] {
        std::fs::create_dir_all(store.join(system)).unwrap();
        std::fs::write(
            store.join(system).join("nixos-version"),
            format!("{version}\n"),
        )
        .unwrap();
    }
    store
}

pub fn status() -> AgentStatus {
    AgentStatus {
        host: "ws1".to_owned(),
        agent_version: "0.1.0".to_owned(),
        activity: Activity::Idle,
        revision: Some(REV1.to_owned()),
        system: Some(SYSTEM1.to_owned()),
        last_check: Some(OffsetDateTime::now_utc()),
        server_reachable: Some(true),
        last_update: None,
        history: Vec::new(),
        reboot_required: false,
        reboot_scheduled: None,
        log_tail: Vec::new(),
        last_changes: Vec::new(),
        obtained: Some(bento_core::report::Obtained::Fetched {
            paths: 3,
            bytes: 5 << 20,
            millis: 4200,
        }),
        exact: Some(true),
    }
}

/// An update that ended `minutes_ago`.
pub fn record(
    minutes_ago: i64,
    status: ReportStatus,
    revision: &str,
    error: Option<&str>,
    changed: Option<u32>,
) -> UpdateRecord {
    UpdateRecord {
        time: OffsetDateTime::now_utc().replace_nanosecond(0).unwrap()
            - time::Duration::minutes(minutes_ago),
        status,
        revision: Some(revision.to_owned()),
        system: Some(format!("{}-nixos-system-ws1", &revision[..4])),
        error: error.map(str::to_owned),
        changed_packages: changed,
    }
}

// ---------------------------------------------------------------- events

/// `UpdateFinished`: an update to `revision` installed just now.
pub fn update_finished(revision: &str, changed: Option<u32>) -> Event {
    Event::UpdateFinished {
        record: record(0, ReportStatus::Success, revision, None, changed),
    }
}

/// `UpdateFailed`: an update to `revision` failed just now with `error`.
pub fn update_failed(revision: &str, error: &str) -> Event {
    Event::UpdateFailed {
        record: record(0, ReportStatus::Failure, revision, Some(error), None),
    }
}

/// `RolledBack`: an update to `revision` was undone just now because of `error`.
pub fn rolled_back(revision: &str, error: &str) -> Event {
    Event::RolledBack {
        record: record(0, ReportStatus::Rollback, revision, Some(error), None),
    }
}

// ---------------------------------------------------------------- the tray

/// The real `bento-tray` binary on the test's bus.
pub struct Tray {
    pub child: Child,
    pub pid: u32,
    pub log: PathBuf,
}

impl Tray {
    pub fn start(bus: &Bus, dir: &Path, socket: &Path) -> Tray {
        Tray::start_with(bus, dir, socket, &[])
    }

    pub fn start_with(bus: &Bus, dir: &Path, socket: &Path, extra_env: &[(&str, &str)]) -> Tray {
        let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        let log = dir.join(format!("tray-{n}.log"));
        let store = write_store(dir);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bento-tray"));
        cmd.env("NIX_STORE_DIR", store)
            .arg("--socket")
            .arg(socket)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--reboot-command")
            .arg(format!("touch {}", dir.join("rebooted").display()))
            .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
            .env("BENTO_TRAY_LOG", "bento_tray=debug")
            .env("NO_AT_BRIDGE", "1")
            .env("TZ", "UTC")
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let pid = child.id().unwrap();
        Tray { child, pid, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn wait_log(&self, needle: &str) {
        let start = Instant::now();
        while !self.log().contains(needle) {
            if start.elapsed() > DEADLINE {
                panic!(
                    "timed out waiting for {needle:?} in the tray's log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The well-known name ksni takes for the item.
    pub fn item_name(&self) -> String {
        format!("org.kde.StatusNotifierItem-{}-1", self.pid)
    }

    /// Stops it the way a session does (SIGTERM), and waits until it is gone.
    pub async fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        if tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
            panic!("the tray ignored SIGTERM:\n{}", self.log());
        }
    }
}

// ---------------------------------------------------------------- reading the item

#[derive(Debug, Clone, PartialEq)]
pub struct ItemView {
    pub title: String,
    pub icon_name: String,
    pub attention_icon_name: String,
    pub status: String,
    pub tooltip_title: String,
    pub tooltip_body: String,
    pub pixmap_sizes: Vec<(i32, i32)>,
    /// The 32×32 pixmap's ARGB bytes, to tell the states' icons apart.
    pub pixmap_32: Vec<u8>,
    pub tooltip_icon_name: String,
    pub tooltip_pixmap_sizes: Vec<(i32, i32)>,
    pub menu: Vec<MenuEntry>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MenuEntry {
    pub id: i32,
    pub label: String,
    pub enabled: bool,
    pub separator: bool,
}

async fn proxy<'a>(
    conn: &Connection,
    dest: &'a str,
    path: &'a str,
    iface: &'a str,
) -> zbus::Result<zbus::Proxy<'a>> {
    zbus::proxy::Builder::new(conn)
        .destination(dest)?
        .path(path)?
        .interface(iface)?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
}

type ToolTip = (String, Vec<(i32, i32, Vec<u8>)>, String, String);
/// A dbusmenu node: id, properties, children (each a variant of the same).
type Layout = (i32, HashMap<String, OwnedValue>, Vec<OwnedValue>);

/// Reads the item's properties and menu, as a tray host does.
pub async fn read_item(conn: &Connection, name: &str) -> zbus::Result<ItemView> {
    let item = proxy(
        conn,
        name,
        "/StatusNotifierItem",
        "org.kde.StatusNotifierItem",
    )
    .await?;
    let title: String = item.get_property("Title").await?;
    let icon_name: String = item.get_property("IconName").await?;
    let attention_icon_name: String = item.get_property("AttentionIconName").await?;
    let status: String = item.get_property("Status").await?;
    let tooltip: ToolTip = item.get_property("ToolTip").await?;
    let pixmaps: Vec<(i32, i32, Vec<u8>)> = item.get_property("IconPixmap").await?;
    let menu_path: zbus::zvariant::OwnedObjectPath = item.get_property("Menu").await?;
    let menu = read_menu(conn, name, menu_path.as_str()).await?;
    Ok(ItemView {
        title,
        icon_name,
        attention_icon_name,
        status,
        pixmap_32: pixmaps
            .iter()
            .find(|p| p.0 == 32)
            .map(|p| p.2.clone())
            .unwrap_or_default(),
        tooltip_icon_name: tooltip.0.clone(),
        tooltip_pixmap_sizes: tooltip.1.iter().map(|p| (p.0, p.1)).collect(),
        tooltip_title: tooltip.2,
        tooltip_body: tooltip.3,
        pixmap_sizes: pixmaps.iter().map(|p| (p.0, p.1)).collect(),
        menu,
    })
}

pub async fn read_menu(conn: &Connection, name: &str, path: &str) -> zbus::Result<Vec<MenuEntry>> {
    let menu = proxy(conn, name, path, "com.canonical.dbusmenu").await?;
    let (_rev, (_id, _props, children)): (u32, Layout) = menu
        .call("GetLayout", &(0i32, -1i32, Vec::<String>::new()))
        .await?;
    let mut out = Vec::new();
    for child in children {
        let s: Structure = child.try_clone()?.try_into()?;
        let f = s.fields();
        let id: i32 = (&f[0]).try_into()?;
        let props: HashMap<String, OwnedValue> = f[1].try_clone()?.try_into()?;
        let text = |k: &str| props.get(k).and_then(|v| v.downcast_ref::<String>().ok());
        let flag = |k: &str| props.get(k).and_then(|v| v.downcast_ref::<bool>().ok());
        out.push(MenuEntry {
            id,
            label: text("label").unwrap_or_default(),
            enabled: flag("enabled").unwrap_or(true),
            separator: text("type").as_deref() == Some("separator"),
        });
    }
    Ok(out)
}

impl ItemView {
    /// Asserts that the icon is the tray's own pixmap set, with no theme icon name
    /// a host would prefer (in the item, when it needs attention, and in the tooltip).
    #[track_caller]
    pub fn assert_own_icon(&self) {
        assert_eq!(
            (
                self.icon_name.as_str(),
                self.attention_icon_name.as_str(),
                self.tooltip_icon_name.as_str()
            ),
            ("", "", ""),
            "{}: no theme icon name",
            self.title
        );
        let sizes = [(16, 16), (22, 22), (32, 32), (48, 48)];
        assert_eq!(self.pixmap_sizes, sizes, "{}", self.title);
        assert_eq!(self.tooltip_pixmap_sizes, sizes, "{}", self.title);
    }

    /// The labels of the entries (separators left out).
    pub fn labels(&self) -> Vec<&str> {
        self.menu
            .iter()
            .filter(|m| !m.separator)
            .map(|m| m.label.as_str())
            .collect()
    }

    /// Asserts that the tooltip's body says `text`; shows the body when not.
    #[track_caller]
    pub fn assert_tooltip_contains(&self, text: &str) {
        assert!(
            self.tooltip_body.contains(text),
            "the tooltip does not say {text:?}:\n{}",
            self.tooltip_body
        );
    }

    pub fn entry(&self, label: &str) -> &MenuEntry {
        self.menu
            .iter()
            .find(|m| m.label == label)
            .unwrap_or_else(|| panic!("no menu entry {label:?} in {:?}", self.labels()))
    }
}

/// The labels of the tray's menu (as [`ItemView::labels`] gives them): the status
/// line, the two entries every state has, the `extra` entries of the state, and Quit.
pub fn menu_labels<'a>(status_line: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut labels = vec![status_line, "Check for updates now", "Show details…"];
    labels.extend_from_slice(extra);
    labels.push("Quit");
    labels
}

/// Waits until the item shows `title`; returns what it shows.
pub async fn wait_title(conn: &Connection, tray: &Tray, title: &str) -> ItemView {
    let name = tray.item_name();
    let mut last = None;
    let start = Instant::now();
    loop {
        if let Ok(v) = read_item(conn, &name).await {
            if v.title == title {
                return v;
            }
            last = Some(v);
        }
        if start.elapsed() > DEADLINE {
            panic!(
                "timed out waiting for the title {title:?}; last seen {last:#?}\n--- tray log ---\n{}",
                tray.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Clicks a menu entry as a tray host does.
pub async fn click(conn: &Connection, tray: &Tray, view: &ItemView, label: &str) {
    let id = view.entry(label).id;
    let name = tray.item_name();
    let menu = proxy(conn, &name, "/MenuBar", "com.canonical.dbusmenu")
        .await
        .unwrap();
    // A click that quits the tray ends in NoReply; that is fine.
    let _: zbus::Result<()> = menu
        .call("Event", &(id, "clicked", Value::from(0i32), 0u32))
        .await;
}

/// Whether a test desktop has a tray host (a StatusNotifierWatcher) from the start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrayHost {
    Present,
    Absent,
}

/// Whether a test desktop's notification server shows buttons (announces the
/// "actions" capability).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Buttons {
    Supported,
    Unsupported,
}

/// A test desktop without the agent and the tray, for the tests that start those
/// themselves (later, again, or with another status): the test's directory, a
/// private bus, the tray host if there is one, a notification server, and the path
/// of the agent's socket.
/// Fields are declared in reverse start order, so that a `Stage` dropped whole
/// stops the servers before the bus and removes the directory last.
pub struct Stage {
    pub notes: NoteServer,
    pub socket: PathBuf,
    /// The tray host's connection, if there is one.
    pub watcher: Option<Connection>,
    /// The items registered with the tray host (none without one).
    pub items: Arc<Mutex<Vec<String>>>,
    pub bus: Bus,
    pub dir: tempfile::TempDir,
}

impl Stage {
    pub async fn start(host: TrayHost, buttons: Buttons) -> Stage {
        let dir = tempfile::tempdir().unwrap();
        let bus = Bus::start(dir.path()).await;
        let (watcher, items) = match host {
            TrayHost::Present => {
                let (conn, items) = serve_watcher(&bus).await;
                (Some(conn), items)
            }
            TrayHost::Absent => (None, Arc::default()),
        };
        let notes = NoteServer::serve(&bus, buttons == Buttons::Supported).await;
        let socket = dir.path().join("agent.sock");
        Stage {
            notes,
            socket,
            watcher,
            items,
            bus,
            dir,
        }
    }

    /// A test agent on the stage's socket.
    pub fn start_agent(&self, status: AgentStatus) -> Agent {
        Agent::start(&self.socket, status)
    }

    /// The real tray on the stage's bus, following its socket.
    pub fn start_tray(&self) -> Tray {
        Tray::start(&self.bus, self.dir.path(), &self.socket)
    }

    /// Starts the tray and waits until it follows `agent`, so that events sent
    /// from now on reach it.
    pub async fn start_tray_following(&self, agent: &Agent) -> Tray {
        let tray = self.start_tray();
        agent.wait_subscribers(1).await;
        tray
    }

    /// Whether the tray ran its reboot command (which [`Tray::start`] sets to touch
    /// this file instead of restarting the machine).
    pub fn rebooted(&self) -> bool {
        self.dir.path().join("rebooted").exists()
    }
}

/// The usual test desktop: a stage with a tray host and a notification server that
/// shows buttons, a test agent on its socket, and the real tray following it.
/// Fields are declared in start order, so that `let Desktop { stage, agent, tray }`
/// drops them tray first.
pub struct Desktop {
    pub stage: Stage,
    pub agent: Agent,
    pub tray: Tray,
}

impl Desktop {
    pub async fn start() -> Desktop {
        let stage = Stage::start(TrayHost::Present, Buttons::Supported).await;
        let agent = stage.start_agent(status());
        let tray = stage.start_tray();
        Desktop { stage, agent, tray }
    }

    /// A desktop with the agent's usual status whose tray already follows the
    /// agent, so that events sent from now on reach it.
    pub async fn start_following(host: TrayHost, buttons: Buttons) -> Desktop {
        let stage = Stage::start(host, buttons).await;
        let agent = stage.start_agent(status());
        let tray = stage.start_tray_following(&agent).await;
        Desktop { stage, agent, tray }
    }
}
