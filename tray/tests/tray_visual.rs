//! Under Xvfb with a real tray host (xfce4-panel's systray) and a real notification
//! daemon (dunst): screenshots of the icon and of the details window, saved into
//! `$BENTO_SCREENSHOTS` or `target/screenshots/` (printed).

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use bento_core::agent_proto::ScheduledReboot;
use bento_core::report::ReportStatus;
use common::*;
use time::{Duration, OffsetDateTime};
use tokio::process::{Child, Command};

/// The panel: one panel at the top with a systray plugin (which also serves the
/// StatusNotifierWatcher), in a light grey; [`panel_xml`] paints it another colour.
const PANEL_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<channel name="xfce4-panel" version="1.0">
  <property name="configver" type="int" value="2"/>
  <property name="panels" type="array">
    <value type="int" value="1"/>
    <property name="panel-1" type="empty">
      <property name="position" type="string" value="p=6;x=0;y=0"/>
      <property name="length" type="uint" value="100"/>
      <property name="position-locked" type="bool" value="true"/>
      <property name="size" type="uint" value="40"/>
      <property name="background-style" type="uint" value="1"/>
      <property name="background-rgba" type="array">
        <value type="double" value="0.93"/>
        <value type="double" value="0.93"/>
        <value type="double" value="0.93"/>
        <value type="double" value="1"/>
      </property>
      <property name="plugin-ids" type="array">
        <value type="int" value="1"/>
      </property>
    </property>
  </property>
  <property name="plugins" type="empty">
    <property name="plugin-1" type="string" value="systray">
      <property name="icon-size" type="int" value="32"/>
      <property name="square-icons" type="bool" value="true"/>
    </property>
  </property>
</channel>
"#;

