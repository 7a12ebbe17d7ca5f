//! The fleet as the panel shows it: the same statuses as `bento status --json`,
//! filters, sorting, the host page with its history and log, live updates when a
//! report lands, metrics.

mod panel_common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bento_core::report::{AgentState, ReportStatus};
use bento_tests::reports::{write_heartbeat, Report};
use panel_common::{eventually, next_event, system, PanelServer};
use time::OffsetDateTime;

const TAGS: &str = "[hosts.web1]\ntags = [\"web\", \"eu\"]\n[hosts.web2]\ntags = [\"web\"]\n[hosts.db1]\ntags = [\"db\"]\n";

/// web1 up to date, web2 failing, db1 rolled back with a reboot pending, db2 new,
/// cache1 rebuild pending and offline.
fn fleet(p: &PanelServer) -> Result<()> {
    let hour = Duration::from_secs(3600);
    for h in ["web1", "web2", "db1", "db2", "cache1"] {
        p.add_host(h, Some(&system(h, 2)), hour)?;
    }
    let web1 = system("web1", 1);
    Report {
        time: OffsetDateTime::now_utc() - time::Duration::minutes(10),
        log: "old build\n",
        ..Report::agent("web1", &web1, ReportStatus::Success, "r1")
    }
    .write(&p.logs("web1"))?;
    p.report(
        "web1",
        &system("web1", 2),
        ReportStatus::Success,
        "building\nactivating\ndone\n",
        None,
    )?;
    p.heartbeat("web1", &system("web1", 2), false)?;
    p.report(
        "web2",
        &system("web2", 2),
        ReportStatus::Failure,
        "error: builder failed\n",
        Some("build of system failed"),
    )?;
    p.report(
        "db1",
        &system("db1", 1),
        ReportStatus::Rollback,
        "rolled back\n",
        Some("server unreachable after switch"),
    )?;
    p.heartbeat("db1", &system("db1", 1), true)?;
    // cache1: a legacy report from before the last publication (the server compares
    // its ctime with last_change_date's mtime), a heartbeat long ago.
    let cache1 = system("cache1", 1);
    let old = Report {
        time: OffsetDateTime::now_utc() - time::Duration::days(3),
        ..Report::legacy("cache1", &cache1, ReportStatus::Success)
    };
    old.write(&p.logs("cache1"))?;
    bento_tests::reports::set_mtime(
        &p.fx.host_chroot("cache1").join("last_change_date"),
        std::time::SystemTime::now() + Duration::from_secs(120),
    )?;
    write_heartbeat(
        &p.logs("cache1"),
        "cache1",
        Some(&system("cache1", 1)),
        Some("r0"),
        AgentState::Idle,
        false,
    )?;
    bento_tests::reports::set_mtime(
        &p.logs("cache1").join("heartbeat.json"),
        std::time::SystemTime::now() - 2 * hour,
    )?;
    Ok(())
}

/// The object of `host` in a list of hosts (the API's or `bento status --json`'s).
fn host_in<'a>(hosts: &'a serde_json::Value, host: &str) -> Option<&'a serde_json::Value> {
    hosts.as_array()?.iter().find(|h| h["host"] == host)
}

