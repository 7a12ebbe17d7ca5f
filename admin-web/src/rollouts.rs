//! Rollouts in the panel's database: every `bento deploy` (command line or
//! panel) records one, with its job and audit entry, so `bento rollout` and the
//! panel show the same thing. The waves and the per-host phases are decided by
//! `bento_core::rollout`; this module only stores them.
//!
//! A rollout is driven by one process at a time (the one holding the deploy
//! lock), named by its pid and start time. A rollout left `running` by a
//! process that is gone was interrupted: `bento rollout resume` takes it up.
//! One published without a driver (a plain `bento deploy`) is concluded by
//! whoever looks at it next, from the chroot.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bento_core::chroot::Chroot;
use bento_core::config::Settings;
use bento_core::rollout::driver::{self, Published, Start};
use bento_core::rollout::{self, rollback, HostProgress, Phase, RolloutSettings, Wave};
use bento_core::status::StatusOptions;
use bento_core::HostName;
use sqlx::SqlitePool;

use crate::web::db::{self, now_ms, to_ms};
use crate::web::{audit, views};

/// A rollout's status.
pub const RUNNING: &str = "running";
pub const SUCCEEDED: &str = "succeeded";
pub const FAILED: &str = "failed";
pub const HALTED: &str = "halted";
pub const ABORTED: &str = "aborted";
pub const INTERRUPTED: &str = "interrupted";
/// A host whose wave is not published yet.
pub const PENDING: &str = "pending";

/// One rollout, as listed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RolloutRow {
    pub id: i64,
    pub job_id: Option<i64>,
    pub created_by: String,
    pub source: String,
    pub created_at: i64,
    pub status: String,
    pub settings: String,
    pub waves: i64,
    pub wave: i64,
    pub driver_pid: Option<i64>,
    pub driver_start: Option<i64>,
    pub abort_requested: bool,
    pub finished_at: Option<i64>,
    pub summary: String,
    /// The rollout this one rolls back.
    pub rollback_of: Option<i64>,
}

impl RolloutRow {
    pub fn created(&self) -> String {
        views::full_time_ms(Some(self.created_at))
    }
    pub fn finished(&self) -> Option<String> {
        self.finished_at.map(|t| views::full_time_ms(Some(t)))
    }
}

/// One host of a rollout.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HostRow {
    pub host: String,
    pub wave: i64,
    pub wave_entry: String,
    pub system: Option<String>,
    pub revision: Option<String>,
    pub previous_revision: Option<String>,
    pub published_at: Option<i64>,
    pub phase: String,
    pub reason: Option<String>,
    pub updated_at: i64,
}

/// This process, as a rollout's driver: its pid and start time.
pub fn this_driver() -> (i64, i64) {
    let pid = std::process::id();
    (i64::from(pid), process_start(pid).unwrap_or(0))
}

/// The start time of `pid` (clock ticks since boot), if it runs.
fn process_start(pid: u32) -> Option<i64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (which may hold spaces and parentheses).
    let rest = &s[s.rfind(')')? + 2..];
    // Field 22 of proc(5); `rest` starts at field 3.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the driver recorded for a rollout still runs.
pub fn driver_alive(r: &RolloutRow) -> bool {
    match (r.driver_pid, r.driver_start) {
        (Some(pid), Some(start)) => {
            u32::try_from(pid).is_ok_and(|p| process_start(p) == Some(start))
        }
        _ => false,
    }
}

/// What a new rollout starts with.
pub struct NewRollout<'a> {
    pub actor: &'a str,
    pub source: &'a str,
    pub settings: &'a RolloutSettings,
    pub waves: &'a [Wave],
    /// What the server built for each host.
    pub systems: &'a BTreeMap<HostName, String>,
    /// Driven by this process (`deploy --wait`), or by nobody (a plain deploy).
    pub driven: bool,
    /// The job it belongs to (a panel deploy), else a job is made for it.
    pub job_id: Option<i64>,
    /// The rollout it rolls back (a rollback), if any.
    pub rollback_of: Option<i64>,
}

/// The panel's database, for the synchronous command line.
pub struct Db {
    rt: tokio::runtime::Runtime,
    pub pool: SqlitePool,
}

