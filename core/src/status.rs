//! The status of each host, decided from the published revision and time, the
//! expected system, the reports since publication and the heartbeat.
//!
//! Reports with a sidecar carry the revision they applied, so only a report of the
//! published revision can make a host "up to date". Reports of the original shell
//! clients have no sidecar: whether they came after a publication is decided with
//! the server's own file times, never with the client's clock in the name: a report
//! counts after a publication when it was received ([`report::received_time`])
//! after `last_change_date` was last written ([`report::received_after`]). Both are modification
//! times, which `cp -a`, `rsync -a` and a `tar` backup keep (the original tool's
//! `find -cnewer` compared change times, which every copy renews).
//!
//! A shell client applies a publication once and may update itself on later polls,
//! so its reports since a publication are read as one story ([`LegacyStory`]); only
//! reports that contradict one another make the host "extra logs".

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::chroot::Chroot;
use crate::report::{
    self, short_hash, AgentState, Heartbeat, ReportMeta, ReportName, ReportStatus,
};
use crate::HostName;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    NewMachine,
    UpToDate,
    AutoUpdated,
    SyncPending,
    RebuildPending,
    Updating,
    Failing,
    RolledBack,
    ExtraLogs,
}

impl State {
    pub const ALL: [State; 9] = [
        State::UpToDate,
        State::AutoUpdated,
        State::SyncPending,
        State::RebuildPending,
        State::Updating,
        State::Failing,
        State::RolledBack,
        State::ExtraLogs,
        State::NewMachine,
    ];

    /// The id used in JSON and URLs.
    pub fn id(self) -> &'static str {
        match self {
            State::NewMachine => "new-machine",
            State::UpToDate => "up-to-date",
            State::AutoUpdated => "auto-updated",
            State::SyncPending => "sync-pending",
            State::RebuildPending => "rebuild-pending",
            State::Updating => "updating",
            State::Failing => "failing",
            State::RolledBack => "rolled-back",
            State::ExtraLogs => "extra-logs",
        }
    }

    /// The label of the original tool's table.
    pub fn label(self) -> &'static str {
        match self {
            State::NewMachine => "new machine",
            State::UpToDate => "up to date",
            State::AutoUpdated => "auto updated",
            State::SyncPending => "sync pending",
            State::RebuildPending => "rebuild pending",
            State::Updating => "updating",
            State::Failing => "failing",
            State::RolledBack => "rolled back",
            State::ExtraLogs => "extra logs",
        }
    }

    /// The original tool's emoji.
    pub fn emoji(self) -> &'static str {
        match self {
            State::NewMachine => "🆕",
            State::UpToDate => "💚",
            State::AutoUpdated => "🤖",
            State::SyncPending | State::RebuildPending => "🚩",
            State::Updating => "⏳",
            State::Failing | State::ExtraLogs => "🔥",
            State::RolledBack => "⏪",
        }
    }

    /// Whether the state asks for the admin's attention.
    pub fn is_problem(self) -> bool {
        matches!(self, State::Failing | State::RolledBack | State::ExtraLogs)
    }

    pub fn from_id(id: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.id() == id)
    }
}

/// The report that decided the state (or the newest one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastReport {
    pub file: String,
    /// The client's clock, as in the file name (`YYYY-mm-dd HH:MM`).
    pub time: String,
    /// When the server received it ([`report::received_time`]), to the second.
    #[serde(with = "time::serde::rfc3339")]
    pub received: OffsetDateTime,
    pub status: ReportStatus,
    pub revision: Option<String>,
    pub system: String,
    pub error: Option<String>,
    /// Whether a sidecar came with it (false for the original shell clients).
    pub has_sidecar: bool,
    /// How the host got the system: the server's closure fetched, or built there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub obtained: Option<report::Obtained>,
    /// Whether the host runs exactly the system the server built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<bool>,
}

