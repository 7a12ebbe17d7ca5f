//! Reports uploaded by agents into `logs/`: the original tool's gzipped log, named
//! `<YYYYmmdd-HHMM>_<system basename>_<status>.log.gz`, a JSON sidecar with the
//! same stem, and `heartbeat.json`.

use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use time::{OffsetDateTime, PrimitiveDateTime};

/// File name of the heartbeat in a host's `logs/`.
pub const HEARTBEAT_FILE: &str = "heartbeat.json";
/// Largest sidecar or heartbeat the server reads; a compromised host may upload anything.
pub const MAX_JSON_BYTES: u64 = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportStatus {
    Success,
    Failure,
    Rollback,
    Autoupdate,
}

impl ReportStatus {
    pub const ALL: [ReportStatus; 4] = [
        ReportStatus::Success,
        ReportStatus::Failure,
        ReportStatus::Rollback,
        ReportStatus::Autoupdate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReportStatus::Success => "success",
            ReportStatus::Failure => "failure",
            ReportStatus::Rollback => "rollback",
            ReportStatus::Autoupdate => "autoupdate",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        ReportStatus::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

impl fmt::Display for ReportStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The parsed name of a report log. The time is the *client's* local clock: it
/// orders a host's reports but is never compared with server times.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReportName {
    pub time: PrimitiveDateTime,
    pub system: String,
    pub status: ReportStatus,
}

const NAME_TIME: &[time::format_description::FormatItem<'static>] =
    time::macros::format_description!("[year][month][day]-[hour][minute]");

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportNameError {
    #[error("not a report log (does not end in .log.gz)")]
    NotALog,
    #[error("malformed report name: expected <YYYYmmdd-HHMM>_<system>_<status>.log.gz")]
    Shape,
    #[error("malformed report time {0:?}")]
    Time(String),
    #[error("unknown report status {0:?}")]
    Status(String),
    #[error("malformed system name {0:?}")]
    System(String),
}

impl ReportName {
    pub fn new(time: OffsetDateTime, system: &str, status: ReportStatus) -> Self {
        ReportName {
            time: PrimitiveDateTime::new(time.date(), time.time()),
            system: system.to_owned(),
            status,
        }
    }

    /// Parses a file name. The system basename may itself contain `_`, so the time
    /// is what precedes the first `_` and the status what follows the last.
    pub fn parse(file_name: &str) -> Result<Self, ReportNameError> {
        let stem = file_name
            .strip_suffix(".log.gz")
            .ok_or(ReportNameError::NotALog)?;
        let (time, rest) = stem.split_once('_').ok_or(ReportNameError::Shape)?;
        let (system, status) = rest.rsplit_once('_').ok_or(ReportNameError::Shape)?;
        let time = PrimitiveDateTime::parse(time, NAME_TIME)
            .map_err(|_| ReportNameError::Time(time.to_owned()))?;
        let status =
            ReportStatus::parse(status).ok_or_else(|| ReportNameError::Status(status.into()))?;
        if system.is_empty()
            || system.len() > 255
            || !system
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.+=?".contains(&b))
        {
            return Err(ReportNameError::System(system.chars().take(80).collect()));
        }
        Ok(ReportName {
            time,
            system: system.to_owned(),
            status,
        })
    }

    /// `<YYYYmmdd-HHMM>_<system>_<status>` without extension.
    pub fn stem(&self) -> String {
        format!(
            "{}_{}_{}",
            self.time.format(NAME_TIME).expect("fixed format"),
            self.system,
            self.status
        )
    }

    pub fn log_file_name(&self) -> String {
        format!("{}.log.gz", self.stem())
    }

    pub fn sidecar_file_name(&self) -> String {
        format!("{}.json", self.stem())
    }

    /// The first 8 characters of the system's store hash, as the original table shows.
    pub fn short_system(&self) -> &str {
        short_hash(&self.system)
    }
}

/// First 8 characters of a store path basename (its hash part).
pub fn short_hash(system: &str) -> &str {
    let end = system
        .char_indices()
        .nth(8)
        .map(|(i, _)| i)
        .unwrap_or(system.len());
    &system[..end]
}

/// Kernel, initrd and modules of a system, to tell whether a reboot is needed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct BootFiles {
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub kernel_modules: Option<String>,
}

/// The JSON sidecar of a report (`<stem>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportMeta {
    pub format: u32,
    pub host: String,
    pub status: ReportStatus,
    /// Revision of the release this report applied; `None` for self-updates of an
    /// unknown release.
    pub revision: Option<String>,
    /// Store path basename of the system running after this update.
    pub system: Option<String>,
    pub previous_system: Option<String>,
    #[serde(default)]
    pub booted: BootFiles,
    #[serde(default)]
    pub built: BootFiles,
    #[serde(default)]
    pub reboot_required: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub started: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub finished: OffsetDateTime,
    pub agent_version: String,
    /// One-line reason for a failure or rollback.
    pub error: Option<String>,
    /// Number of store paths that changed, when the agent computed it.
    #[serde(default)]
    pub changed_packages: Option<u32>,
    /// How the system was obtained: the server's closure fetched, or built here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub obtained: Option<Obtained>,
    /// Whether the running system is exactly the one the server built (`None` when
    /// the release names none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<bool>,
    /// The secrets this update installed: names and ciphertext hashes, never a
    /// value (`None` when the release carried none to install).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Vec<ReportedSecret>>,
}

