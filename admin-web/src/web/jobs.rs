//! Jobs: build, dry-build, deploy and flake-update, for the fleet or one host.
//!
//! Jobs are rows of the database, run one at a time in creation order by
//! [`runner`], through the same code as the command line (`deploy::run`, in a
//! blocking thread). A deploy holds the bento directory's deploy lock, shared with
//! `bento deploy`: while the command line holds it, the job waits and says so.
//! The log of a running job lives in memory (for live readers, by SSE) and is
//! written to the database every half second; a job found running when the panel
//! starts was interrupted by a stop and is marked failed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use bento_core::bentodir::{BentoDir, HostKind};
use bento_core::chroot::{Chroot, Published};
use bento_core::deploy::{self, Event, HostOutcome, RunOptions};
use bento_core::nix::Nix;
use bento_core::rollout;
use bento_core::HostName;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;
use tokio::sync::{broadcast, mpsc, Notify};

use super::auth::{CsrfForm, SessionUser};
use super::db::now_ms;
use super::error::{WebError, WebResult};
use super::views::{self, Nav};
use super::{audit, AppState, Change};

/// Lines of nix output kept per job; the hosts' results are always kept.
const MAX_OUTPUT_LINES: usize = 20_000;
const MAX_LINE: usize = 2000;
/// How long a deploy waits for the command line's deploy to finish.
const LOCK_WAIT: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    Build,
    DryBuild,
    Deploy,
    FlakeUpdate,
}

impl JobKind {
    pub const ALL: [JobKind; 4] = [
        JobKind::Build,
        JobKind::DryBuild,
        JobKind::Deploy,
        JobKind::FlakeUpdate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Build => "build",
            JobKind::DryBuild => "dry-build",
            JobKind::Deploy => "deploy",
            JobKind::FlakeUpdate => "flake-update",
        }
    }

    pub fn parse(s: &str) -> Result<Self, WebError> {
        JobKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                WebError::BadRequest(format!(
                    "Unknown job {:?}: choose build, dry-build, deploy or flake-update.",
                    views::clip(s, 40)
                ))
            })
    }
}

/// A job as stored (and as `/api/v1/jobs` shows it).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    /// `None`: the whole fleet.
    pub host: Option<String>,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    pub created_by: String,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub summary: String,
    /// A deploy's publication: `''` or `waves` (`[rollout]`), `all` (at once).
    pub mode: String,
}

impl Job {
    pub fn duration_ms(&self) -> Option<i64> {
        let start = self.started_at?;
        Some(self.finished_at.unwrap_or_else(now_ms) - start)
    }

    pub fn is_done(&self) -> bool {
        matches!(self.status.as_str(), "succeeded" | "failed" | "cancelled")
    }
}

pub async fn load(db: &SqlitePool, id: i64) -> WebResult<Job> {
    sqlx::query_as::<_, Job>("SELECT * FROM jobs WHERE id = ?")
        .bind(id)
        .fetch_optional(db)
        .await?
        .ok_or_else(|| WebError::NotFound(format!("There is no job {id}.")))
}

/// Jobs left running by a previous panel that stopped (or crashed). A command
/// line deploy's job is its own process's: `rollouts::settle` ends it when that
/// process is gone.
pub async fn fail_interrupted(db: &SqlitePool) -> anyhow::Result<u64> {
    let r = sqlx::query(
        "UPDATE jobs SET status = 'failed', finished_at = ?, \
           summary = 'interrupted: the panel stopped while this job ran' \
         WHERE status = 'running' AND created_by NOT LIKE 'cli:%'",
    )
    .bind(now_ms())
    .execute(db)
    .await?;
    Ok(r.rows_affected())
}

/// A log line with its number (from 1).
type Numbered = (i64, String);

/// The log of a running job, for live readers.
pub struct LiveLog {
    inner: Mutex<LiveInner>,
    tx: Option<broadcast::Sender<Numbered>>,
}

#[derive(Default)]
struct LiveInner {
    lines: Vec<String>,
    flushed: usize,
    output_lines: usize,
    truncated: bool,
}