impl Db {
    /// Opens the panel's database (made if missing), as the panel does.
    pub fn open(url: &str) -> anyhow::Result<Db> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let pool = rt.block_on(db::open(url))?;
        Ok(Db { rt, pool })
    }

    pub fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.block_on(f)
    }
}

/// Records a new rollout and its deploy job (running) and audit entry. Returns
/// (rollout id, job id).
pub async fn create(db: &SqlitePool, new: &NewRollout<'_>) -> anyhow::Result<(i64, i64)> {
    let now = now_ms();
    let hosts: usize = new.waves.iter().map(|w| w.hosts.len()).sum();
    let one_host = (hosts == 1)
        .then(|| new.waves.iter().flat_map(|w| &w.hosts).next())
        .flatten()
        .map(|h| h.as_str().to_owned());
    let mut tx = db.begin().await?;
    let job_id = match new.job_id {
        Some(j) => j,
        None => {
            let (j,): (i64,) = sqlx::query_as(
                "INSERT INTO jobs (kind, host, status, created_by, created_at, started_at) \
                 VALUES ('deploy', ?, 'running', ?, ?, ?) RETURNING id",
            )
            .bind(&one_host)
            .bind(new.actor)
            .bind(now)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            j
        }
    };
    let (pid, start) = if new.driven {
        let (p, s) = this_driver();
        (Some(p), Some(s))
    } else {
        (None, None)
    };
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO rollouts (job_id, created_by, source, created_at, status, settings, waves, wave, driver_pid, driver_start, rollback_of) \
         VALUES (?, ?, ?, ?, 'running', ?, ?, 0, ?, ?, ?) RETURNING id",
    )
    .bind(job_id)
    .bind(new.actor)
    .bind(new.source)
    .bind(now)
    .bind(serde_json::to_string(new.settings)?)
    .bind(new.waves.len() as i64)
    .bind(pid)
    .bind(start)
    .bind(new.rollback_of)
    .fetch_one(&mut *tx)
    .await?;
    for (i, w) in new.waves.iter().enumerate() {
        for h in &w.hosts {
            sqlx::query(
                "INSERT INTO rollout_hosts (rollout_id, host, wave, wave_entry, system, phase, updated_at) \
                 VALUES (?, ?, ?, ?, ?, 'pending', ?)",
            )
            .bind(id)
            .bind(h.as_str())
            .bind(i as i64)
            .bind(&w.entry)
            .bind(new.systems.get(h))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
    }
    let (action, detail) = match new.rollback_of {
        Some(of) => (
            "rollout-rollback",
            format!("job {job_id}: {hosts} host(s) back to their release before rollout {of}"),
        ),
        None => (
            "deploy",
            format!(
                "job {job_id}: {hosts} host(s) in {} wave(s)",
                new.waves.len()
            ),
        ),
    };
    audit::record(
        &mut *tx,
        new.actor,
        action,
        &format!("rollout {id}"),
        &detail,
        new.source,
    )
    .await?;
    tx.commit().await?;
    Ok((id, job_id))
}

/// Every host that built, with its `[hosts.<name>] tags`.
pub fn fleet_of(
    bento: &bento_core::bentodir::BentoDir,
    built: &[bento_core::deploy::HostOutcome],
) -> Vec<(HostName, Vec<String>)> {
    built
        .iter()
        .filter_map(|o| HostName::new(&o.host).ok())
        .map(|h| {
            let tags = bento
                .settings
                .hosts
                .get(&h)
                .map(|s| s.tags.clone())
                .unwrap_or_default();
            (h, tags)
        })
        .collect()
}

/// What the server built for each host.
pub fn systems_of(built: &[bento_core::deploy::HostOutcome]) -> BTreeMap<HostName, String> {
    built
        .iter()
        .filter_map(|o| {
            let h = HostName::new(&o.host).ok()?;
            Some((h, o.system.as_ref()?.to_string_lossy().into_owned()))
        })
        .collect()
}

