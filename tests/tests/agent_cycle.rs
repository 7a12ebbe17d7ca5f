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
    assert_eq!(
        agent.nix_calls().len(),
        calls_before,
        "{:?}",
        agent.nix_calls()
    );
    assert_eq!(fleet.toy.switch_records(&host)?.len(), 1);
    assert_eq!(fleet.reports(&host).len(), 1);
    assert_ne!(
        std::fs::read(&hb)?,
        hb_before,
        "the heartbeat is rewritten every poll"
    );
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

#[test]
fn a_kernel_change_asks_for_a_reboot_and_reboot_does_it() -> Result<()> {
    let fleet = Fleet::new("agent-kernel", &["srv"], "")?;
    let host = fleet.host(0).to_owned();
    fleet.deploy()?;
    let agent = fleet.agent(&host)?;
    fleet.toy.fake_booted_system(&agent.booted(), "6.1.0")?;
    assert!(agent.run_once()?.ok());
    assert!(!fleet.status(&host)?.reboot_pending);

    fleet.toy.set_kernel(&host, "6.6.1")?;
    fleet.deploy()?;
    let run = agent.run_once()?;
    assert!(run.ok(), "{}", run.stderr);
    let (_, meta) = fleet.report_for(&host, &fleet.published(&host)?)?;
    assert!(meta.reboot_required);
    assert_ne!(meta.booted.kernel, meta.built.kernel);
    let st = fleet.status(&host)?;
    assert!(st.reboot_pending, "{st:#?}");
    assert_eq!(st.state, State::UpToDate);
    assert!(agent.local_status().unwrap().reboot_required);
    // The default policy leaves reboots to the admin.
    assert_eq!(agent.reboots(), 0);

    // `REBOOT` in the host directory: the agent reboots when the kernel changed.
    fleet.toy.write_file(&host, "REBOOT", "")?;
    fleet.deploy()?;
    let run = agent.run_once()?;
    assert!(run.ok(), "{}", run.stderr);
    assert_eq!(agent.reboots(), 1, "{}", run.stderr);
    assert_eq!(fleet.toy.switch_records(&host)?.len(), 2);

    // After the reboot (the booted system is the new one) nothing is pending.
    let booted = agent.active_system().unwrap();
    std::fs::remove_file(agent.booted())?;
    std::os::unix::fs::symlink(&booted, agent.booted())?;
    assert!(agent.run_once()?.ok());
    assert!(!fleet.status(&host)?.reboot_pending);
    assert_eq!(agent.reboots(), 1);
    Ok(())
}

#[test]
fn a_nonflake_host_builds_with_its_nixos_config() -> Result<()> {
    let fleet = Fleet::nonflake("agent-nonflake", &["old"], "")?;
    let host = fleet.host(0).to_owned();
    fleet.deploy()?;
    let expected = fleet.toy.build_toplevel(&host)?;
    let agent = fleet.agent(&host)?;
    let run = agent.run_once()?;
    assert!(run.ok(), "{}", run.stderr);
    assert!(run.stderr.contains("nixos-config="), "{}", run.stderr);
    assert_eq!(agent.active_system(), Some(expected));
    let st = fleet.status(&host)?;
    assert_eq!(st.state, State::UpToDate, "{st:#?}");
    assert_eq!(st.expected_system, None);
    Ok(())
}

#[test]
fn a_chroot_of_the_original_tool_is_accepted_with_a_warning() -> Result<()> {
    let fleet = Fleet::new("agent-legacy", &["legacy"], "")?;
    let host = fleet.host(0).to_owned();
    // What the original shell tool left: a plain config/ copy, last_change_date, logs/.
    let chroot = fleet.server.make_host_dir(&host)?;
    bento_tests::toy::copy_following_symlinks(&fleet.toy.host_dir(&host), &chroot.join("config"))?;
    std::fs::write(
        chroot.join("last_change_date"),
        "Mon Jan  1 00:00:00 UTC 2024\n",
    )?;
    let expected = fleet.toy.build_toplevel(&host)?;
    let agent = fleet.agent(&host)?;

    let run = agent.run_once()?;
    assert!(run.ok(), "{}", run.stderr);
    assert!(run.stderr.contains("no manifest"), "{}", run.stderr);
    assert_eq!(agent.active_system(), Some(expected));
    assert_eq!(fleet.reports(&host).len(), 1);
    assert_eq!(fleet.status(&host)?.state, State::UpToDate);
    // Nothing new until last_change_date changes.
    assert!(agent.run_once()?.ok());
    assert_eq!(fleet.toy.switch_records(&host)?.len(), 1);
    Ok(())
}

#[test]
fn self_update_without_input_changes_reports_nothing() -> Result<()> {
    let fleet = Fleet::new("agent-selfupdate", &["auto"], "")?;
    let host = fleet.host(0).to_owned();
    fleet.deploy()?;
    let agent = fleet.agent(&host)?;
    agent.set_config("self_update = true\nself_update_interval = 0")?;
    assert!(agent.run_once()?.ok());
    // No new release: the agent updates the flake's inputs itself and rebuilds; the
    // toy flake has no inputs, so the system stays and nothing is reported.
    let run = agent.run_once()?;
    assert!(run.ok(), "{}", run.stderr);
    assert!(
        agent.nix_calls().iter().any(|c| c.contains("flake update")),
        "{:?}",
        agent.nix_calls()
    );
    assert!(
        run.stderr
            .contains("self-update: the system did not change"),
        "{}",
        run.stderr
    );
    assert_eq!(fleet.reports(&host).len(), 1);
    assert_eq!(fleet.toy.switch_records(&host)?.len(), 1);
    assert_eq!(fleet.status(&host)?.state, State::UpToDate);
    Ok(())
}
