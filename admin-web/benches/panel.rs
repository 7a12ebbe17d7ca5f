//! The web panel with a generated fleet of 10,000 hosts (2 reports each, a heartbeat,
//! tags), a real SQLite file and the real chroot follower.
//!
//! Prints: the first scan of the chroot (statuses + storing 20,000 reports), the
//! fleet page and `/api/v1/hosts` rendered in process (median of several runs), the
//! time to ingest 10,000 new reports landing at once (inotify → database → cache),
//! the delay until one new report shows, and — when `wrk` is installed — latency
//! percentiles at 32 connections on loopback against the same server.
//!
//! Run: `cargo bench -p bento --bench panel` (env BENTO_BENCH_HOSTS to change the size,
//! BENTO_BENCH_KEEP=1 to keep the directory and print a `bento serve` + `wrk` command).

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use bento::web::auth::{random_token, sha256_hex};
use bento::web::fleet::{render, FleetQuery};
use bento::web::views::Nav;
use bento::web::{api, db, Panel, PanelConfig};
use bento_core::report::{AgentState, Heartbeat, ReportMeta, ReportName, ReportStatus};
use flate2::write::GzEncoder;
use time::OffsetDateTime;

mod common;
use common::{fleet_size, host_dir, median, report_meta, time};

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn gz(text: &str) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(text.as_bytes()).unwrap();
    e.finish().unwrap()
}

fn system(i: usize, v: usize) -> String {
    format!("{:032x}-nixos-system-host{i:05}-{v}", i * 7919 + v)
}

/// Writes a report (sidecar first, then the log, as the agent does).
fn report(logs: &Path, host: &str, t: OffsetDateTime, system: &str, status: ReportStatus) {
    let name = ReportName::new(t, system, status);
    let meta = ReportMeta {
        finished: t + time::Duration::seconds(42),
        error: (status == ReportStatus::Failure).then(|| "build failed".into()),
        ..report_meta(host, system, status, t)
    };
    fs::write(
        logs.join(name.sidecar_file_name()),
        serde_json::to_vec(&meta).unwrap(),
    )
    .unwrap();
    fs::write(
        logs.join(name.log_file_name()),
        gz("building the system configuration...\nactivating...\ndone\n"),
    )
    .unwrap();
}

fn generate(bento: &Path, chroot: &Path, hosts: usize) {
    fs::create_dir_all(bento.join("hosts")).unwrap();
    let mut toml = format!("chroot_dir = {:?}\n", chroot.display().to_string());
    let start = OffsetDateTime::now_utc() - time::Duration::days(2);
    let old = SystemTime::now() - Duration::from_secs(86400 * 3);
    let mut states = String::new();
    for i in 0..hosts {
        let host = format!("host{i:05}");
        if i % 10 == 0 {
            toml.push_str(&format!(
                "[hosts.{host}]\ntags = [\"{}\", \"rack{}\"]\n",
                if i % 20 == 0 { "web" } else { "db" },
                i % 7
            ));
        }
        let logs = host_dir(chroot, &host, old);
        let sys = system(i, 1);
        states.push_str(&format!("{host}={sys}\n"));
        report(&logs, &host, start, &sys, ReportStatus::Success);
        let second = if i % 13 == 0 {
            ReportStatus::Failure
        } else {
            ReportStatus::Success
        };
        report(&logs, &host, start + time::Duration::hours(1), &sys, second);
        let hb = Heartbeat {
            format: 1,
            host: host.clone(),
            time: OffsetDateTime::now_utc(),
            revision: Some("r1".into()),
            system: Some(sys.clone()),
            state: AgentState::Idle,
            reboot_required: i % 17 == 0,
            agent_version: "bench".into(),
            interval_secs: Some(if i % 29 == 0 { 1 } else { 3600 }),
        };
        fs::write(
            logs.join("heartbeat.json"),
            serde_json::to_vec(&hb).unwrap(),
        )
        .unwrap();
    }
    fs::write(chroot.join("states.txt"), states).unwrap();
    fs::write(bento.join("bento.toml"), toml).unwrap();
}

