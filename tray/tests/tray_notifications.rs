//! The notifications: summary, body and urgency for each event, in order, and no
//! duplicate after a restart of the tray.

mod common;

use bento_core::agent_proto::Event;
use bento_core::report::ReportStatus;
use common::*;
use time::{Duration, OffsetDateTime};

const NORMAL: Option<u8> = Some(1);
const CRITICAL: Option<u8> = Some(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_is_notified_in_order() {
    let Desktop { stage, agent, tray } = Desktop::start().await;
    agent.wait_subscribers(1).await;

    agent.send(Event::CheckStarted);
    agent.send(Event::UpdateStarted {
        revision: REV2.into(),
    });
    agent.send(update_finished(REV2, Some(12)));
    agent.send(Event::RebootRequired);
    let at = OffsetDateTime::now_utc() + Duration::hours(2);
    agent.send(Event::RebootScheduled {
        at,
        deadline: at + Duration::hours(3),
    });
    let soon = OffsetDateTime::now_utc() + Duration::minutes(5) + Duration::seconds(30);
    agent.send(Event::RebootScheduled {
        at: soon,
        deadline: soon,
    });
    agent.send(update_failed(REV2, "not enough disk space"));
    agent.send(rolled_back(
        REV2,
        "the update server was unreachable after the switch",
    ));

    let n = stage.notes.wait_count(6).await;
    assert_eq!(
        summaries(&n),
        [
            "Your computer was updated",
            "Restart required to finish updating",
            &*format!(
                "Your computer will restart {}",
                bento_tray::model::when(at, OffsetDateTime::now_utc(), tz())
            ),
            "Your computer will restart in 6 minutes",
            "Update failed",
            "Update undone",
        ],
        "\n--- tray log ---\n{}",
        tray.log()
    );
    assert_eq!(
        n[0].body,
        "Now running NixOS 24.11 (31 December 2024). 12 packages changed."
    );
    assert_eq!(n[0].urgency, NORMAL);
    assert_eq!(n[0].app, "Software updates");
    assert_eq!(n[0].actions, ["default", "Show details"]);

    assert_eq!(n[1].urgency, NORMAL);
    assert!(
        n[1].body
            .starts_with("An update was installed. Restart your computer"),
        "{}",
        n[1].body
    );
    assert_eq!(
        n[1].actions,
        ["reboot", "Restart now", "default", "Show details"]
    );

    assert_eq!(n[2].urgency, NORMAL);
    assert!(
        n[2].body.contains("Save your work before then."),
        "{}",
        n[2].body
    );
    assert_eq!(
        n[2].actions,
        ["reboot", "Restart now", "postpone:3600", "Postpone"]
    );

    assert_eq!(n[3].urgency, CRITICAL, "an imminent restart is critical");
    assert!(n[3].body.starts_with("Save your work now"), "{}", n[3].body);
    assert!(
        n[3].body.ends_with("It cannot be postponed further."),
        "{}",
        n[3].body
    );
    assert_eq!(n[3].actions, ["reboot", "Restart now"]);

    assert_eq!(n[4].urgency, CRITICAL);
    assert_eq!(
        n[4].body,
        "Not enough disk space. Your computer keeps running the previous version; the update will be tried again."
    );
    assert_eq!(n[5].urgency, CRITICAL);
    assert!(n[5].body.starts_with(
        "The update server was unreachable after the switch. The new version did not work"
    ));
    assert_eq!(n.len(), 6, "check and update start are not notified");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reminder_comes_ten_minutes_before_the_restart() {
    let Desktop {
        stage,
        agent,
        tray: _tray,
    } = Desktop::start_following(TrayHost::Absent, Buttons::Unsupported).await;

    // Ten minutes and two seconds ahead: announced now, reminded two seconds later.
    let at = OffsetDateTime::now_utc() + Duration::minutes(10) + Duration::seconds(2);
    agent.send(Event::RebootScheduled {
        at,
        deadline: at + Duration::hours(1),
    });
    let n = stage.notes.wait_count(2).await;
    assert!(
        n[0].summary
            .starts_with("Your computer will restart today at")
            || n[0]
                .summary
                .starts_with("Your computer will restart tomorrow at")
    );
    assert_eq!(n[0].urgency, NORMAL);
    assert_eq!(n[1].summary, "Your computer will restart in 10 minutes");
    assert_eq!(n[1].urgency, CRITICAL);
    assert!(n[1].actions.is_empty(), "this server has no actions");
    let gap = n[1].at - n[0].at;
    assert!(
        gap >= std::time::Duration::from_millis(1500),
        "the reminder waited: {gap:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_duplicate_after_a_restart_but_missed_updates_are_told_once() {
    let Desktop { stage, agent, tray } =
        Desktop::start_following(TrayHost::Absent, Buttons::Supported).await;
    agent.send(Event::UpdateFinished {
        record: record(30, ReportStatus::Success, REV2, None, Some(3)),
    });
    agent.send(Event::RebootRequired);
    stage.notes.wait_count(2).await;
    tray.stop().await;
    agent.wait_no_subscribers().await;

    // While no tray runs, an update fails.
    let missed = record(
        20,
        ReportStatus::Failure,
        "3333333333cccccccccc",
        Some("build failed"),
        None,
    );
    agent.set_status(|s| {
        s.last_update = Some(missed.clone());
        s.history.insert(0, missed.clone());
    });

    let tray = stage.start_tray_following(&agent).await;
    let n = stage.notes.wait_count(3).await;
    assert_eq!(n[2].summary, "Update failed", "the missed failure is told");
    assert_eq!(n[2].body.split('.').next(), Some("Build failed"));
    // A later event is the sync point: anything repeated on connecting came before it.
    agent.send(Event::UpdateFinished {
        record: record(
            10,
            ReportStatus::Success,
            "4444444444dddddddddd",
            None,
            None,
        ),
    });
    let n = stage.notes.wait_count(4).await;
    assert_eq!(
        summaries(&n),
        [
            "Your computer was updated",
            "Restart required to finish updating",
            "Update failed",
            "Your computer was updated"
        ],
        "\n--- tray log ---\n{}",
        tray.log()
    );
    assert_eq!(
        n[3].body, "Now running revision 4444444444dd.",
        "a system without a NixOS version (not in the store) is named by its revision"
    );
    tray.stop().await;
    agent.wait_no_subscribers().await;

    // A third start sees the same last update and restart: nothing new to say.
    let tray = stage.start_tray_following(&agent).await;
    agent.send(rolled_back(
        "5555555555eeeeeeeeee",
        "the network was down after the switch",
    ));
    let n = stage.notes.wait_count(5).await;
    assert_eq!(
        summaries(&n[4..]),
        ["Update undone"],
        "\n--- tray log ---\n{}",
        tray.log()
    );
    assert_eq!(n.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undone_update_warning_leaves_the_screen_once_an_update_works() {
    let Desktop { stage, agent, tray } =
        Desktop::start_following(TrayHost::Absent, Buttons::Supported).await;
    agent.send(rolled_back(REV2, "the network was down after the switch"));
    let undone = stage.notes.wait_count(1).await.remove(0);
    assert_eq!(
        (undone.summary.as_str(), undone.urgency),
        ("Update undone", CRITICAL)
    );
    assert_eq!(summaries(&stage.notes.on_screen()), ["Update undone"]);

    agent.send(update_finished(REV2, Some(4)));
    let n = stage.notes.wait_count(2).await;
    assert_eq!(n[1].summary, "Your computer was updated");
    assert_eq!(n[1].urgency, NORMAL);
    // The warning is withdrawn or replaced: either way it is gone from the screen.
    assert!(
        n[1].replaces == undone.id || stage.notes.closed().contains(&undone.id),
        "the warning #{} was neither replaced nor closed (closed: {:?})\n--- tray log ---\n{}",
        undone.id,
        stage.notes.closed(),
        tray.log()
    );
    assert_eq!(
        n[1].replaces, undone.id,
        "the good news takes the warning's place"
    );
    assert_eq!(
        summaries(&stage.notes.on_screen()),
        ["Your computer was updated"]
    );

    // A new failure takes the place of the good news, not a second bubble.
    agent.send(update_failed(
        "3333333333cccccccccc",
        "not enough disk space",
    ));
    let n = stage.notes.wait_count(3).await;
    assert_eq!(
        (n[2].summary.as_str(), n[2].replaces),
        ("Update failed", n[1].id)
    );
    assert_eq!(summaries(&stage.notes.on_screen()), ["Update failed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_warning_is_withdrawn_when_no_restart_is_scheduled_any_more() {
    let stage = Stage::start(TrayHost::Absent, Buttons::Unsupported).await;
    let agent = stage.start_agent(status());
    let tray = stage.start_tray_following(&agent).await;
    let at = OffsetDateTime::now_utc() + Duration::minutes(5);
    agent.send(Event::RebootScheduled { at, deadline: at });
    let soon = stage.notes.wait_count(1).await.remove(0);
    assert_eq!(soon.urgency, CRITICAL, "{}", soon.summary);

    // The agent comes back without the restart (the admin called it off).
    let state = agent.stop();
    let agent = Agent::restart(&stage.socket, state, |s| {
        s.reboot_required = false;
        s.reboot_scheduled = None;
    });
    agent.wait_subscribers(1).await;
    wait_for("the restart warning withdrawn", || async {
        stage.notes.closed().contains(&soon.id).then_some(())
    })
    .await;
    assert!(
        stage.notes.on_screen().is_empty(),
        "{:?}",
        stage.notes.on_screen()
    );
    tray.wait_log(&format!("withdrew notification #{}", soon.id))
        .await;
}

/// The tests run the tray with `TZ=UTC`.
fn tz() -> time::UtcOffset {
    time::UtcOffset::UTC
}