/// The panel with its background in `grey` (0 black, 1 white).
fn panel_xml(grey: f64) -> String {
    PANEL_XML.replace(
        r#"<value type="double" value="0.93"/>"#,
        &format!(r#"<value type="double" value="{grey}"/>"#),
    )
}

/// A light panel (as Xfce's and GNOME's defaults) and a dark one.
const LIGHT: f64 = 0.93;
const DARK: f64 = 0.17;

/// Each state's disc colour in `icons.rs`, as ImageMagick names it.
const STATE_COLOURS: [(&str, &str); 6] = [
    ("up to date", "#2E7D32"),
    ("checking", "#1565C0"),
    ("restart pending", "#E65100"),
    ("failed", "#C62828"),
    ("undone", "#F9A825"),
    ("unreachable", "#757575"),
];

/// The reboot-pending orange of the tray's own icon and of the window's badge.
const ORANGE: &str = "#E65100";
/// The failed red and the rolled-back amber, likewise.
const RED: &str = "#C62828";
const AMBER: &str = "#F9A825";
/// The unreachable grey.
const GREY: &str = "#757575";

fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

fn shots_dir() -> PathBuf {
    let dir = std::env::var_os("BENTO_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // CARGO_TARGET_DIR when set, else the workspace's target/.
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
            target.join("screenshots")
        });
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The X display, the bus and the session's processes, all on one environment.
struct Session {
    display: String,
    env: Vec<(String, String)>,
    children: Vec<Child>,
}

impl Session {
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    /// Runs `command` (program and arguments) in the session and waits until it owns
    /// `bus_name`, the service the tray needs from it.
    async fn start_service(
        &mut self,
        dbus: &zbus::fdo::DBusProxy<'_>,
        command: &[&str],
        bus_name: &'static str,
    ) {
        let child = self
            .command(command[0])
            .args(&command[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.children.push(child);
        wait_for(&format!("{} to own {bus_name}", command[0]), || async {
            dbus.name_has_owner(bus_name.try_into().unwrap())
                .await
                .unwrap_or(false)
                .then_some(())
        })
        .await;
    }

    /// Screenshot of the root window into `path`; how many pixels have `colour`.
    async fn shot(&self, path: &Path, colour: &str) -> usize {
        // ImageMagick's `import` names the whole screen "root".
        self.shot_window("root", path, colour).await
    }

    /// Screenshot of one window (by name) into `path`; how many pixels have `colour`.
    /// A failed `import` (no such window yet) counts as none.
    async fn shot_window(&self, name: &str, path: &Path, colour: &str) -> usize {
        let ok = self
            .command("import")
            .args(["-window", name])
            .arg(path)
            .stderr(Stdio::null())
            .status()
            .await
            .unwrap()
            .success();
        if !ok {
            return 0;
        }
        count_colour(path, colour).await
    }
}

async fn count_colour(path: &Path, colour: &str) -> usize {
    count_colours(path, &[colour]).await[0]
}

/// How many pixels of the image at `path` have each of `colours`.
async fn count_colours(path: &Path, colours: &[&str]) -> Vec<usize> {
    let out = Command::new("convert")
        .arg(path)
        .args(["-format", "%c", "histogram:info:-"])
        .output()
        .await
        .unwrap();
    let histogram = String::from_utf8_lossy(&out.stdout);
    colours
        .iter()
        .map(|colour| {
            histogram
                .lines()
                .filter(|l| l.contains(colour))
                .filter_map(|l| l.trim().split(':').next()?.trim().parse::<usize>().ok())
                .sum()
        })
        .collect()
}

async fn start_xvfb() -> (Child, String) {
    // -displayfd: Xvfb picks a free display and prints its number.
    let mut x = Command::new("Xvfb")
        .args([
            "-displayfd",
            "1",
            "-screen",
            "0",
            "1024x700x24",
            "-nolisten",
            "tcp",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let n = first_line(&mut x, "Xvfb prints its display").await;
    (x, format!(":{}", n.trim()))
}

/// The programs the screenshots need, installed by scripts/setup-debian.sh
/// --tests: a missing one fails the test rather than skipping it.
fn need_screenshot_tools() {
    for p in ["Xvfb", "xfce4-panel", "import", "convert", "xwininfo"] {
        assert!(
            have(p),
            "{p} is missing: run scripts/setup-debian.sh --tests"
        );
    }
}

/// Xvfb, a session bus and xfce4-panel (whose systray is the tray host) with
/// its background in `panel_grey`, under a fresh HOME in `dir`.
async fn start_session(dir: &Path, panel_grey: f64) -> (Session, Bus) {
    let home = dir.join("home");
    let config = home.join(".config");
    let xml = config.join("xfce4/xfconf/xfce-perchannel-xml");
    std::fs::create_dir_all(&xml).unwrap();
    std::fs::write(xml.join("xfce4-panel.xml"), panel_xml(panel_grey)).unwrap();

    let (xvfb, display) = start_xvfb().await;
    let mut env: Vec<(String, String)> = vec![
        ("DISPLAY".into(), display.clone()),
        ("HOME".into(), home.display().to_string()),
        ("XDG_CONFIG_HOME".into(), config.display().to_string()),
        ("XDG_RUNTIME_DIR".into(), dir.display().to_string()),
        ("NO_AT_BRIDGE".into(), "1".into()),
        ("TZ".into(), "UTC".into()),
    ];
    // Services the bus starts (xfconfd, which serves the panel its settings) must
    // see the same HOME and XDG_CONFIG_HOME.
    let bus = Bus::start_with(dir, true, &env).await;
    env.push(("DBUS_SESSION_BUS_ADDRESS".into(), bus.address.clone()));
    let mut session = Session {
        display,
        env,
        children: vec![xvfb],
    };
    let conn = bus.connect().await;
    let dbus = zbus::fdo::DBusProxy::new(&conn).await.unwrap();
    session
        .start_service(
            &dbus,
            &["xfce4-panel", "--disable-wm-check"],
            "org.kde.StatusNotifierWatcher",
        )
        .await;
    (session, bus)
}

impl Session {
    /// The session's environment for [`Tray::start_with`] (which sets the bus itself).
    fn tray_env(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .filter(|(k, _)| *k != "DBUS_SESSION_BUS_ADDRESS")
            .collect()
    }
}

/// One tray per state, side by side in a light and in a dark panel: every icon
/// is the tray's own (a theme's icon would lack its colour), and each reads on
/// both backgrounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_state_icon_in_a_light_and_a_dark_panel() {
    need_screenshot_tools();
    let shots = shots_dir();
    let mut printed = Vec::new();
    for (theme, grey) in [("light", LIGHT), ("dark", DARK)] {
        let dir = tempfile::tempdir().unwrap();
        let (session, bus) = start_session(dir.path(), grey).await;
        let mut statuses = Vec::new();
        statuses.push(status());
        let mut busy = status();
        busy.activity = bento_core::agent_proto::Activity::Checking;
        statuses.push(busy);
        let mut reboot = status();
        reboot.reboot_required = true;
        statuses.push(reboot);
        let mut failed = status();
        failed.last_update = Some(record(
            5,
            ReportStatus::Failure,
            REV2,
            Some("no space"),
            None,
        ));
        statuses.push(failed);
        let mut undone = status();
        undone.last_update = Some(record(
            5,
            ReportStatus::Rollback,
            REV2,
            Some("no network"),
            None,
        ));
        statuses.push(undone);
        let mut agents = Vec::new();
        let mut trays = Vec::new();
        for (i, s) in statuses.into_iter().enumerate() {
            let tray_dir = dir.path().join(format!("tray{i}"));
            std::fs::create_dir_all(&tray_dir).unwrap();
            let socket = tray_dir.join("agent.sock");
            agents.push(Agent::start(&socket, s));
            trays.push(Tray::start_with(
                &bus,
                &tray_dir,
                &socket,
                &session.tray_env(),
            ));
        }
        // The sixth follows a socket where no agent listens.
        let tray_dir = dir.path().join("tray5");
        std::fs::create_dir_all(&tray_dir).unwrap();
        trays.push(Tray::start_with(
            &bus,
            &tray_dir,
            &tray_dir.join("agent.sock"),
            &session.tray_env(),
        ));

        let png = shots.join(format!("tray-states-{theme}.png"));
        let counts = wait_for(
            &format!("all six state icons in the {theme} panel"),
            || async {
                session.shot(&png, "#000000").await;
                let colours: Vec<&str> = STATE_COLOURS.iter().map(|(_, c)| *c).collect();
                let counts: Vec<(&str, usize)> = STATE_COLOURS
                    .iter()
                    .map(|(state, _)| *state)
                    .zip(count_colours(&png, &colours).await)
                    .collect();
                counts.iter().all(|(_, n)| *n > 50).then_some(counts)
            },
        )
        .await;
        let strip = shots.join(format!("tray-states-{theme}-strip.png"));
        Command::new("convert")
            .arg(&png)
            .args(["-crop", "1024x40+0+0", "+repage", "-scale", "200%"])
            .arg(&strip)
            .status()
            .await
            .unwrap();
        printed.push(format!(
            "  {} ({theme} panel; disc pixels {counts:?})",
            strip.display()
        ));
        for t in trays {
            t.stop().await;
        }
        drop(agents);
    }
    println!("screenshots in {}:", shots.display());
    for p in printed {
        println!("{p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screenshots_of_the_icon_and_the_details_window() {
    need_screenshot_tools();
    let dir = tempfile::tempdir().unwrap();
    let (mut session, bus) = start_session(dir.path(), LIGHT).await;
    let conn = bus.connect().await;
    let dbus = zbus::fdo::DBusProxy::new(&conn).await.unwrap();
    session
        .start_service(&dbus, &["dunst"], "org.freedesktop.Notifications")
        .await;

    // A machine that was just updated and will restart this evening.
    let socket = dir.path().join("agent.sock");
    let mut s = status();
    let updated = record(3, ReportStatus::Success, REV2, None, Some(42));
    s.history = vec![
        updated.clone(),
        record(
            60 * 24,
            ReportStatus::Failure,
            "1a2b3c4d5e6f7a8b9c0d",
            Some("not enough disk space"),
            None,
        ),
        record(60 * 26, ReportStatus::Success, REV1, None, Some(7)),
    ];
    s.last_update = Some(updated);
    s.revision = Some(REV2.into());
    s.system = Some(SYSTEM2.into());
    s.reboot_required = true;
    let at = OffsetDateTime::now_utc() + Duration::hours(3);
    s.reboot_scheduled = Some(ScheduledReboot {
        at,
        deadline: at + Duration::hours(2),
    });
    s.last_changes = vec![
        "firefox: 128.0 → 129.0.1".into(),
        "linux: 6.6.40 → 6.6.44 (restart needed)".into(),
        "libreoffice: 24.2.4 → 24.2.5".into(),
    ];
    s.log_tail = vec![
        "downloading release 2222222222bb".into(),
        "building the new system".into(),
        "switching to the new system".into(),
        "the new kernel needs a restart".into(),
    ];
    let agent = Agent::start(&socket, s);

    let tray = Tray::start_with(&bus, dir.path(), &socket, &session.tray_env());
    let shots = shots_dir();
    let tray_png = shots.join("tray-reboot-pending.png");
    let panel_px = wait_for("the orange tray icon on screen", || async {
        let n = session.shot(&tray_png, ORANGE).await;
        (n > 50).then_some(n)
    })
    .await;
    let strip = shots.join("tray-panel-strip.png");
    Command::new("convert")
        .arg(&tray_png)
        .args(["-crop", "1024x40+0+0", "+repage", "-scale", "200%"])
        .arg(&strip)
        .status()
        .await
        .unwrap();

    // An event while we watch: dunst shows the notification.
    agent.wait_subscribers(1).await;
    agent.send(update_failed(
        "3333333333cccccccccc",
        "the update server did not answer",
    ));
    tray.wait_log("notified #").await;

    // "Show details…" from the menu starts the window as a child of the tray.
    let view = wait_title(&conn, &tray, "The last update failed").await;
    let details_png = shots.join("details-window.png");
    let red_before = session.shot(&details_png, RED).await;
    click(&conn, &tray, &view, "Show details…").await;
    tray.wait_log("details window shows: The last update failed (4 updates listed)")
        .await;
    wait_for("the details window", || async {
        let out = session
            .command("xwininfo")
            .args(["-root", "-tree"])
            .output()
            .await
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .contains("\"Update details\"")
            .then_some(())
    })
    .await;
    // The page is painted once its red badge (36 px across) is on screen.
    wait_for("the details page painted", || async {
        let n = session.shot(&details_png, RED).await;
        (n > red_before + 700).then_some(())
    })
    .await;
    // The window follows the agent while open.
    agent.send(rolled_back(
        "3333333333cccccccccc",
        "the update server was unreachable after the switch",
    ));
    tray.wait_log("details window shows: The last update was undone (5 updates listed)")
        .await;
    let window_png = shots.join("details-window-after-rollback.png");
    // Repainted once its badge turned amber (rolled back).
    wait_for("the details window repainted", || async {
        let n = session
            .shot_window("Update details", &window_png, AMBER)
            .await;
        (n > 700).then_some(())
    })
    .await;
    let text = details_text(&tray);
    for words in [
        "Running NixOS 24.11 (31 December 2024)",
        "Revision 2222222222bbbbbbbbbb",
        "NixOS 24.11",
        "Downloaded as your administrator's server built it: 3 parts (5.0 MiB) in 4.2 s. It is exactly the system prepared for this computer.",
    ] {
        assert!(
            text.contains(words),
            "the window does not say {words:?}: {text}"
        );
    }

    // The agent goes away: the window says so, and keeps what it knew.
    let _ = agent.stop();
    tray.wait_log("details window shows: Cannot reach the update service (5 updates listed)")
        .await;
    let text = details_text(&tray);
    for words in [
        "Last known state (today at ",
        "): The last update was undone",
        "Running NixOS 24.11 (31 December 2024)",
        "Undone",
    ] {
        assert!(
            text.contains(words),
            "the window does not say {words:?}: {text}"
        );
    }
    assert!(!text.contains("No updates yet"), "{text}");
    let down_png = shots.join("details-window-agent-down.png");
    // Repainted once its badge turned grey (unreachable).
    wait_for("the details window repainted grey", || async {
        let n = session.shot_window("Update details", &down_png, GREY).await;
        (n > 700).then_some(())
    })
    .await;

    println!(
        "screenshots in {} (display {}):",
        shots.display(),
        session.display
    );
    for p in [&tray_png, &strip, &details_png, &window_png, &down_png] {
        println!("  {}", p.display());
    }
    println!("orange icon pixels in the panel: {panel_px}");
    tray.stop().await;
}

/// The text the details window showed last, as its page reported it in the log.
fn details_text(tray: &Tray) -> String {
    let log = tray.log();
    log.lines()
        .rev()
        .find_map(|l| {
            l.split_once("details window text: ")
                .map(|(_, t)| t.to_owned())
        })
        .unwrap_or_else(|| panic!("the window never reported its text:\n{log}"))
}
