//! What the admin-web benches share: timing, the fleet's size, and the host
//! directories and reports of the generated chroot.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use bento_core::report::{ReportMeta, ReportStatus};
use time::OffsetDateTime;

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The median time of `runs` calls of `f` (its result kept from being optimised away).
pub fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(f());
                t.elapsed()
            })
            .collect(),
    )
}

/// How many hosts to generate: env BENTO_BENCH_HOSTS, else 10,000.
pub fn fleet_size() -> usize {
    std::env::var("BENTO_BENCH_HOSTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// Creates the directory of `host` in `chroot` as a deployment leaves it: release
/// r1 current, `last_change_date` naming it and last changed at `changed`, and an
/// empty `logs/`, which it returns.
pub fn host_dir(chroot: &Path, host: &str, changed: SystemTime) -> PathBuf {
    let hd = chroot.join(host);
    let logs = hd.join("logs");
    fs::create_dir_all(&logs).unwrap();
    fs::create_dir_all(hd.join(".releases/r1")).unwrap();
    std::os::unix::fs::symlink("r1", hd.join(".releases/current")).unwrap();
    fs::write(hd.join("last_change_date"), "r1\n").unwrap();
    fs::File::options()
        .write(true)
        .open(hd.join("last_change_date"))
        .unwrap()
        .set_modified(changed)
        .unwrap();
    logs
}

/// The sidecar of a report of `host` that the agent started at `started` and
/// finished at once: release r1 built as `system`, no error. Benches change the
/// fields they care about with `..report_meta(…)`.
pub fn report_meta(
    host: &str,
    system: &str,
    status: ReportStatus,
    started: OffsetDateTime,
) -> ReportMeta {
    ReportMeta {
        format: 1,
        host: host.into(),
        status,
        revision: Some("r1".into()),
        system: Some(system.into()),
        previous_system: None,
        booted: Default::default(),
        built: Default::default(),
        reboot_required: false,
        started,
        finished: started,
        agent_version: "bench".into(),
        error: None,
        changed_packages: None,
        obtained: None,
        exact: None,
        secrets: None,
    }
}