/// A secret as a report names it: what the admin can compare with `bento
/// secret list`, nothing that reveals the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedSecret {
    pub name: String,
    /// sha256 of the age ciphertext the agent decrypted.
    pub sha256: String,
}

/// How an agent got the system it activated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Obtained {
    /// The server's closure, from the host's cache: `paths` store paths were
    /// missing and fetched (`bytes` on the wire, in `millis` with the import).
    Fetched { paths: u64, bytes: u64, millis: u64 },
    /// Evaluated and built on the host.
    Built { millis: u64 },
}

impl Obtained {
    /// One line for tables and logs: "fetched 3 paths (1.2 MiB, 0.4 s)", "built here (12 s)".
    pub fn summary(&self) -> String {
        match self {
            Obtained::Fetched {
                paths,
                bytes,
                millis,
            } => format!(
                "fetched {paths} path{} ({}, {:.1} s)",
                if *paths == 1 { "" } else { "s" },
                human_bytes(*bytes),
                *millis as f64 / 1000.0
            ),
            Obtained::Built { millis } => {
                format!("built on the host ({:.1} s)", *millis as f64 / 1000.0)
            }
        }
    }
}

/// Bytes for people: 512 B, 1.5 KiB, 3.2 MiB, 1.1 GiB.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

impl ReportMeta {
    pub const FORMAT: u32 = 1;
}

/// What the agent is doing, in the heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentState {
    Idle,
    Updating,
}

/// `logs/heartbeat.json`, rewritten on every poll.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub format: u32,
    pub host: String,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub revision: Option<String>,
    pub system: Option<String>,
    pub state: AgentState,
    #[serde(default)]
    pub reboot_required: bool,
    pub agent_version: String,
    /// Seconds between polls, so the server can tell when the host is late.
    pub interval_secs: Option<u64>,
}

/// One report found in a host's `logs/`, with the server's own file time.
#[derive(Debug, Clone)]
pub struct ReportEntry {
    pub file_name: String,
    pub name: ReportName,
    /// Modification time on the server (when the upload was written; a rename keeps it).
    pub mtime: SystemTime,
    /// Change time on the server: any change of the entry here renews it, a copy of
    /// the chroot too, so it tells what to look at again, never when a report came
    /// (that is [`received_time`]).
    pub ctime: SystemTime,
    /// The sidecar, when present and well-formed.
    pub meta: Option<ReportMeta>,
    /// Why the sidecar was ignored, when one exists but is unreadable.
    pub meta_error: Option<String>,
}

/// A `logs/` directory scanned once.
#[derive(Debug, Clone, Default)]
pub struct LogsScan {
    pub reports: Vec<ReportEntry>,
    pub heartbeat: Option<Heartbeat>,
    /// Files skipped, with the reason (shown as warnings, never fatal).
    pub skipped: Vec<(String, String)>,
}

impl LogsScan {
    /// Reports ordered oldest → newest by their name (the client's clock), then
    /// by server time for reports in the same minute.
    pub fn sorted(&mut self) {
        // The file name last, so that reports the clock cannot tell apart come in
        // the same order on every run and every copy of the chroot.
        self.reports.sort_by(|a, b| {
            (a.name.time, a.mtime)
                .cmp(&(b.name.time, b.mtime))
                .then_with(|| a.file_name.cmp(&b.file_name))
        });
    }
}