/// One host's status, as `bento status --json` and `/api/v1/hosts` print it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    pub host: String,
    pub state: State,
    pub label: String,
    /// Store path basename the server built; `None` for non-flake hosts.
    pub expected_system: Option<String>,
    /// Store path basename the host last said it runs.
    pub running_system: Option<String>,
    /// Revision currently published for the host.
    pub revision: Option<String>,
    /// Revision the host last applied (from its heartbeat or sidecar).
    pub running_revision: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub published_at: Option<OffsetDateTime>,
    pub reboot_pending: bool,
    pub offline: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_seen: Option<OffsetDateTime>,
    pub last_report: Option<LastReport>,
    pub reports_since_publication: u32,
    pub total_reports: u32,
    /// Problems reading the host's files (malformed reports, ...), never fatal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl HostStatus {
    /// Running system compared with the expected one: `Some(true)` when equal,
    /// `None` when unknown (non-flake host, or nothing reported).
    pub fn matches_expected(&self) -> Option<bool> {
        match (&self.expected_system, &self.running_system) {
            (Some(e), Some(r)) => Some(e == r),
            _ => None,
        }
    }

    /// The original tool's match mark: 💚 same system, 🛑 different, 📌 non-flake.
    pub fn match_emoji(&self) -> &'static str {
        match (self.expected_system.is_some(), self.matches_expected()) {
            (_, Some(true)) => "💚",
            (false, _) => "📌",
            _ => "🛑",
        }
    }

    pub fn short_expected(&self) -> &str {
        self.expected_system
            .as_deref()
            .map(short_hash)
            .unwrap_or("non-flakes")
    }

    pub fn short_running(&self) -> &str {
        self.running_system.as_deref().map(short_hash).unwrap_or("")
    }
}

/// Knobs of the status computation.
#[derive(Debug, Clone, Copy)]
pub struct StatusOptions {
    pub now: SystemTime,
    /// Poll interval assumed when a heartbeat does not say it.
    pub poll_interval: Duration,
    /// Offline after this many missed polls.
    pub offline_after_polls: u32,
}

impl Default for StatusOptions {
    fn default() -> Self {
        StatusOptions {
            now: SystemTime::now(),
            poll_interval: Duration::from_secs(300),
            offline_after_polls: 3,
        }
    }
}

struct Candidate {
    file: String,
    name: ReportName,
    /// Read only for the reports the status needs.
    received: SystemTime,
    /// The same at the file system's precision: orders reports of one second.
    received_precise: SystemTime,
}

/// The reports of an original shell client since a publication, fed newest first.
///
/// The client applies a publication once (success, failure or rollback), and with
/// self-update on it then sends `autoupdate` reports on later polls, or sent one
/// before it saw the publication. Reports contradict one another when two outcomes
/// differ (in status or system: the client applied twice with different results) or
/// when a self-update follows a failure or a rollback (the host says the release did
/// not apply, then that it updated itself): which of them tells what the host runs
/// is for the admin to read in the logs.
#[derive(Default)]
struct LegacyStory {
    outcome: Option<(ReportStatus, String)>,
    newer_self_update: bool,
    contradicts: bool,
}

impl LegacyStory {
    /// Adds the next older report.
    fn add(&mut self, status: ReportStatus, system: &str) {
        if self.contradicts {
            return;
        }
        if status == ReportStatus::Autoupdate {
            self.newer_self_update = true;
            return;
        }
        if self.newer_self_update && status != ReportStatus::Success {
            self.contradicts = true;
            return;
        }
        match &self.outcome {
            None => self.outcome = Some((status, system.to_owned())),
            Some((s, sys)) => self.contradicts = *s != status || sys != system,
        }
    }
}

