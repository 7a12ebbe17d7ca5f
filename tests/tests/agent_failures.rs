//! What goes wrong: a build that fails, a release altered on the server, a server that
//! disappears after activation or refuses the report, an agent killed mid-way.

mod agent_common;

use std::fs;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bento_core::agent_proto::Activity;
use bento_core::report::ReportStatus;
use bento_core::status::State;

use agent_common::{base, children_named, signal, Agent, Fleet, AGENT_TIMEOUT};

/// Polls `probe` every millisecond (these races are short) until it holds.
fn spin_until(timeout: Duration, mut probe: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if probe() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

fn wait_exit(child: &mut Child) -> Result<Option<i32>> {
    let end = Instant::now() + AGENT_TIMEOUT;
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(s.code());
        }
        ensure!(Instant::now() < end, "the agent did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn only_report(
    fleet: &Fleet,
    host: &str,
    status: ReportStatus,
) -> Result<bento_core::report::ReportMeta> {
    let reports = fleet.reports(host);
    let r = reports
        .iter()
        .rev()
        .find(|r| r.ends_with(&format!("_{status}.log.gz")))
        .with_context(|| format!("no {status} report in {reports:?}"))?;
    fleet.sidecar(host, r)
}

#[test]
fn a_build_failure_is_reported_and_not_retried() -> Result<()> {
    // The server only evaluates; the host cannot build (no builders, no local jobs).
    let fleet = Fleet::new("agent-buildfail", &["web"], "local_build = false\n")?;
    let host = fleet.host(0).to_owned();
    fleet.deploy()?;
    let agent = fleet.agent(&host)?;
    agent.set_config("nix_args = [\"--max-jobs\", \"0\"]")?;

    let run = agent.run_once()?;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let meta = only_report(&fleet, &host, ReportStatus::Failure)?;
    let error = meta.error.unwrap_or_default();
    assert!(error.starts_with("build failed"), "{error}");
    assert!(run.stderr.contains("build failed"), "{}", run.stderr);
    assert_eq!(agent.active_system(), None);
    assert!(fleet.toy.switch_records(&host)?.is_empty());
    let st = fleet.status(&host)?;
    assert_eq!(st.state, State::Failing, "{st:#?}");
    assert_eq!(
        st.last_report.as_ref().and_then(|r| r.error.as_deref()),
        Some(error.as_str())
    );

    // The same release is not tried again.
    let calls = agent.nix_calls().len();
    let run = agent.run_once()?;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(agent.nix_calls().len(), calls);
    assert_eq!(fleet.reports(&host).len(), 1);
    assert_eq!(fleet.status(&host)?.state, State::Failing);
    Ok(())
}

#[test]
fn an_altered_release_is_refused_before_anything_is_built() -> Result<()> {
    let fleet = Fleet::new("agent-tamper", &["web"], "")?;
    let host = fleet.host(0).to_owned();
    fleet.deploy()?;
    let rev = fleet.published(&host)?;
    let agent = fleet.agent(&host)?;
    let file = fleet
        .host_chroot(&host)
        .join(".releases")
        .join(&rev)
        .join("system-version");
    fs::write(&file, "666\n")?;

    let run = agent.run_once()?;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let meta = only_report(&fleet, &host, ReportStatus::Failure)?;
    let error = meta.error.unwrap_or_default();
    assert!(
        error.contains("system-version does not match the manifest"),
        "{error}"
    );
    assert!(agent.nix_calls().is_empty(), "{:?}", agent.nix_calls());
    assert!(!agent.state_dir().join("releases").join(&rev).exists());
    assert_eq!(agent.active_system(), None);
    assert_eq!(fleet.status(&host)?.state, State::Failing);
    Ok(())
}

#[test]
fn server_gone_after_activation_rolls_back_and_reports_when_back() -> Result<()> {
    let mut fleet = Fleet::new("agent-rollback", &["web"], "")?;
    let host = fleet.host(0).to_owned();
    fleet.deploy()?;
    let v1 = fleet.toy.build_toplevel(&host)?;
    let agent = fleet.agent(&host)?;
    assert!(agent.run_once()?.ok());
    assert_eq!(agent.active_system(), Some(v1.clone()));

    fleet.toy.set_system_version(&host, "2")?;
    fleet.deploy()?;
    let rev2 = fleet.published(&host)?;
    let mut child = agent.spawn(&["run-once"], "rollback")?;
    // Once it builds, the release is downloaded: take the server away.
    let building = spin_until(AGENT_TIMEOUT, || {
        agent
            .local_status()
            .is_some_and(|s| matches!(s.activity, Activity::Building | Activity::Activating))
    });
    assert!(
        building,
        "the agent never built:\n{}",
        agent.spawned_log("rollback")
    );
    fleet.server.stop()?;
    let code = wait_exit(&mut child)?;
    let log = agent.spawned_log("rollback");
    eprintln!("{log}");
    assert_eq!(code, Some(1), "{log}");
    // v2 was activated, then v1 again.
    assert_eq!(agent.active_system(), Some(v1.clone()));
    let actions: Vec<String> = fleet
        .toy
        .switch_records(&host)?
        .into_iter()
        .map(|r| r.action)
        .collect();
    assert_eq!(actions, ["switch", "switch", "switch"]);
    assert!(log.contains("server unreachable after activation"), "{log}");
    assert_eq!(
        agent.outbox().len(),
        1,
        "the rollback report waits in the outbox"
    );

    fleet.server.restart()?;
    let run = agent.run_once()?;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(agent.outbox().is_empty());
    let meta = only_report(&fleet, &host, ReportStatus::Rollback)?;
    assert_eq!(meta.revision.as_deref(), Some(rev2.as_str()));
    assert_eq!(meta.system.as_deref(), Some(base(&v1).as_str()));
    let st = fleet.status(&host)?;
    assert_eq!(st.state, State::RolledBack, "{st:#?}");
    assert_eq!(st.running_system.as_deref(), Some(base(&v1).as_str()));
    // Not retried.
    assert_eq!(fleet.toy.switch_records(&host)?.len(), 3);
    Ok(())
}

#[test]
fn a_report_the_server_refuses_is_delivered_on_the_next_poll() -> Result<()> {
    let fleet = Fleet::new("agent-outbox", &["web"], "")?;
    let host = fleet.host(0).to_owned();
    fleet.deploy()?;
    let agent = fleet.agent(&host)?;
    let logs = fleet.host_chroot(&host).join("logs");
    let uid = fleet.server.uid(&host)?;
    std::os::unix::fs::chown(&logs, Some(0), Some(0))?;

    let run = agent.run_once()?;
    assert_eq!(
        run.code,
        Some(0),
        "the update itself worked:\n{}",
        run.stderr
    );
    assert_eq!(fleet.toy.switch_records(&host)?.len(), 1);
    assert!(fleet.reports(&host).is_empty());
    assert_eq!(agent.outbox().len(), 1);
    assert!(run.stderr.contains("kept in"), "{}", run.stderr);

    std::os::unix::fs::chown(&logs, Some(uid), None)?;
    let run = agent.run_once()?;
    assert!(run.ok(), "{}", run.stderr);
    assert!(agent.outbox().is_empty());
    assert_eq!(fleet.reports(&host).len(), 1);
    assert_eq!(fleet.status(&host)?.state, State::UpToDate);
    assert_eq!(fleet.toy.switch_records(&host)?.len(), 1);
    Ok(())
}

fn recovers_after_kill(label: &str, during_download: bool) -> Result<()> {
    let fleet = Fleet::new(label, &["web"], "")?;
    let host = fleet.host(0).to_owned();
    if during_download {
        // Big enough that the download is still going when the test looks.
        fleet
            .toy
            .write_file(&host, "blob.txt", &"0123456789abcdef\n".repeat(1 << 19))?;
    }
    fleet.deploy()?;
    let rev = fleet.published(&host)?;
    let agent: Agent = fleet.agent(&host)?;
    let mut child = agent.spawn(&["run-once"], "killed")?;
    let pid = child.id();
    let staging = agent.state_dir().join("staging").join(&rev);
    let caught = if during_download {
        spin_until(AGENT_TIMEOUT, || staging.exists())
    } else {
        spin_until(AGENT_TIMEOUT, || !children_named(pid, "nix").is_empty())
    };
    assert!(
        caught,
        "missed the moment:\n{}",
        agent.spawned_log("killed")
    );
    signal(pid, "STOP");
    if during_download {
        assert!(
            !agent.state_dir().join("releases").join(&rev).exists(),
            "the download finished before the agent was stopped"
        );
    }
    child.kill()?;
    child.wait()?;
    eprintln!("{}", agent.spawned_log("killed"));
    assert!(fleet.toy.switch_records(&host)?.is_empty());
    assert_eq!(agent.active_system(), None);

    let run = agent.run_once()?;
    assert!(run.ok(), "{}", run.stderr);
    assert_eq!(fleet.toy.switch_records(&host)?.len(), 1);
    assert!(!agent.state_dir().join("staging").exists());
    let st = fleet.status(&host)?;
    assert_eq!(st.state, State::UpToDate, "{st:#?}");
    Ok(())
}

#[test]
fn killed_during_download_recovers_on_the_next_poll() -> Result<()> {
    recovers_after_kill("agent-kill-dl", true)
}

#[test]
fn killed_during_build_recovers_on_the_next_poll() -> Result<()> {
    recovers_after_kill("agent-kill-build", false)
}

#[test]
fn killed_during_activation_activates_again_on_the_next_poll() -> Result<()> {
    let fleet = Fleet::new("agent-kill-act", &["web"], "")?;
    let host = fleet.host(0).to_owned();
    fleet.deploy()?;
    let agent = fleet.agent(&host)?;
    let (inside, go) = (agent.root.join("in-check"), agent.root.join("go"));
    // A health check that holds the agent after switch-to-configuration ran.
    agent.set_config(&format!(
        "health_checks = [[\"/bin/sh\", \"-c\", \"touch '{}'; while [ ! -e '{}' ]; do sleep 0.05; done\"]]",
        inside.display(),
        go.display()
    ))?;
    let mut child = agent.spawn(&["run-once"], "killed")?;
    assert!(
        spin_until(AGENT_TIMEOUT, || inside.exists()),
        "{}",
        agent.spawned_log("killed")
    );
    child.kill()?;
    child.wait()?;
    fs::write(&go, "")?;
    let system = agent.active_system().expect("the profile was set");
    assert_eq!(fleet.toy.switch_records(&host)?.len(), 1);

    // The profile already names the new system, but nothing was checked nor reported:
    // the next poll activates and checks it again rather than calling it unchanged.
    agent.set_config("")?;
    let run = agent.run_once()?;
    assert!(run.ok(), "{}", run.stderr);
    assert!(run.stderr.contains("was interrupted"), "{}", run.stderr);
    assert_eq!(fleet.toy.switch_records(&host)?.len(), 2);
    assert_eq!(agent.active_system(), Some(system));
    assert_eq!(fleet.status(&host)?.state, State::UpToDate);
    Ok(())
}
