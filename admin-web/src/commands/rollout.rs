//! `bento deploy --wait` and `bento rollout`: a deploy driven as a rollout from
//! the command line, and the rollouts the panel's database records.
//!
//! `deploy --wait` builds every host, publishes the first wave, follows each
//! host's outcome from its chroot (reports and heartbeat, see
//! `bento_core::rollout`), and publishes the next wave only when the decision
//! says so. The deploy lock is held for the whole rollout, so no other deploy
//! (nor the panel) publishes meanwhile. Each step is recorded in the panel's
//! database ([`crate::rollouts`]): the panel's jobs and audit log show it, and
//! `bento rollout abort` from another terminal stops it before the next wave.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bento_core::bentodir::BentoDir;
use bento_core::chroot::Chroot;
use bento_core::deploy::{HostOutcome, RunOptions};
use bento_core::rollout::driver::{self, DriveOptions, Follower, Outcome, Published, Start};
use bento_core::rollout::{self, rollback, Decision, HostProgress, Phase, RolloutSettings, Wave};
use bento_core::text::display_safe;
use bento_core::HostName;

use super::serve::cli_actor;
use crate::cli::HostFilter;
use crate::rollouts::{self, Db, NewRollout};

/// How often the chroot is looked at while a wave is under way: a few stats and
/// small reads per host of the wave.
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// Every host with its `[hosts.<name>] tags`.
pub fn tagged_hosts(b: &BentoDir) -> Vec<(HostName, Vec<String>)> {
    b.settings
        .hosts
        .iter()
        .map(|(h, s)| (h.clone(), s.tags.clone()))
        .collect()
}

/// The deploy runs as a rollout: asked for, or `[rollout]` has more than one wave.
pub fn wanted(b: &BentoDir, wait: bool) -> bool {
    wait || b.settings.rollout.waves.entries() != [rollout::WaveEntry::Rest]
}

