//! A panel deploy as a rollout: the job builds every host, then publishes wave
//! by wave through `bento_core::rollout::driver`, as `bento deploy --wait`
//! does, holding the deploy lock for the whole rollout. Each step goes to the
//! job's live log and to the rollout's record; Abort on the Rollouts page stops
//! it before its next wave. A panel stopped meanwhile leaves the rollout
//! interrupted: `bento rollout resume` goes on.

use std::collections::BTreeMap;
use std::time::Duration;

use bento_core::bentodir::BentoDir;
use bento_core::chroot::Chroot;
use bento_core::deploy::{self, Event, RunOptions};
use bento_core::rollout::driver::{self, DriveOptions, Follower, Outcome as Ended, Published};
use bento_core::rollout::{self, rollback, Decision, HostProgress, Phase, RolloutSettings, Wave};
use bento_core::HostName;
use sqlx::SqlitePool;

use super::jobs::{Job, LiveLog, Outcome};
use super::{AppState, Change};
use crate::rollouts::{self, NewRollout};

/// How often the chroot is looked at while a wave is under way.
const LOOK_EVERY: Duration = Duration::from_millis(250);

struct PanelFollower<'a> {
    db: &'a SqlitePool,
    rt: tokio::runtime::Handle,
    id: i64,
    live: &'a LiveLog,
}

impl PanelFollower<'_> {
    fn record<T>(&self, f: impl std::future::Future<Output = Result<T, sqlx::Error>>) {
        if let Err(e) = self.rt.block_on(f) {
            self.live
                .push(&format!("warning: cannot record the rollout: {e}"), false);
        }
    }
}

impl Follower for PanelFollower<'_> {
    fn publishing(&mut self, index: usize, wave: &Wave) -> Result<(), String> {
        let names: Vec<&str> = wave.hosts.iter().map(HostName::as_str).collect();
        self.live.push(
            &format!(
                "wave {} ({}): publishing to {}",
                index + 1,
                wave.entry,
                names.join(", ")
            ),
            false,
        );
        Ok(())
    }

    fn published(&mut self, index: usize, hosts: &[Published]) -> Result<(), String> {
        self.record(rollouts::wave_published(self.db, self.id, index, hosts));
        Ok(())
    }

    fn progress(&mut self, _index: usize, p: &HostProgress) -> Result<(), String> {
        let why = p
            .reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        self.live
            .push(&format!("{}: {}{why}", p.host, p.phase), false);
        self.record(rollouts::host_progress(self.db, self.id, p));
        Ok(())
    }

    fn abort_requested(&mut self) -> bool {
        self.rt
            .block_on(rollouts::abort_requested(self.db, self.id))
            .unwrap_or(false)
    }
}

/// Tells the job's open pages that it now has a rollout, so they show its link:
/// a job's page refreshes on changes of its job only, and a deploy in waves
/// runs (unchanged) until its last wave concludes.
fn rollout_recorded(state: &AppState, job: &Job) {
    state.notify(Change {
        jobs: vec![job.id],
        ..Change::default()
    });
}

/// A job that ended before any wave, saying why.
fn fail(summary: String) -> Outcome {
    Outcome {
        ok: false,
        summary,
        hosts: Vec::new(),
    }
}

