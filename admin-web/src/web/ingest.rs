//! Following the chroot: host statuses in memory, new reports into the database.
//!
//! The chroot stays the source of truth. Each host's status is computed by core's
//! [`host_status`] (the same code as `bento status`) and kept in [`Fleet`], so pages
//! never walk 10,000 directories. inotify watches the chroot root, every host
//! directory and every `logs/` (not recursive: releases are never watched); a burst
//! of events is collected for a moment, then only the hosts it touched are
//! recomputed, new reports are stored, and open pages are told by SSE. A full
//! rescan runs every [`PanelConfig::rescan_interval`](super::PanelConfig) so
//! offline flags age and a missed event (inotify overflow, watch limit) is caught up.
//!
//! Reports come from hosts that may be compromised: names are parsed by core,
//! sidecars are read with a size cap and never through a symlink or from anything
//! but a regular file, and fields are clipped before they are stored.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant, SystemTime};

use bento_core::chroot::{Chroot, LOGS_DIR, STATES_FILE};
use bento_core::config::Settings;
use bento_core::report::{self, ReportMeta, MAX_JSON_BYTES};
use bento_core::status::{host_status, HostStatus, StatusOptions};
use bento_core::HostName;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::db::{now_ms, to_ms};
use super::views::clip;
use super::{AppState, Change};

/// At most this many reports of a host are read when the panel first sees it.
const FIRST_INGEST_MAX: usize = 1000;
/// File times are coarser than the clock: reconsider files this much older than a mark.
const MARK_SLACK: Duration = Duration::from_secs(2);
/// How long a burst of events is collected before it is processed.
const SETTLE: Duration = Duration::from_millis(40);
/// Beyond this many changed hosts, pages are told "everything changed".
const MAX_LISTED_CHANGES: usize = 200;

/// The fleet as last computed.
#[derive(Default)]
pub struct Fleet {
    cache: RwLock<FleetCache>,
    /// Per host: server time of the last scan whose reports are stored.
    marks: Mutex<HashMap<String, SystemTime>>,
    /// Reports stored since start (for `/metrics`).
    pub reports_ingested: AtomicU64,
    /// Whether the marks were loaded from the database.
    marks_loaded: std::sync::atomic::AtomicBool,
    /// Asks the follower for a full scan (after a deploy: the chroot may be new).
    pub rescan: tokio::sync::Notify,
}

#[derive(Default)]
pub struct FleetCache {
    pub hosts: BTreeMap<String, Arc<HostStatus>>,
    /// `[hosts.<name>] tags` of the settings.
    pub tags: HashMap<String, Vec<String>>,
    pub all_tags: Vec<String>,
    /// `states.txt`: host → expected system.
    pub states: BTreeMap<String, String>,
    /// When the chroot was last read in full.
    pub scanned_at: Option<SystemTime>,
    /// Why the chroot could not be read, if it could not.
    pub problem: Option<String>,
}

impl Fleet {
    pub fn read(&self) -> RwLockReadGuard<'_, FleetCache> {
        self.cache.read().expect("fleet lock")
    }

    pub fn get(&self, host: &str) -> Option<Arc<HostStatus>> {
        self.read().hosts.get(host).cloned()
    }

    /// Replaces the fleet (benchmarks and tests build one without a chroot).
    pub fn replace(&self, hosts: Vec<HostStatus>, settings: &Settings) {
        let mut c = self.cache.write().expect("fleet lock");
        c.hosts = hosts
            .into_iter()
            .map(|h| (h.host.clone(), Arc::new(h)))
            .collect();
        set_tags(&mut c, settings);
    }
}

fn set_tags(c: &mut FleetCache, settings: &Settings) {
    c.tags = settings
        .hosts
        .iter()
        .filter(|(_, h)| !h.tags.is_empty())
        .map(|(n, h)| (n.to_string(), h.tags.clone()))
        .collect();
    let all: BTreeSet<&String> = c.tags.values().flatten().collect();
    c.all_tags = all.into_iter().cloned().collect();
}

/// A report found in the chroot, ready to store.
#[derive(Debug, Clone)]
pub struct NewReport {
    pub host: String,
    pub file: String,
    pub client_time: String,
    pub status: String,
    pub system: String,
    pub received: i64,
    pub ctime: i64,
    pub size: i64,
    pub meta: Option<ReportMeta>,
    pub sidecar_error: Option<String>,
}

