//! The item's title, icon, tooltip and menu in each state, read over D-Bus as a
//! tray host reads them.

mod common;

use bento_core::agent_proto::Event;
use common::*;
use time::{Duration, OffsetDateTime};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn icon_title_and_menu_follow_the_agent() {
    let Desktop { stage, agent, tray } = Desktop::start().await;
    let conn = stage.bus.connect().await;

    let v = wait_title(&conn, &tray, "Your computer is up to date").await;
    assert!(
        stage.items.lock().unwrap().contains(&tray.item_name()),
        "the item registers with the watcher"
    );
    assert_eq!(v.icon_name, "security-high");
    assert_eq!(v.status, "Active");
    assert_eq!(v.tooltip_title, "Your computer is up to date");
    v.assert_tooltip_contains("Running version 1111111111aa");
    v.assert_tooltip_contains("No update installed yet");
    assert!(
        !v.pixmap_sizes.is_empty(),
        "pixmaps for hosts without the theme icon"
    );
    assert_eq!(v.labels(), menu_labels("Your computer is up to date", &[]));
    assert!(
        !v.entry("Your computer is up to date").enabled,
        "the status line is not clickable"
    );
    assert!(v.entry("Check for updates now").enabled);
    agent.wait_subscribers(1).await;

    agent.send(Event::CheckStarted);
    let v = wait_title(&conn, &tray, "Checking for updates…").await;
    assert_eq!(v.icon_name, "software-update-available");
    assert!(
        !v.entry("Check for updates now").enabled,
        "no second check while one runs"
    );

    agent.send(Event::UpdateStarted {
        revision: REV2.into(),
    });
    wait_title(&conn, &tray, "Preparing updates…").await;

    agent.send(update_finished(REV2, Some(12)));
    let v = wait_title(&conn, &tray, "Your computer is up to date").await;
    v.assert_tooltip_contains("Running version 2222222222bb");
    v.assert_tooltip_contains("Last update today at");
    v.assert_tooltip_contains(": installed");

    agent.send(Event::RebootRequired);
    let v = wait_title(&conn, &tray, "Restart required to finish updating").await;
    assert_eq!(
        (v.icon_name.as_str(), v.status.as_str()),
        ("system-reboot", "NeedsAttention")
    );
    assert_eq!(
        v.labels(),
        menu_labels("Restart required to finish updating", &["Restart now"])
    );

    let at = OffsetDateTime::now_utc() + Duration::hours(2);
    agent.send(Event::RebootScheduled {
        at,
        deadline: at + Duration::hours(3),
    });
    let v = wait_for("the postpone entry", || async {
        read_item(&conn, &tray.item_name())
            .await
            .ok()
            .filter(|v| v.labels().contains(&"Postpone restart by 1 hour"))
    })
    .await;
    v.assert_tooltip_contains("Restart scheduled ");

    agent.send(update_failed(REV2, "not enough disk space"));
    let v = wait_title(&conn, &tray, "The last update failed").await;
    assert_eq!(v.icon_name, "dialog-error");
    v.assert_tooltip_contains("failed (not enough disk space)");
    assert!(
        v.labels().contains(&"Restart now"),
        "a pending restart stays reachable"
    );

    agent.send(rolled_back(
        REV2,
        "the server was unreachable after the switch",
    ));
    let v = wait_title(&conn, &tray, "The last update was undone").await;
    assert_eq!(v.icon_name, "dialog-warning");

    agent.stop();
    let v = wait_title(&conn, &tray, "The update service is not running").await;
    assert_eq!(v.icon_name, "network-offline");
    assert!(!v.entry("Check for updates now").enabled);
    assert!(!v.labels().contains(&"Restart now"));
}
