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
    // Every state's icon is checked the same way: our pixmaps, no theme name;
    // and each state's picture is its own.
    let mut icons = vec![(v.title.clone(), v.pixmap_32.clone())];
    v.assert_own_icon();
    assert_eq!(v.status, "Active");
    assert_eq!(v.tooltip_title, "Your computer is up to date");
    // The NixOS version people know, and the date of that NixOS.
    v.assert_tooltip_contains("Running NixOS 24.05 (12 June 2024)");
    assert!(
        !v.tooltip_body.contains("1111111111"),
        "no hash: {}",
        v.tooltip_body
    );
    v.assert_tooltip_contains("No update installed yet");
    assert_eq!(v.labels(), menu_labels("Your computer is up to date", &[]));
    assert!(
        !v.entry("Your computer is up to date").enabled,
        "the status line is not clickable"
    );
    assert!(v.entry("Check for updates now").enabled);
    agent.wait_subscribers(1).await;

    agent.send(Event::CheckStarted);
    let v = wait_title(&conn, &tray, "Checking for updates…").await;
    v.assert_own_icon();
    icons.push((v.title.clone(), v.pixmap_32.clone()));
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
    v.assert_tooltip_contains("Running NixOS 24.11 (31 December 2024)");
    v.assert_tooltip_contains("Last update today at");
    v.assert_tooltip_contains(": installed");

    agent.send(Event::RebootRequired);
    let v = wait_title(&conn, &tray, "Restart required to finish updating").await;
    v.assert_own_icon();
    icons.push((v.title.clone(), v.pixmap_32.clone()));
    assert_eq!(v.status, "NeedsAttention");
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
    v.assert_own_icon();
    icons.push((v.title.clone(), v.pixmap_32.clone()));
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
    v.assert_own_icon();
    icons.push((v.title.clone(), v.pixmap_32.clone()));

    agent.stop();
    let v = wait_title(&conn, &tray, "Cannot reach the update service").await;
    v.assert_own_icon();
    icons.push((v.title.clone(), v.pixmap_32.clone()));
    for (i, (a, pa)) in icons.iter().enumerate() {
        for (b, pb) in &icons[i + 1..] {
            assert_ne!(pa, pb, "{a:?} and {b:?} show the same icon");
        }
    }
    assert!(!v.entry("Check for updates now").enabled);
    assert!(!v.labels().contains(&"Restart now"));
}