/// What one scan found.
struct Scan {
    started: SystemTime,
    statuses: Vec<HostStatus>,
    reports: Vec<NewReport>,
    scanned: Vec<String>,
}

fn status_options(settings: &Settings) -> StatusOptions {
    StatusOptions {
        now: SystemTime::now(),
        poll_interval: Duration::from_secs(settings.poll_interval),
        offline_after_polls: settings.offline_after_polls,
    }
}

/// Computes the status of `hosts` and collects their reports newer than their mark,
/// on a few threads.
fn scan_hosts(
    chroot: &Chroot,
    hosts: &[HostName],
    states: &BTreeMap<String, String>,
    settings: &Settings,
    marks: &HashMap<String, SystemTime>,
) -> Scan {
    let started = SystemTime::now();
    let opts = status_options(settings);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    let chunk = hosts.len().div_ceil(threads).max(32);
    let parts: Vec<(Vec<HostStatus>, Vec<NewReport>)> = std::thread::scope(|s| {
        let handles: Vec<_> = hosts
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    let mut statuses = Vec::with_capacity(part.len());
                    let mut reports = Vec::new();
                    for h in part {
                        statuses.push(host_status(
                            chroot,
                            h,
                            states.get(h.as_str()).map(String::as_str),
                            &opts,
                        ));
                        reports.extend(new_reports(chroot, h, marks.get(h.as_str()).copied()));
                    }
                    (statuses, reports)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("scan thread panicked"))
            .collect()
    });
    let mut scan = Scan {
        started,
        statuses: Vec::with_capacity(hosts.len()),
        reports: Vec::new(),
        scanned: hosts.iter().map(|h| h.to_string()).collect(),
    };
    for (st, rep) in parts {
        scan.statuses.extend(st);
        scan.reports.extend(rep);
    }
    scan
}

/// Reports of `host` changed since `mark` (all of them, up to a limit, without one).
fn new_reports(chroot: &Chroot, host: &HostName, mark: Option<SystemTime>) -> Vec<NewReport> {
    let logs = chroot.logs_dir(host);
    let since = mark.map(|m| m.checked_sub(MARK_SLACK).unwrap_or(SystemTime::UNIX_EPOCH));
    // A new report is a new name in logs/, which changes the directory's times.
    if let (Some(since), Ok(md)) = (since, fs::metadata(&logs)) {
        let changed = md.modified().ok().max(Some(report_ctime(&md)));
        if changed.is_some_and(|t| t < since) {
            return Vec::new();
        }
    }
    let scan = match report::scan_logs(&logs, |_| false) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!("{}: {e}", logs.display());
            return Vec::new();
        }
    };
    let mut entries: Vec<_> = scan
        .reports
        .into_iter()
        .filter(|r| since.is_none_or(|s| r.ctime >= s))
        .collect();
    if since.is_none() && entries.len() > FIRST_INGEST_MAX {
        // Sorted oldest → newest: keep the newest.
        entries.drain(..entries.len() - FIRST_INGEST_MAX);
    }
    entries
        .into_iter()
        .map(|r| {
            let sidecar = logs.join(r.name.sidecar_file_name());
            let (meta, sidecar_error) = match read_sidecar(&sidecar) {
                Ok(Some(m)) => (Some(m), None),
                Ok(None) => (None, None),
                Err(e) => (None, Some(clip(&e, 300))),
            };
            let size = fs::symlink_metadata(logs.join(&r.file_name))
                .map(|m| m.len() as i64)
                .unwrap_or(0);
            let t = r.name.time;
            NewReport {
                host: host.to_string(),
                client_time: format!(
                    "{}-{:02}-{:02} {:02}:{:02}",
                    t.year(),
                    t.month() as u8,
                    t.day(),
                    t.hour(),
                    t.minute()
                ),
                status: r.name.status.as_str().to_owned(),
                system: r.name.system.clone(),
                received: to_ms(r.mtime),
                ctime: to_ms(r.ctime),
                size,
                meta,
                sidecar_error,
                file: r.file_name,
            }
        })
        .collect()
}

fn report_ctime(md: &fs::Metadata) -> SystemTime {
    use std::os::unix::fs::MetadataExt;
    let (secs, nanos) = (md.ctime(), md.ctime_nsec());
    if secs < 0 {
        return SystemTime::UNIX_EPOCH;
    }
    SystemTime::UNIX_EPOCH + Duration::new(secs as u64, nanos.clamp(0, 999_999_999) as u32)
}

