//! Drives a rollout: publishes wave after wave and follows each host of the wave
//! under way until [`decide`] concludes it. Shared by `bento deploy --wait`,
//! `bento rollout resume` and (later) the panel, which differ only in how they
//! publish a wave and where they record what happened ([`Follower`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use super::{decide, observe, progress, Decision, HostProgress, Phase, RolloutSettings, Wave};
use crate::chroot::Chroot;
use crate::status::StatusOptions;
use crate::HostName;

/// One host of a published wave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub host: HostName,
    pub revision: String,
    /// The server's time of the publication (`last_change_date`'s mtime).
    pub at: SystemTime,
    /// The revision it replaced (what a rollback goes back to); `None` when the
    /// host had none or its release did not change.
    pub previous: Option<String>,
}

/// What watches a rollout run: it records (and shows) each step, and can ask to
/// stop before the next wave.
pub trait Follower {
    /// Wave `index` (from 0) is about to be published.
    fn publishing(&mut self, index: usize, wave: &Wave) -> Result<(), String>;
    /// Wave `index` was published.
    fn published(&mut self, index: usize, hosts: &[Published]) -> Result<(), String>;
    /// A host of wave `index` moved to another phase.
    fn progress(&mut self, index: usize, p: &HostProgress) -> Result<(), String>;
    /// Someone asked to stop: no further wave is published.
    fn abort_requested(&mut self) -> bool;
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every wave was published and passed its decision.
    Finished,
    /// Wave `wave` failed its decision: later waves were not published.
    Halted { wave: usize, decision: Decision },
    /// Stopped on request after wave `wave` (or before it was published).
    Aborted { wave: usize },
}

/// Where a run starts: a fresh rollout starts at wave 0 with nothing published;
/// a resumed one at the wave under way, with what of it was published already.
#[derive(Debug, Clone, Default)]
pub struct Start {
    pub wave: usize,
    pub published: Option<Vec<Published>>,
    /// Hosts that concluded before (a resumed wave's), kept as they were.
    pub concluded: BTreeMap<HostName, HostProgress>,
}

/// The settings a run uses besides `[rollout]`.
#[derive(Debug, Clone)]
pub struct DriveOptions {
    pub poll_interval: Duration,
    pub offline_after_polls: u32,
    /// The whole rollout's deadline (`deploy --wait --timeout`).
    pub deadline: Option<Instant>,
    /// How often the chroot is looked at while a wave is under way.
    pub look_every: Duration,
}

/// What a rollout runs on: the chroot it follows, its waves and its settings.
#[derive(Clone, Copy)]
pub struct Plan<'a> {
    pub chroot: &'a Chroot,
    pub waves: &'a [Wave],
    pub settings: &'a RolloutSettings,
}

/// Runs the rollout from `start`: publishes each wave with `publish`, follows it
/// and decides. Every host's last progress is left in `results`.
pub fn drive(
    plan: Plan<'_>,
    opts: &DriveOptions,
    start: Start,
    publish: &mut dyn FnMut(&Wave) -> Result<Vec<Published>, String>,
    follower: &mut dyn Follower,
    results: &mut BTreeMap<HostName, HostProgress>,
) -> Result<Outcome, String> {
    let Plan {
        chroot,
        waves,
        settings,
    } = plan;
    results.extend(start.concluded);
    let mut resumed = start.published;
    for (i, wave) in waves.iter().enumerate().skip(start.wave) {
        let published = match resumed.take() {
            Some(p) => p,
            None => {
                if follower.abort_requested() {
                    return Ok(Outcome::Aborted { wave: i });
                }
                follower.publishing(i, wave)?;
                let p = publish(wave)?;
                follower.published(i, &p)?;
                p
            }
        };
        let wave_deadline = settings
            .wave_timeout
            .map(|t| Instant::now() + Duration::from_secs(t));
        let deadline = [opts.deadline, wave_deadline].into_iter().flatten().min();
        let last = i + 1 == waves.len();
        match follow(
            chroot, i, &published, settings, opts, deadline, last, follower, results,
        )? {
            None => return Ok(Outcome::Aborted { wave: i }),
            Some(Decision::Continue) => continue,
            Some(Decision::Finished) => return Ok(Outcome::Finished),
            Some(d @ Decision::Halt { .. }) => {
                return Ok(Outcome::Halted {
                    wave: i,
                    decision: d,
                })
            }
            Some(Decision::Wait) => unreachable!("follow returns a final decision"),
        }
    }
    Ok(Outcome::Finished)
}