/// Records a deploy that published every host at once and that nobody follows
/// (a plain `bento deploy`, a panel deploy): one wave, concluded by
/// [`settle`] from the chroot. Returns the rollout's id (`None`: nothing was
/// published).
pub async fn record_published(
    db: &SqlitePool,
    chroot: &Chroot,
    actor: &str,
    source: &str,
    job_id: Option<i64>,
    outcomes: &[bento_core::deploy::HostOutcome],
) -> anyhow::Result<Option<i64>> {
    let rows = driver::published_of(chroot, outcomes).map_err(anyhow::Error::msg)?;
    let systems = systems_of(outcomes);
    if rows.is_empty() {
        return Ok(None);
    }
    let waves = vec![Wave {
        entry: rollout::WaveEntry::Rest.to_string(),
        hosts: rows.iter().map(|p| p.host.clone()).collect(),
    }];
    let (id, _) = create(
        db,
        &NewRollout {
            actor,
            source,
            settings: &RolloutSettings::default(),
            waves: &waves,
            systems: &systems,
            driven: false,
            job_id,
            rollback_of: None,
        },
    )
    .await?;
    wave_published(db, id, 0, &rows).await?;
    if job_id.is_none() {
        // The command line is done once it published, as a panel deploy job is;
        // the rollout's outcome replaces this when the hosts conclude.
        sqlx::query(
            "UPDATE jobs SET status = 'succeeded', finished_at = ?, summary = ? \
             WHERE id = (SELECT job_id FROM rollouts WHERE id = ?)",
        )
        .bind(now_ms())
        .bind(format!(
            "published to {} host(s); rollout {id} follows them",
            rows.len()
        ))
        .bind(id)
        .execute(db)
        .await?;
    }
    Ok(Some(id))
}

/// Wave `index` is published: its hosts' revisions, times and previous revisions.
pub async fn wave_published(
    db: &SqlitePool,
    id: i64,
    index: usize,
    published: &[Published],
) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query("UPDATE rollouts SET wave = ? WHERE id = ?")
        .bind(index as i64)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    for p in published {
        sqlx::query(
            "UPDATE rollout_hosts SET revision = ?, published_at = ?, previous_revision = ?, \
             phase = 'published', reason = NULL, updated_at = ? WHERE rollout_id = ? AND host = ?",
        )
        .bind(&p.revision)
        .bind(to_ms(p.at))
        .bind(&p.previous)
        .bind(now_ms())
        .bind(id)
        .bind(p.host.as_str())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// A host moved to another phase.
pub async fn host_progress(db: &SqlitePool, id: i64, p: &HostProgress) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE rollout_hosts SET phase = ?, reason = ?, updated_at = ? WHERE rollout_id = ? AND host = ?",
    )
    .bind(p.phase.id())
    .bind(p.reason.as_deref().map(|r| views::clip(r, 2000)))
    .bind(now_ms())
    .bind(id)
    .bind(p.host.as_str())
    .execute(db)
    .await
    .map(|_| ())
}

/// Whether someone asked the rollout to stop.
pub async fn abort_requested(db: &SqlitePool, id: i64) -> Result<bool, sqlx::Error> {
    let (a,): (bool,) = sqlx::query_as("SELECT abort_requested FROM rollouts WHERE id = ?")
        .bind(id)
        .fetch_one(db)
        .await?;
    Ok(a)
}