/// Opens a file a host wrote, for reading: never through a symlink (it could point
/// anywhere on the server), never blocking on a FIFO, only a regular file.
pub fn open_host_file(path: &Path) -> std::io::Result<fs::File> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(f)
}

/// A report's sidecar: `Ok(None)` when there is none, `Err` when it is unusable.
fn read_sidecar(path: &Path) -> Result<Option<ReportMeta>, String> {
    let f = match open_host_file(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err("the sidecar is a symbolic link: ignored".into())
        }
        Err(e) => return Err(format!("cannot read the sidecar: {e}")),
    };
    let mut buf = Vec::new();
    f.take(MAX_JSON_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read the sidecar: {e}"))?;
    if buf.len() as u64 > MAX_JSON_BYTES {
        return Err(format!(
            "the sidecar is larger than {MAX_JSON_BYTES} bytes: ignored"
        ));
    }
    serde_json::from_slice(&buf)
        .map(Some)
        .map_err(|e| format!("malformed sidecar: {e}"))
}

/// Stores reports (a report seen before its sidecar gets the sidecar's fields) and
/// moves the marks of the scanned hosts.
async fn store(state: &AppState, scan: &Scan) -> Result<(), sqlx::Error> {
    let now = now_ms();
    let mark = to_ms(scan.started);
    let with_reports: BTreeSet<&str> = scan.reports.iter().map(|r| r.host.as_str()).collect();
    let mut tx = state.db.begin().await?;
    for r in &scan.reports {
        let m = r.meta.as_ref();
        sqlx::query(
            "INSERT INTO reports (host, file, client_time, status, system, received, ctime, size, \
               has_sidecar, sidecar_error, revision, started, finished, error, agent_version, \
               reboot_required, ingested_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (host, file) DO UPDATE SET \
               has_sidecar = excluded.has_sidecar, sidecar_error = excluded.sidecar_error, \
               revision = excluded.revision, started = excluded.started, \
               finished = excluded.finished, error = excluded.error, \
               agent_version = excluded.agent_version, reboot_required = excluded.reboot_required, \
               received = excluded.received, size = excluded.size \
             WHERE reports.has_sidecar = 0 AND excluded.has_sidecar = 1 \
               OR reports.size != excluded.size",
        )
        .bind(&r.host)
        .bind(&r.file)
        .bind(&r.client_time)
        .bind(&r.status)
        .bind(&r.system)
        .bind(r.received)
        .bind(r.ctime)
        .bind(r.size)
        .bind(m.is_some())
        .bind(&r.sidecar_error)
        .bind(m.and_then(|m| m.revision.as_deref()).map(|s| clip(s, 128)))
        .bind(m.map(|m| m.started.unix_timestamp() * 1000))
        .bind(m.map(|m| m.finished.unix_timestamp() * 1000))
        .bind(m.and_then(|m| m.error.as_deref()).map(|s| clip(s, 2000)))
        .bind(m.map(|m| clip(&m.agent_version, 100)))
        .bind(m.is_some_and(|m| m.reboot_required))
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    for host in &with_reports {
        sqlx::query("INSERT INTO ingest_marks (host, mark) VALUES (?, ?) ON CONFLICT (host) DO UPDATE SET mark = excluded.mark")
            .bind(host)
            .bind(mark)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    state
        .fleet
        .reports_ingested
        .fetch_add(scan.reports.len() as u64, Ordering::Relaxed);
    let mut marks = state.fleet.marks.lock().expect("marks");
    for h in &scan.scanned {
        marks.insert(h.clone(), scan.started);
    }
    Ok(())
}

async fn load_marks(state: &AppState) -> Result<(), sqlx::Error> {
    if state.fleet.marks_loaded.load(Ordering::Acquire) {
        return Ok(());
    }
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT host, mark FROM ingest_marks")
        .fetch_all(&state.db)
        .await?;
    let mut marks = state.fleet.marks.lock().expect("marks");
    for (h, ms) in rows {
        marks
            .entry(h)
            .or_insert(SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64));
    }
    state.fleet.marks_loaded.store(true, Ordering::Release);
    Ok(())
}

/// Which hosts to recompute.
#[derive(Default, Debug)]
struct Pending {
    hosts: BTreeSet<String>,
    /// `states.txt` changed: re-read it, recompute hosts whose expected system moved.
    states: bool,
    /// Host directories appeared or went away.
    listing: bool,
    /// Events were lost: read everything.
    full: bool,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.hosts.is_empty() && !self.states && !self.listing && !self.full
    }

    /// Classifies an event by its path below the chroot root.
    fn add(&mut self, root: &Path, ev: notify::Result<notify::Event>) {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!("watching the chroot: {e}; reading it again");
                self.full = true;
                return;
            }
        };
        if ev.need_rescan() {
            self.full = true;
        }
        // Reading files (as the scans do) is no change; a finished write is.
        if let notify::EventKind::Access(kind) = ev.kind {
            if !matches!(
                kind,
                notify::event::AccessKind::Close(notify::event::AccessMode::Write)
            ) {
                return;
            }
        }
        for p in &ev.paths {
            let Ok(rel) = p.strip_prefix(root) else {
                continue;
            };
            let mut comps = rel.components().map(|c| c.as_os_str().to_string_lossy());
            match (comps.next(), comps.next()) {
                (Some(first), None) if first == STATES_FILE => self.states = true,
                (Some(first), None) => {
                    if HostName::new(&first).is_ok() {
                        self.listing = true;
                        self.hosts.insert(first.into_owned());
                    }
                }
                (Some(host), Some(_)) => {
                    if HostName::new(&host).is_ok() {
                        self.hosts.insert(host.into_owned());
                    }
                }
                (None, _) => self.listing = true,
            }
        }
    }
}

