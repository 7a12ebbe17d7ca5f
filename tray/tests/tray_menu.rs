//! The menu and the notification buttons reach the agent (or restart), and a
//! refusal is explained.

mod common;

use bento_core::agent_proto::{Event, Request, Response, ScheduledReboot};
use common::*;
use time::{Duration, OffsetDateTime};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_now_reaches_the_agent_and_a_refusal_is_explained() {
    let Desktop { stage, agent, tray } = Desktop::start().await;
    let conn = stage.bus.connect().await;
    let v = wait_title(&conn, &tray, "Your computer is up to date").await;

    click(&conn, &tray, &v, "Check for updates now").await;
    agent.wait_request(&Request::CheckNow).await;

    agent.answer_check_now(Response::Denied {
        message: "only members of the group bento-users may ask for a check".into(),
    });
    click(&conn, &tray, &v, "Check for updates now").await;
    let n = stage.notes.wait_count(1).await;
    assert_eq!(n[0].summary, "You are not allowed to check for updates");
    assert_eq!(
        n[0].body,
        "Only members of the group bento-users may ask for a check. Updates still install automatically; ask your administrator if you need one sooner."
    );
    assert_eq!(n[0].urgency, Some(1));
    let checks = agent
        .requests()
        .iter()
        .filter(|r| **r == Request::CheckNow)
        .count();
    assert_eq!(checks, 2);
    assert_eq!(
        n.len(),
        1,
        "an accepted check says nothing: the icon shows it"
    );

    // With the agent gone, the click says so instead of failing silently.
    agent.stop();
    let v = wait_title(&conn, &tray, "Cannot reach the update service").await;
    assert!(!v.entry("Check for updates now").enabled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_and_postpone_from_the_menu() {
    let stage = Stage::start(TrayHost::Present, Buttons::Supported).await;
    let mut s = status();
    let at = OffsetDateTime::now_utc() + Duration::hours(1);
    s.reboot_required = true;
    s.reboot_scheduled = Some(ScheduledReboot {
        at,
        deadline: at + Duration::minutes(90),
    });
    let agent = stage.start_agent(s);
    let tray = stage.start_tray();
    let conn = stage.bus.connect().await;

    let v = wait_title(&conn, &tray, "Restart required to finish updating").await;
    assert_eq!(
        v.labels(),
        menu_labels(
            "Restart required to finish updating",
            &["Restart now", "Postpone restart by 1 hour"]
        )
    );
    click(&conn, &tray, &v, "Postpone restart by 1 hour").await;
    agent
        .wait_request(&Request::PostponeReboot { seconds: 3600 })
        .await;
    agent.send(Event::RebootPostponed {
        at: at + Duration::hours(1),
    });

    // Half an hour of room is left before the deadline: the entry says so.
    let v = wait_for("the shorter postpone entry", || async {
        read_item(&conn, &tray.item_name()).await.ok().filter(|v| {
            v.labels()
                .iter()
                .any(|l| l.starts_with("Postpone restart until "))
        })
    })
    .await;
    let label = *v
        .labels()
        .iter()
        .find(|l| l.starts_with("Postpone restart until "))
        .unwrap();
    click(&conn, &tray, &v, label).await;
    agent
        .wait_request(&Request::PostponeReboot { seconds: 1800 })
        .await;

    click(&conn, &tray, &v, "Restart now").await;
    wait_for("the restart command to run", || async {
        stage.rebooted().then_some(())
    })
    .await;

    click(&conn, &tray, &v, "Quit").await;
    let mut tray = tray;
    let status = tokio::time::timeout(DEADLINE, tray.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "Quit ends the tray cleanly: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_buttons_postpone_and_restart() {
    let Desktop { stage, agent, tray } =
        Desktop::start_following(TrayHost::Absent, Buttons::Supported).await;

    let at = OffsetDateTime::now_utc() + Duration::hours(2);
    agent.send(Event::RebootScheduled {
        at,
        deadline: at + Duration::hours(4),
    });
    let n = stage.notes.wait_count(1).await;
    assert_eq!(
        n[0].actions,
        ["reboot", "Restart now", "postpone:3600", "Postpone"]
    );

    // The tray listens for the click once the notification is shown; clicking
    // again until it is heard is how a person would do it too.
    wait_for("the postpone button to reach the agent", || async {
        stage.notes.click(&n[0], "postpone:3600").await;
        agent
            .requests()
            .contains(&Request::PostponeReboot { seconds: 3600 })
            .then_some(())
    })
    .await;

    agent.send(Event::RebootPostponed {
        at: at + Duration::hours(1),
    });
    let n = stage.notes.wait_count(2).await;
    assert!(
        n[1].summary.starts_with("Your computer will restart "),
        "{}",
        n[1].summary
    );
    wait_for("the restart button to restart", || async {
        stage.notes.click(&n[1], "reboot").await;
        stage.rebooted().then_some(())
    })
    .await;

    // A click on the notification itself opens the details (no display here, so
    // the window cannot appear; the tray's log shows it was asked for).
    agent.send(update_finished(REV2, None));
    let n = stage.notes.wait_count(3).await;
    assert_eq!(n[2].actions, ["default", "Show details"]);
    wait_for("the click to open the details", || async {
        stage.notes.click(&n[2], "default").await;
        tray.log().contains("user asked: ShowDetails").then_some(())
    })
    .await;
}
