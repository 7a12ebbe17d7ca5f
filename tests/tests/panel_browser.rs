//! The panel in a real browser: Debian's headless Chromium driven through
//! chromedriver (WebDriver, fantoccini). Log in, see the fleet, open a host, watch
//! its state change when a report lands, start a deploy and watch its log grow.
//! A screenshot of each main page is saved into the folder printed at the start
//! (`$BENTO_SCREENSHOTS`, else `target/screenshots/panel/`).

mod panel_common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bento_core::bentodir::BentoDir;
use bento_core::report::ReportStatus;
use bento_tests::sshd::unique_prefix;
use fantoccini::{Client, ClientBuilder, Locator};
use panel_common::{eventually, system, PanelServer, ADMIN, PASSWORD};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// chromedriver on a port it picks itself, with its own Chromium profile. On drop it
/// stops, with every process it started for this profile.
struct Driver {
    child: Child,
    port: u16,
    profile: tempfile::TempDir,
}

impl Driver {
    fn start() -> Result<Driver> {
        let profile = tempfile::Builder::new()
            .prefix("bento-chromium-")
            .tempdir()?;
        let mut child = Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromedriver")?;
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line
                    .split("started successfully on port ")
                    .nth(1)
                    .and_then(|p| p.trim_end_matches('.').trim().parse::<u16>().ok())
                {
                    let _ = tx.send(port);
                }
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(p) => p,
            Err(_) => {
                let _ = child.kill();
                bail!("chromedriver did not say which port it listens on");
            }
        };
        Ok(Driver {
            child,
            port,
            profile,
        })
    }

    async fn browser(&self) -> Result<Client> {
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), "chrome".into());
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1400,1000",
                    format!("--user-data-dir={}", self.profile.path().display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .context("starting Chromium through chromedriver")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Chromium processes of this profile (left behind if the test failed midway).
        let marker = format!("--user-data-dir={}", self.profile.path().display());
        if let Ok(rd) = fs::read_dir("/proc") {
            for ent in rd.flatten() {
                let Ok(pid) = ent.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let cmdline = fs::read(ent.path().join("cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&marker) {
                    let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn screenshots_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os("BENTO_SCREENSHOTS") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots/panel"),
    };
    fs::create_dir_all(&dir)?;
    Ok(dir.canonicalize()?)
}

async fn shot(c: &Client, dir: &Path, name: &str) -> Result<()> {
    let png = c.screenshot().await?;
    fs::write(dir.join(format!("{name}.png")), png)?;
    Ok(())
}

/// Clicks the first element matching `css`, finding it again if a live update
/// replaced it in between.
async fn click(c: &Client, css: &str) -> Result<()> {
    let mut attempts = 0;
    loop {
        let el = c.find(Locator::Css(css)).await?;
        match el.click().await {
            Ok(_) => return Ok(()),
            Err(e) if attempts < 20 && e.to_string().contains("stale element") => attempts += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The visible text of the first element matching `css`, spaces normalized. Live
/// updates replace page regions, so an element can go stale between finding and
/// reading it: then it is found again.
async fn text_of(c: &Client, css: &str) -> Result<Option<String>> {
    let mut attempts = 0;
    loop {
        let el = match c.find(Locator::Css(css)).await {
            Ok(el) => el,
            Err(e) if e.is_no_such_element() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match el.text().await {
            // Flex items come back on separate lines: compare words.
            Ok(t) => return Ok(Some(t.split_whitespace().collect::<Vec<_>>().join(" "))),
            Err(e) if attempts < 20 && e.to_string().contains("stale element") => attempts += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A fleet that makes a representative dashboard.
fn fleet(p: &PanelServer) -> Result<Vec<String>> {
    let hour = Duration::from_secs(3600);
    let mut hosts = Vec::new();
    for (i, role) in [
        "web", "web", "web", "db", "db", "cache", "build", "mail", "vpn", "ci", "lab", "desk",
    ]
    .iter()
    .enumerate()
    {
        let h = format!("{role}{:02}", i + 1);
        p.add_host(&h, Some(&system(&h, 3)), hour * (i as u32 + 1))?;
        match i % 6 {
            0 | 1 | 4 => {
                p.report(
                    &h,
                    &system(&h, 3),
                    ReportStatus::Success,
                    "building the system configuration...\nactivating the configuration...\ndone\n",
                    None,
                )?;
                p.heartbeat(&h, &system(&h, 3), i == 4)?;
            }
            2 => {
                p.report(&h, &system(&h, 3), ReportStatus::Failure, "error: builder for '/nix/store/…-unit-nginx.service.drv' failed with exit code 1\n", Some("nginx.service: bad configuration"))?;
                p.heartbeat(&h, &system(&h, 2), false)?;
            }
            3 => {
                p.report(
                    &h,
                    &system(&h, 2),
                    ReportStatus::Rollback,
                    "switch ok\nserver unreachable: rolling back\n",
                    Some("could not reach the server after switching"),
                )?;
                p.heartbeat(&h, &system(&h, 2), false)?;
            }
            _ => {}
        }
        hosts.push(h);
    }
    Ok(hosts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_panel_in_a_real_browser() -> Result<()> {
    if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
        eprintln!("\n!!!!!!!!!! SKIPPED panel_browser: {CHROMEDRIVER} or {CHROMIUM} is missing (apt-get install chromium chromium-driver) !!!!!!!!!!\n");
        return Ok(());
    }
    let shots = screenshots_dir()?;
    eprintln!("panel screenshots: {}", shots.display());
    let tags = "[hosts.web01]\ntags = [\"web\", \"eu\"]\n[hosts.web02]\ntags = [\"web\", \"us\"]\n[hosts.db04]\ntags = [\"db\"]\n";
    let mut p = PanelServer::start_with("panel-browser", tags)?;
    let hosts = fleet(&p)?;
    let toy = format!("{}-app", unique_prefix());
    p.fx.fleet.flake_host(&toy, &[&toy])?;
    p.add_host(&toy, None, Duration::from_secs(7200))?;

    let driver = Driver::start()?;
    let c = driver.browser().await?;
    let result = drive(&c, &p, &hosts, &toy, &shots).await;
    if result.is_err() {
        let _ = shot(&c, &shots, "failure").await;
        eprintln!("server log:\n{}", p.server_log());
    }
    let _ = c.close().await;
    result
}

async fn drive(
    c: &Client,
    p: &PanelServer,
    hosts: &[String],
    toy: &str,
    shots: &Path,
) -> Result<()> {
    // Log in.
    c.goto(&p.url("/")).await?;
    c.wait()
        .for_element(Locator::Css("input[name=user]"))
        .await?;
    assert!(c.current_url().await?.path().starts_with("/login"));
    shot(c, shots, "login").await?;
    c.find(Locator::Css("input[name=user]"))
        .await?
        .send_keys(ADMIN)
        .await?;
    c.find(Locator::Css("input[name=password]"))
        .await?
        .send_keys(PASSWORD)
        .await?;
    c.find(Locator::Css("button[type=submit].primary"))
        .await?
        .click()
        .await?;
    let h1 = c.wait().for_element(Locator::Css("main h1")).await?;
    assert_eq!(h1.text().await?, "Fleet");

    // The fleet, with every host.
    eventually(
        Duration::from_secs(10),
        "every host on the fleet page",
        || async {
            c.refresh().await?;
            let rows = c.find_all(Locator::Css("#hosts tbody tr")).await?;
            Ok((rows.len() == hosts.len() + 1).then_some(()))
        },
    )
    .await?;
    shot(c, shots, "fleet").await?;

    // A report lands while the fleet page is open: the row changes without a reload.
    let target = &hosts[5]; // never reported: "new machine"
    let badge = format!("#hosts tr:has(a[href='/hosts/{target}']) .badge");
    assert_eq!(text_of(c, &badge).await?.as_deref(), Some("🆕 new machine"));
    c.execute("document.body.dataset.marker = 'not reloaded'", vec![])
        .await?;
    let t = Instant::now();
    p.report(
        target,
        &system(target, 3),
        ReportStatus::Failure,
        "error: out of disk space\n",
        Some("no space left on device"),
    )?;
    eventually(
        Duration::from_secs(10),
        "the fleet row to turn failing",
        || async { Ok(text_of(c, &badge).await?.filter(|t| t.contains("failing"))) },
    )
    .await?;
    eprintln!("fleet page: report → row updated in {:?}", t.elapsed());
    let marker = c
        .execute("return document.body.dataset.marker", vec![])
        .await?;
    assert_eq!(
        marker, "not reloaded",
        "the page was reloaded instead of updated"
    );

    // Open a host; its state changes live too.
    let host = &hosts[3]; // rolled back
    click(c, &format!("a[href='/hosts/{host}']")).await?;
    c.wait().for_element(Locator::Css("#host-head")).await?;
    assert_eq!(text_of(c, "main h1").await?.as_deref(), Some(host.as_str()));
    shot(c, shots, "host").await?;
    let t = Instant::now();
    p.heartbeat(host, &system(host, 3), false)?;
    p.report(
        host,
        &system(host, 3),
        ReportStatus::Success,
        "building\nactivating\ndone\n",
        None,
    )?;
    eventually(
        Duration::from_secs(10),
        "the host's badge to say up to date",
        || async {
            Ok(text_of(c, "#host-head .badge")
                .await?
                .filter(|t| t.contains("up to date")))
        },
    )
    .await?;
    eprintln!("host page: report → state updated in {:?}", t.elapsed());
    let reports = c.find_all(Locator::Css("#reports tbody tr")).await?;
    assert_eq!(reports.len(), 2, "the new report is in the history");

    // The log viewer.
    click(c, "#reports tbody tr a[href*='/logs/']").await?;
    c.wait().for_element(Locator::Css("ol.log")).await?;
    assert_eq!(text_of(c, "ol.log li#L3").await?.as_deref(), Some("done"));
    shot(c, shots, "log").await?;

    // Deploy the toy host from its page and watch the job's log grow.
    let lock = BentoDir::open(&p.fx.bento_dir())?.try_lock()?;
    c.goto(&p.url(&format!("/hosts/{toy}"))).await?;
    c.find(Locator::Css("button[name=kind][value=deploy]"))
        .await?
        .click()
        .await?;
    c.wait().for_element(Locator::Css("#job-log")).await?;
    assert!(c.current_url().await?.path().starts_with("/jobs/"));
    eventually(
        Duration::from_secs(60),
        "the job to wait for the deploy lock",
        || async {
            let log = text_of(c, "#job-log").await?.unwrap_or_default();
            Ok(log
                .contains("waiting: another bento deploy is running")
                .then_some(()))
        },
    )
    .await?;
    let before = c.find_all(Locator::Css("#job-log li")).await?.len();
    shot(c, shots, "job-waiting").await?;
    drop(lock);
    eventually(
        Duration::from_secs(300),
        "the deploy to succeed",
        || async {
            let status = text_of(c, "#job-head .badge").await?.unwrap_or_default();
            let log = text_of(c, "#job-log").await?.unwrap_or_default();
            if status == "failed" {
                bail!("the deploy failed:\n{log}");
            }
            Ok((status == "succeeded" && log.contains("1 published")).then_some(()))
        },
    )
    .await?;
    let after = c.find_all(Locator::Css("#job-log li")).await?.len();
    assert!(
        after > before + 2,
        "the log did not grow live ({before} → {after} lines)"
    );
    assert!(text_of(c, "#job-log")
        .await?
        .unwrap()
        .contains(&format!("{toy}: published")));
    shot(c, shots, "job").await?;

    c.goto(&p.url("/jobs")).await?;
    c.wait().for_element(Locator::Css("#jobs-table")).await?;
    shot(c, shots, "jobs").await?;
    c.goto(&p.url("/audit")).await?;
    c.wait().for_element(Locator::Css("table.rows")).await?;
    shot(c, shots, "audit").await?;
    c.goto(&p.url(&format!("/hosts/{toy}"))).await?;
    c.wait().for_element(Locator::Css("#host-jobs")).await?;
    shot(c, shots, "host-deployed").await?;

    // A phone.
    // A phone's width; tall, so the screenshot shows the first rows too.
    c.set_window_size(390, 1400).await?;
    c.goto(&p.url("/")).await?;
    c.wait().for_element(Locator::Css("#hosts")).await?;
    shot(c, shots, "fleet-phone").await?;
    c.goto(&p.url(&format!("/hosts/{host}"))).await?;
    c.wait().for_element(Locator::Css("#facts")).await?;
    shot(c, shots, "host-phone").await?;
    Ok(())
}