/// Reads the whole chroot: every host's status and new reports. Also re-reads the
/// settings (tags). Never fails on the chroot itself: an unreadable chroot is shown
/// on the fleet page.
pub async fn full_scan(state: &AppState) -> anyhow::Result<Vec<String>> {
    Ok(full_scan_inner(state).await?.0)
}

/// The hosts that changed, and the hosts that were read.
type Scanned = (Vec<String>, Vec<String>);

async fn full_scan_inner(state: &AppState) -> anyhow::Result<Scanned> {
    state.reload_settings();
    load_marks(state).await?;
    let settings = state.settings();
    let marks = state.fleet.marks.lock().expect("marks").clone();
    let s2 = settings.clone();
    let (scan, states, problem) = tokio::task::spawn_blocking(move || {
        let chroot = Chroot::new(&s2.chroot_dir);
        let (hosts, problem) = match chroot.hosts() {
            Ok(h) => (h, None),
            Err(e) => (
                Vec::new(),
                Some(format!(
                    "cannot read the chroot {}: {e}",
                    s2.chroot_dir.display()
                )),
            ),
        };
        let states = chroot.read_states();
        (
            scan_hosts(&chroot, &hosts, &states, &s2, &marks),
            states,
            problem,
        )
    })
    .await?;
    if let Some(p) = &problem {
        tracing::warn!("{p}");
    }
    store(state, &scan).await?;
    let changed = {
        let mut c = state.fleet.cache.write().expect("fleet lock");
        set_tags(&mut c, &settings);
        c.states = states;
        c.problem = problem;
        c.scanned_at = Some(scan.started);
        let mut fresh: BTreeMap<String, Arc<HostStatus>> = BTreeMap::new();
        let mut changed = Vec::new();
        for st in scan.statuses {
            match c.hosts.get(&st.host) {
                Some(old) if **old == st => {
                    fresh.insert(st.host.clone(), old.clone());
                }
                _ => {
                    changed.push(st.host.clone());
                    fresh.insert(st.host.clone(), Arc::new(st));
                }
            }
        }
        changed.extend(c.hosts.keys().filter(|h| !fresh.contains_key(*h)).cloned());
        c.hosts = fresh;
        changed
    };
    announce(state, &changed);
    Ok((changed, scan.scanned))
}

fn announce(state: &AppState, changed: &[String]) {
    tracing::debug!("changed: {changed:?}");
    if changed.is_empty() {
        return;
    }
    let all = changed.len() > MAX_LISTED_CHANGES;
    state.notify(Change {
        hosts: if all { Vec::new() } else { changed.to_vec() },
        all,
        jobs: Vec::new(),
    });
}