impl LiveLog {
    fn new() -> Self {
        LiveLog {
            inner: Mutex::default(),
            tx: Some(broadcast::channel(1024).0),
        }
    }

    /// Adds a line (seq numbers start at 1). Nix output beyond the cap is dropped.
    pub(super) fn push(&self, line: &str, output: bool) {
        let mut g = self.inner.lock().expect("job log");
        if output {
            if g.output_lines >= MAX_OUTPUT_LINES {
                if !g.truncated {
                    g.truncated = true;
                    drop(g);
                    self.push("… (more output not kept)", false);
                }
                return;
            }
            g.output_lines += 1;
        }
        let line = clean_line(line);
        g.lines.push(line.clone());
        let seq = g.lines.len() as i64;
        if let Some(tx) = &self.tx {
            let _ = tx.send((seq, line));
        }
    }

    /// Lines after `after`, and a receiver for the next ones (taken together, so
    /// none is missed or repeated).
    fn follow(&self, after: i64) -> (Vec<Numbered>, broadcast::Receiver<Numbered>) {
        let g = self.inner.lock().expect("job log");
        let from = after.clamp(0, g.lines.len() as i64) as usize;
        let lines = g.lines[from..]
            .iter()
            .enumerate()
            .map(|(i, l)| ((from + i + 1) as i64, l.clone()))
            .collect();
        let rx = self.tx.as_ref().expect("live log sender").subscribe();
        (lines, rx)
    }

    /// Lines not yet written to the database.
    fn unflushed(&self) -> (usize, Vec<String>) {
        let g = self.inner.lock().expect("job log");
        (g.flushed, g.lines[g.flushed..].to_vec())
    }

    fn mark_flushed(&self, upto: usize) {
        self.inner.lock().expect("job log").flushed = upto;
    }

    pub(super) fn event(&self, e: &Event) {
        match e {
            Event::Planned { hosts } => {
                let shown: Vec<&str> = hosts.iter().take(50).map(String::as_str).collect();
                let more = hosts.len().saturating_sub(shown.len());
                let mut l = format!(
                    "{}: {}",
                    views::plural(hosts.len(), "host", "hosts"),
                    shown.join(", ")
                );
                if more > 0 {
                    l.push_str(&format!(" and {more} more"));
                }
                self.push(&l, false);
            }
            Event::Started { host } => self.push(&format!("{host}: building"), false),
            Event::Line { host, line } => self.push(&format!("{host}> {line}"), true),
            Event::Built {
                host,
                system,
                elapsed,
                evaluated,
            } => self.push(
                &format!(
                    "{host}: {} {} ({:.1} s)",
                    if *evaluated { "evaluated" } else { "built" },
                    system.display(),
                    elapsed.as_secs_f64()
                ),
                false,
            ),
            Event::Failed { host, error } => {
                self.push_block(&format!("{host}: FAILED: "), &format!("{host}: "), error)
            }
            Event::Published { host, outcome } => self.push(
                &match outcome {
                    Published::New { revision, .. } => format!("{host}: published {revision}"),
                    Published::Unchanged { revision } => {
                        format!("{host}: unchanged ({revision}), not republished")
                    }
                },
                false,
            ),
            Event::Warning { message } => self.push_block("warning: ", "warning: ", message),
        }
    }

    /// A message of several lines (nix's `error:` block: the error, its position,
    /// the source lines around it), one log line each, so none is lost or glued to
    /// the next: `first` prefixes its first line, `rest` the others.
    fn push_block(&self, first: &str, rest: &str, message: &str) {
        let message = message.trim_end();
        let mut lines = message.lines();
        self.push(&format!("{first}{}", lines.next().unwrap_or("")), false);
        for l in lines {
            self.push(format!("{rest}{l}").trim_end(), false);
        }
    }
}

/// A log line as shown: no control characters (they could fake other lines or
/// break the event stream), clipped.
fn clean_line(l: &str) -> String {
    let s: String = l
        .chars()
        .filter(|c| *c == '\t' || !c.is_control())
        .collect();
    views::clip(&s, MAX_LINE)
}

/// The queue's shared parts.
#[derive(Default)]
pub struct Jobs {
    wake: Notify,
    live: Mutex<HashMap<i64, Arc<LiveLog>>>,
}