/// Runs the deploy job `job` as a rollout (in the job's blocking thread, the
/// deploy lock held by the caller).
pub(super) fn run(
    state: &AppState,
    job: &Job,
    bento: &BentoDir,
    only: Vec<HostName>,
    live: &LiveLog,
) -> Outcome {
    let on_event = |e: Event| live.event(&e);
    let built = match deploy::run(
        bento,
        &RunOptions {
            only,
            dry: false,
            publish: false,
        },
        &on_event,
    ) {
        Ok(b) => b,
        Err(e) => return fail(e.to_string()),
    };
    let failed: Vec<&str> = built
        .iter()
        .filter(|o| !o.ok())
        .map(|o| o.host.as_str())
        .collect();
    if !failed.is_empty() {
        return Outcome {
            ok: false,
            summary: format!("nothing published: {} did not build", failed.join(", ")),
            hosts: built,
        };
    }
    let fleet = rollouts::fleet_of(bento, &built);
    let settings = &bento.settings.rollout;
    let waves = match rollout::plan(&fleet, settings) {
        Ok(w) => w,
        Err(e) => return fail(e.to_string()),
    };
    let systems = rollouts::systems_of(&built);
    let rt = tokio::runtime::Handle::current();
    let id = match rt.block_on(rollouts::create(
        &state.db,
        &NewRollout {
            actor: &job.created_by,
            source: "panel",
            settings,
            waves: &waves,
            systems: &systems,
            driven: true,
            job_id: Some(job.id),
            rollback_of: None,
        },
    )) {
        Ok((id, _)) => id,
        Err(e) => return fail(format!("cannot record the rollout: {e:#}")),
    };
    rollout_recorded(state, job);
    live.push(
        &format!(
            "rollout {id}: {} hosts in {} wave(s)",
            fleet.len(),
            waves.len()
        ),
        false,
    );
    let chroot = Chroot::new(&bento.settings.chroot_dir);
    drive(
        state,
        bento,
        id,
        &waves,
        settings,
        driver::Start::default(),
        &mut |w: &Wave| publish_wave(bento, &chroot, w, live),
        live,
    )
}

/// Goes on with rollout `id` (halted, aborted, or interrupted by a restart of
/// the panel): the resume job's work.
pub(super) fn resume(
    state: &AppState,
    job: &Job,
    bento: &BentoDir,
    id: i64,
    live: &LiveLog,
) -> Outcome {
    let rt = tokio::runtime::Handle::current();
    let (r, hosts) = match rt.block_on(rollouts::load(&state.db, id)) {
        Ok(Some(x)) => x,
        Ok(None) => return fail(format!("there is no rollout {id}")),
        Err(e) => return fail(e.to_string()),
    };
    let plan = match rollouts::plan_resume(&r, &hosts) {
        Ok(p) => p,
        Err(e) => return fail(format!("{e:#}")),
    };
    if let Err(e) = rt.block_on(rollouts::refuse_if_rolled_back(&state.db, id)) {
        return fail(format!("{e:#}"));
    }
    if !plan.to_publish.is_empty() {
        let on_event = |e: Event| live.event(&e);
        let built = match deploy::run(
            bento,
            &RunOptions {
                only: plan.to_publish.clone(),
                dry: false,
                publish: false,
            },
            &on_event,
        ) {
            Ok(b) => b,
            Err(e) => return fail(e.to_string()),
        };
        if let Err(e) = rollouts::check_systems(id, &hosts, &built) {
            return fail(format!("{e:#}"));
        }
    }
    if let Err(e) = rt.block_on(rollouts::claim(
        &state.db,
        &r,
        plan.start.wave,
        &job.created_by,
        "panel",
    )) {
        return fail(format!("cannot claim rollout {id}: {e}"));
    }
    live.push(&plan.announce(id), false);
    let chroot = Chroot::new(&bento.settings.chroot_dir);
    drive(
        state,
        bento,
        id,
        &plan.waves,
        &plan.settings,
        plan.start,
        &mut |w: &Wave| publish_wave(bento, &chroot, w, live),
        live,
    )
}

/// Puts the hosts of rollout `of` back on the release they had before, as a
/// rollout of its own: the rollback job's work (the deploy lock held, so the
/// rollout it takes back has stopped).
pub(super) fn rollback(
    state: &AppState,
    job: &Job,
    bento: &BentoDir,
    of: i64,
    live: &LiveLog,
) -> Outcome {
    let rt = tokio::runtime::Handle::current();
    let (r, hosts) = match rt.block_on(rollouts::load(&state.db, of)) {
        Ok(Some(x)) => x,
        Ok(None) => return fail(format!("there is no rollout {of}")),
        Err(e) => return fail(e.to_string()),
    };
    if let Err(e) = rt.block_on(rollouts::refuse_if_rolled_back(&state.db, of)) {
        return fail(format!("{e:#}"));
    }
    let chroot = Chroot::new(&bento.settings.chroot_dir);
    let plan = match rollouts::plan_rollback(&chroot, &r, &hosts) {
        Ok(p) => p,
        Err(e) => return fail(format!("{e:#}")),
    };
    let settings = rollouts::rollback_settings(&bento.settings.rollout);
    let waves = [plan.wave.clone()];
    let id = match rt.block_on(rollouts::create(
        &state.db,
        &NewRollout {
            actor: &job.created_by,
            source: "panel",
            settings: &settings,
            waves: &waves,
            systems: &plan.systems,
            driven: true,
            job_id: Some(job.id),
            rollback_of: Some(of),
        },
    )) {
        Ok((id, _)) => id,
        Err(e) => return fail(format!("cannot record the rollback: {e:#}")),
    };
    rollout_recorded(state, job);
    for line in plan.announce(id) {
        live.push(&line, false);
    }
    let key = bento.signing_key_path();
    let keep = bento.settings.keep_releases;
    drive(
        state,
        bento,
        id,
        &waves,
        &settings,
        driver::Start::default(),
        &mut |_: &Wave| rollback::republish(&chroot, &key, &plan.plan.to_republish, keep),
        live,
    )
}

