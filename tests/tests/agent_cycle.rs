//! The agent's normal life: a release is published, fetched, verified, built,
//! activated and reported; a poll with nothing new does nothing; kernel changes ask
//! for a reboot.

mod agent_common;

use anyhow::Result;
use bento_core::report::ReportStatus;
use bento_core::status::State;

use agent_common::{base, Fleet};

#[test]
fn full_cycle_then_a_poll_with_nothing_new() -> Result<()> {
    let fleet = Fleet::new("agent-cycle", &["web"], "")?;
    let host = fleet.host(0).to_owned();
    fleet.deploy()?;
    let rev = fleet.published(&host)?;
    let expected = fleet.toy.build_toplevel(&host)?;
    let agent = fleet.agent(&host)?;

    let run = agent.run_once()?;
    assert!(run.ok(), "first poll failed:\n{}", run.stderr);
    // The toy system is active, switched to exactly once.
    assert_eq!(agent.active_system(), Some(expected.clone()));
    let switches = fleet.toy.switch_records(&host)?;
    assert_eq!(switches.len(), 1, "{switches:?}");
    assert_eq!(switches[0].action, "switch");
    // One report with its sidecar in logs/, none left in the outbox.
    let reports = fleet.reports(&host);
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(
        reports[0].ends_with(&format!("_{}_success.log.gz", base(&expected))),
        "{reports:?}"
    );
    let meta = fleet.sidecar(&host, &reports[0])?;
    assert_eq!(meta.status, ReportStatus::Success);
    assert_eq!(meta.revision.as_deref(), Some(rev.as_str()));
    assert_eq!(meta.system.as_deref(), Some(base(&expected).as_str()));
    assert!(agent.outbox().is_empty());
    // The server says so.
    let st = fleet.status(&host)?;
    assert_eq!(st.state, State::UpToDate, "{st:#?}");
    assert_eq!(st.running_system.as_deref(), Some(base(&expected).as_str()));
    assert_eq!(st.running_revision.as_deref(), Some(rev.as_str()));
    assert!(!st.offline && !st.reboot_pending);
    // So does the local status.
    let local = agent.local_status().expect("status.json");
    assert_eq!(local.revision.as_deref(), Some(rev.as_str()));
    assert_eq!(local.history.len(), 1);

    // Nothing new: no download, no build, no activation, no report.
    let calls_before = agent.nix_calls().len();
    assert!(calls_before > 0, "the first poll should have run nix");
    let hb = fleet.host_chroot(&host).join("logs/heartbeat.json");
    let hb_before = std::fs::read(&hb)?;
    let run = agent.run_once()?;
    assert!(run.ok(), "second poll failed:\n{}", run.stderr);
    assert_eq!(agent.nix_calls().len(), calls_before, "{:?}", agent.nix_calls());
    assert_eq!(fleet.toy.switch_records(&host)?.len(), 1);
    assert_eq!(fleet.reports(&host).len(), 1);
    assert_ne!(std::fs::read(&hb)?, hb_before, "the heartbeat is rewritten every poll");
    assert_eq!(fleet.status(&host)?.state, State::UpToDate);

    // A release that changes only other files: no activation, still a success.
    fleet.toy.write_file(&host, "notes.txt", "motd\n")?;
    fleet.deploy()?;
    let rev2 = fleet.published(&host)?;
    assert_ne!(rev2, rev);
    assert_eq!(fleet.status(&host)?.state, State::SyncPending);
    let run = agent.run_once()?;
    assert!(run.ok(), "{}", run.stderr);
    assert_eq!(fleet.toy.switch_records(&host)?.len(), 1);
    let st = fleet.status(&host)?;
    assert_eq!(st.state, State::UpToDate, "{st:#?}");
    assert_eq!(st.running_revision.as_deref(), Some(rev2.as_str()));
    assert!(agent
        .state_dir()
        .join("releases")
        .join(&rev2)
        .join("notes.txt")
        .is_file());
    Ok(())
}