#[derive(Debug, clap::Subcommand)]
pub enum RolloutAction {
    /// The newest rollouts: status, wave, outcome.
    List {
        /// How many (default 20).
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// One rollout: each host's wave, revision and outcome.
    Show { id: i64 },
    /// Stop a rollout: no further wave is published (hosts of published waves
    /// keep what they have; the others keep their current release).
    Abort { id: i64 },
    /// Go on with a halted, aborted or interrupted rollout: follow the wave under
    /// way, then publish the next ones (the same systems: a changed configuration
    /// is refused).
    Resume {
        id: i64,
        /// Give up on hosts that have not concluded after SECS seconds.
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
    },
    /// Put every host the rollout published back on the release it had before
    /// (kept in the chroot: nothing is built), and follow them. A rollout still
    /// under way is aborted first. Hosts deployed again since are left alone.
    Rollback {
        id: i64,
        /// Give up on hosts that have not concluded after SECS seconds.
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
    },
}

/// How long a rollback waits for the deploy lock, once it asked the rollout
/// holding it to stop.
const LOCK_WAIT: Duration = Duration::from_secs(300);

pub fn run(bento: &BentoDir, action: RolloutAction, database: &str) -> anyhow::Result<ExitCode> {
    let db = Db::open(database)?;
    db.block_on(rollouts::settle(&db.pool, &bento.settings))?;
    match action {
        RolloutAction::List { limit } => list(&db, limit),
        RolloutAction::Show { id } => show(&db, id),
        RolloutAction::Abort { id } => {
            let now = db.block_on(rollouts::request_abort(&db.pool, id, &cli_actor(), "cli"))?;
            if now == rollouts::RUNNING {
                println!("Rollout {id}: abort asked; its driver publishes no further wave.");
            } else {
                println!("Rollout {id} aborted: its unpublished waves keep their release.");
            }
            Ok(ExitCode::SUCCESS)
        }
        RolloutAction::Resume { id, timeout } => resume(bento, &db, id, timeout),
        RolloutAction::Rollback { id, timeout } => rollback(bento, &db, id, timeout),
    }
}

fn list(db: &Db, limit: i64) -> anyhow::Result<ExitCode> {
    let rows = db.block_on(rollouts::list(&db.pool, limit.clamp(1, 10_000)))?;
    if rows.is_empty() {
        println!("No rollouts yet: `bento deploy` makes one.");
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:>5}  {:<11}  {:<7}  {:<23}  {:<16}  SUMMARY",
        "ID", "STATUS", "WAVE", "CREATED", "BY"
    )?;
    for r in rows {
        writeln!(
            out,
            "{:>5}  {:<11}  {:<7}  {:<23}  {:<16}  {}",
            r.id,
            r.status,
            format!("{}/{}", (r.wave + 1).min(r.waves), r.waves),
            r.created(),
            display_safe(&r.created_by),
            display_safe(&r.summary)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn show(db: &Db, id: i64) -> anyhow::Result<ExitCode> {
    let (r, hosts) = db
        .block_on(rollouts::load(&db.pool, id))?
        .with_context(|| format!("there is no rollout {id}"))?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "Rollout {}: {} (wave {} of {}), by {} ({}) at {}",
        r.id,
        r.status,
        (r.wave + 1).min(r.waves),
        r.waves,
        display_safe(&r.created_by),
        display_safe(&r.source),
        r.created()
    )?;
    if let Some(j) = r.job_id {
        writeln!(out, "Job: {j}")?;
    }
    if let Some(f) = r.finished() {
        writeln!(out, "Finished: {f}")?;
    }
    if let Some(of) = r.rollback_of {
        writeln!(out, "Rolls back: rollout {of}")?;
    }
    let by = db.block_on(rollouts::rolled_back_by(&db.pool, id))?;
    if !by.is_empty() {
        let by: Vec<String> = by.iter().map(|b| format!("rollout {b}")).collect();
        writeln!(out, "Rolled back by: {}", by.join(", "))?;
    }
    if !r.summary.is_empty() {
        writeln!(out, "{}", display_safe(&r.summary))?;
    }
    let mut wave = -1;
    for h in &hosts {
        if h.wave != wave {
            wave = h.wave;
            writeln!(
                out,
                "wave {} ({}):",
                h.wave + 1,
                display_safe(&h.wave_entry)
            )?;
        }
        let rev = h
            .revision
            .as_deref()
            .map(|r| r.get(..12).unwrap_or(r))
            .unwrap_or("-");
        let why = h
            .reason
            .as_deref()
            .map(|r| format!(": {}", display_safe(r)))
            .unwrap_or_default();
        writeln!(out, "  {:<24} {:<12} {}{why}", h.host, rev, h.phase)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Follows a rollout on the terminal and in the panel's database.
struct CliFollower<'a> {
    db: Option<&'a Db>,
    id: i64,
    job_id: i64,
    warned: bool,
}

impl CliFollower<'_> {
    /// A line for the terminal and the job's log.
    fn say(&mut self, line: String, stdout: bool) {
        if stdout {
            println!("{line}");
            let _ = std::io::stdout().flush();
        } else {
            eprintln!("{line}");
        }
        self.record(|db, _, job| {
            db.block_on(rollouts::job_log(
                &db.pool,
                job,
                std::slice::from_ref(&line),
            ))
        });
    }

    /// Writes to the database; a failure is a warning (once), never the end of
    /// the rollout: the chroot holds what was published.
    fn record<T>(&mut self, f: impl FnOnce(&Db, i64, i64) -> Result<T, sqlx::Error>) {
        let Some(db) = self.db else { return };
        if let Err(e) = f(db, self.id, self.job_id) {
            if !self.warned {
                self.warned = true;
                eprintln!("warning: cannot record the rollout in the panel's database: {e}");
            }
        }
    }
}

impl Follower for CliFollower<'_> {
    fn publishing(&mut self, index: usize, wave: &Wave) -> Result<(), String> {
        self.say(
            format!(
                "Wave {} ({}): publishing to {}",
                index + 1,
                wave.entry,
                join(&wave.hosts)
            ),
            true,
        );
        Ok(())
    }

    fn published(&mut self, index: usize, hosts: &[Published]) -> Result<(), String> {
        self.record(|db, id, _| db.block_on(rollouts::wave_published(&db.pool, id, index, hosts)));
        Ok(())
    }

    fn progress(&mut self, _index: usize, p: &HostProgress) -> Result<(), String> {
        let why = p
            .reason
            .as_deref()
            .map(|r| format!(": {}", display_safe(r)))
            .unwrap_or_default();
        self.say(format!("{}: {}{why}", p.host, p.phase), p.phase.concluded());
        let p = p.clone();
        self.record(|db, id, _| db.block_on(rollouts::host_progress(&db.pool, id, &p)));
        Ok(())
    }

    fn abort_requested(&mut self) -> bool {
        match self.db {
            Some(db) => db
                .block_on(rollouts::abort_requested(&db.pool, self.id))
                .unwrap_or(false),
            None => false,
        }
    }
}

/// The panel's database, or a warning: a deploy never fails for want of it.
fn open_db(database: &str) -> Option<Db> {
    match Db::open(database) {
        Ok(db) => Some(db),
        Err(e) => {
            eprintln!(
                "warning: the rollout is not recorded (the panel and `bento rollout` will not show it): {e:#}"
            );
            None
        }
    }
}

/// Records a plain `bento deploy` (one wave, published at once, followed by
/// nobody: whoever looks next concludes it from the chroot).
pub fn record_plain(bento: &BentoDir, outcomes: &[HostOutcome], database: &str) {
    if outcomes.iter().all(|o| o.published.is_none()) {
        return;
    }
    let Some(db) = open_db(database) else { return };
    let chroot = Chroot::new(&bento.settings.chroot_dir);
    let actor = cli_actor();
    match db.block_on(rollouts::record_published(
        &db.pool, &chroot, &actor, "cli", None, outcomes,
    )) {
        Ok(Some(id)) => eprintln!("Rollout {id}: `bento rollout show {id}` follows the hosts."),
        Ok(None) => {}
        Err(e) => eprintln!("warning: the rollout is not recorded: {e:#}"),
    }
}

pub fn deploy_wait(
    bento: &BentoDir,
    filter: &HostFilter,
    verify: bool,
    timeout: Option<u64>,
    database: &str,
) -> anyhow::Result<ExitCode> {
    let _lock = bento.try_lock()?;
    let started = Instant::now();
    let deadline = timeout.map(|t| started + Duration::from_secs(t));
    let settings = &bento.settings.rollout;

    // Build everything first: a host that does not build fails the deploy before
    // any wave is published.
    let built = super::build::run_with_progress(
        bento,
        &RunOptions {
            only: filter.hosts.clone(),
            dry: false,
            publish: false,
        },
        false,
    )?;
    let build_failed: Vec<&str> = built
        .iter()
        .filter(|o| !o.ok())
        .map(|o| o.host.as_str())
        .collect();
    if !build_failed.is_empty() {
        super::build::summarize(&built, false, false);
        eprintln!(
            "Nothing published: {} did not build.",
            build_failed.join(", ")
        );
        return Ok(ExitCode::from(1));
    }
    let fleet = rollouts::fleet_of(bento, &built);
    let waves = rollout::plan(&fleet, settings)?;
    let db = open_db(database);
    let actor = cli_actor();
    let ids = match &db {
        Some(db) => match db.block_on(rollouts::create(
            &db.pool,
            &NewRollout {
                actor: &actor,
                source: "cli",
                settings,
                waves: &waves,
                systems: &rollouts::systems_of(&built),
                driven: true,
                job_id: None,
                rollback_of: None,
            },
        )) {
            Ok(ids) => Some(ids),
            Err(e) => {
                eprintln!("warning: the rollout is not recorded: {e:#}");
                None
            }
        },
        None => None,
    };
    let chroot = Chroot::new(&bento.settings.chroot_dir);
    let mut follower = CliFollower {
        db: if ids.is_some() { db.as_ref() } else { None },
        id: ids.map_or(0, |i| i.0),
        job_id: ids.map_or(0, |i| i.1),
        warned: false,
    };
    let name = ids
        .map(|(id, _)| format!("Rollout {id}"))
        .unwrap_or_else(|| "Rollout".into());
    follower.say(
        format!(
            "{name} of {} hosts in {} wave(s):",
            fleet.len(),
            waves.len()
        ),
        true,
    );
    for (i, w) in waves.iter().enumerate() {
        follower.say(
            format!("  wave {} ({}): {}", i + 1, w.entry, join(&w.hosts)),
            true,
        );
    }
    let n = fleet.len();
    let code = run_waves(
        bento,
        &chroot,
        &waves,
        settings,
        deadline,
        Start::default(),
        &mut |w: &Wave| publish(bento, w, verify).map_err(|e| format!("{e:#}")),
        &mut follower,
        started,
        n,
    )?;
    Ok(code)
}

/// Drives `waves` from `start`, then records and prints the outcome.
#[allow(clippy::too_many_arguments)]
fn run_waves(
    bento: &BentoDir,
    chroot: &Chroot,
    waves: &[Wave],
    settings: &RolloutSettings,
    deadline: Option<Instant>,
    start: Start,
    publish: &mut dyn FnMut(&Wave) -> Result<Vec<Published>, String>,
    follower: &mut CliFollower<'_>,
    started: Instant,
    hosts: usize,
) -> anyhow::Result<ExitCode> {
    let opts = DriveOptions {
        poll_interval: Duration::from_secs(bento.settings.poll_interval),
        offline_after_polls: bento.settings.offline_after_polls,
        deadline,
        look_every: LOOK_EVERY,
    };
    let mut results: BTreeMap<HostName, HostProgress> = BTreeMap::new();
    let plan = driver::Plan {
        chroot,
        waves,
        settings,
    };
    let outcome = driver::drive(plan, &opts, start, publish, follower, &mut results);
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            let msg = format!("the rollout stopped: {e}");
            follower.record(|db, id, _| {
                db.block_on(rollouts::finish(&db.pool, id, rollouts::FAILED, &msg))
            });
            bail!("{msg}");
        }
    };

    let success = results
        .values()
        .filter(|r| r.phase == Phase::Success)
        .count();
    let summary = format!(
        "{} ({:.0}s)",
        driver::summary(&results),
        started.elapsed().as_secs_f64()
    );
    println!();
    follower.say(summary.clone(), true);
    let mut status = if success == hosts {
        rollouts::SUCCEEDED
    } else {
        rollouts::FAILED
    };
    let mut tail = String::new();
    let later = |i: usize| -> Vec<HostName> {
        waves[i..]
            .iter()
            .flat_map(|w| w.hosts.iter().cloned())
            .collect()
    };
    match &outcome {
        Outcome::Finished => {}
        Outcome::Halted {
            wave: i,
            decision:
                Decision::Halt {
                    host,
                    phase,
                    reason,
                    failures,
                    allowed,
                },
        } => {
            status = rollouts::HALTED;
            tail = format!(
                "Rollout halted in wave {}: {host} {phase}: {} ({failures} failure(s), {allowed} allowed)",
                i + 1,
                display_safe(reason)
            );
            follower.say(tail.clone(), true);
            not_published(follower, &later(i + 1));
        }
        Outcome::Halted { .. } => {}
        Outcome::Aborted { wave } => {
            status = rollouts::ABORTED;
            tail = format!("Rollout aborted in wave {}", wave + 1);
            follower.say(tail.clone(), true);
            let untouched: Vec<HostName> = later(*wave)
                .into_iter()
                .filter(|h| !results.contains_key(h))
                .collect();
            not_published(follower, &untouched);
        }
    }
    let summary = if tail.is_empty() {
        summary
    } else {
        format!("{tail}. {summary}")
    };
    follower.record(|db, id, _| db.block_on(rollouts::finish(&db.pool, id, status, &summary)));
    Ok(if status == rollouts::SUCCEEDED {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn resume(bento: &BentoDir, db: &Db, id: i64, timeout: Option<u64>) -> anyhow::Result<ExitCode> {
    let (r, hosts) = db
        .block_on(rollouts::load(&db.pool, id))?
        .with_context(|| format!("there is no rollout {id}"))?;
    let plan = rollouts::plan_resume(&r, &hosts)?;
    db.block_on(rollouts::refuse_if_rolled_back(&db.pool, id))?;
    let _lock = bento.try_lock()?;
    let started = Instant::now();
    if !plan.to_publish.is_empty() {
        let built = super::build::run_with_progress(
            bento,
            &RunOptions {
                only: plan.to_publish.clone(),
                dry: false,
                publish: false,
            },
            false,
        )?;
        rollouts::check_systems(id, &hosts, &built)?;
    }
    db.block_on(rollouts::claim(
        &db.pool,
        &r,
        plan.start.wave,
        &cli_actor(),
        "cli",
    ))?;
    let chroot = Chroot::new(&bento.settings.chroot_dir);
    let mut follower = CliFollower {
        db: Some(db),
        id,
        job_id: r.job_id.unwrap_or(0),
        warned: false,
    };
    follower.say(plan.announce(id), true);
    let deadline = timeout.map(|t| started + Duration::from_secs(t));
    let n = plan.waves.iter().map(|w| w.hosts.len()).sum();
    run_waves(
        bento,
        &chroot,
        &plan.waves,
        &plan.settings,
        deadline,
        plan.start,
        &mut |w: &Wave| publish(bento, w, false).map_err(|e| format!("{e:#}")),
        &mut follower,
        started,
        n,
    )
}

fn rollback(bento: &BentoDir, db: &Db, id: i64, timeout: Option<u64>) -> anyhow::Result<ExitCode> {
    let (r, _) = db
        .block_on(rollouts::load(&db.pool, id))?
        .with_context(|| format!("there is no rollout {id}"))?;
    db.block_on(rollouts::refuse_if_rolled_back(&db.pool, id))?;
    let actor = cli_actor();
    // A rollout under way stops first: no further wave goes out.
    if r.status == rollouts::RUNNING && rollouts::driver_alive(&r) {
        db.block_on(rollouts::request_abort(&db.pool, id, &actor, "cli"))?;
        println!("Rollout {id} is under way: abort asked; rolling back once its driver stops.");
    }
    let _lock = wait_for_lock(bento)?;
    let started = Instant::now();
    // Read again: its driver has stopped, and what it published is recorded.
    let (r, hosts) = db
        .block_on(rollouts::load(&db.pool, id))?
        .with_context(|| format!("there is no rollout {id}"))?;
    let chroot = Chroot::new(&bento.settings.chroot_dir);
    let plan = rollouts::plan_rollback(&chroot, &r, &hosts)?;
    let settings = rollouts::rollback_settings(&bento.settings.rollout);
    let waves = [plan.wave.clone()];
    let (new_id, job_id) = db.block_on(rollouts::create(
        &db.pool,
        &NewRollout {
            actor: &actor,
            source: "cli",
            settings: &settings,
            waves: &waves,
            systems: &plan.systems,
            driven: true,
            job_id: None,
            rollback_of: Some(id),
        },
    ))?;
    let mut follower = CliFollower {
        db: Some(db),
        id: new_id,
        job_id,
        warned: false,
    };
    for line in plan.announce(new_id) {
        follower.say(line, true);
    }
    let key = bento.signing_key_path();
    let keep = bento.settings.keep_releases;
    run_waves(
        bento,
        &chroot,
        &waves,
        &settings,
        timeout.map(|t| started + Duration::from_secs(t)),
        Start::default(),
        &mut |_: &Wave| rollback::republish(&chroot, &key, &plan.plan.to_republish, keep),
        &mut follower,
        started,
        plan.wave.hosts.len(),
    )
}

/// The deploy lock, waited for while another deploy (the rollout being stopped)
/// holds it.
fn wait_for_lock(bento: &BentoDir) -> anyhow::Result<bento_core::bentodir::DeployLock> {
    let start = Instant::now();
    let mut said = false;
    loop {
        match bento.try_lock() {
            Ok(l) => return Ok(l),
            Err(bento_core::bentodir::LockError::Busy(_)) if start.elapsed() < LOCK_WAIT => {
                if !said {
                    eprintln!("Waiting for the deploy lock (another deploy holds it)…");
                    said = true;
                }
                std::thread::sleep(LOOK_EVERY);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Publishes one wave; returns each host's revision and publication time.
fn publish(bento: &BentoDir, wave: &Wave, verify: bool) -> anyhow::Result<Vec<Published>> {
    let opts = RunOptions {
        only: wave.hosts.clone(),
        dry: false,
        publish: true,
    };
    let outcomes = super::build::run_with_progress(bento, &opts, verify)?;
    if outcomes.iter().any(|o| !o.ok()) {
        super::build::summarize(&outcomes, true, false);
        anyhow::bail!("the wave could not be published; later waves were not published");
    }
    let chroot = Chroot::new(&bento.settings.chroot_dir);
    driver::published_of(&chroot, &outcomes).map_err(anyhow::Error::msg)
}

/// Names the hosts a stopped rollout never published to.
fn not_published(follower: &mut CliFollower<'_>, hosts: &[HostName]) {
    if !hosts.is_empty() {
        follower.say(
            format!(
                "Not published (they keep their current release): {}",
                join(hosts)
            ),
            true,
        );
    }
}

fn join(hosts: &[HostName]) -> String {
    hosts
        .iter()
        .map(HostName::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}
