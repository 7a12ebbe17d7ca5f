//! A rollout of 10,000 hosts, simulated on a real chroot: how long after the
//! report that decides a wave the next wave is published (or the rollout ends).
//!
//! ```sh
//! cargo bench -p bento-tests --bench rollout_scale             # 10,000 hosts
//! cargo bench -p bento-tests --bench rollout_scale -- --quick  # 1,000
//! ```
//!
//! The hosts are chroot directories as `bento deploy` leaves them
//! (`.releases/current`, `last_change_date`, `states.txt`). The rollout runs
//! through `bento_core::rollout::driver`, the code `bento deploy --wait` and the
//! panel drive waves with (`waves = ["1%", "25%", "rest"]`, looking at the
//! chroot every 250 ms as they do). Publishing a wave writes each host's new
//! release pointer; a generator thread then writes each host's success report
//! (sidecar and log, the agent's format) and notes when it wrote the wave's
//! last one: the deciding report. The figure is the time from that write to the
//! driver's decision. Goal: under 1 s.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use bento_core::chroot::Chroot;
use bento_core::report::ReportStatus;
use bento_core::rollout::driver::{self, DriveOptions, Follower, Outcome, Published, Start};
use bento_core::rollout::{self, HostProgress, RolloutSettings, Wave};
use bento_core::HostName;
use bento_tests::reports::{toy_system, Report};
use bento_tests::TestDir;

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let n: usize = std::env::var("ROLLOUT_BENCH_HOSTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 1_000 } else { 10_000 });
    let dir = TestDir::new("bench-rollout")?;
    let root = dir.path().join("chroot");
    let chroot = Chroot::new(&root);
    let started = Instant::now();
    let hosts: Vec<HostName> = (0..n)
        .map(|i| HostName::new(&format!("h{i:05}")))
        .collect::<Result<_, _>>()?;
    let mut states = String::new();
    for h in &hosts {
        release(&root, h.as_str(), "r1")?;
        states.push_str(&format!("{h}={}\n", toy_system(h.as_str(), 1)));
    }
    fs::write(root.join("states.txt"), &states)?;
    eprintln!(
        "rollout_scale: {n} hosts made in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let settings: RolloutSettings = toml::from_str("waves = [\"1%\", \"25%\", \"rest\"]\n")?;
    let fleet: Vec<(HostName, Vec<String>)> =
        hosts.iter().map(|h| (h.clone(), Vec::new())).collect();
    let waves = rollout::plan(&fleet, &settings)?;

    // The generator: writes the success reports of each published wave.
    let (to_gen, wave_rx) = mpsc::channel::<(usize, Vec<HostName>)>();
    let (done_tx, done_rx) = mpsc::channel::<(usize, Instant, Duration)>();
    let gen_root = root.clone();
    let generator = std::thread::spawn(move || -> Result<()> {
        for (index, hosts) in wave_rx {
            let t = Instant::now();
            for h in &hosts {
                let system = toy_system(h.as_str(), 2);
                Report {
                    log: "activated\n",
                    ..Report::agent(h.as_str(), &system, ReportStatus::Success, "r2")
                }
                .write(&gen_root.join(h.as_str()).join("logs"))?;
            }
            done_tx.send((index, Instant::now(), t.elapsed()))?;
        }
        Ok(())
    });

    struct Bench {
        to_gen: mpsc::Sender<(usize, Vec<HostName>)>,
        decided: Vec<(usize, Instant)>,
    }
    impl Follower for Bench {
        fn publishing(&mut self, index: usize, _wave: &Wave) -> Result<(), String> {
            if index > 0 {
                self.decided.push((index - 1, Instant::now()));
            }
            Ok(())
        }
        fn published(&mut self, index: usize, hosts: &[Published]) -> Result<(), String> {
            let names = hosts.iter().map(|p| p.host.clone()).collect();
            self.to_gen.send((index, names)).map_err(|e| e.to_string())
        }
        fn progress(&mut self, _index: usize, _p: &HostProgress) -> Result<(), String> {
            Ok(())
        }
        fn abort_requested(&mut self) -> bool {
            false
        }
    }
    let mut follower = Bench {
        to_gen,
        decided: Vec::new(),
    };
    let mut publish = |w: &Wave| -> Result<Vec<Published>, String> {
        publish_wave(&root, w).map_err(|e| format!("{e:#}"))
    };
    let opts = DriveOptions {
        poll_interval: Duration::from_secs(300),
        offline_after_polls: 3,
        deadline: None,
        look_every: Duration::from_millis(250),
    };
    let mut results = BTreeMap::new();
    let plan = driver::Plan {
        chroot: &chroot,
        waves: &waves,
        settings: &settings,
    };
    let outcome = driver::drive(
        plan,
        &opts,
        Start::default(),
        &mut publish,
        &mut follower,
        &mut results,
    )
    .map_err(anyhow::Error::msg)?;
    follower.decided.push((waves.len() - 1, Instant::now()));
    anyhow::ensure!(
        outcome == Outcome::Finished,
        "the rollout ended {outcome:?}"
    );
    anyhow::ensure!(
        results.len() == n && results.values().all(|p| p.phase == rollout::Phase::Success),
        "not every host succeeded"
    );
    let decided = std::mem::take(&mut follower.decided);
    drop(follower);
    generator.join().expect("generator")?;
    let written: BTreeMap<usize, (Instant, Duration)> = done_rx
        .try_iter()
        .map(|(i, at, took)| (i, (at, took)))
        .collect();

    println!();
    println!(
        "| {n} hosts, waves 1% / 25% / rest | hosts | reports written in | decision after the deciding report |"
    );
    println!("|---|---|---|---|");
    let mut worst = Duration::ZERO;
    for (i, at) in decided {
        let (last, took) = written
            .get(&i)
            .with_context(|| format!("no reports were written for wave {}", i + 1))?;
        let after = at.saturating_duration_since(*last);
        worst = worst.max(after);
        println!(
            "| wave {} ({}) | {} | {:.2} s | {} ms |",
            i + 1,
            waves[i].entry,
            waves[i].hosts.len(),
            took.as_secs_f64(),
            after.as_millis()
        );
    }
    println!();
    println!(
        "slowest decision: {} ms after its deciding report (goal < 1000 ms); whole rollout {:.1} s",
        worst.as_millis(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A host's chroot as `bento deploy` leaves it, release `rev` current.
fn release(root: &Path, host: &str, rev: &str) -> Result<()> {
    let hd = root.join(host);
    fs::create_dir_all(hd.join("logs"))?;
    fs::create_dir_all(hd.join(".releases").join(rev))?;
    let link = hd.join(".releases/.current-new");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(rev, &link)?;
    fs::rename(&link, hd.join(".releases/current"))?;
    fs::write(hd.join("last_change_date"), format!("{rev}\n"))?;
    Ok(())
}

/// Publishes release `r2` to the wave's hosts (and its expected systems in
/// `states.txt`), as a deploy of the wave would.
fn publish_wave(root: &Path, w: &Wave) -> Result<Vec<Published>> {
    let states_path = root.join("states.txt");
    let mut states = bento_core::chroot::parse_states(&fs::read_to_string(&states_path)?);
    let mut out = Vec::new();
    for h in &w.hosts {
        release(root, h.as_str(), "r2")?;
        states.insert(h.to_string(), toy_system(h.as_str(), 2));
        let at: SystemTime =
            fs::metadata(root.join(h.as_str()).join("last_change_date"))?.modified()?;
        out.push(Published {
            host: h.clone(),
            revision: "r2".into(),
            at,
            previous: Some("r1".into()),
        });
    }
    let text: String = states.iter().map(|(h, s)| format!("{h}={s}\n")).collect();
    fs::write(&states_path, text)?;
    Ok(out)
}