fn state_of(hosts: &serde_json::Value, host: &str) -> String {
    host_in(hosts, host)
        .map(|h| h["state"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_page_and_api_show_what_bento_status_shows() -> Result<()> {
    let p = PanelServer::start_with("panel-fleet", TAGS)?;
    fleet(&p)?;
    let s = p.login().await?;
    // The command line reads the chroot as it is now. The panel follows it: wait
    // until it has read everything fleet() wrote (the last writes are cache1's),
    // that is until each host's state and offline flag are the command line's.
    let cli = p.fx.status()?;
    assert_eq!(cli.len(), 5);
    let settled = |api: &serde_json::Value| {
        api.as_array().is_some_and(|a| a.len() == 5)
            && cli.iter().all(|h| {
                host_in(api, h["host"].as_str().unwrap())
                    .is_some_and(|x| x["state"] == h["state"] && x["offline"] == h["offline"])
            })
    };
    let settle = eventually(
        Duration::from_secs(10),
        "the command line's states",
        || async {
            let v = s.json("/api/v1/hosts").await?;
            Ok(settled(&v).then_some(v))
        },
    );
    // Past the timeout, the comparison below names the host and field that differ.
    let api = match settle.await {
        Ok(v) => v,
        Err(_) => s.json("/api/v1/hosts").await?,
    };
    // Same shape and states as the command line.
    for h in &cli {
        let name = h["host"].as_str().unwrap();
        let mine = host_in(&api, name).with_context(|| format!("{name} missing from the API"))?;
        for key in [
            "state",
            "expected_system",
            "running_system",
            "reboot_pending",
            "offline",
            "revision",
            "published_at",
        ] {
            assert_eq!(mine[key], h[key], "{name}.{key}");
        }
        assert_eq!(
            mine["last_report"]["file"], h["last_report"]["file"],
            "{name}"
        );
    }
    assert_eq!(state_of(&api, "web1"), "up-to-date");
    assert_eq!(state_of(&api, "db1"), "rolled-back");
    assert_eq!(state_of(&api, "db2"), "new-machine");
    assert_eq!(state_of(&api, "cache1"), "rebuild-pending");

    let page = s.page("/").await?;
    assert!(page.contains(">5 hosts<"));
    for badge in [
        "🔥</span> failing",
        "⏪</span> rolled back",
        "💚</span> up to date",
    ] {
        assert!(page.contains(badge), "{badge} missing");
    }
    assert!(page.contains("🔄 reboot") && page.contains("📴 offline"));
    assert!(page.contains(r#"<span class="tag">eu</span>"#));
    for h in ["web1", "web2", "db1", "db2", "cache1"] {
        assert!(
            page.contains(&format!("href=\"/hosts/{h}\"")),
            "{h} missing"
        );
    }

    // Filters, search, sort, pagination.
    let rows = |body: &str| -> Vec<String> {
        body.match_indices("<td class=\"host\" data-label=\"Host\"><a href=\"/hosts/")
            .map(|(i, m)| body[i + m.len()..].split('"').next().unwrap().to_owned())
            .collect()
    };
    assert_eq!(rows(&s.page("/?state=failing").await?), ["web2"]);
    assert_eq!(rows(&s.page("/?state=problem").await?), ["db1", "web2"]);
    assert_eq!(rows(&s.page("/?tag=web").await?), ["web1", "web2"]);
    assert_eq!(rows(&s.page("/?q=DB").await?), ["db1", "db2"]);
    assert_eq!(rows(&s.page("/?flag=reboot").await?), ["db1"]);
    assert_eq!(rows(&s.page("/?flag=offline").await?), ["cache1"]);
    assert_eq!(rows(&s.page("/?sort=state").await?)[..2], ["web2", "db1"]);
    assert_eq!(rows(&s.page("/?order=desc").await?)[0], "web2");
    let page1 = s.page("/?per=2").await?;
    assert_eq!(rows(&page1), ["cache1", "db1"]);
    assert!(page1.contains("Showing 1–2 of 5"));
    assert_eq!(rows(&s.page("/?per=2&page=3").await?), ["web2"]);
    // Junk in the query is ignored, not an error.
    assert_eq!(
        rows(&s.page("/?per=abc&page=-1&sort=%3Cx%3E&state=nope").await?).len(),
        5
    );
    let api_filtered = s.json("/api/v1/hosts?state=failing").await?;
    assert_eq!(api_filtered.as_array().unwrap().len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_page_shows_history_log_and_actions() -> Result<()> {
    let p = PanelServer::start_with("panel-fleet", TAGS)?;
    fleet(&p)?;
    let s = p.login().await?;
    eventually(Duration::from_secs(10), "web1 up to date", || async {
        Ok(s.json_opt("/api/v1/hosts/web1")
            .await?
            .filter(|h| h["state"] == "up-to-date")
            .map(|_| ()))
    })
    .await?;
    let page = s.page("/hosts/web1").await?;
    assert!(page.contains("💚</span> up to date"));
    assert!(page.contains(&system("web1", 2)), "expected system");
    assert!(page.contains("running the expected system"));
    for kind in ["dry-build", "build", "deploy"] {
        assert!(
            page.contains(&format!("name=\"kind\" value=\"{kind}\"")),
            "{kind} button"
        );
    }
    // History: both reports, newest first, with the decisive one marked.
    let reports = s.json("/api/v1/hosts/web1/reports").await?;
    let reports = reports.as_array().unwrap();
    assert_eq!(reports.len(), 2);
    let newest = reports[0]["file"].as_str().unwrap();
    assert!(newest.contains(&system("web1", 2)), "{newest}");
    let first = page.find(newest).unwrap();
    let second = page.find(reports[1]["file"].as_str().unwrap()).unwrap();
    assert!(first < second, "history is not newest first");
    // Said for an admin, not in the status machine's terms.
    assert!(
        page.contains("current state comes from this report"),
        "{page}"
    );
    assert!(!page.contains("decides the state"));

    let log = s.page(&format!("/hosts/web1/logs/{newest}")).await?;
    assert!(
        log.contains(r#"<li id="L1" data-n="1">building</li>"#),
        "{log}"
    );
    assert!(log.contains(r#"<li id="L3" data-n="3">done</li>"#));
    assert!(log.contains("3 lines"));

    let failing = s.page("/hosts/web2").await?;
    assert!(failing.contains("build of system failed"));
    let legacy = s.page("/hosts/cache1").await?;
    assert!(legacy.contains("legacy client (no sidecar)"));
    // Rolled back and not running the expected system: the diff is offered; the
    // made-up systems are not in the store, which the diff page says.
    let db1 = s.page("/hosts/db1").await?;
    assert!(db1.contains("href=\"/hosts/db1/diff\""));
    let diff = s.page("/hosts/db1/diff").await?;
    assert!(
        diff.contains("is not in this server&#39;s nix store")
            || diff.contains("is not in this server&#x27;s nix store"),
        "{diff}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_report_shows_within_a_second_and_is_pushed_to_open_pages() -> Result<()> {
    let p = PanelServer::start_with("panel-fleet", TAGS)?;
    fleet(&p)?;
    let s = p.login().await?;
    eventually(Duration::from_secs(10), "web2 failing", || async {
        Ok(s.json_opt("/api/v1/hosts/web2")
            .await?
            .filter(|h| h["state"] == "failing")
            .map(|_| ()))
    })
    .await?;
    let mut events = s.get("/events").await?;
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let mut buf = String::new();

    let t = Instant::now();
    p.report(
        "web2",
        &system("web2", 2),
        ReportStatus::Success,
        "fixed\n",
        None,
    )?;
    let (event, data) =
        tokio::time::timeout(Duration::from_secs(5), next_event(&mut events, &mut buf))
            .await
            .map_err(|_| {
                anyhow::anyhow!("no change event in 5 s; server log:\n{}", p.server_log())
            })??;
    let pushed = t.elapsed();
    assert_eq!(event, "change");
    let change: serde_json::Value = serde_json::from_str(&data)?;
    assert!(
        change["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h == "web2"),
        "{change}"
    );
    let seen = eventually(Duration::from_secs(5), "web2 up to date", || async {
        Ok(s.json_opt("/api/v1/hosts/web2")
            .await?
            .filter(|h| h["state"] == "up-to-date")
            .map(|_| t.elapsed()))
    })
    .await?;
    eprintln!("report → SSE change in {pushed:?}, → API in {seen:?}");
    assert!(
        seen < Duration::from_secs(1),
        "the report took {seen:?} to show"
    );
    let page = s.page("/hosts/web2").await?;
    assert!(page.contains("💚</span> up to date"));

    // A brand-new host directory is followed too.
    p.add_host("new1", Some(&system("new1", 1)), Duration::from_secs(10))?;
    let t = Instant::now();
    p.report(
        "new1",
        &system("new1", 1),
        ReportStatus::Success,
        "hello\n",
        None,
    )?;
    eventually(Duration::from_secs(5), "new1 up to date", || async {
        let v = s.json("/api/v1/hosts").await?;
        Ok((state_of(&v, "new1") == "up-to-date").then_some(()))
    })
    .await?;
    eprintln!("new host → up to date in {:?}", t.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health() -> Result<()> {
    let p = PanelServer::start_with("panel-fleet", TAGS)?;
    fleet(&p)?;
    let s = p.login().await?;
    let m = eventually(Duration::from_secs(10), "metrics", || async {
        let m = s.get("/metrics").await?.text().await?;
        Ok(m.contains("bento_hosts{state=\"failing\"} 1").then_some(m))
    })
    .await?;
    for line in [
        "bento_hosts{state=\"up-to-date\"} 1",
        "bento_hosts{state=\"rolled-back\"} 1",
        "bento_hosts{state=\"new-machine\"} 1",
        "bento_hosts_reboot_pending 1",
        "bento_hosts_offline 1",
        "# TYPE bento_job_duration_seconds histogram",
        // Per host, in the node/exporter conventions.
        "bento_host_state{host=\"web1\",state=\"up-to-date\"} 1",
        "bento_host_state{host=\"web2\",state=\"failing\"} 1",
        "bento_host_state{host=\"db1\",state=\"rolled-back\"} 1",
        "bento_host_reboot_pending{host=\"db1\"} 1",
        "bento_host_reboot_pending{host=\"web1\"} 0",
        "bento_host_offline{host=\"cache1\"} 1",
        "bento_host_offline{host=\"web1\"} 0",
        "# TYPE bento_rollout_hosts gauge",
    ] {
        assert!(m.contains(line), "{line} missing:\n{m}");
    }
    let seen = m
        .lines()
        .find_map(|l| l.strip_prefix("bento_host_last_seen_timestamp_seconds{host=\"web1\"} "))
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or_else(|| panic!("no last-seen time for web1:\n{m}"));
    let now = OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        (now - 3600..=now + 5).contains(&seen),
        "web1 last seen at {seen}, now {now}"
    );
    let res = panel_common::client().get(p.url("/healthz")).send().await?;
    assert_eq!(res.text().await?, "ok\n");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_of_one_are_singular() -> Result<()> {
    let p = PanelServer::start("panel-fleet")?;
    p.add_host("solo", Some(&system("solo", 1)), Duration::from_secs(60))?;
    let s = p.login().await?;
    s.wait_for_host("solo").await?;
    let page = s.page("/").await?;
    assert!(page.contains(">1 host<"), "{page}");
    assert!(!page.contains("1 hosts"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_pages_keep_the_navigation_of_a_logged_in_user() -> Result<()> {
    let p = PanelServer::start("panel-fleet")?;
    let s = p.login().await?;
    for (path, active) in [
        ("/no-such-page", "/"),
        ("/hosts/nosuchhost", "/"),
        ("/jobs/999", "/jobs"),
        ("/audit/nothing", "/audit"),
    ] {
        let res = s.get(path).await?;
        assert_eq!(res.status(), reqwest::StatusCode::NOT_FOUND, "{path}");
        let body = res.text().await?;
        for link in ["href=\"/jobs\"", "href=\"/audit\"", "Log out"] {
            assert!(body.contains(link), "{path}: no {link} in\n{body}");
        }
        assert!(
            body.contains(&format!("<a href=\"{active}\" class=\"active\">")),
            "{path}: its section is not marked:\n{body}"
        );
    }
    // A wrong form keeps it too.
    let res = s
        .post_raw("/jobs", &[("kind", "build"), ("csrf", "x")])
        .await?;
    assert_eq!(res.status(), reqwest::StatusCode::FORBIDDEN);
    assert!(res.text().await?.contains("Log out"));
    // Without a session: the bare page, nothing about the panel.
    let res = panel_common::client()
        .get(p.url("/no-such-page"))
        .send()
        .await?;
    assert_eq!(res.status(), reqwest::StatusCode::NOT_FOUND);
    let body = res.text().await?;
    assert!(
        !body.contains("Log out") && !body.contains("href=\"/jobs\""),
        "{body}"
    );
    Ok(())
}
