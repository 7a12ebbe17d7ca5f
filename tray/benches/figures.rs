//! Prints the tray's figures: resident memory when idle, and the time from an
//! agent event to the notification arriving on the bus.
//!
//! `cargo bench -p bento-tray --bench figures` (release build of the real binary,
//! private D-Bus, test watcher, notification server and agent from tests/common).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use bento_core::agent_proto::Event;
use bento_core::report::ReportStatus;
use common::*;

const EVENTS: usize = 200;

fn rss_kib(pid: u32) -> (u64, u64, u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (
        field("VmRSS:"),
        field("RssAnon:"),
        field("RssFile:"),
        field("VmHWM:"),
    )
}

fn main() {
    // `cargo bench` passes "--bench"; nothing to filter here.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(dir.path()).await;
    let (_watcher, _) = serve_watcher(&bus).await;
    let notes = NoteServer::serve(&bus, true).await;
    let socket = dir.path().join("agent.sock");
    let agent = Agent::start(&socket, status());
    let tray = Tray::start_with(&bus, dir.path(), &socket, &[("BENTO_TRAY_LOG", "warn")]);
    let conn = bus.connect().await;
    wait_title(&conn, &tray, "Your computer is up to date").await;
    agent.wait_subscribers(1).await;

    // Idle means idle: let start-up allocations settle before reading.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss, anon, file, _) = rss_kib(tray.pid);
    println!(
        "idle RSS after start:        {:>6} KiB  (anon {anon} KiB, file-backed {file} KiB)",
        rss
    );

    let mut latencies = Vec::with_capacity(EVENTS);
    for i in 0..EVENTS {
        let rev = format!("{:020x}", i + 1);
        let rec = record(
            EVENTS as i64 - i as i64,
            ReportStatus::Success,
            &rev,
            None,
            Some(i as u32),
        );
        let sent = Instant::now();
        agent.send(Event::UpdateFinished { record: rec });
        let n = notes.wait_count(i + 1).await;
        latencies.push(n[i].at - sent);
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    println!(
        "event -> notification on the bus over {EVENTS} events: min {:.2} ms, median {:.2} ms, p95 {:.2} ms, max {:.2} ms",
        ms(latencies[0]),
        ms(pct(0.5)),
        ms(pct(0.95)),
        ms(latencies[latencies.len() - 1]),
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss, anon, file, hwm) = rss_kib(tray.pid);
    println!("idle RSS after {EVENTS} events:  {:>6} KiB  (anon {anon} KiB, file-backed {file} KiB; peak {hwm} KiB)", rss);
    tray.stop().await;
}