/// Appends lines to the rollout's job log (what the panel's job page shows).
pub async fn job_log(db: &SqlitePool, job_id: i64, lines: &[String]) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    let (next,): (i64,) =
        sqlx::query_as("SELECT COALESCE(MAX(seq), 0) + 1 FROM job_log WHERE job_id = ?")
            .bind(job_id)
            .fetch_one(&mut *tx)
            .await?;
    for (i, l) in lines.iter().enumerate() {
        sqlx::query("INSERT INTO job_log (job_id, seq, line) VALUES (?, ?, ?)")
            .bind(job_id)
            .bind(next + i as i64)
            .bind(views::clip(l, 4000))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// Ends the rollout (and its job, with each host's outcome in `job_hosts`).
pub async fn finish(
    db: &SqlitePool,
    id: i64,
    status: &str,
    summary: &str,
) -> Result<(), sqlx::Error> {
    let now = now_ms();
    let mut tx = db.begin().await?;
    sqlx::query(
        "UPDATE rollouts SET status = ?, summary = ?, finished_at = ?, driver_pid = NULL, driver_start = NULL WHERE id = ?",
    )
    .bind(status)
    .bind(views::clip(summary, 2000))
    .bind(now)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let job: Option<(Option<i64>,)> = sqlx::query_as("SELECT job_id FROM rollouts WHERE id = ?")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    if let Some((Some(job_id),)) = job {
        sqlx::query("UPDATE jobs SET status = ?, finished_at = ?, summary = ? WHERE id = ?")
            .bind(if status == SUCCEEDED {
                "succeeded"
            } else {
                "failed"
            })
            .bind(now)
            .bind(views::clip(summary, 2000))
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT OR REPLACE INTO job_hosts (job_id, host, ok, system, revision, published, error, elapsed_ms) \
             SELECT ?, host, phase = 'success', system, revision, revision IS NOT NULL, \
               CASE WHEN phase = 'success' THEN NULL ELSE phase || COALESCE(': ' || reason, '') END, \
               COALESCE(updated_at - published_at, 0) \
             FROM rollout_hosts WHERE rollout_id = ?",
        )
        .bind(job_id)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// The newest rollouts first.
pub async fn list(db: &SqlitePool, limit: i64) -> Result<Vec<RolloutRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM rollouts ORDER BY id DESC LIMIT ?")
        .bind(limit)
        .fetch_all(db)
        .await
}

/// One rollout and its hosts (wave by wave, by name), if it exists.
pub async fn load(
    db: &SqlitePool,
    id: i64,
) -> Result<Option<(RolloutRow, Vec<HostRow>)>, sqlx::Error> {
    let Some(r) = sqlx::query_as::<_, RolloutRow>("SELECT * FROM rollouts WHERE id = ?")
        .bind(id)
        .fetch_optional(db)
        .await?
    else {
        return Ok(None);
    };
    let hosts = sqlx::query_as(
        "SELECT host, wave, wave_entry, system, revision, previous_revision, published_at, phase, reason, updated_at \
         FROM rollout_hosts WHERE rollout_id = ? ORDER BY wave, host",
    )
    .bind(id)
    .fetch_all(db)
    .await?;
    Ok(Some((r, hosts)))
}

/// Asks a rollout to stop: its driver publishes no further wave. A rollout that
/// nobody drives stops at once. Returns what the rollout's status is now.
pub async fn request_abort(
    db: &SqlitePool,
    id: i64,
    actor: &str,
    source: &str,
) -> anyhow::Result<String> {
    let (r, _) = load(db, id)
        .await?
        .with_context(|| format!("there is no rollout {id}"))?;
    if r.status != RUNNING && r.status != INTERRUPTED && r.status != HALTED {
        anyhow::bail!("rollout {id} is {}: there is nothing to abort", r.status);
    }
    let mut tx = db.begin().await?;
    sqlx::query("UPDATE rollouts SET abort_requested = 1 WHERE id = ?")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut *tx,
        actor,
        "rollout-abort",
        &format!("rollout {id}"),
        "",
        source,
    )
    .await?;
    tx.commit().await?;
    if driver_alive(&r) {
        return Ok(RUNNING.into());
    }
    finish(
        db,
        id,
        ABORTED,
        &format!("aborted by {actor}; unpublished waves keep their release"),
    )
    .await?;
    Ok(ABORTED.into())
}

/// The `[rollout]` settings a rollout was planned with.
pub fn settings_of(r: &RolloutRow) -> anyhow::Result<RolloutSettings> {
    serde_json::from_str(&r.settings)
        .with_context(|| format!("rollout {}: its stored settings do not parse", r.id))
}

/// The waves of a rollout, rebuilt from its hosts.
pub fn waves_of(hosts: &[HostRow]) -> anyhow::Result<Vec<Wave>> {
    let mut waves: Vec<Wave> = Vec::new();
    for h in hosts {
        let i = usize::try_from(h.wave).context("negative wave")?;
        while waves.len() <= i {
            waves.push(Wave {
                entry: String::new(),
                hosts: Vec::new(),
            });
        }
        waves[i].entry = h.wave_entry.clone();
        waves[i].hosts.push(HostName::new(&h.host)?);
    }
    Ok(waves)
}

