//! How soon after a publication a host starts the update: watching daemons
//! against a poll-only one, with the real parts side by side in one run.
//!
//! ```sh
//! cargo build --release -p bento -p bento-agent
//! cargo bench -p bento-tests --bench pickup_latency            # as root
//! cargo bench -p bento-tests --bench pickup_latency -- --quick # 3 samples
//! ```
//!
//! Three toy flake hosts served by a real `bento sftp` on loopback, each followed by
//! a real `bento-agent daemon` (jitter 0):
//!
//! - `watch_interval = 1`: the daemon's watch reads `.releases/current` every second;
//! - `watch_interval = 5` (the default);
//! - `watch_interval = 0`, `interval = PICKUP_BENCH_POLL_SECS` (20): poll-only, a
//!   full poll every 20 s and nothing in between. Its latency is bound by the
//!   interval (uniform over it): that is the point of the comparison.
//!
//! A sample: a new system version for every host, published by one real `bento
//! deploy`, then each host's latency from its publication time (the mtime of its
//! `last_change_date`) to the start of its update (the `started` time of the report
//! that applied the new revision: the moment the agent began applying it, after the
//! watch saw the revision and the full poll reconnected; the toy's
//! `switch-to-configuration` comes a little later and records whole seconds only).
//! Before each deploy the bench waits a random 0–`interval` s, so publications
//! land at any point of the poll-only daemon's cycle (its next poll is `interval`
//! after its last one ended); that wait is not synchronization, every sample then
//! waits for the reports. `PICKUP_BENCH_SAMPLES` (10; 3 with `--quick`) samples per
//! mode; p99 is nearest-rank, so with few samples it is the maximum.

#[path = "../tests/agent_common/mod.rs"]
mod agent_common;

use std::fs;
use std::process::Child;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agent_common::{Agent, Fleet, AGENT_TIMEOUT};
use anyhow::{ensure, Context, Result};
use bento_core::agent_proto::Activity;
use bento_tests::embedded::EmbeddedSftp;
use bento_tests::wait_for;

/// One agent mode: its table label and its settings beyond the fixture's.
struct Mode {
    label: String,
    watch_interval: u64,
    interval: u64,
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let samples = env_u64("PICKUP_BENCH_SAMPLES", if quick { 3 } else { 10 })?;
    let poll_secs = env_u64("PICKUP_BENCH_POLL_SECS", 20)?;
    ensure!(
        samples > 0 && poll_secs > 0,
        "samples and poll interval must be at least 1"
    );
    let modes = [
        Mode {
            label: "watching, watch_interval = 1".into(),
            watch_interval: 1,
            interval: 3600,
        },
        Mode {
            label: "watching, watch_interval = 5 (default)".into(),
            watch_interval: 5,
            interval: 3600,
        },
        Mode {
            label: format!("poll-only, watch_interval = 0, interval = {poll_secs}"),
            watch_interval: 0,
            interval: poll_secs,
        },
    ];
    eprintln!("pickup_latency: {samples} samples, poll-only interval {poll_secs} s");

    let fleet = Fleet::embedded("bench-pickup", &["w1", "w5", "poll"], "", "")?;
    for h in &fleet.hosts {
        fleet.toy.set_system_version(h, "0")?;
    }
    fleet.deploy()?;
    let mut agents = Vec::new();
    for (h, m) in fleet.hosts.iter().zip(&modes) {
        let a = fleet.agent(h)?;
        a.set_config(&format!("watch_interval = {}", m.watch_interval))?;
        // The fixture's `interval = 3600` is replaced, not repeated (TOML refuses
        // a key twice).
        let text = fs::read_to_string(&a.config)?;
        ensure!(text.contains("\ninterval = 3600\n"), "the fixture changed");
        fs::write(
            &a.config,
            text.replace(
                "\ninterval = 3600\n",
                &format!("\ninterval = {}\n", m.interval),
            ),
        )?;
        agents.push(a);
    }
    let mut daemons = Daemons(Vec::new());
    for a in &agents {
        daemons.0.push(a.spawn(&["daemon"], "daemon")?);
    }
    for (a, h) in agents.iter().zip(&fleet.hosts) {
        let rev = fleet.published(h)?;
        wait_idle_on(a, &rev)?;
    }