impl Jobs {
    fn live(&self, id: i64) -> Option<Arc<LiveLog>> {
        self.live.lock().expect("live jobs").get(&id).cloned()
    }

    /// Whether a job is running now.
    pub fn busy(&self) -> bool {
        !self.live.lock().expect("live jobs").is_empty()
    }
}

/// Checks and queues a job; returns its id. An identical job already queued is
/// returned instead of a second one.
pub async fn enqueue(
    state: &AppState,
    kind: &str,
    host: &str,
    mode: &str,
    actor: &str,
    source: &str,
) -> WebResult<i64> {
    let kind = JobKind::parse(kind.trim())?;
    let mode = match mode.trim() {
        "" | "waves" => "".to_owned(),
        "all" => "all".to_owned(),
        m if kind == JobKind::Deploy
            && m
                .strip_prefix("resume:")
                .or_else(|| m.strip_prefix("rollback:"))
                .is_some_and(|n| n.parse::<i64>().is_ok_and(|n| n > 0)) =>
        {
            m.to_owned()
        }
        m => {
            return Err(WebError::BadRequest(format!(
                "{:?} is not a way to deploy: \"waves\" ([rollout] in bento.toml) or \"all\" (every host at once).",
                views::clip(m, 20)
            )))
        }
    };
    let host = host.trim();
    let host = if host.is_empty() {
        None
    } else {
        let h = HostName::new(host).map_err(|e| WebError::BadRequest(format!("{e}.")))?;
        if !known_host(state, &h) {
            return Err(WebError::BadRequest(format!(
                "There is no host {h} in this fleet (not in the chroot, not in hosts/ nor in \
                 bento.toml). Leave the host empty to run the job for the whole fleet."
            )));
        }
        Some(h.to_string())
    };
    let existing: Option<(i64,)> = sqlx::query_as(
        "SELECT id FROM jobs WHERE status = 'queued' AND kind = ? AND host IS ? AND mode = ? ORDER BY id LIMIT 1",
    )
    .bind(kind.as_str())
    .bind(&host)
    .bind(&mode)
    .fetch_optional(&state.db)
    .await?;
    if let Some((id,)) = existing {
        return Ok(id);
    }
    let id: (i64,) = sqlx::query_as(
        "INSERT INTO jobs (kind, host, status, created_by, created_at, mode) VALUES (?, ?, 'queued', ?, ?, ?) RETURNING id",
    )
    .bind(kind.as_str())
    .bind(&host)
    .bind(actor)
    .bind(now_ms())
    .bind(&mode)
    .fetch_one(&state.db)
    .await?;
    audit::record(
        &state.db,
        actor,
        "job-start",
        &format!("job {}", id.0),
        &format!("{} {}", kind.as_str(), host.as_deref().unwrap_or("(fleet)")),
        source,
    )
    .await?;
    state.jobs.wake.notify_one();
    state.notify(Change {
        jobs: vec![id.0],
        ..Change::default()
    });
    Ok(id.0)
}

fn known_host(state: &AppState, h: &HostName) -> bool {
    state.fleet.get(h.as_str()).is_some()
        || state.settings().hosts.contains_key(h)
        || state
            .config
            .bento_dir
            .join("hosts")
            .join(h.as_str())
            .is_dir()
}