/// Brings running rollouts up to date with what their hosts did: one whose
/// driver is gone is marked interrupted; one published without a driver (a plain
/// `bento deploy`) gets its hosts' phases from the chroot and ends when every
/// host concluded.
pub async fn settle(db: &SqlitePool, settings: &Settings) -> anyhow::Result<()> {
    let running: Vec<RolloutRow> =
        sqlx::query_as("SELECT * FROM rollouts WHERE status = 'running' ORDER BY id")
            .fetch_all(db)
            .await?;
    let chroot = Chroot::new(&settings.chroot_dir);
    for r in running {
        if r.driver_pid.is_some() {
            if !driver_alive(&r) {
                sqlx::query(
                    "UPDATE rollouts SET status = 'interrupted', driver_pid = NULL, driver_start = NULL, \
                     summary = 'interrupted: the process that drove it ended; `bento rollout resume` goes on' \
                     WHERE id = ? AND status = 'running'",
                )
                .bind(r.id)
                .execute(db)
                .await?;
                if let Some(job) = r.job_id {
                    sqlx::query(
                        "UPDATE jobs SET status = 'failed', finished_at = ?, \
                         summary = 'interrupted: the deploy stopped while its rollout ran' WHERE id = ? AND status = 'running'",
                    )
                    .bind(now_ms())
                    .bind(job)
                    .execute(db)
                    .await?;
                }
            }
            continue;
        }
        let Some((r, hosts)) = load(db, r.id).await? else {
            continue;
        };
        let planned = settings_of(&r)?;
        let opts = StatusOptions {
            now: SystemTime::now(),
            poll_interval: Duration::from_secs(settings.poll_interval),
            offline_after_polls: settings.offline_after_polls,
        };
        let mut all = Vec::new();
        for h in &hosts {
            let phase = Phase::from_id(&h.phase);
            let (Some(rev), Some(at), Some(phase)) = (&h.revision, h.published_at, phase) else {
                continue;
            };
            if phase.concluded() {
                all.push(phase);
                continue;
            }
            let host = HostName::new(&h.host)?;
            let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(at).unwrap_or(0));
            let obs = rollout::observe(&chroot, &host, rev, at, None, &opts);
            let p = rollout::progress(&host, &obs, planned.offline);
            if p.phase != phase {
                host_progress(db, r.id, &p).await?;
            }
            all.push(p.phase);
        }
        if all.len() == hosts.len() && all.iter().all(|p| p.concluded()) {
            let (status, summary) = summary_of(&all);
            finish(db, r.id, status, &summary).await?;
        }
    }
    Ok(())
}

/// The final status and one-line summary of hosts that all concluded.
pub fn summary_of(phases: &[Phase]) -> (&'static str, String) {
    let status = if phases.iter().any(|p| p.is_failure()) {
        FAILED
    } else {
        SUCCEEDED
    };
    (status, driver::summary_of(phases.iter().copied()))
}

/// Where a halted, aborted or interrupted rollout goes on.
pub struct ResumePlan {
    pub waves: Vec<Wave>,
    pub settings: RolloutSettings,
    /// The wave to follow or publish first, what of it is out, and the hosts
    /// that concluded before (they count in the summary).
    pub start: Start,
    /// Hosts still to publish: they must build the systems the rollout built.
    pub to_publish: Vec<HostName>,
}

impl ResumePlan {
    /// The line saying where it resumes.
    pub fn announce(&self, id: i64) -> String {
        if self.start.wave >= self.waves.len() {
            format!("Rollout {id}: no wave is left to publish.")
        } else {
            format!(
                "Rollout {id} resumes at wave {} of {}",
                self.start.wave + 1,
                self.waves.len()
            )
        }
    }
}

