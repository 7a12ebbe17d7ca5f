//! Report rotation at ingestion: when a host's new report lands in `logs/`, the
//! oldest reports past `[sftp] keep_reports` are removed (log and sidecar), so a
//! legitimate host never reaches the caps of its `logs/`.
//!
//! Never removed: `heartbeat.json`, uploads in progress, the newest report, and
//! any report received since the current publication (status reads those).
//! Everything goes through the host's [`Jail`], so the byte quota stays exact.

use std::time::{Duration, SystemTime};

use bento_core::chroot::LAST_CHANGE_FILE;
use bento_core::jail::{FileStat, Jail, VPath};
use bento_core::report::{received_after, ReportName};

fn time_of(secs: i64, nsec: i64) -> SystemTime {
    if secs < 0 {
        return SystemTime::UNIX_EPOCH;
    }
    SystemTime::UNIX_EPOCH + Duration::new(secs as u64, nsec.clamp(0, 999_999_999) as u32)
}

/// When the server received the file, as status reads it (`report::received_precise`).
fn received(st: &FileStat) -> SystemTime {
    time_of(st.st_mtime, st.st_mtime_nsec).min(time_of(st.st_ctime, st.st_ctime_nsec))
}

/// Whether `name` is a finished report's log or sidecar, the uploads that
/// trigger a rotation.
pub fn is_report_file(name: &str) -> bool {
    ReportName::parse(name).is_ok()
        || name
            .strip_suffix(".json")
            .is_some_and(|stem| ReportName::parse(&format!("{stem}.log.gz")).is_ok())
}

/// Removes the oldest reports of the host past `keep`; returns the logs removed.
pub fn rotate(jail: &Jail, keep: usize) -> Vec<String> {
    let Ok(logs) = VPath::parse("/logs/") else {
        return Vec::new();
    };
    let Ok(entries) = jail.read_dir(&logs) else {
        return Vec::new();
    };
    let mut reports: Vec<(ReportName, SystemTime, String)> = Vec::new();
    let mut sidecars = std::collections::HashSet::new();
    for e in entries {
        if e.stat.st_mode & libc::S_IFMT != libc::S_IFREG {
            continue;
        }
        if e.name.ends_with(".json") {
            sidecars.insert(e.name);
            continue;
        }
        if let Ok(n) = ReportName::parse(&e.name) {
            reports.push((n, received(&e.stat), e.name));
        }
    }
    if reports.len() <= keep {
        return Vec::new();
    }
    // The order of `bento status` (LogsScan::sorted): name time, then server time.
    reports.sort_by(|a, b| (a.0.time, a.1).cmp(&(b.0.time, b.1)).then(a.2.cmp(&b.2)));
    let published = VPath::parse(LAST_CHANGE_FILE)
        .ok()
        .and_then(|p| jail.lstat(&p).ok())
        .map(|st| time_of(st.st_mtime, st.st_mtime_nsec));
    let excess = reports.len() - keep.max(1);
    let mut removed = Vec::new();
    for (name, at, file) in reports.into_iter().take(excess) {
        if published.is_some_and(|p| received_after(at, p)) {
            continue;
        }
        let sidecar = name.sidecar_file_name();
        if sidecars.contains(&sidecar) {
            if let Ok(p) = VPath::parse(&format!("/logs/{sidecar}")) {
                let _ = jail.remove_log(&p);
            }
        }
        if let Ok(p) = VPath::parse(&format!("/logs/{file}")) {
            if jail.remove_log(&p).is_ok() {
                removed.push(file);
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_files_are_told_from_the_rest() {
        assert!(is_report_file(
            "20240101-1200_abc-nixos-system-x_success.log.gz"
        ));
        assert!(is_report_file(
            "20240101-1200_abc-nixos-system-x_success.json"
        ));
        assert!(!is_report_file("heartbeat.json"));
        assert!(!is_report_file(".20240101-1200_x_success.log.gz.tmp"));
    }
}
