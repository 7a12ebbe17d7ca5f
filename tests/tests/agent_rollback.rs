//! Rollbacks land on the last system that activated and passed its health checks, never
//! on a generation that never worked; a rollback that fails says so, and nobody is
//! told the host runs a system it does not.

mod agent_common;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bento_core::report::{Heartbeat, ReportMeta, ReportName, ReportStatus, HEARTBEAT_FILE};
use bento_core::status::State;
use bento_tests::toy::SystemSwitch;

use agent_common::{base, Agent, Fleet};

const MIXED: &str = "rollback failed: the host may be in a mixed state";

fn heartbeat(fleet: &Fleet, host: &str) -> Result<Heartbeat> {
    let p = fleet.host_chroot(host).join("logs").join(HEARTBEAT_FILE);
    let bytes = fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// Publishes system version `version` of `host` and returns its store path and revision.
fn publish(fleet: &Fleet, host: &str, version: &str) -> Result<(PathBuf, String)> {
    fleet.toy.set_system_version(host, version)?;
    let system = fleet.toy.build_toplevel(host)?;
    fleet.deploy()?;
    Ok((system, fleet.published(host)?))
}

fn switch(system: &Path, ok: bool) -> SystemSwitch {
    SystemSwitch {
        action: "switch".to_owned(),
        system: system.to_owned(),
        ok,
    }
}

/// Neither the reports of `revisions` nor what the host says now (heartbeat,
/// status.json, and so `bento status`) name one of `not_running`.
fn assert_not_claimed(
    fleet: &Fleet,
    agent: &Agent,
    host: &str,
    revisions: &[&str],
    not_running: &[&Path],
) -> Result<()> {
    let names: Vec<String> = not_running.iter().map(|p| base(p)).collect();
    let mut claims: Vec<(String, Option<String>)> = Vec::new();
    for r in fleet.reports(host) {
        let meta: ReportMeta = fleet.sidecar(host, &r)?;
        if !meta
            .revision
            .as_deref()
            .is_some_and(|rev| revisions.contains(&rev))
        {
            continue;
        }
        claims.push((format!("report {r}"), meta.system));
        let from_name = ReportName::parse(&r)?.system;
        claims.push((format!("report name {r}"), Some(from_name)));
    }
    claims.push(("heartbeat".to_owned(), heartbeat(fleet, host)?.system));
    claims.push((
        "status.json".to_owned(),
        agent.local_status().context("no status.json")?.system,
    ));
    claims.push((
        "bento status".to_owned(),
        fleet.status(host)?.running_system,
    ));
    for (what, system) in claims {
        if let Some(s) = system {
            assert!(!names.contains(&s), "{what} claims {s} runs");
        }
    }
    Ok(())
}

/// The sequence: release 2's activation fails, its rollback fails too; release
/// 3's activation fails: the agent goes back to release 1's system, the last that
/// worked, not to release 2's generation.
#[test]
fn a_rollback_lands_on_the_last_good_system_not_on_one_that_never_worked() -> Result<()> {
    let fleet = Fleet::new("agent-lastgood", &["web"], "")?;
    let host = fleet.host(0).to_owned();
    let (v1, rev1) = publish(&fleet, &host, "1")?;
    let agent = fleet.agent(&host)?;
    let run = agent.run_once()?;
    assert!(run.ok(), "{}", run.stderr);
    assert_eq!(agent.active_system(), Some(v1.clone()));

    // 1. release 2's activation fails; 2. the rollback to release 1 fails as well.
    fleet.toy.set_version_activation_failure(&host, "2", true)?;
    fleet.toy.set_version_activation_failure(&host, "1", true)?;
    let (v2, rev2) = publish(&fleet, &host, "2")?;
    let run = agent.run_once()?;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let (name2, meta2) = fleet.report_for(&host, &rev2)?;
    assert_eq!(meta2.status, ReportStatus::Failure, "{name2}");
    let error2 = meta2.error.clone().unwrap_or_default();
    assert!(error2.contains(MIXED), "{error2}");
    assert!(error2.contains("activation failed"), "{error2}");
    // Half of release 2 and half of release 1 may run: no system is named.
    assert_eq!(meta2.system, None, "{meta2:#?}");
    assert_eq!(meta2.previous_system.as_deref(), Some(base(&v1).as_str()));
    let st = fleet.status(&host)?;
    assert_eq!(st.state, State::Failing, "{st:#?}");
    // Not the report name's `unknown-system` either: nothing known runs.
    assert_eq!(st.running_system, None, "{st:#?}");
    assert_eq!(
        st.last_report.as_ref().and_then(|r| r.error.as_deref()),
        Some(error2.as_str())
    );
    assert_eq!(heartbeat(&fleet, &host)?.system, None);
    assert_eq!(agent.local_status().and_then(|s| s.system), None);
    assert_not_claimed(&fleet, &agent, &host, &[&rev2], &[&v1, &v2])?;

    // 3. release 3's activation fails; 4. the rollback goes to release 1's system, which
    // works again.
    fleet
        .toy
        .set_version_activation_failure(&host, "1", false)?;
    fleet.toy.set_version_activation_failure(&host, "3", true)?;
    let (v3, rev3) = publish(&fleet, &host, "3")?;
    let run = agent.run_once()?;
    assert_eq!(run.code, Some(1), "{}", run.stderr);

    assert_eq!(
        agent.active_system(),
        Some(v1.clone()),
        "the profile must name release 1's system (v2 = {}, v3 = {})",
        v2.display(),
        v3.display()
    );
    assert_eq!(
        fleet.toy.system_switches(&host)?,
        [
            switch(&v1, true),
            switch(&v2, false),
            switch(&v1, false),
            switch(&v3, false),
            switch(&v1, true),
        ]
    );
    let (name3, meta3) = fleet.report_for(&host, &rev3)?;
    assert_eq!(meta3.status, ReportStatus::Rollback, "{name3}");
    assert_eq!(meta3.system.as_deref(), Some(base(&v1).as_str()));
    let error3 = meta3.error.clone().unwrap_or_default();
    assert!(error3.contains("activation failed"), "{error3}");
    assert!(!error3.contains("rollback failed"), "{error3}");
    assert!(
        run.stderr.contains(&format!(
            "rolling back to the last system known to work, {}",
            v1.display()
        )),
        "{}",
        run.stderr
    );
    let st = fleet.status(&host)?;
    assert_eq!(st.state, State::RolledBack, "{st:#?}");
    assert_eq!(st.running_system.as_deref(), Some(base(&v1).as_str()));
    assert_eq!(
        heartbeat(&fleet, &host)?.system.as_deref(),
        Some(base(&v1).as_str())
    );
    assert_eq!(
        agent.local_status().and_then(|s| s.system).as_deref(),
        Some(base(&v1).as_str())
    );
    assert_not_claimed(&fleet, &agent, &host, &[&rev1, &rev2, &rev3], &[&v2, &v3])?;

    // Neither failed release is tried again.
    let run = agent.run_once()?;
    assert!(run.ok(), "{}", run.stderr);
    assert_eq!(fleet.toy.system_switches(&host)?.len(), 5);
    Ok(())
}

/// The last good system is kept in the state directory: a new agent process rolls back
/// to it even when the profile names another system by then.
#[test]
fn the_last_good_system_survives_an_agent_restart() -> Result<()> {
    let fleet = Fleet::new("agent-lastgood-restart", &["db"], "")?;
    let host = fleet.host(0).to_owned();
    let (v1, _) = publish(&fleet, &host, "1")?;
    let agent = fleet.agent(&host)?;
    let mut daemon = agent.spawn(&["daemon"], "daemon")?;
    let applied = agent.wait_daemon(&mut daemon, "daemon", |s| {
        s.system.as_deref() == Some(base(&v1).as_str())
            && s.activity == bento_core::agent_proto::Activity::Idle
    });
    daemon.kill()?;
    daemon.wait()?;
    applied?;

    // While the agent is down, the profile gets a system that never ran under it (as
    // `nixos-rebuild boot` would leave it): a newest generation is no proof of health.
    fleet.toy.set_system_version(&host, "2")?;
    let v2 = fleet.toy.build_toplevel(&host)?;
    bento_tests::toy::set_profile(&agent.profile(), &v2)?;

    fleet.toy.set_version_activation_failure(&host, "3", true)?;
    let (v3, rev3) = publish(&fleet, &host, "3")?;
    let run = agent.run_once()?;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert_eq!(
        agent.active_system(),
        Some(v1.clone()),
        "v2 = {}, v3 = {}",
        v2.display(),
        v3.display()
    );
    assert_eq!(
        fleet.toy.system_switches(&host)?,
        [switch(&v1, true), switch(&v3, false), switch(&v1, true)]
    );
    let (_, meta) = fleet.report_for(&host, &rev3)?;
    assert_eq!(meta.status, ReportStatus::Rollback);
    assert_eq!(meta.system.as_deref(), Some(base(&v1).as_str()));
    assert_eq!(fleet.status(&host)?.state, State::RolledBack);
    // The record outlives the collector too.
    assert_eq!(
        fs::canonicalize(agent.state_dir().join("last-good")).ok(),
        Some(v1)
    );
    Ok(())
}

/// On a first install nothing is recorded as good yet: the system the host runs (here,
/// with an empty profile, the booted one) is the one a failed first release goes back
/// to, as `nixos-rebuild --rollback` would.
#[test]
fn a_first_install_rolls_back_to_the_system_it_runs() -> Result<()> {
    let fleet = Fleet::new("agent-lastgood-first", &["desk"], "")?;
    let host = fleet.host(0).to_owned();
    let agent = fleet.agent(&host)?;
    let booted = fleet.toy.fake_booted_system(&agent.booted(), "6.1.0")?;
    fleet.toy.set_version_activation_failure(&host, "1", true)?;
    let (v1, rev1) = publish(&fleet, &host, "1")?;

    let run = agent.run_once()?;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert_eq!(agent.active_system(), Some(booted.clone()));
    assert_eq!(
        fleet.toy.system_switches("booted")?,
        [switch(&booted, true)]
    );
    assert_eq!(fleet.toy.system_switches(&host)?, [switch(&v1, false)]);
    let (_, meta) = fleet.report_for(&host, &rev1)?;
    assert_eq!(meta.status, ReportStatus::Rollback);
    assert_eq!(meta.system.as_deref(), Some(base(&booted).as_str()));
    assert_eq!(fleet.status(&host)?.state, State::RolledBack);
    Ok(())
}