/// Plans going on with rollout `r`: a halted one at its next wave (going on
/// despite the failures), an aborted or interrupted one at the wave under way
/// (followed again when it was published, else published now).
pub fn plan_resume(r: &RolloutRow, hosts: &[HostRow]) -> anyhow::Result<ResumePlan> {
    let id = r.id;
    match r.status.as_str() {
        HALTED | ABORTED | INTERRUPTED => {}
        RUNNING if driver_alive(r) => anyhow::bail!(
            "rollout {id} is running, driven by process {}",
            r.driver_pid.unwrap_or(0)
        ),
        s => anyhow::bail!(
            "rollout {id} is {s}: only a halted, aborted or interrupted rollout resumes"
        ),
    }
    let settings = settings_of(r)?;
    let waves = waves_of(hosts)?;
    let current = usize::try_from(r.wave).unwrap_or(0);
    let by_host: BTreeMap<&str, &HostRow> = hosts.iter().map(|h| (h.host.as_str(), h)).collect();
    let first = if r.status == HALTED {
        current + 1
    } else {
        current
    };
    let concluded = |h: &HostRow| -> anyhow::Result<Option<HostProgress>> {
        Ok(Phase::from_id(&h.phase)
            .filter(|p| p.concluded())
            .map(|phase| {
                HostName::new(&h.host).map(|host| HostProgress {
                    host,
                    phase,
                    reason: h.reason.clone(),
                })
            })
            .transpose()?)
    };
    let mut start = Start {
        wave: first,
        ..Start::default()
    };
    for h in hosts.iter().filter(|h| h.wave < first as i64) {
        if let Some(p) = concluded(h)? {
            start.concluded.insert(p.host.clone(), p);
        }
    }
    let current_out = waves.get(current).is_some_and(|w| {
        w.hosts
            .iter()
            .all(|h| by_host[h.as_str()].revision.is_some())
    });
    if r.status != HALTED && current_out {
        let mut published = Vec::new();
        for h in &waves[current].hosts {
            let row = by_host[h.as_str()];
            published.push(Published {
                host: h.clone(),
                revision: row.revision.clone().unwrap_or_default(),
                previous: row.previous_revision.clone(),
                at: UNIX_EPOCH
                    + Duration::from_millis(
                        u64::try_from(row.published_at.unwrap_or(0)).unwrap_or(0),
                    ),
            });
            if let Some(p) = concluded(row)? {
                start.concluded.insert(p.host.clone(), p);
            }
        }
        start.published = Some(published);
    }
    let to_publish = waves
        .iter()
        .enumerate()
        .skip(first)
        .filter(|(i, _)| !(start.published.is_some() && *i == current))
        .flat_map(|(_, w)| w.hosts.iter().cloned())
        .collect();
    Ok(ResumePlan {
        waves,
        settings,
        start,
        to_publish,
    })
}

/// Refuses a resume whose hosts no longer build what the rollout built.
pub fn check_systems(
    id: i64,
    hosts: &[HostRow],
    built: &[bento_core::deploy::HostOutcome],
) -> anyhow::Result<()> {
    for o in built {
        let now = o.system.as_ref().map(|s| s.to_string_lossy().into_owned());
        let then = hosts
            .iter()
            .find(|h| h.host == o.host)
            .and_then(|h| h.system.clone());
        if !o.ok() || now != then {
            anyhow::bail!(
                "rollout {id} cannot resume: {} now builds {} where the rollout built {} (the configuration changed: start a new `bento deploy`)",
                o.host,
                now.as_deref().unwrap_or("nothing"),
                then.as_deref().unwrap_or("nothing")
            );
        }
    }
    Ok(())
}

/// This process drives rollout `r` from now on, from wave `first`.
pub async fn claim(
    db: &SqlitePool,
    r: &RolloutRow,
    first: usize,
    actor: &str,
    source: &str,
) -> Result<(), sqlx::Error> {
    let (pid, start) = this_driver();
    let mut tx = db.begin().await?;
    sqlx::query(
        "UPDATE rollouts SET status = 'running', driver_pid = ?, driver_start = ?, abort_requested = 0, \
         finished_at = NULL, summary = '', wave = MAX(wave, ?) WHERE id = ?",
    )
    .bind(pid)
    .bind(start)
    .bind(first as i64)
    .bind(r.id)
    .execute(&mut *tx)
    .await?;
    if let Some(job) = r.job_id {
        sqlx::query("UPDATE jobs SET status = 'running', finished_at = NULL WHERE id = ?")
            .bind(job)
            .execute(&mut *tx)
            .await?;
    }
    audit::record(
        &mut *tx,
        actor,
        "rollout-resume",
        &format!("rollout {}", r.id),
        &format!("from wave {}", first + 1),
        source,
    )
    .await?;
    tx.commit().await
}