/// Publishes a wave as a deploy does (built again: the same systems, from the
/// store), and returns what was published.
fn publish_wave(
    bento: &BentoDir,
    chroot: &Chroot,
    w: &Wave,
    live: &LiveLog,
) -> Result<Vec<Published>, String> {
    let on_event = |e: Event| live.event(&e);
    let outcomes = deploy::run(
        bento,
        &RunOptions {
            only: w.hosts.clone(),
            dry: false,
            publish: true,
        },
        &on_event,
    )
    .map_err(|e| e.to_string())?;
    if let Some(o) = outcomes.iter().find(|o| !o.ok()) {
        return Err(format!(
            "{} could not be published: {}; later waves were not published",
            o.host,
            o.error.as_deref().unwrap_or("")
        ));
    }
    driver::published_of(chroot, &outcomes)
}

/// Drives rollout `id` from `start` and records how it ended.
#[allow(clippy::too_many_arguments)]
fn drive(
    state: &AppState,
    bento: &BentoDir,
    id: i64,
    waves: &[Wave],
    settings: &RolloutSettings,
    start: driver::Start,
    publish: &mut dyn FnMut(&Wave) -> Result<Vec<Published>, String>,
    live: &LiveLog,
) -> Outcome {
    let rt = tokio::runtime::Handle::current();
    let chroot = Chroot::new(&bento.settings.chroot_dir);
    let mut follower = PanelFollower {
        db: &state.db,
        rt,
        id,
        live,
    };
    let opts = DriveOptions {
        poll_interval: Duration::from_secs(bento.settings.poll_interval),
        offline_after_polls: bento.settings.offline_after_polls,
        deadline: None,
        look_every: LOOK_EVERY,
    };
    let mut results = BTreeMap::new();
    let plan = driver::Plan {
        chroot: &chroot,
        waves,
        settings,
    };
    let ended = driver::drive(plan, &opts, start, publish, &mut follower, &mut results);
    let counts = driver::summary(&results);
    let hosts: usize = waves.iter().map(|w| w.hosts.len()).sum();
    let (status, summary) = match ended {
        Err(e) => (rollouts::FAILED, format!("the rollout stopped: {e}")),
        Ok(Ended::Finished) => {
            let ok = results.len() == hosts && results.values().all(|p| p.phase == Phase::Success);
            (
                if ok {
                    rollouts::SUCCEEDED
                } else {
                    rollouts::FAILED
                },
                counts,
            )
        }
        Ok(Ended::Halted {
            wave,
            decision:
                Decision::Halt {
                    host,
                    phase,
                    reason,
                    ..
                },
        }) => (
            rollouts::HALTED,
            format!(
                "halted in wave {}: {host} {phase}: {reason}. {counts}",
                wave + 1
            ),
        ),
        Ok(Ended::Halted { wave, .. }) => (
            rollouts::HALTED,
            format!("halted in wave {}. {counts}", wave + 1),
        ),
        Ok(Ended::Aborted { wave }) => (
            rollouts::ABORTED,
            format!("aborted in wave {}. {counts}", wave + 1),
        ),
    };
    follower.record(rollouts::finish(&state.db, id, status, &summary));
    Outcome {
        ok: status == rollouts::SUCCEEDED,
        summary: format!("rollout {id}: {summary}"),
        hosts: Vec::new(),
    }
}
