//! Writes reports and heartbeats in the real on-disk format (core's types), for
//! tests of status, the panel and the tray that need a given fleet state.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use anyhow::Result;
use bento_core::report::{
    AgentState, BootFiles, Heartbeat, ReportMeta, ReportName, ReportStatus, HEARTBEAT_FILE,
};
use flate2::write::GzEncoder;
use time::OffsetDateTime;

/// A report to write into a host's `logs/`.
pub struct Report<'a> {
    pub host: &'a str,
    pub time: OffsetDateTime,
    pub system: &'a str,
    pub status: ReportStatus,
    /// Written as the gzipped log.
    pub log: &'a str,
    /// `None`: a report of the original shell client (no sidecar).
    pub revision: Option<Option<&'a str>>,
    pub reboot_required: bool,
    pub error: Option<&'a str>,
}

impl<'a> Report<'a> {
    /// A legacy (sidecar-less) report.
    pub fn legacy(host: &'a str, system: &'a str, status: ReportStatus) -> Self {
        Report {
            host,
            time: OffsetDateTime::now_utc(),
            system,
            status,
            log: "build log\n",
            revision: None,
            reboot_required: false,
            error: None,
        }
    }

    /// A report of the new agent for `revision`.
    pub fn agent(host: &'a str, system: &'a str, status: ReportStatus, revision: &'a str) -> Self {
        Report {
            revision: Some(Some(revision)),
            ..Report::legacy(host, system, status)
        }
    }

    /// Writes the log (and sidecar) into `logs_dir`; returns the log's file name.
    pub fn write(&self, logs_dir: &Path) -> Result<String> {
        fs::create_dir_all(logs_dir)?;
        let name = ReportName::new(self.time, self.system, self.status);
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(self.log.as_bytes())?;
        // Sidecar first: the server reads a report when its log appears.
        if let Some(revision) = self.revision {
            let meta = ReportMeta {
                format: ReportMeta::FORMAT,
                host: self.host.to_owned(),
                status: self.status,
                revision: revision.map(str::to_owned),
                system: Some(self.system.to_owned()),
                previous_system: None,
                booted: BootFiles::default(),
                built: BootFiles::default(),
                reboot_required: self.reboot_required,
                started: self.time,
                finished: self.time,
                agent_version: "test".into(),
                error: self.error.map(str::to_owned),
                changed_packages: None,
                obtained: None,
                exact: None,
                secrets: None,
            };
            fs::write(
                logs_dir.join(name.sidecar_file_name()),
                serde_json::to_vec(&meta)?,
            )?;
        }
        fs::write(logs_dir.join(name.log_file_name()), gz.finish()?)?;
        Ok(name.log_file_name())
    }
}

/// Writes `logs/heartbeat.json` of an agent polling every minute.
pub fn write_heartbeat(
    logs_dir: &Path,
    host: &str,
    system: Option<&str>,
    revision: Option<&str>,
    state: AgentState,
    reboot_required: bool,
) -> Result<()> {
    write_heartbeat_every(logs_dir, host, system, revision, state, reboot_required, 60)
}

/// Writes `logs/heartbeat.json` of an agent polling every `interval_secs`
/// (the server counts missed polls from it to tell a host offline).
pub fn write_heartbeat_every(
    logs_dir: &Path,
    host: &str,
    system: Option<&str>,
    revision: Option<&str>,
    state: AgentState,
    reboot_required: bool,
    interval_secs: u64,
) -> Result<()> {
    fs::create_dir_all(logs_dir)?;
    let hb = Heartbeat {
        format: 1,
        host: host.to_owned(),
        time: OffsetDateTime::now_utc(),
        revision: revision.map(str::to_owned),
        system: system.map(str::to_owned),
        state,
        reboot_required,
        agent_version: "test".into(),
        interval_secs: Some(interval_secs),
    };
    // Renamed into place, as the agent uploads it: never read half written.
    let tmp = logs_dir.join(format!(".{HEARTBEAT_FILE}.tmp"));
    fs::write(&tmp, serde_json::to_vec(&hb)?)?;
    fs::rename(&tmp, logs_dir.join(HEARTBEAT_FILE))?;
    Ok(())
}

/// Sets a file's modification time: to place a publication before or after reports
/// (the server compares a report's receive time, its mtime capped by its ctime, with
/// `last_change_date`'s mtime, to the second), or to forge a time as a host can over
/// OpenSSH.
pub fn set_mtime(path: &Path, t: SystemTime) -> Result<()> {
    fs::File::options()
        .write(true)
        .open(path)?
        .set_modified(t)?;
    Ok(())
}

/// A store path basename for a made-up system of `host`, version `v` (a
/// 32-character hash, as nix's).
pub fn toy_system(host: &str, v: u32) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (host, v).hash(&mut h);
    let a = h.finish();
    format!(
        "{a:016x}{:016x}-nixos-system-{host}-{v}",
        a.rotate_left(17) ^ 0x5bd1_e995
    )
}