/// A rollback ready to run: which hosts go back (the rest and why not), as a
/// one-wave rollout.
pub struct RollbackPlan {
    pub of: i64,
    pub plan: rollback::Plan,
    pub wave: Wave,
    /// What each host goes back to run (the kept release's expected system).
    pub systems: BTreeMap<HostName, String>,
}

impl RollbackPlan {
    /// The lines that say what the rollback does, before it does it.
    pub fn announce(&self, id: i64) -> Vec<String> {
        let mut out = vec![format!(
            "Rollout {id} rolls back rollout {}: {} host(s) back to their previous release",
            self.of,
            self.wave.hosts.len()
        )];
        for (h, why) in &self.plan.skipped {
            out.push(format!("  {h}: not rolled back: {why}"));
        }
        out
    }
}

/// Which of a rollout's hosts a rollback would put back, and why the others
/// stay, from the chroot as it is now (what the panel asks the admin to
/// confirm).
pub fn rollback_preview(chroot: &Chroot, hosts: &[HostRow]) -> anyhow::Result<rollback::Plan> {
    let targets = hosts
        .iter()
        .map(|h| {
            Ok(rollback::Target {
                host: HostName::new(&h.host)?,
                revision: h.revision.clone(),
                previous: h.previous_revision.clone(),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(rollback::plan(chroot, &targets))
}

/// Plans rolling back rollout `r`: each host it published whose revision is
/// still current goes back to the release it had before (kept in the chroot).
/// A rollout still driven by a live process is refused: abort it first (the
/// panel and the command line both do, then wait for the deploy lock).
pub fn plan_rollback(
    chroot: &Chroot,
    r: &RolloutRow,
    hosts: &[HostRow],
) -> anyhow::Result<RollbackPlan> {
    let id = r.id;
    if r.status == RUNNING && driver_alive(r) {
        anyhow::bail!(
            "rollout {id} is still running, driven by process {}: abort it first",
            r.driver_pid.unwrap_or(0)
        );
    }
    let plan = rollback_preview(chroot, hosts)?;
    if plan.to_republish.is_empty() {
        let why: Vec<String> = plan
            .skipped
            .iter()
            .map(|(h, why)| format!("{h}: {why}"))
            .collect();
        anyhow::bail!(
            "rollout {id} has no host to roll back{}{}",
            if why.is_empty() { "" } else { ":\n  " },
            why.join("\n  ")
        );
    }
    let systems = plan
        .to_republish
        .iter()
        .filter_map(|(h, rev)| Some((h.clone(), rollback::system_of(chroot, h, rev)?)))
        .collect();
    Ok(RollbackPlan {
        of: id,
        wave: plan.wave(),
        plan,
        systems,
    })
}

/// The `[rollout]` settings a rollback runs with: one wave, bento.toml's
/// timeout and offline policy.
pub fn rollback_settings(settings: &RolloutSettings) -> RolloutSettings {
    RolloutSettings {
        waves: Default::default(),
        max_failures: Default::default(),
        ..settings.clone()
    }
}

/// The rollouts that rolled `id` back, newest first.
pub async fn rolled_back_by(db: &SqlitePool, id: i64) -> Result<Vec<i64>, sqlx::Error> {
    let rows: Vec<(i64,)> =
        sqlx::query_as("SELECT id FROM rollouts WHERE rollback_of = ? ORDER BY id DESC")
            .bind(id)
            .fetch_all(db)
            .await?;
    Ok(rows.into_iter().map(|(i,)| i).collect())
}

/// Refuses to go on with a rollout that was rolled back since.
pub async fn refuse_if_rolled_back(db: &SqlitePool, id: i64) -> anyhow::Result<()> {
    if let Some(by) = rolled_back_by(db, id).await?.first() {
        anyhow::bail!(
            "rollout {id} was rolled back by rollout {by}: start a new `bento deploy` instead"
        );
    }
    Ok(())
}