fn main() {
    let hosts = fleet_size();
    let dir = tempfile::Builder::new()
        .prefix("bento-bench-panel-")
        .tempdir()
        .unwrap();
    let bento = dir.path().join("bento");
    let chroot = dir.path().join("chroot");
    let t = Instant::now();
    generate(&bento, &chroot, hosts);
    println!(
        "panel bench: {hosts} hosts generated in {:.1} s ({})",
        t.elapsed().as_secs_f64(),
        dir.path().display()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let db_url = format!("sqlite://{}", dir.path().join("panel.sqlite").display());
    let mut config = PanelConfig::new(bento.clone(), db_url.clone());
    config.run_jobs = false;
    config.rescan_interval = Duration::from_secs(3600);

    let t = Instant::now();
    let panel = rt.block_on(Panel::start(config)).unwrap();
    let state = panel.state();
    let first = t.elapsed();
    let stored: i64 = rt
        .block_on(sqlx::query_scalar("SELECT COUNT(*) FROM reports").fetch_one(&state.db))
        .unwrap();
    println!(
        "start (migrations, first scan of {hosts} hosts, {stored} reports stored): {}",
        ms(first)
    );

    let page = FleetQuery::default();
    let big = FleetQuery {
        per: "2000".into(),
        ..FleetQuery::default()
    };
    let search = FleetQuery {
        q: "host0".into(),
        state: "up-to-date".into(),
        sort: "seen".into(),
        ..FleetQuery::default()
    };
    let tag = FleetQuery {
        tag: "web".into(),
        ..FleetQuery::default()
    };
    let html = render(&state, Nav::anonymous(), page.clone()).unwrap();
    println!(
        "fleet page, 100 rows of {hosts} ({} KiB): {}",
        html.len() / 1024,
        ms(time(30, || render(&state, Nav::anonymous(), page.clone())
            .unwrap()))
    );
    println!(
        "fleet page, 2000 rows: {}",
        ms(time(10, || render(&state, Nav::anonymous(), big.clone())
            .unwrap()))
    );
    println!(
        "fleet page, search + state filter + sort: {}",
        ms(time(30, || render(
            &state,
            Nav::anonymous(),
            search.clone()
        )
        .unwrap()))
    );
    println!(
        "fleet page, tag filter: {}",
        ms(time(30, || render(&state, Nav::anonymous(), tag.clone())
            .unwrap()))
    );
    let json = api::hosts_json(&state, &FleetQuery::default()).unwrap();
    println!(
        "/api/v1/hosts, {hosts} hosts ({:.1} MiB): {}",
        json.len() as f64 / 1048576.0,
        ms(time(10, || api::hosts_json(&state, &FleetQuery::default())
            .unwrap()))
    );

    // One report: how long until the panel shows it.
    let mut delays = Vec::new();
    for k in 0..10 {
        let i = k * 37 % hosts;
        let host = format!("host{i:05}");
        let before = state.fleet.get(&host).unwrap();
        let t = Instant::now();
        report(
            &chroot.join(&host).join("logs"),
            &host,
            OffsetDateTime::now_utc() + time::Duration::minutes(k as i64 + 1),
            &system(i, 1),
            ReportStatus::Rollback,
        );
        while state.fleet.get(&host).unwrap() == before {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "report of {host} not seen"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        delays.push(t.elapsed());
    }
    println!(
        "one new report visible in the fleet after (median of 10): {}",
        ms(median(delays))
    );

    // 10,000 reports at once.
    let before = state.fleet.reports_ingested.load(Ordering::Relaxed);
    let t = Instant::now();
    let at = OffsetDateTime::now_utc() + time::Duration::hours(1);
    for i in 0..hosts {
        let host = format!("host{i:05}");
        report(
            &chroot.join(&host).join("logs"),
            &host,
            at,
            &system(i, 1),
            ReportStatus::Success,
        );
    }
    let written = t.elapsed();
    let last_write = Instant::now();
    while state.fleet.reports_ingested.load(Ordering::Relaxed) < before + hosts as u64 {
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "new reports not ingested"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    println!(
        "{hosts} new reports at once (writing them took {:.1} s): all stored and shown {} after the last was written",
        written.as_secs_f64(),
        ms(last_write.elapsed())
    );
    let chroot_ = bento_core::chroot::Chroot::new(&chroot);
    let core = time(3, || {
        bento_core::status::fleet_status(&chroot_, &Default::default()).unwrap()
    });
    let rescan = time(3, || {
        rt.block_on(bento::web::ingest::full_scan(&state)).unwrap()
    });
    println!(
        "full rescan of {hosts} hosts, nothing new (median of 3): {}; core's status of every host alone (as `bento status`): {}",
        ms(rescan),
        ms(core)
    );

    // HTTP under load, if wrk is here.
    let token = random_token();
    rt.block_on(async {
        sqlx::query("INSERT INTO users (name, password_hash, created_at, password_changed_at) VALUES ('bench', 'x', 0, 0)")
            .execute(&state.db)
            .await
            .unwrap();
        sqlx::query("INSERT INTO sessions (token_hash, user_id, csrf, created_at, last_seen, source, user_agent) VALUES (?, 1, 'c', ?, ?, 'bench', 'bench')")
            .bind(sha256_hex(&token))
            .bind(db::now_ms())
            .bind(db::now_ms())
            .execute(&state.db)
            .await
            .unwrap();
    });
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(panel.serve(listener, async move {
        let _ = stop_rx.await;
    }));
    let wrk = Command::new("wrk").arg("--version").output().is_ok();
    if wrk {
        for path in ["/", "/api/v1/hosts?per=100&q=host00", "/api/v1/hosts"] {
            let out = Command::new("wrk")
                .args(["-t2", "-c32", "-d5s", "--latency", "-H"])
                .arg(format!("Cookie: bento_session={token}"))
                .arg(format!("http://{addr}{path}"))
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let keep: Vec<&str> = text
                .lines()
                .filter(|l| {
                    let l = l.trim_start();
                    l.starts_with("50%")
                        || l.starts_with("90%")
                        || l.starts_with("99%")
                        || l.starts_with("Requests/sec")
                        || l.contains("Non-2xx")
                })
                .map(str::trim)
                .collect();
            println!("wrk -t2 -c32 -d5s {path}: {}", keep.join(" | "));
        }
    } else {
        println!("wrk not installed: no HTTP latency figures");
    }
    let _ = stop_tx.send(());
    let _ = rt.block_on(server);
    let t = Instant::now();
    let mut config = PanelConfig::new(bento.clone(), db_url.clone());
    config.run_jobs = false;
    let again = rt.block_on(Panel::start(config)).unwrap();
    println!(
        "restart on the same database (nothing new to store): {}",
        ms(t.elapsed())
    );
    again.stop();
    if std::env::var_os("BENTO_BENCH_KEEP").is_some() {
        let kept = dir.keep();
        println!(
            "kept {}; against the real binary:\n  bento -C {} serve --listen 127.0.0.1:8099 --database {}\n  \
             wrk -t2 -c32 -d10s --latency -H 'Cookie: bento_session={token}' http://127.0.0.1:8099/",
            kept.display(),
            kept.join("bento").display(),
            kept.join("panel.sqlite").display()
        );
    }
}