/// Recomputes the hosts an event burst touched.
async fn partial_scan(state: &AppState, pending: Pending) -> anyhow::Result<Scanned> {
    load_marks(state).await?;
    let settings = state.settings();
    let marks = state.fleet.marks.lock().expect("marks").clone();
    let (old_states, known): (BTreeMap<String, String>, BTreeSet<String>) = {
        let c = state.fleet.read();
        (c.states.clone(), c.hosts.keys().cloned().collect())
    };
    let s2 = settings.clone();
    let (scan, states, gone) = tokio::task::spawn_blocking(move || {
        let chroot = Chroot::new(&s2.chroot_dir);
        let mut wanted: BTreeSet<String> = pending.hosts;
        let states = if pending.states {
            let new = chroot.read_states();
            for (h, v) in &new {
                if old_states.get(h) != Some(v) {
                    wanted.insert(h.clone());
                }
            }
            wanted.extend(old_states.keys().filter(|h| !new.contains_key(*h)).cloned());
            new
        } else {
            old_states
        };
        let mut gone = Vec::new();
        let hosts: Vec<HostName> = wanted
            .into_iter()
            .filter_map(|h| HostName::new(&h).ok())
            .filter(|h| {
                let exists = chroot.host_dir(h).is_dir();
                if !exists && known.contains(h.as_str()) {
                    gone.push(h.to_string());
                }
                exists
            })
            .collect();
        (
            scan_hosts(&chroot, &hosts, &states, &s2, &marks),
            states,
            gone,
        )
    })
    .await?;
    store(state, &scan).await?;
    let scanned = scan.scanned.clone();
    let mut changed = Vec::new();
    {
        let mut c = state.fleet.cache.write().expect("fleet lock");
        c.states = states;
        for st in scan.statuses {
            if c.hosts.get(&st.host).is_some_and(|old| **old == st) {
                continue;
            }
            changed.push(st.host.clone());
            c.hosts.insert(st.host.clone(), Arc::new(st));
        }
        for g in gone {
            if c.hosts.remove(&g).is_some() {
                changed.push(g);
            }
        }
    }
    announce(state, &changed);
    Ok((changed, scanned))
}

/// inotify watches: the chroot root, each host directory and each `logs/`.
struct Watches {
    watcher: notify::RecommendedWatcher,
    watched: HashSet<PathBuf>,
    warned: bool,
}

impl Watches {
    /// Whether `p` is newly watched.
    fn add(&mut self, p: &Path) -> bool {
        if self.watched.contains(p) || !p.is_dir() {
            return false;
        }
        match self.watcher.watch(p, RecursiveMode::NonRecursive) {
            Ok(()) => {
                self.watched.insert(p.to_owned());
                true
            }
            Err(e) => {
                if !self.warned {
                    tracing::warn!(
                        "cannot watch {}: {e}; changes there are seen at the next rescan \
                         (raise fs.inotify.max_user_watches for big fleets)",
                        p.display()
                    );
                    self.warned = true;
                }
                false
            }
        }
    }

    /// Whether a watch was added for the host.
    fn add_host(&mut self, root: &Path, host: &str) -> bool {
        let dir = root.join(host);
        let a = self.add(&dir);
        let b = self.add(&dir.join(LOGS_DIR));
        a || b
    }
}

/// The chroot's inotify watches and their events, made before the first scan so
/// that nothing written meanwhile is missed.
pub struct Follower {
    root: PathBuf,
    watches: Option<Watches>,
    rx: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
}

/// Watches the chroot root and every host directory in it.
pub fn watch(state: &AppState) -> Follower {
    let root = state.settings().chroot_dir.clone();
    let (tx, rx) = mpsc::unbounded_channel();
    let mut watches = if state.config.watch {
        match notify::recommended_watcher(move |ev| {
            let _ = tx.send(ev);
        }) {
            Ok(watcher) => Some(Watches {
                watcher,
                watched: HashSet::new(),
                warned: false,
            }),
            Err(e) => {
                tracing::warn!("cannot watch the chroot ({e}): changes are seen at each rescan");
                None
            }
        }
    } else {
        None
    };
    if let Some(w) = &mut watches {
        w.add(&root);
        for h in Chroot::new(&root).hosts().unwrap_or_default() {
            w.add_host(&root, h.as_str());
        }
    }
    Follower { root, watches, rx }
}