/// Follows wave `index` until the decision is not to wait any more (`None`: an
/// abort was asked for; the wave's hosts keep the release they have).
#[allow(clippy::too_many_arguments)]
fn follow(
    chroot: &Chroot,
    index: usize,
    published: &[Published],
    settings: &RolloutSettings,
    opts: &DriveOptions,
    deadline: Option<Instant>,
    last_wave: bool,
    follower: &mut dyn Follower,
    results: &mut BTreeMap<HostName, HostProgress>,
) -> Result<Option<Decision>, String> {
    let mut shown: BTreeMap<HostName, Phase> =
        results.iter().map(|(h, p)| (h.clone(), p.phase)).collect();
    loop {
        let timed_out = deadline.is_some_and(|d| Instant::now() >= d);
        let status = StatusOptions {
            now: SystemTime::now(),
            poll_interval: opts.poll_interval,
            offline_after_polls: opts.offline_after_polls,
        };
        let mut wave = Vec::new();
        for p in published {
            // A concluded host stays concluded: a later report is another story.
            if let Some(done) = results.get(&p.host).filter(|d| d.phase.concluded()) {
                wave.push(done.clone());
                continue;
            }
            let mut obs = observe(chroot, &p.host, &p.revision, p.at, None, &status);
            obs.timed_out = timed_out;
            let now = progress(&p.host, &obs, settings.offline);
            if shown.get(&p.host) != Some(&now.phase) {
                shown.insert(p.host.clone(), now.phase);
                follower.progress(index, &now)?;
            }
            results.insert(p.host.clone(), now.clone());
            wave.push(now);
        }
        let decision = decide(&wave, settings.max_failures, last_wave);
        if decision != Decision::Wait {
            return Ok(Some(decision));
        }
        if follower.abort_requested() {
            return Ok(None);
        }
        debug_assert!(!timed_out, "every host concludes at the timeout");
        std::thread::sleep(opts.look_every);
    }
}

/// The hosts of a wave as published: each host's revision, the one it replaced
/// and the time of its `last_change_date`. Hosts that were not published are
/// left out.
pub fn published_of(
    chroot: &Chroot,
    outcomes: &[crate::deploy::HostOutcome],
) -> Result<Vec<Published>, String> {
    let mut out = Vec::new();
    for o in outcomes {
        let Some(p) = &o.published else { continue };
        let host = HostName::new(&o.host).map_err(|e| e.to_string())?;
        let previous = match p {
            crate::chroot::Published::New { previous, .. } => previous.clone(),
            crate::chroot::Published::Unchanged { .. } => None,
        };
        let at = std::fs::metadata(chroot.last_change_path(&host))
            .and_then(|m| m.modified())
            .map_err(|e| format!("cannot read the publication time of {host}: {e}"))?;
        out.push(Published {
            host,
            revision: p.revision().to_owned(),
            at,
            previous,
        });
    }
    Ok(out)
}

/// The one-line count of how the hosts concluded.
pub fn summary(results: &BTreeMap<HostName, HostProgress>) -> String {
    summary_of(results.values().map(|p| p.phase))
}

/// [`summary`] of bare phases.
pub fn summary_of(phases: impl Iterator<Item = Phase> + Clone) -> String {
    let count = |p: Phase| phases.clone().filter(|x| *x == p).count();
    format!(
        "{} succeeded, {} failed, {} rolled back, {} no answer, {} skipped",
        count(Phase::Success),
        count(Phase::Failed),
        count(Phase::RolledBack),
        count(Phase::NoAnswer),
        count(Phase::Skipped)
    )
}