/// Reads a host's `logs/` directory. Missing directory → empty scan. Malformed
/// names and sidecars are recorded in `skipped`, never fatal. Sidecars are read
/// only for reports the caller wants (`want_meta` decides by name), so a status
/// over a big fleet reads only what it needs.
pub fn scan_logs(
    logs_dir: &Path,
    want_meta: impl Fn(&ReportName) -> bool,
) -> std::io::Result<LogsScan> {
    let mut scan = LogsScan::default();
    let rd = match fs::read_dir(logs_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(scan),
        Err(e) => return Err(e),
    };
    let mut sidecars = std::collections::HashSet::new();
    for ent in rd {
        let ent = ent?;
        let Some(name) = ent.file_name().to_str().map(str::to_owned) else {
            scan.skipped
                .push(("<non-UTF-8 name>".into(), "file name is not UTF-8".into()));
            continue;
        };
        if name == HEARTBEAT_FILE {
            match read_json_capped::<Heartbeat>(&ent.path()) {
                Ok(hb) => scan.heartbeat = Some(hb),
                Err(e) => scan.skipped.push((name, e)),
            }
            continue;
        }
        if name.ends_with(".json") {
            sidecars.insert(name);
            continue;
        }
        if name.starts_with('.') || name.ends_with(".tmp") || name.ends_with(".part") {
            continue; // uploads in progress
        }
        let parsed = match ReportName::parse(&name) {
            Ok(p) => p,
            Err(e) => {
                scan.skipped.push((name, e.to_string()));
                continue;
            }
        };
        let md = match ent.metadata() {
            Ok(md) if md.is_file() => md,
            Ok(_) => {
                scan.skipped.push((name, "not a regular file".into()));
                continue;
            }
            Err(e) => {
                scan.skipped.push((name, e.to_string()));
                continue;
            }
        };
        scan.reports.push(ReportEntry {
            file_name: name,
            name: parsed,
            mtime: md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            ctime: ctime(&md),
            meta: None,
            meta_error: None,
        });
    }
    for r in &mut scan.reports {
        let sidecar = r.name.sidecar_file_name();
        if sidecars.contains(&sidecar) && want_meta(&r.name) {
            match read_json_capped::<ReportMeta>(&logs_dir.join(&sidecar)) {
                Ok(m) => r.meta = Some(m),
                Err(e) => r.meta_error = Some(e),
            }
        }
    }
    scan.sorted();
    Ok(scan)
}

/// Reads a small JSON file, refusing anything larger than [`MAX_JSON_BYTES`].
pub fn read_json_capped<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    read_json_capped_n(path, MAX_JSON_BYTES)
}

/// Reads a JSON file of at most `cap` bytes.
pub fn read_json_capped_n<T: serde::de::DeserializeOwned>(
    path: &Path,
    cap: u64,
) -> Result<T, String> {
    let f = open_untrusted(path).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    f.take(cap + 1)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    if buf.len() as u64 > cap {
        return Err(format!("larger than {cap} bytes"));
    }
    serde_json::from_slice(&buf).map_err(|e| format!("malformed JSON: {e}"))
}

/// Opens a file a host wrote (its `logs/` is the host's to fill): never through a
/// symlink, never blocking on a FIFO, and only if it is a regular file. A
/// compromised host can then neither make the server read another file nor hang it.
pub fn open_untrusted(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    Ok(f)
}

/// Reads a gzipped log, decompressing at most `cap` bytes. Returns the text (lossy
/// UTF-8) and whether it was cut. A gzip bomb costs at most `cap` bytes of memory.
pub fn read_log_capped(path: &Path, cap: usize) -> std::io::Result<(String, bool)> {
    let f = open_untrusted(path)?;
    let mut dec = flate2::read::MultiGzDecoder::new(std::io::BufReader::new(f));
    let mut buf = Vec::with_capacity(cap.min(1 << 20));
    (&mut dec).take(cap as u64).read_to_end(&mut buf)?;
    let mut one = [0u8; 1];
    let truncated = buf.len() == cap && dec.read(&mut one).map(|n| n > 0).unwrap_or(false);
    Ok((String::from_utf8_lossy(&buf).into_owned(), truncated))
}