/// Computes one host's status from its chroot directory.
pub fn host_status(
    chroot: &Chroot,
    host: &HostName,
    expected_system: Option<&str>,
    opts: &StatusOptions,
) -> HostStatus {
    let host_dir = chroot.host_dir(host);
    let logs = chroot.logs_dir(host);
    let mut warnings = Vec::new();
    // Written only by the server (`bento deploy`): its own time, no cap needed.
    let published_precise = fs::metadata(chroot.last_change_path(host))
        .and_then(|m| m.modified())
        .ok();
    let published_at = published_precise.map(report::whole_seconds);
    let revision = chroot.current_revision(host).or_else(|| {
        fs::read_to_string(chroot.last_change_path(host))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
    });

    let mut candidates: Vec<Candidate> = Vec::new();
    let mut sidecars: HashSet<String> = HashSet::new();
    let mut heartbeat: Option<(Heartbeat, SystemTime)> = None;
    if let Ok(rd) = fs::read_dir(&logs) {
        for ent in rd.flatten() {
            let Some(name) = ent.file_name().to_str().map(str::to_owned) else {
                warnings.push("a log file name is not UTF-8".into());
                continue;
            };
            if name == report::HEARTBEAT_FILE {
                match report::read_json_capped::<Heartbeat>(&ent.path()) {
                    Ok(hb) => {
                        let t = ent
                            .metadata()
                            .map(|m| report::received_time(&m))
                            .unwrap_or(SystemTime::UNIX_EPOCH);
                        heartbeat = Some((hb, t));
                    }
                    Err(e) => warnings.push(format!("{name}: {e}")),
                }
                continue;
            }
            if name.starts_with('.') {
                continue; // an upload in progress
            }
            if name.ends_with(".json") {
                sidecars.insert(name);
                continue;
            }
            if !name.ends_with(".log.gz") {
                continue;
            }
            match ReportName::parse(&name) {
                Ok(parsed) => candidates.push(Candidate {
                    file: name,
                    name: parsed,
                    received: SystemTime::UNIX_EPOCH,
                    received_precise: SystemTime::UNIX_EPOCH,
                }),
                Err(e) => warnings.push(format!("{name}: skipped: {e}")),
            }
        }
    }
    let total_reports = candidates.len() as u32;
    // Newest first by the client's clock; reports are stat'ed only back to the
    // publication, and sidecars read only until the deciding report is found.
    // Reports of the same minute (the name's resolution) are ordered by arrival.
    if let Some(newest_time) = candidates.iter().map(|c| c.name.time).max() {
        for c in candidates.iter_mut().filter(|c| c.name.time == newest_time) {
            if let Ok(md) = fs::metadata(logs.join(&c.file)) {
                c.received = report::received_time(&md);
                c.received_precise = report::received_precise(&md);
            }
        }
    }
    candidates.sort_by(|a, b| {
        (b.name.time, b.received_precise, &b.file).cmp(&(a.name.time, a.received_precise, &a.file))
    });

    // Full precision where the file system has it; whole seconds (and a report
    // of the same second after) where a copy kept no more: see
    // [`report::received_after`].
    let published = published_precise.unwrap_or(SystemTime::UNIX_EPOCH);
    let mut since_publication = 0u32;
    let mut legacy_story = LegacyStory::default();
    let mut deciding: Option<(Candidate, Option<ReportMeta>)> = None;
    let mut newest: Option<(Candidate, Option<ReportMeta>)> = None;
    for mut c in candidates {
        let md = match fs::metadata(logs.join(&c.file)) {
            Ok(m) => m,
            Err(_) => continue,
        };
        c.received = report::received_time(&md);
        c.received_precise = report::received_precise(&md);
        let after_publication = report::received_after(c.received_precise, published);
        let has_sidecar = sidecars.contains(&c.name.sidecar_file_name());
        if after_publication {
            since_publication += 1;
            if !has_sidecar {
                legacy_story.add(c.name.status, &c.name.system);
            }
        }
        if deciding.is_some() && newest.is_some() {
            if !after_publication {
                break;
            }
            continue;
        }
        let meta = if has_sidecar {
            read_sidecar(&logs, &c.name, &mut warnings)
        } else {
            None
        };
        let counts = match (&meta, &revision) {
            (Some(m), Some(rev)) => m.revision.as_deref() == Some(rev.as_str()),
            _ => after_publication,
        };
        if newest.is_none() {
            newest = Some((
                Candidate {
                    file: c.file.clone(),
                    name: c.name.clone(),
                    received: c.received,
                    received_precise: c.received_precise,
                },
                meta.clone(),
            ));
        }
        let stop = !after_publication && (deciding.is_some() || !counts);
        if deciding.is_none() && counts {
            deciding = Some((c, meta));
        }
        if stop {
            break;
        }
    }
    // A sidecar without a system means the agent does not know what runs (a failed
    // rollback left the host in a mixed state): its file name's `unknown-system` is
    // not a system. Only legacy reports (no sidecar) are read from the name.
    let running_from_reports = newest.as_ref().map(|(c, meta)| match meta {
        Some(m) => (m.revision.clone(), m.system.clone()),
        None => (None, Some(c.name.system.clone())),
    });

    let hb_fresh = heartbeat.as_ref().map(|(hb, t)| {
        let interval = hb
            .interval_secs
            .map(Duration::from_secs)
            .unwrap_or(opts.poll_interval);
        let limit = interval * opts.offline_after_polls.max(1);
        opts.now.duration_since(*t).unwrap_or_default() <= limit
    });
    let offline = hb_fresh == Some(false);

    let running_system = heartbeat
        .as_ref()
        .and_then(|(hb, _)| hb.system.clone())
        .or_else(|| running_from_reports.as_ref().and_then(|(_, s)| s.clone()));
    let running_revision = heartbeat
        .as_ref()
        .and_then(|(hb, _)| hb.revision.clone())
        .or_else(|| running_from_reports.as_ref().and_then(|(r, _)| r.clone()));

    let matches = match (expected_system, running_system.as_deref()) {
        (Some(e), Some(r)) => e == r,
        _ => false,
    };
    let updating = heartbeat
        .as_ref()
        .is_some_and(|(hb, _)| hb.state == AgentState::Updating)
        && hb_fresh == Some(true);

    let state = if updating {
        State::Updating
    } else if newest.is_none() {
        State::NewMachine
    } else {
        match &deciding {
            None => {
                if matches {
                    State::SyncPending
                } else {
                    State::RebuildPending
                }
            }
            Some((_, None)) if legacy_story.contradicts => State::ExtraLogs,
            Some((c, _)) => match c.name.status {
                ReportStatus::Success => State::UpToDate,
                ReportStatus::Failure => State::Failing,
                ReportStatus::Rollback => State::RolledBack,
                ReportStatus::Autoupdate => State::AutoUpdated,
            },
        }
    };

    let reboot_pending = heartbeat
        .as_ref()
        .map(|(hb, _)| hb.reboot_required)
        .or_else(|| {
            newest
                .as_ref()
                .and_then(|(_, m)| m.as_ref().map(|m| m.reboot_required))
        })
        .unwrap_or(false);

    let shown = deciding.or(newest);
    let last_seen = heartbeat
        .as_ref()
        .map(|(_, t)| *t)
        .into_iter()
        .chain(shown.as_ref().map(|(c, _)| c.received))
        .max();
    let _ = host_dir;
    // File names and parse errors quote what the host wrote: never raw to a terminal.
    let mut warnings: Vec<String> = warnings
        .into_iter()
        .map(|w| crate::text::display_safe(&w).into_owned())
        .collect();
    // Directory order differs between a chroot and its copy.
    warnings.sort();
    HostStatus {
        host: host.to_string(),
        state,
        label: state.label().to_owned(),
        expected_system: expected_system.map(str::to_owned),
        running_system,
        revision,
        running_revision,
        published_at: published_at.map(OffsetDateTime::from),
        reboot_pending,
        offline,
        last_seen: last_seen.map(OffsetDateTime::from),
        last_report: shown.map(|(c, meta)| LastReport {
            time: format!(
                "{}-{:02}-{:02} {:02}:{:02}",
                c.name.time.year(),
                c.name.time.month() as u8,
                c.name.time.day(),
                c.name.time.hour(),
                c.name.time.minute()
            ),
            received: OffsetDateTime::from(c.received),
            status: c.name.status,
            revision: meta.as_ref().and_then(|m| m.revision.clone()),
            system: c.name.system.clone(),
            error: meta.as_ref().and_then(|m| m.error.clone()),
            has_sidecar: meta.is_some(),
            obtained: meta.as_ref().and_then(|m| m.obtained.clone()),
            exact: meta.as_ref().and_then(|m| m.exact),
            file: c.file,
        }),
        reports_since_publication: since_publication,
        total_reports,
        warnings,
    }
}