/// Follows the chroot until the panel stops.
pub async fn follow(state: AppState, follower: Follower) {
    let Follower {
        root,
        mut watches,
        mut rx,
    } = follower;
    let mut shutdown = state.shutdown.clone();
    let mut tick = tokio::time::interval(state.config.rescan_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut pending = Pending::default();
    loop {
        if pending.is_empty() {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => pending.full = true,
                _ = state.fleet.rescan.notified() => pending.full = true,
                ev = rx.recv() => match ev {
                    Some(ev) => {
                        pending.add(&root, ev);
                        let deadline = Instant::now() + SETTLE;
                        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline.into(), rx.recv()).await {
                            pending.add(&root, ev);
                        }
                    }
                    None => pending.full = true,
                },
            }
            if pending.is_empty() {
                continue;
            }
        }
        tracing::debug!("chroot changed: {pending:?}");
        let batch = std::mem::take(&mut pending);
        // Watch new hosts before reading them: a file written in between is then
        // either seen by the scan or reported by inotify.
        if let Some(w) = &mut watches {
            w.add(&root);
            let listed = if batch.full || batch.listing {
                Chroot::new(&root).hosts().unwrap_or_default()
            } else {
                Vec::new()
            };
            for h in batch
                .hosts
                .iter()
                .map(String::as_str)
                .chain(listed.iter().map(HostName::as_str))
            {
                w.add_host(&root, h);
            }
        }
        let result = if batch.full {
            full_scan_inner(&state).await
        } else {
            partial_scan(&state, batch).await
        };
        match result {
            Ok((_, scanned)) => {
                // A host read without a watch yet (found through states.txt or a
                // rescan): watch it, then read it again.
                if let Some(w) = &mut watches {
                    for h in scanned {
                        if w.add_host(&root, &h) {
                            pending.hosts.insert(h);
                        }
                    }
                }
            }
            Err(e) => tracing::error!("cannot read the chroot: {e:#}"),
        }
        // Rollouts that nobody drives conclude from what the hosts just reported.
        let settings = state.settings();
        if let Err(e) = crate::rollouts::settle(&state.db, &settings).await {
            tracing::warn!("cannot update the rollouts: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, CreateKind, EventKind};

    fn ev(kind: EventKind, path: &str) -> notify::Result<notify::Event> {
        Ok(notify::Event::new(kind).add_path(PathBuf::from(path)))
    }

    #[test]
    fn events_are_classified_by_path() {
        let root = Path::new("/srv/chroot");
        let mut p = Pending::default();
        p.add(
            root,
            ev(
                EventKind::Create(CreateKind::File),
                "/srv/chroot/web1/logs/x.log.gz",
            ),
        );
        p.add(
            root,
            ev(EventKind::Create(CreateKind::Folder), "/srv/chroot/db2"),
        );
        p.add(
            root,
            ev(
                EventKind::Create(CreateKind::File),
                "/srv/chroot/states.txt",
            ),
        );
        p.add(
            root,
            ev(
                EventKind::Create(CreateKind::Folder),
                "/srv/chroot/not a host",
            ),
        );
        p.add(
            root,
            ev(
                EventKind::Create(CreateKind::File),
                "/elsewhere/web9/logs/x",
            ),
        );
        assert_eq!(p.hosts.iter().collect::<Vec<_>>(), ["db2", "web1"]);
        assert!(p.states && p.listing && !p.full);
    }

    #[test]
    fn reading_files_is_no_change_but_a_finished_write_is() {
        let root = Path::new("/srv/chroot");
        let mut p = Pending::default();
        for kind in [
            AccessKind::Open(AccessMode::Read),
            AccessKind::Close(AccessMode::Read),
            AccessKind::Read,
        ] {
            p.add(
                root,
                ev(
                    EventKind::Access(kind),
                    "/srv/chroot/web1/logs/heartbeat.json",
                ),
            );
        }
        assert!(p.is_empty());
        p.add(
            root,
            ev(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                "/srv/chroot/web1/logs/a.json",
            ),
        );
        assert_eq!(p.hosts.len(), 1);
    }

    #[test]
    fn sidecars_are_never_read_through_a_symlink() {
        let t = tempfile::tempdir().unwrap();
        let secret = t.path().join("secret");
        fs::write(&secret, "{}").unwrap();
        let link = t.path().join("x.json");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        assert!(read_sidecar(&link).unwrap_err().contains("symbolic link"));
        assert_eq!(read_sidecar(&t.path().join("none.json")), Ok(None));
        fs::write(
            t.path().join("big.json"),
            vec![b' '; MAX_JSON_BYTES as usize + 1],
        )
        .unwrap();
        assert!(read_sidecar(&t.path().join("big.json"))
            .unwrap_err()
            .contains("larger than"));
    }
}