/// The directory of a host's logs given the chroot host dir.
pub fn logs_dir(host_dir: &Path) -> PathBuf {
    host_dir.join("logs")
}

/// When the server received a file a host uploaded, to the whole second.
///
/// Its modification time: the server's clock sets it when the upload is written
/// (the original client's plain `sftp put`, the agent's upload then rename), and
/// `cp -a`, `rsync -a` and `tar` keep it, where the change time becomes the copy's.
/// Capped by the change time, which no client can set: over OpenSSH a host may
/// `put -p` or setstat a time of its choice (bento's own SFTP server refuses
/// setstat), and a time ahead of the change time is such a forgery, taken back to
/// when it was made. Whole seconds, because GNU tar and many backups keep no more.
pub fn received_time(md: &fs::Metadata) -> SystemTime {
    let mtime = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    whole_seconds(mtime.min(ctime(md)))
}

/// [`received_time`] at the file system's full precision, for
/// [`received_after`].
pub fn received_precise(md: &fs::Metadata) -> SystemTime {
    let mtime = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    mtime.min(ctime(md))
}

/// Whether a report received at `report` came after a publication at
/// `published` (the server's file times at full precision). A copy that keeps
/// only whole seconds (GNU tar's default format) leaves no fraction: then the
/// seconds decide, and a report of the same second counts after, since an agent
/// with nothing to build reports within the second it sees a release, while a
/// report landing in the same second just before a publication is rare.
pub fn received_after(report: SystemTime, published: SystemTime) -> bool {
    let fraction = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    };
    if fraction(report) != 0 && fraction(published) != 0 {
        report > published
    } else {
        whole_seconds(report) >= whole_seconds(published)
    }
}

/// `t` without its fraction of a second.
pub fn whole_seconds(t: SystemTime) -> SystemTime {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(d.as_secs()),
        Err(_) => SystemTime::UNIX_EPOCH,
    }
}

#[cfg(unix)]
pub(crate) fn ctime(md: &fs::Metadata) -> SystemTime {
    use std::os::unix::fs::MetadataExt;
    let secs = md.ctime();
    let nanos = md.ctime_nsec();
    if secs < 0 {
        return SystemTime::UNIX_EPOCH;
    }
    SystemTime::UNIX_EPOCH
        + std::time::Duration::new(secs as u64, nanos.clamp(0, 999_999_999) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_of_the_publication_second_is_after_it_unless_it_is_earlier_to_the_nanosecond() {
        let t = |s: u64, ns: u32| SystemTime::UNIX_EPOCH + std::time::Duration::new(s, ns);
        // Full precision: the order of the two writes decides.
        assert!(received_after(t(100, 600), t(100, 500)));
        assert!(!received_after(t(100, 400), t(100, 500)));
        assert!(!received_after(t(99, 900), t(100, 500)));
        // A copy that kept whole seconds: the same second counts after.
        assert!(received_after(t(100, 0), t(100, 0)));
        assert!(!received_after(t(99, 0), t(100, 0)));
        assert!(received_after(t(101, 0), t(100, 0)));
    }

    #[test]
    fn parses_every_original_status() {
        for st in ReportStatus::ALL {
            let n = format!("20240131-2359_abcd1234xyz-nixos-system-web_1-24.05_{st}.log.gz");
            let p = ReportName::parse(&n).unwrap();
            assert_eq!(p.status, st);
            assert_eq!(p.system, "abcd1234xyz-nixos-system-web_1-24.05");
            assert_eq!(p.log_file_name(), n);
            assert_eq!(p.short_system(), "abcd1234");
        }
    }

    #[test]
    fn host_named_like_a_status_is_not_confused() {
        let p =
            ReportName::parse("20240101-0000_h-nixos-system-failure-lab_success.log.gz").unwrap();
        assert_eq!(p.status, ReportStatus::Success);
    }

    #[test]
    fn malformed_names_are_errors() {
        for bad in [
            "x.log.gz",
            "20241301-0000_sys_success.log.gz",
            "20240101-0000_sys_exploded.log.gz",
            "20240101-0000__success.log.gz",
            "20240101-0000_a/b_success.log.gz",
            "20240101-0000_sys_success.log",
        ] {
            assert!(ReportName::parse(bad).is_err(), "{bad}");
        }
    }
}