fn read_sidecar(logs: &Path, name: &ReportName, warnings: &mut Vec<String>) -> Option<ReportMeta> {
    let p = logs.join(name.sidecar_file_name());
    match report::read_json_capped::<ReportMeta>(&p) {
        Ok(m) => Some(m),
        Err(e) => {
            warnings.push(format!("{}: ignored: {e}", name.sidecar_file_name()));
            None
        }
    }
}

/// Every host of the chroot, computed on a few threads.
pub fn fleet_status(chroot: &Chroot, opts: &StatusOptions) -> std::io::Result<Vec<HostStatus>> {
    let hosts = chroot.hosts()?;
    let states = chroot.read_states();
    Ok(fleet_status_of(chroot, &hosts, &states, opts))
}

/// The status of the given hosts, with `states` from `states.txt`.
pub fn fleet_status_of(
    chroot: &Chroot,
    hosts: &[HostName],
    states: &BTreeMap<String, String>,
    opts: &StatusOptions,
) -> Vec<HostStatus> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    let chunk = hosts.len().div_ceil(threads).max(64);
    std::thread::scope(|s| {
        let handles: Vec<_> = hosts
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|h| {
                            host_status(chroot, h, states.get(h.as_str()).map(|s| s.as_str()), opts)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("status thread panicked"))
            .collect()
    })
}

/// `3d 4h`, `12m`, `40s`: the elapsed-time style of the original table.
pub fn elapsed(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins) = (s / 86400, (s % 86400) / 3600, (s % 3600) / 60);
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {mins}m")
    } else if mins > 0 {
        format!("{mins}m")
    } else {
        format!("{s}s")
    }
}
