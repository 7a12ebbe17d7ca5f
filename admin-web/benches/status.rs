//! `bento status` over a generated chroot of 10,000 hosts with 20 reports each.
//!
//! Prints the median of several runs for: computing every host's status, rendering
//! the table, the JSON, the real `bento status --json` binary end to end, `find`
//! listing the same files, and a shell loop spawning the original tool's per-host
//! `find | sort | tail` (the lower bound of the original's cost, on a sample of hosts).
//!
//! Run: `cargo bench -p bento --bench status` (env BENTO_BENCH_HOSTS to change the size).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use bento_core::chroot::Chroot;
use bento_core::report::{ReportName, ReportStatus};
use bento_core::status::{fleet_status, StatusOptions};

mod common;
use common::{fleet_size, host_dir, report_meta, time};

const REPORTS_PER_HOST: usize = 20;

fn generate(root: &Path, hosts: usize) {
    let start = OffsetDateTime::now_utc() - time::Duration::days(30);
    let mut states = String::new();
    let old = SystemTime::now() - Duration::from_secs(86400 * 40);
    for i in 0..hosts {
        let host = format!("host{i:05}");
        let logs = host_dir(root, &host, old);
        let system = format!("{:032x}-nixos-system-{host}-24.05", i * 7919);
        states.push_str(&format!("{host}={system}\n"));
        for r in 0..REPORTS_PER_HOST {
            let status = if r % 7 == 3 {
                ReportStatus::Failure
            } else {
                ReportStatus::Success
            };
            let t = start + time::Duration::hours(r as i64 * 30);
            let name = ReportName::new(t, &system, status);
            fs::write(logs.join(name.log_file_name()), b"\x1f\x8b").unwrap();
            if i % 2 == 0 {
                let meta = report_meta(&host, &system, status, t);
                let mut f = fs::File::create(logs.join(name.sidecar_file_name())).unwrap();
                f.write_all(&serde_json::to_vec(&meta).unwrap()).unwrap();
            }
        }
    }
    fs::write(root.join("states.txt"), states).unwrap();
}

use time::OffsetDateTime;

fn bento_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("bento");
    p.is_file().then_some(p)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let hosts = fleet_size();
    let tmp = tempfile::tempdir().unwrap();
    let chroot_dir = tmp.path().join("chroot");
    let t = Instant::now();
    generate(&chroot_dir, hosts);
    eprintln!(
        "generated {hosts} hosts x {REPORTS_PER_HOST} reports in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let chroot = Chroot::new(&chroot_dir);
    let opts = StatusOptions::default();
    // Warm the page cache as any repeated `bento status` would find it.
    let rows = fleet_status(&chroot, &opts).unwrap();
    assert_eq!(rows.len(), hosts);

    let runs = 5;
    let status = time(runs, || fleet_status(&chroot, &opts).unwrap());
    let table = time(runs, || bento::table::render(&rows, SystemTime::now()));
    let json = time(runs, || serde_json::to_vec(&rows).unwrap());
    let find = time(runs, || {
        Command::new("find")
            .arg(&chroot_dir)
            .arg("-type")
            .arg("f")
            .output()
            .unwrap()
    });
    println!("| what ({hosts} hosts, {REPORTS_PER_HOST} reports each) | median of {runs} |");
    println!("|---|---|");
    println!(
        "| status of every host (bento-core) | {:.0} ms |",
        status.as_secs_f64() * 1e3
    );
    println!("| table rendering | {:.0} ms |", table.as_secs_f64() * 1e3);
    println!(
        "| JSON serialization | {:.0} ms |",
        json.as_secs_f64() * 1e3
    );
    if let Some(bin) = bento_binary() {
        let dir = tmp.path().join("bento");
        fs::create_dir_all(dir.join("hosts")).unwrap();
        fs::write(
            dir.join("bento.toml"),
            format!("chroot_dir = {:?}\n", chroot_dir.display().to_string()),
        )
        .unwrap();
        for (label, args) in [
            (
                "`bento status --json` (whole binary)",
                &["status", "--json"][..],
            ),
            (
                "`bento status` table (whole binary)",
                &["status", "--once"][..],
            ),
        ] {
            let d = time(runs, || {
                let o = Command::new(&bin)
                    .args(args)
                    .env("BENTO_DIR", &dir)
                    .output()
                    .unwrap();
                assert!(o.status.success());
            });
            println!("| {label} | {:.0} ms |", d.as_secs_f64() * 1e3);
        }
    }
    println!(
        "| `find -type f` over the same tree | {:.0} ms |",
        find.as_secs_f64() * 1e3
    );

    let sample = hosts.min(200);
    let script = "for i in host*; do find \"$i/logs/\" -type f -cnewer \"$i/last_change_date\" | sort -n >/dev/null; find \"$i/logs/\" -type f | sort -n | tail -n 1 >/dev/null; done";
    let sample_dir = tmp.path().join("sample");
    fs::create_dir_all(&sample_dir).unwrap();
    for i in 0..sample {
        let h = format!("host{i:05}");
        std::os::unix::fs::symlink(chroot_dir.join(&h), sample_dir.join(&h)).unwrap();
    }
    let shell = time(3, || {
        Command::new("sh")
            .args(["-c", script])
            .current_dir(&sample_dir)
            .output()
            .unwrap()
    });
    let per_host = shell.as_secs_f64() / sample as f64;
    println!(
        "| original tool's per-host find/sort/tail processes ({sample} hosts, extrapolated to {hosts}) | {:.0} ms |",
        per_host * hosts as f64 * 1e3
    );
}
