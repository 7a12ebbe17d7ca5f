//! The tray waits for the agent, reconnects when it restarts, and keeps working
//! without a tray host.

mod common;

use bento_core::report::ReportStatus;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_before_the_agent_and_connects() {
    let stage = Stage::start(TrayHost::Present, Buttons::Supported).await;
    let tray = stage.start_tray();
    let conn = stage.bus.connect().await;

    let v = wait_title(&conn, &tray, "Cannot reach the update service").await;
    v.assert_own_icon();
    v.assert_tooltip_contains("Updates resume as soon as the update service is back.");

    let _agent = stage.start_agent(status());
    wait_title(&conn, &tray, "Your computer is up to date").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_while_the_agent_is_down_it_shows_what_the_agent_last_wrote() {
    let stage = Stage::start(TrayHost::Present, Buttons::Supported).await;
    // The agent's status file stays in its runtime directory when it stops.
    let mut s = status();
    s.last_update = Some(record(
        90,
        ReportStatus::Failure,
        REV2,
        Some("no space left"),
        None,
    ));
    std::fs::write(
        stage
            .socket
            .with_file_name(bento_core::agent_proto::STATUS_FILE),
        serde_json::to_vec(&s).unwrap(),
    )
    .unwrap();
    let tray = stage.start_tray();
    let conn = stage.bus.connect().await;
    let v = wait_for("the last known state in the tooltip", || async {
        read_item(&conn, &tray.item_name())
            .await
            .ok()
            .filter(|v| v.tooltip_body.contains("Last known state"))
    })
    .await;
    assert_eq!(v.title, "Cannot reach the update service");
    v.assert_tooltip_contains("): The last update failed");
    v.assert_tooltip_contains("Running NixOS 24.05 (12 June 2024)");
    v.assert_tooltip_contains("failed (no space left)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_agent_restarts() {
    let Desktop { stage, agent, tray } = Desktop::start().await;
    let conn = stage.bus.connect().await;
    wait_title(&conn, &tray, "Your computer is up to date").await;

    let state = agent.stop();
    let v = wait_title(&conn, &tray, "Cannot reach the update service").await;
    // What was known before stays in view, marked as such.
    v.assert_tooltip_contains("Last known state (today at ");
    v.assert_tooltip_contains("): Your computer is up to date");
    v.assert_tooltip_contains("Running NixOS 24.05 (12 June 2024)");

    let agent = Agent::restart(&stage.socket, state, |s| s.reboot_required = true);
    wait_title(&conn, &tray, "Restart required to finish updating").await;
    agent.wait_subscribers(1).await;

    // Events flow on the new connection.
    agent.send(update_finished(REV2, None));
    let n = stage.notes.wait_count(2).await;
    assert_eq!(
        summaries(&n),
        [
            "Restart required to finish updating",
            "Your computer was updated"
        ]
    );
    assert!(tray.log().contains("reconnecting"), "{}", tray.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_without_a_tray_host_and_still_notifies() {
    let stage = Stage::start(TrayHost::Absent, Buttons::Unsupported).await;
    let agent = stage.start_agent(status());
    let mut tray = stage.start_tray();

    tray.wait_log("no system tray on this desktop").await;
    agent.wait_subscribers(1).await;
    agent.send(update_finished(REV2, Some(1)));
    let n = stage.notes.wait_count(1).await;
    assert_eq!(n[0].summary, "Your computer was updated");
    assert_eq!(
        n[0].body,
        "Now running NixOS 24.11 (31 December 2024). 1 package changed."
    );
    assert!(
        n[0].actions.is_empty(),
        "no buttons where the server has none"
    );
    assert!(
        tray.child.try_wait().unwrap().is_none(),
        "the tray keeps running"
    );

    // A tray host that appears later gets the item.
    let (_watcher, items) = serve_watcher(&stage.bus).await;
    let name = tray.item_name();
    wait_for("the item to register with the late watcher", || async {
        items.lock().unwrap().contains(&name).then_some(())
    })
    .await;
    let conn = stage.bus.connect().await;
    wait_title(&conn, &tray, "Your computer is up to date").await;
    assert_eq!(
        tray.log().matches("no system tray on this desktop").count(),
        1,
        "said once"
    );
}