/// Runs queued jobs one at a time until the panel stops.
pub async fn runner(state: AppState) {
    let mut shutdown = state.shutdown.clone();
    loop {
        let next = sqlx::query_as::<_, Job>(
            "SELECT * FROM jobs WHERE status = 'queued' ORDER BY id LIMIT 1",
        )
        .fetch_optional(&state.db)
        .await;
        match next {
            Ok(Some(job)) => {
                if let Err(e) = run(&state, job).await {
                    tracing::error!("job runner: {e:#}");
                }
            }
            Ok(None) => {
                tokio::select! {
                    _ = state.jobs.wake.notified() => {}
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                }
            }
            Err(e) => {
                tracing::error!("job runner: cannot read the queue: {e}");
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        }
    }
}

/// What a job did.
pub(super) struct Outcome {
    pub(super) ok: bool,
    pub(super) summary: String,
    pub(super) hosts: Vec<HostOutcome>,
}

async fn run(state: &AppState, job: Job) -> anyhow::Result<()> {
    let live = Arc::new(LiveLog::new());
    state
        .jobs
        .live
        .lock()
        .expect("live jobs")
        .insert(job.id, live.clone());
    let started = sqlx::query(
        "UPDATE jobs SET status = 'running', started_at = ? WHERE id = ? AND status = 'queued'",
    )
    .bind(now_ms())
    .bind(job.id)
    .execute(&state.db)
    .await?;
    if started.rows_affected() == 0 {
        // Cancelled meanwhile.
        state.jobs.live.lock().expect("live jobs").remove(&job.id);
        return Ok(());
    }
    state.notify(Change {
        jobs: vec![job.id],
        ..Change::default()
    });
    let flusher = {
        let (state, live) = (state.clone(), live.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if let Err(e) = flush(&state.db, job.id, &live).await {
                    tracing::warn!("job {}: cannot save its log: {e}", job.id);
                }
            }
        })
    };
    let (st, lv, j) = (state.clone(), live.clone(), job.clone());
    let outcome = tokio::task::spawn_blocking(move || execute(&st, &j, &lv))
        .await
        .unwrap_or_else(|e| Outcome {
            ok: false,
            summary: format!("the job crashed: {e}"),
            hosts: Vec::new(),
        });
    live.push_block("", "", &outcome.summary);
    flusher.abort();
    flush(&state.db, job.id, &live).await?;
    let mut tx = state.db.begin().await?;
    sqlx::query("UPDATE jobs SET status = ?, finished_at = ?, summary = ? WHERE id = ?")
        .bind(if outcome.ok { "succeeded" } else { "failed" })
        .bind(now_ms())
        .bind(views::clip(&outcome.summary, 2000))
        .bind(job.id)
        .execute(&mut *tx)
        .await?;
    for o in &outcome.hosts {
        sqlx::query(
            "INSERT OR REPLACE INTO job_hosts (job_id, host, ok, system, revision, published, error, elapsed_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(job.id)
        .bind(&o.host)
        .bind(o.ok())
        .bind(o.system.as_ref().map(|p| p.display().to_string()))
        .bind(o.published.as_ref().map(|p| p.revision().to_owned()))
        .bind(matches!(o.published, Some(Published::New { .. })))
        .bind(o.error.as_deref().map(|e| views::clip(e, 2000)))
        .bind(o.elapsed.as_millis() as i64)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    state.jobs.live.lock().expect("live jobs").remove(&job.id);
    if job.kind == JobKind::Deploy.as_str() {
        state.fleet.rescan.notify_one();
    }
    state.notify(Change {
        jobs: vec![job.id],
        hosts: outcome
            .hosts
            .iter()
            .take(200)
            .map(|o| o.host.clone())
            .collect(),
        all: false,
    });
    Ok(())
}

async fn flush(db: &SqlitePool, id: i64, live: &LiveLog) -> Result<(), sqlx::Error> {
    let (from, lines) = live.unflushed();
    if lines.is_empty() {
        return Ok(());
    }
    let mut tx = db.begin().await?;
    for (i, l) in lines.iter().enumerate() {
        sqlx::query("INSERT OR REPLACE INTO job_log (job_id, seq, line) VALUES (?, ?, ?)")
            .bind(id)
            .bind((from + i + 1) as i64)
            .bind(l)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    live.mark_flushed(from + lines.len());
    Ok(())
}

/// Runs the job (in a blocking thread).
fn execute(state: &AppState, job: &Job, live: &LiveLog) -> Outcome {
    let fail = |summary: String| Outcome {
        ok: false,
        summary,
        hosts: Vec::new(),
    };
    let bento = match BentoDir::open(&state.config.bento_dir) {
        Ok(b) => b,
        Err(e) => return fail(format!("cannot open the bento directory: {e}")),
    };
    let kind = match JobKind::parse(&job.kind) {
        Ok(k) => k,
        Err(_) => return fail(format!("unknown job kind {}", job.kind)),
    };
    let only: Vec<HostName> = job
        .host
        .iter()
        .filter_map(|h| HostName::new(h).ok())
        .collect();
    let target = job.host.as_deref().unwrap_or("the fleet");
    live.push(
        &format!(
            "{} of {target}, started by {}",
            kind.as_str(),
            job.created_by
        ),
        false,
    );
    if kind == JobKind::FlakeUpdate {
        return flake_update(&bento, job.host.as_deref(), live);
    }
    let _lock = if kind == JobKind::Deploy {
        match wait_for_lock(state, &bento, live) {
            Ok(l) => Some(l),
            Err(e) => return fail(e),
        }
    } else {
        None
    };
    if let Some(id) = job
        .mode
        .strip_prefix("resume:")
        .and_then(|n| n.parse::<i64>().ok())
    {
        return super::job_rollout::resume(state, job, &bento, id, live);
    }
    if let Some(id) = job
        .mode
        .strip_prefix("rollback:")
        .and_then(|n| n.parse::<i64>().ok())
    {
        return super::job_rollout::rollback(state, job, &bento, id, live);
    }
    if kind == JobKind::Deploy
        && job.mode != "all"
        && bento.settings.rollout.waves.entries() != [rollout::WaveEntry::Rest]
    {
        return super::job_rollout::run(state, job, &bento, only, live);
    }
    let opts = RunOptions {
        only,
        dry: kind == JobKind::DryBuild,
        publish: kind == JobKind::Deploy,
    };
    let on_event = |e: Event| live.event(&e);
    let outcomes = match deploy::run(&bento, &opts, &on_event) {
        Ok(o) => o,
        Err(e) => return fail(e.to_string()),
    };
    if kind == JobKind::Deploy {
        let chroot = Chroot::new(&bento.settings.chroot_dir);
        let recorded =
            tokio::runtime::Handle::current().block_on(crate::rollouts::record_published(
                &state.db,
                &chroot,
                &job.created_by,
                "panel",
                Some(job.id),
                &outcomes,
            ));
        match recorded {
            Ok(Some(id)) => live.push(&format!("rollout {id}: following the hosts"), false),
            Ok(None) => {}
            Err(e) => live.push(
                &format!("warning: the rollout is not recorded: {e:#}"),
                false,
            ),
        }
    }
    summarize(kind, job.host.as_deref(), outcomes)
}

fn wait_for_lock(
    state: &AppState,
    bento: &BentoDir,
    live: &LiveLog,
) -> Result<bento_core::bentodir::DeployLock, String> {
    let start = Instant::now();
    let mut said = false;
    loop {
        match bento.try_lock() {
            Ok(l) => {
                if said {
                    live.push("the other deploy finished: starting", false);
                }
                return Ok(l);
            }
            Err(bento_core::bentodir::LockError::Busy(_)) => {
                if !said {
                    live.push(
                        "waiting: another bento deploy is running (the deploy lock is held)…",
                        false,
                    );
                    said = true;
                }
                if start.elapsed() > LOCK_WAIT || *state.shutdown.borrow() {
                    return Err(
                        "gave up waiting for the deploy lock: another bento deploy kept it".into(),
                    );
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn summarize(kind: JobKind, host: Option<&str>, outcomes: Vec<HostOutcome>) -> Outcome {
    if outcomes.is_empty() {
        return Outcome {
            ok: false,
            summary: match host {
                Some(h) => format!("no host {h} in hosts/: nothing to {}", kind.as_str()),
                None => "no host in hosts/: nothing to do".into(),
            },
            hosts: outcomes,
        };
    }
    let failed: Vec<&HostOutcome> = outcomes.iter().filter(|o| !o.ok()).collect();
    let verb = if kind == JobKind::DryBuild {
        "evaluated"
    } else {
        "built"
    };
    let summary = deploy::Summary::of(&outcomes).line(kind == JobKind::Deploy, verb);
    Outcome {
        ok: failed.is_empty(),
        summary,
        hosts: outcomes,
    }
}

fn flake_update(bento: &BentoDir, host: Option<&str>, live: &LiveLog) -> Outcome {
    let nix = Nix {
        extra_args: bento.settings.build_args.clone(),
        include: Vec::new(),
    };
    let dirs = match bento.host_dirs() {
        Ok((d, _)) => d,
        Err(e) => {
            return Outcome {
                ok: false,
                summary: format!("cannot read hosts/: {e}"),
                hosts: Vec::new(),
            }
        }
    };
    let mut flakes: Vec<_> = dirs
        .into_iter()
        .filter(|d| d.kind == HostKind::Flake)
        .collect();
    if let Some(h) = host {
        // The host's own directory, else the flakes that define it.
        if flakes.iter().any(|d| d.dir_name == h) {
            flakes.retain(|d| d.dir_name == h);
        } else {
            flakes.retain(|d| {
                nix.flake_configurations(&d.path)
                    .map(|names| names.iter().any(|n| n == h))
                    .unwrap_or(false)
            });
        }
    }
    if flakes.is_empty() {
        return Outcome {
            ok: false,
            summary: "no flake host to update".into(),
            hosts: Vec::new(),
        };
    }
    let mut failed = 0;
    for d in &flakes {
        live.push(
            &format!("hosts/{}: updating the lock file", d.dir_name),
            false,
        );
        match nix.flake_update(&d.path, None) {
            Ok(log) => {
                for l in log.lines().filter(|l| !l.trim().is_empty()) {
                    live.push(&format!("hosts/{}> {l}", d.dir_name), true);
                }
                live.push(&format!("hosts/{}: done", d.dir_name), false);
            }
            Err(e) => {
                failed += 1;
                live.push_block(
                    &format!("hosts/{}: FAILED: ", d.dir_name),
                    &format!("hosts/{}: ", d.dir_name),
                    &e.summary(),
                );
            }
        }
    }
    Outcome {
        ok: failed == 0,
        summary: format!(
            "{}: {} updated, {failed} failed",
            views::plural(flakes.len(), "flake", "flakes"),
            flakes.len() - failed
        ),
        hosts: Vec::new(),
    }
}

// ---- pages ----

pub struct JobView {
    pub id: i64,
    pub kind: String,
    pub target: String,
    pub host: String,
    pub status: String,
    pub class: &'static str,
    pub created_by: String,
    pub created: String,
    pub duration: String,
    /// While it runs: its duration so far, which app.js makes tick.
    pub running_ms: Option<i64>,
    pub summary: String,
}

impl JobView {
    pub fn new(j: &Job) -> Self {
        JobView {
            id: j.id,
            kind: j.kind.clone(),
            target: j.host.clone().unwrap_or_else(|| "fleet".into()),
            host: j.host.clone().unwrap_or_default(),
            status: j.status.clone(),
            class: views::status_class(&j.status),
            created_by: j.created_by.clone(),
            created: views::full_time_ms(Some(j.created_at)),
            duration: j.duration_ms().map(views::duration_ms).unwrap_or_default(),
            running_ms: j
                .duration_ms()
                .filter(|_| j.status == "running" && j.finished_at.is_none()),
            summary: views::clip(&j.summary, 300),
        }
    }
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct JobsPage {
    nav: Nav,
    jobs: Vec<JobView>,
    host: String,
    kinds: Vec<&'static str>,
    older: String,
}

#[derive(Deserialize, Default)]
pub struct JobsQuery {
    #[serde(default)]
    host: String,
    #[serde(default)]
    before: Option<i64>,
}

const PAGE: i64 = 50;

pub async fn list(
    State(state): State<AppState>,
    user: SessionUser,
    Query(q): Query<JobsQuery>,
) -> WebResult<Html<String>> {
    let host = views::clip(q.host.trim(), 63);
    let jobs = sqlx::query_as::<_, Job>(
        "SELECT * FROM jobs WHERE id < ? AND (? = '' OR host = ? OR id IN (SELECT job_id FROM job_hosts WHERE host = ?)) \
         ORDER BY id DESC LIMIT ?",
    )
    .bind(q.before.unwrap_or(i64::MAX))
    .bind(&host)
    .bind(&host)
    .bind(&host)
    .bind(PAGE)
    .fetch_all(&state.db)
    .await?;
    let older = if jobs.len() as i64 == PAGE {
        let last = jobs.last().map(|j| j.id).unwrap_or(0).to_string();
        format!(
            "/jobs{}",
            views::query(&[("host", &host), ("before", &last)])
        )
    } else {
        String::new()
    };
    let page = JobsPage {
        nav: Nav::new(&user, "jobs"),
        jobs: jobs.iter().map(JobView::new).collect(),
        host,
        kinds: JobKind::ALL.iter().map(|k| k.as_str()).collect(),
        older,
    };
    Ok(Html(page.render().map_err(WebError::internal)?))
}

#[derive(Deserialize)]
pub struct NewJob {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    host: String,
    /// A deploy: `waves` (default) or `all`.
    #[serde(default)]
    mode: String,
}

pub async fn create(State(state): State<AppState>, f: CsrfForm<NewJob>) -> WebResult<Redirect> {
    let id = enqueue(
        &state,
        &f.form.kind,
        &f.form.host,
        &f.form.mode,
        &f.user.actor(),
        &f.user.source,
    )
    .await?;
    Ok(Redirect::to(&format!("/jobs/{id}")))
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    nav: Nav,
    job: JobView,
    done: bool,
    queued: bool,
    lines: Vec<String>,
    last_seq: i64,
    hosts: Vec<JobHostView>,
    started: String,
    finished: String,
    /// The deploy's rollout.
    rollout: Option<i64>,
}

struct JobHostView {
    host: String,
    ok: bool,
    /// `detail` is an error message (of several lines, shown as written).
    error: bool,
    detail: String,
    duration: String,
}

/// What a job did to one host, as stored.
#[derive(sqlx::FromRow)]
struct JobHostRow {
    host: String,
    ok: bool,
    system: Option<String>,
    revision: Option<String>,
    published: bool,
    elapsed_ms: i64,
    error: Option<String>,
}

/// Every line of a job: from the database, then what is only in memory yet.
async fn all_lines(state: &AppState, id: i64) -> WebResult<Vec<String>> {
    let mut lines: Vec<String> =
        sqlx::query_scalar("SELECT line FROM job_log WHERE job_id = ? ORDER BY seq")
            .bind(id)
            .fetch_all(&state.db)
            .await?;
    if let Some(live) = state.jobs.live(id) {
        let (rest, _) = live.follow(lines.len() as i64);
        lines.extend(rest.into_iter().map(|(_, l)| l));
    }
    Ok(lines)
}

pub async fn page(
    State(state): State<AppState>,
    user: SessionUser,
    Path(id): Path<String>,
) -> WebResult<Html<String>> {
    let id = parse_id(&id)?;
    let job = load(&state.db, id).await?;
    let lines = all_lines(&state, id).await?;
    let hosts: Vec<JobHostRow> = sqlx::query_as(
        "SELECT host, ok, system, revision, published, elapsed_ms, error FROM job_hosts \
         WHERE job_id = ? ORDER BY ok, host",
    )
    .bind(id)
    .fetch_all(&state.db)
    .await?;
    let page = JobPage {
        nav: Nav::new(&user, "jobs"),
        done: job.is_done(),
        queued: job.status == "queued",
        last_seq: lines.len() as i64,
        lines,
        hosts: hosts
            .into_iter()
            .map(|h| JobHostView {
                error: h.error.is_some(),
                detail: match (&h.error, &h.revision, &h.system) {
                    (Some(e), _, _) => e.clone(),
                    (None, Some(r), _) if h.published => format!("published revision {r}"),
                    (None, Some(r), _) => format!("unchanged (revision {r})"),
                    (None, None, Some(s)) => s.clone(),
                    _ => String::new(),
                },
                duration: if h.elapsed_ms > 0 {
                    views::duration_ms(h.elapsed_ms)
                } else {
                    String::new()
                },
                host: h.host,
                ok: h.ok,
            })
            .collect(),
        started: views::full_time_ms(job.started_at),
        finished: views::full_time_ms(job.finished_at),
        rollout: super::rollouts::of_job(&state, job.id, &job.mode).await,
        job: JobView::new(&job),
    };
    Ok(Html(page.render().map_err(WebError::internal)?))
}

pub fn parse_id(s: &str) -> WebResult<i64> {
    views::parse_number(s, "job")
}

pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
    f: CsrfForm<super::auth::Empty>,
) -> WebResult<Redirect> {
    let id = parse_id(&id)?;
    let job = load(&state.db, id).await?;
    let r = sqlx::query("UPDATE jobs SET status = 'cancelled', finished_at = ?, summary = ? WHERE id = ? AND status = 'queued'")
        .bind(now_ms())
        .bind(format!("cancelled by {}", f.user.name))
        .bind(id)
        .execute(&state.db)
        .await?;
    if r.rows_affected() == 0 {
        return Err(WebError::BadRequest(format!(
            "Job {id} is {}: only a queued job can be cancelled (a running build or deploy runs to its end; publication is atomic).",
            job.status
        )));
    }
    audit::record(
        &state.db,
        &f.user.actor(),
        "job-cancel",
        &format!("job {id}"),
        &job.kind,
        &f.user.source,
    )
    .await?;
    state.notify(Change {
        jobs: vec![id],
        ..Change::default()
    });
    Ok(Redirect::to(&format!("/jobs/{id}")))
}

#[derive(Deserialize, Default)]
pub struct LogQuery {
    after: Option<i64>,
}

/// The log of a job as Server-Sent Events: `line` events (id = line number), then
/// one `done` event with the job's status. Resumes after `?after=N` or the
/// `Last-Event-ID` a reconnecting browser sends.
pub async fn log_stream(
    State(state): State<AppState>,
    _user: SessionUser,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
    headers: HeaderMap,
) -> WebResult<Response> {
    let id = parse_id(&id)?;
    load(&state.db, id).await?;
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .or(q.after)
        .unwrap_or(0)
        .max(0);
    let (tx, rx) = mpsc::channel::<SseEvent>(256);
    tokio::spawn(feed(state, id, after, tx));
    Ok(Sse::new(receiver_stream(rx))
        .keep_alive(KeepAlive::default())
        .into_response())
}

pub fn receiver_stream(
    rx: mpsc::Receiver<SseEvent>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
    )
}

fn line_event(seq: i64, line: &str) -> SseEvent {
    SseEvent::default()
        .event("line")
        .id(seq.to_string())
        .data(line)
}

async fn feed(state: AppState, id: i64, mut after: i64, tx: mpsc::Sender<SseEvent>) {
    let mut shutdown = state.shutdown.clone();
    let mut changes = state.changes.subscribe();
    loop {
        if let Some(live) = state.jobs.live(id) {
            let (lines, mut rx) = live.follow(after);
            drop(live);
            for (seq, l) in lines {
                if tx.send(line_event(seq, &l)).await.is_err() {
                    return;
                }
                after = seq;
            }
            loop {
                tokio::select! {
                    r = rx.recv() => match r {
                        Ok((seq, l)) if seq > after => {
                            if tx.send(line_event(seq, &l)).await.is_err() {
                                return;
                            }
                            after = seq;
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    },
                    _ = shutdown.changed() => return,
                    _ = tx.closed() => return,
                }
            }
            continue;
        }
        let job = match load(&state.db, id).await {
            Ok(j) => j,
            Err(_) => return,
        };
        if job.is_done() {
            let rest: Vec<(i64, String)> = match sqlx::query_as(
                "SELECT seq, line FROM job_log WHERE job_id = ? AND seq > ? ORDER BY seq",
            )
            .bind(id)
            .bind(after)
            .fetch_all(&state.db)
            .await
            {
                Ok(r) => r,
                Err(_) => return,
            };
            for (seq, l) in rest {
                if tx.send(line_event(seq, &l)).await.is_err() {
                    return;
                }
            }
            let _ = tx
                .send(SseEvent::default().event("done").data(job.status.as_str()))
                .await;
            return;
        }
        // Queued (or about to start): wait for news of this job.
        tokio::select! {
            _ = changes.recv() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shutdown.changed() => return,
            _ = tx.closed() => return,
        }
    }
}
