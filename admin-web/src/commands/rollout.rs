//! `bento deploy --wait`: a deploy driven as a rollout from the command line.
//!
//! Builds every host, publishes the first wave, follows each host's outcome from
//! its chroot (reports and heartbeat, see `bento_core::rollout`), and publishes
//! the next wave only when the decision says so. The deploy lock is held for the
//! whole rollout, so no other deploy (nor the panel) publishes meanwhile.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use bento_core::bentodir::BentoDir;
use bento_core::chroot::Chroot;
use bento_core::deploy::RunOptions;
use bento_core::rollout::{self, Decision, HostProgress, Phase, Wave};
use bento_core::status::StatusOptions;
use bento_core::text::display_safe;
use bento_core::HostName;

use crate::cli::HostFilter;

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

pub fn deploy_wait(
    bento: &BentoDir,
    filter: &HostFilter,
    verify: bool,
    timeout: Option<u64>,
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
    let tags = tagged_hosts(bento);
    let fleet: Vec<(HostName, Vec<String>)> = built
        .iter()
        .filter_map(|o| HostName::new(&o.host).ok())
        .map(|h| {
            let t = tags
                .iter()
                .find(|(x, _)| *x == h)
                .map(|(_, t)| t.clone())
                .unwrap_or_default();
            (h, t)
        })
        .collect();
    let waves = rollout::plan(&fleet, settings)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "Rollout of {} hosts in {} wave(s):",
        fleet.len(),
        waves.len()
    )?;
    for (i, w) in waves.iter().enumerate() {
        writeln!(out, "  wave {} ({}): {}", i + 1, w.entry, join(&w.hosts))?;
    }
    out.flush()?;

    let chroot = Chroot::new(&bento.settings.chroot_dir);
    let mut results: BTreeMap<HostName, HostProgress> = BTreeMap::new();
    let mut halted: Option<(usize, Decision)> = None;
    for (i, wave) in waves.iter().enumerate() {
        writeln!(
            out,
            "Wave {} ({}): publishing to {}",
            i + 1,
            wave.entry,
            join(&wave.hosts)
        )?;
        out.flush()?;
        let published = publish(bento, wave, verify)?;
        let wave_deadline = settings
            .wave_timeout
            .map(|t| Instant::now() + Duration::from_secs(t));
        let deadline = [deadline, wave_deadline].into_iter().flatten().min();
        let decision = follow(
            bento,
            &chroot,
            &published,
            deadline,
            i + 1 == waves.len(),
            &mut results,
            &mut out,
        )?;
        match decision {
            Decision::Continue => continue,
            Decision::Finished => break,
            d @ Decision::Halt { .. } => {
                halted = Some((i, d));
                break;
            }
            Decision::Wait => unreachable!("follow returns a final decision"),
        }
    }

    writeln!(out)?;
    let count = |p: Phase| results.values().filter(|r| r.phase == p).count();
    let success = count(Phase::Success);
    writeln!(
        out,
        "{success} succeeded, {} failed, {} rolled back, {} no answer, {} skipped ({:.0}s)",
        count(Phase::Failed),
        count(Phase::RolledBack),
        count(Phase::NoAnswer),
        count(Phase::Skipped),
        started.elapsed().as_secs_f64()
    )?;
    if let Some((
        i,
        Decision::Halt {
            host,
            phase,
            reason,
            failures,
            allowed,
        },
    )) = &halted
    {
        writeln!(
            out,
            "Rollout halted in wave {}: {host} {phase}: {} ({failures} failure(s), {allowed} allowed)",
            i + 1,
            display_safe(reason)
        )?;
        let untouched: Vec<HostName> = waves[i + 1..]
            .iter()
            .flat_map(|w| w.hosts.iter().cloned())
            .collect();
        if !untouched.is_empty() {
            writeln!(
                out,
                "Not published (they keep their current release): {}",
                join(&untouched)
            )?;
        }
    }
    out.flush()?;
    Ok(if success == fleet.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Publishes one wave; returns each host's revision and publication time.
fn publish(
    bento: &BentoDir,
    wave: &Wave,
    verify: bool,
) -> anyhow::Result<Vec<(HostName, String, SystemTime)>> {
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
    let mut published = Vec::new();
    for o in outcomes {
        let host = HostName::new(&o.host)?;
        let revision = o
            .published
            .as_ref()
            .map(|p| p.revision().to_owned())
            .with_context(|| format!("{host} was built but not published"))?;
        let at = std::fs::metadata(chroot.last_change_path(&host))
            .and_then(|m| m.modified())
            .with_context(|| format!("cannot read the publication time of {host}"))?;
        published.push((host, revision, at));
    }
    Ok(published)
}

/// Follows a wave until the decision is not to wait any more.
#[allow(clippy::too_many_arguments)]
fn follow(
    bento: &BentoDir,
    chroot: &Chroot,
    published: &[(HostName, String, SystemTime)],
    deadline: Option<Instant>,
    last_wave: bool,
    results: &mut BTreeMap<HostName, HostProgress>,
    out: &mut impl Write,
) -> anyhow::Result<Decision> {
    let settings = &bento.settings;
    let mut shown: BTreeMap<HostName, Phase> = BTreeMap::new();
    loop {
        let timed_out = deadline.is_some_and(|d| Instant::now() >= d);
        let opts = StatusOptions {
            now: SystemTime::now(),
            poll_interval: Duration::from_secs(settings.poll_interval),
            offline_after_polls: settings.offline_after_polls,
        };
        let mut progress = Vec::new();
        for (host, revision, at) in published {
            // A concluded host stays concluded: a later report is another story.
            if let Some(p) = results.get(host).filter(|p| p.phase.concluded()) {
                progress.push(p.clone());
                continue;
            }
            let mut obs = rollout::observe(chroot, host, revision, *at, None, &opts);
            obs.timed_out = timed_out;
            let p = rollout::progress(host, &obs, settings.rollout.offline);
            if shown.get(host) != Some(&p.phase) {
                shown.insert(host.clone(), p.phase);
                let why = p
                    .reason
                    .as_deref()
                    .map(|r| format!(": {}", display_safe(r)))
                    .unwrap_or_default();
                if p.phase.concluded() {
                    writeln!(out, "{host}: {}{why}", p.phase)?;
                } else {
                    eprintln!("{host}: {}", p.phase);
                }
                out.flush()?;
            }
            results.insert(host.clone(), p.clone());
            progress.push(p);
        }
        let decision = rollout::decide(&progress, settings.rollout.max_failures, last_wave);
        if decision != Decision::Wait {
            return Ok(decision);
        }
        debug_assert!(!timed_out, "every host concludes at the timeout");
        std::thread::sleep(LOOK_EVERY);
    }
}

fn join(hosts: &[HostName]) -> String {
    hosts
        .iter()
        .map(HostName::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}