    let mut rng = seed();
    let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    for i in 1..=samples {
        let wait = Duration::from_millis(next(&mut rng) % (poll_secs * 1000));
        eprintln!(
            "sample {i}/{samples}: publishing in {:.1} s…",
            wait.as_secs_f64()
        );
        std::thread::sleep(wait);
        for h in &fleet.hosts {
            fleet.toy.set_system_version(h, &i.to_string())?;
        }
        fleet.deploy()?;
        for (k, (a, h)) in agents.iter().zip(&fleet.hosts).enumerate() {
            let rev = fleet.published(h)?;
            let published = time::OffsetDateTime::from(publication_time(&fleet, h)?);
            let (_, meta) = wait_for(AGENT_TIMEOUT, || {
                daemons.check().ok()?;
                fleet.report_for(h, &rev).ok()
            })
            .with_context(|| {
                format!(
                    "{h}: no report of {rev} within {AGENT_TIMEOUT:?}:\n{}",
                    a.spawned_log("daemon")
                )
            })?;
            daemons.check()?;
            ensure!(
                meta.status == bento_core::report::ReportStatus::Success,
                "{h}: the update of {rev} did not succeed: {meta:?}"
            );
            let latency = (meta.started - published).as_seconds_f64();
            eprintln!("  {}: {latency:.3} s", modes[k].label);
            latencies[k].push(latency);
            // The next publication finds the daemon idle on this revision.
            wait_idle_on(a, &rev)?;
        }
    }
    drop(daemons);

    println!();
    println!(
        "publication (`last_change_date` mtime) → update started (the report's `started`), \
         `bento-agent daemon` over `bento sftp` on loopback, jitter 0"
    );
    println!();
    println!("| agent mode | samples | median | p99 | max |");
    println!("|---|---|---|---|---|");
    for (m, l) in modes.iter().zip(&latencies) {
        let mut v = l.clone();
        v.sort_by(f64::total_cmp);
        println!(
            "| {} | {} | {:.2} s | {:.2} s | {:.2} s |",
            m.label,
            v.len(),
            median(&v),
            nearest_rank(&v, 0.99),
            v.last().copied().unwrap_or(0.0)
        );
    }
    println!();
    println!(
        "binaries: {} / {}",
        bento_tests::bins::bin("bento").display(),
        bento_tests::bins::bin("bento-agent").display()
    );
    Ok(())
}

/// Waits until the agent's status says it is idle on `rev`.
fn wait_idle_on(a: &Agent, rev: &str) -> Result<()> {
    a.wait_status(AGENT_TIMEOUT, |s| {
        s.revision.as_deref() == Some(rev) && s.activity == Activity::Idle
    })
    .map(|_| ())
    .with_context(|| {
        format!(
            "{}: not idle on {rev} within {AGENT_TIMEOUT:?}:\n{}",
            a.host,
            a.spawned_log("daemon")
        )
    })
}

fn publication_time(fleet: &Fleet<EmbeddedSftp>, host: &str) -> Result<SystemTime> {
    Ok(fs::metadata(fleet.host_chroot(host).join("last_change_date"))?.modified()?)
}

/// The daemons, killed and reaped when dropped.
struct Daemons(Vec<Child>);

impl Daemons {
    /// Fails when a daemon has exited.
    fn check(&mut self) -> Result<()> {
        for d in &mut self.0 {
            if let Some(s) = d.try_wait()? {
                anyhow::bail!("a daemon exited ({s})");
            }
        }
        Ok(())
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for d in &mut self.0 {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

fn seed() -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    (t ^ u64::from(std::process::id())) | 1
}

/// xorshift64: enough to spread publications over the poll cycle.
fn next(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The smallest sample with at least `q` of the samples at or below it.
fn nearest_rank(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn env_u64(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}
