//! The panel in a real browser: Debian's headless Chromium driven through
//! chromedriver (WebDriver, fantoccini). Log in, see the fleet, open a host, watch
//! its state change when a report lands, start a deploy and watch its log grow.
//! A screenshot of each main page is saved into the folder printed at the start
//! (`$BENTO_SCREENSHOTS`, else `target/screenshots/panel/`).

mod panel_common;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bento_core::bentodir::BentoDir;
use bento_core::buildstate::BuildState;
use bento_core::report::ReportStatus;
use bento_tests::sshd::unique_prefix;
use fantoccini::{Client, Locator};
use panel_common::{
    click, eventually, screenshots_dir, shot, submit_login, system, text_of, ChromeDriver,
    PanelServer,
};

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
    let shots = screenshots_dir()?;
    eprintln!("panel screenshots: {}", shots.display());
    let tags = "[hosts.web01]\ntags = [\"web\", \"eu\"]\n[hosts.web02]\ntags = [\"web\", \"us\"]\n[hosts.db04]\ntags = [\"db\"]\n";
    let mut p = PanelServer::start_with("panel-browser", tags)?;
    let hosts = fleet(&p)?;
    let toy = format!("{}-app", unique_prefix());
    p.fx.fleet.flake_host(&toy, &[&toy])?;
    p.add_host(&toy, None, Duration::from_secs(7200))?;

    let driver = ChromeDriver::start()?;
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
    submit_login(c).await?;
    // The login page may still be there when the click returns: wait for the
    // fleet page's heading, not for any heading (a login page's goes stale).
    eventually(
        Duration::from_secs(20),
        "the fleet page after login",
        || async {
            let text = match c.find(Locator::Css("main h1")).await {
                Ok(h1) => h1.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            Ok((text == "Fleet").then_some(()))
        },
    )
    .await?;

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
    // While it runs, its duration ticks in place (app.js): the same element, not a
    // page or region reloaded by the server, shows a new value.
    let ticked = eventually(
        Duration::from_secs(15),
        "the running job's duration to tick",
        || async {
            let v = c
                .execute(
                    "var el = document.getElementById('job-duration');
                     if (!el) return null;
                     if (!el.dataset.probe) {
                       el.dataset.probe = '1';
                       el.dataset.first = el.textContent;
                       return null;
                     }
                     return el.textContent !== el.dataset.first
                       ? [el.dataset.first, el.textContent] : null;",
                    vec![],
                )
                .await?;
            Ok((!v.is_null()).then_some(v))
        },
    )
    .await?;
    eprintln!("running job's duration: {ticked}");
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

/// Runs `script` (which returns a JSON value) in the page.
async fn js(c: &Client, script: &str) -> Result<serde_json::Value> {
    Ok(c.execute(script, vec![]).await?)
}

/// Visible elements matching `css` whose text is cut: laid out wider than their
/// content box. (scrollWidth rounds to whole pixels and misses an ellipsis that
/// hides a fraction of a pixel's overflow; the text's own box does not.)
async fn cut_elements(c: &Client, css: &str) -> Result<Vec<String>> {
    let v = js(
        c,
        &format!(
            "return Array.from(document.querySelectorAll({css:?}))
               .filter(function (e) {{ return e.offsetParent !== null; }})
               .map(function (e) {{
                 var r = document.createRange(); r.selectNodeContents(e);
                 var s = getComputedStyle(e), box = e.getBoundingClientRect().width
                   - parseFloat(s.paddingLeft) - parseFloat(s.paddingRight)
                   - parseFloat(s.borderLeftWidth) - parseFloat(s.borderRightWidth);
                 var text = r.getBoundingClientRect().width;
                 return text > box + 0.01 ? e.textContent.trim() + ' (' + text + ' > ' + box + ')' : null;
               }})
               .filter(function (x) {{ return x !== null; }});"
        ),
    )
    .await?;
    Ok(serde_json::from_value(v)?)
}

/// Sets the viewport (the window's inner size) to `w`×`h` CSS pixels. The
/// window's frame, if any, is not part of the viewport, and a resize may land
/// after the call returns: the outer size is corrected by the difference until
/// the viewport says it is right.
async fn viewport(c: &Client, w: u32, h: u32) -> Result<()> {
    c.set_window_size(w, h).await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let inner = js(c, "return [window.innerWidth, window.innerHeight];").await?;
        if inner == serde_json::json!([w, h]) {
            return Ok(());
        }
        assert!(
            Instant::now() < deadline,
            "viewport size: {inner}, not [{w}, {h}]"
        );
        let (iw, ih) = (
            inner[0].as_i64().unwrap_or(0),
            inner[1].as_i64().unwrap_or(0),
        );
        let (ow, oh) = c.get_window_size().await?;
        let grow = |outer: u64, want: u32, got: i64| {
            (outer as i64 + i64::from(want) - got).max(i64::from(want)) as u32
        };
        c.set_window_size(grow(ow, w, iw), grow(oh, h, ih)).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The lines of the log page's viewer that a reader cannot see, even scrolled to
/// the end of the page and of the viewer: the last line must be in full view.
async fn last_log_line_hidden(c: &Client) -> Result<serde_json::Value> {
    js(
        c,
        "var ol = document.querySelector('ol.log');
         ol.scrollTop = ol.scrollHeight;
         window.scrollTo(0, document.documentElement.scrollHeight);
         var li = ol.lastElementChild;
         var l = li.getBoundingClientRect(), o = ol.getBoundingClientRect();
         var visibleBottom = Math.min(o.top + ol.clientTop + ol.clientHeight, window.innerHeight);
         var shown = l.top >= Math.max(o.top, 0) - 0.5 && l.bottom <= visibleBottom + 0.5;
         return shown ? null : {text: li.textContent, line_top: l.top, line_bottom: l.bottom,
                                viewer_bottom: o.top + ol.clientTop + ol.clientHeight,
                                window: window.innerHeight};",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_panel_fits_a_laptop_and_a_phone() -> Result<()> {
    let shots = screenshots_dir()?;
    eprintln!("panel screenshots: {}", shots.display());
    let p = PanelServer::start("panel-screens")?;
    let hosts = fleet(&p)?;
    // A long log, with lines longer than a phone is wide.
    let long = &hosts[0];
    let mut log = String::new();
    for i in 1..=120 {
        log.push_str(&format!(
            "line {i}: building '/nix/store/0123456789abcdefghijklmnopqrstuv-unit-{i}.service.drv'{}\n",
            " and its dependencies".repeat(i % 5)
        ));
    }
    log.push_str("the last line of the log\n");
    let file = p.report(long, &system(long, 3), ReportStatus::Success, &log, None)?;
    let s = p.login().await?;
    s.wait_for_host_where(long, "to have the long log", |h| {
        h["last_report"]["file"] == file.as_str()
    })
    .await?;
    // A job with a result: a build of a host that is in the chroot but not in
    // hosts/ fails at once, saying why.
    let job = s.start_job("build", &hosts[1]).await?;
    let done = s.wait_job(job, Duration::from_secs(120)).await?;
    let summary = done["summary"].as_str().unwrap_or_default().to_owned();
    assert!(!summary.is_empty(), "{done}");
    // 21 audit entries (logins, the job, the user's creation); the browser's own
    // login makes 22.
    let audit_rows = |body: &str| body.matches("<tr id=\"a").count();
    while audit_rows(&s.page("/audit").await?) < 21 {
        p.login().await?;
    }
    assert_eq!(audit_rows(&s.page("/audit").await?), 21);

    // A host whose configuration stopped building (as a build records it).
    let mut builds = BuildState::default();
    builds.record_failure(
        &hosts[2],
        &hosts[2],
        "error: undefined variable 'pkgs'\n\n       at hosts/web03/configuration.nix:7:14:\n\n            6|   services.nginx.enable = true;\n            7|   packages = pkgs.hello;\n             |              ^",
        time::OffsetDateTime::now_utc(),
    );
    builds.save(&p.fx.bento_dir())?;

    let driver = ChromeDriver::start()?;
    let c = driver.browser().await?;
    let result = fits(&c, &p, &file, long, &summary, &shots).await;
    if result.is_err() {
        let _ = shot(&c, &shots, "fits-failure").await;
        eprintln!("server log:\n{}", p.server_log());
    }
    let _ = c.close().await;
    result
}

async fn fits(
    c: &Client,
    p: &PanelServer,
    file: &str,
    host: &str,
    summary: &str,
    shots: &Path,
) -> Result<()> {
    c.goto(&p.url("/login")).await?;
    submit_login(c).await?;
    c.wait().for_element(Locator::Css("#counts")).await?;

    // A common laptop screen: every state label fits its box.
    viewport(c, 1366, 768).await?;
    c.refresh().await?;
    c.wait().for_element(Locator::Css("#counts")).await?;
    shot(c, shots, "fleet-1366").await?;
    let cut = cut_elements(c, ".count .l, .badge, .chip, .flag-badge").await?;
    assert!(cut.is_empty(), "cut at 1366 px: {cut:?}");
    let labels = js(c, "return document.querySelectorAll('.count .l').length;").await?;
    assert_eq!(labels, 9, "one count per state");
    let marked = text_of(c, "#hosts a.build-bad").await?.unwrap_or_default();
    assert!(marked.contains("config does not build since"), "{marked:?}");
    click(c, "#hosts a.build-bad").await?;
    c.wait()
        .for_element(Locator::Css(".build-failure pre.error-block"))
        .await?;
    shot(c, shots, "host-build-failure").await?;

    // A phone.
    viewport(c, 390, 844).await?;
    c.goto(&p.url("/")).await?;
    c.wait().for_element(Locator::Css("#counts")).await?;
    let cut = cut_elements(c, ".count .l, .badge, .chip, .flag-badge").await?;
    assert!(cut.is_empty(), "cut at 390 px: {cut:?}");

    // The log viewer shows its last line.
    c.goto(&p.url(&format!("/hosts/{host}/logs/{file}")))
        .await?;
    c.wait().for_element(Locator::Css("ol.log")).await?;
    let hidden = last_log_line_hidden(c).await?;
    shot(c, shots, "log-phone-end").await?;
    assert!(hidden.is_null(), "the last log line is clipped: {hidden}");
    let overflow = js(c, "return document.documentElement.scrollWidth;").await?;
    assert!(
        overflow.as_u64() <= Some(390),
        "the page scrolls sideways: {overflow}"
    );

    // Jobs show their result.
    c.goto(&p.url("/jobs")).await?;
    c.wait().for_element(Locator::Css("#jobs-table")).await?;
    shot(c, shots, "jobs-phone").await?;
    let result = js(
        c,
        "var td = document.querySelector('#jobs-table td[data-label=Result]');
         return td && td.offsetParent !== null ? td.textContent.trim() : null;",
    )
    .await?;
    assert_eq!(
        result.as_str(),
        Some(summary),
        "the result column on a phone"
    );

    // The audit log is compact: 22 entries in well under two screens.
    c.goto(&p.url("/audit")).await?;
    c.wait().for_element(Locator::Css("table.rows")).await?;
    let rows = js(
        c,
        "return document.querySelectorAll('table.rows tbody tr').length;",
    )
    .await?;
    assert_eq!(rows, 22);
    let height = js(c, "return document.documentElement.scrollHeight;").await?;
    shot(c, shots, "audit-phone").await?;
    eprintln!("audit log of 22 entries on a phone: {height} px");
    assert!(
        height.as_u64() < Some(1500),
        "audit log of 22 entries: {height} px"
    );
    // Compact, yet nothing recorded is hidden.
    let hidden = js(
        c,
        "return Array.from(document.querySelectorAll('table.rows tbody td'))
           .filter(function (t) { return t.textContent.trim() !== '' && t.offsetParent === null; })
           .map(function (t) { return t.dataset.label + ': ' + t.textContent.trim(); });",
    )
    .await?;
    assert_eq!(
        hidden,
        serde_json::json!([]),
        "audit fields hidden on a phone"
    );
    Ok(())
}
