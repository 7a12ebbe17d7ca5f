//! A deploy is a rollout: the release is published wave by wave, and each host's
//! outcome is followed from its reports and heartbeat until it concludes.
//!
//! Everything here is shared by `bento deploy --wait` and the panel, so they cannot
//! disagree: the `[rollout]` settings, the planner (hosts → ordered waves), the
//! per-host outcome ([`HostProgress`], computed from [`crate::status`]) and the
//! decision on a wave ([`decide`]). The planner and the decision are pure.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::chroot::Chroot;
use crate::report::{self, AgentState};
use crate::status::{self, HostStatus, State, StatusOptions};
use crate::HostName;

pub mod driver;
pub mod rollback;

/// One entry of `waves`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum WaveEntry {
    /// Every remaining host with this tag (`[hosts.<name>] tags`).
    Tag(String),
    /// One host.
    Host(HostName),
    /// This share of the hosts not in an earlier wave, rounded up (1..=100).
    Percent(u8),
    /// Every remaining host.
    Rest,
}

impl FromStr for WaveEntry {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "rest" {
            return Ok(WaveEntry::Rest);
        }
        if let Some(tag) = s.strip_prefix("tag:") {
            if tag.is_empty()
                || !tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(format!(
                    "wave {s:?}: a tag is letters, digits, '-', '_' or '.' (as in [hosts.<name>] tags)"
                ));
            }
            return Ok(WaveEntry::Tag(tag.to_owned()));
        }
        if let Some(host) = s.strip_prefix("host:") {
            return HostName::new(host)
                .map(WaveEntry::Host)
                .map_err(|e| format!("wave {s:?}: {e}"));
        }
        if let Some(n) = s.strip_suffix('%') {
            return match n.parse::<u8>() {
                Ok(p) if (1..=100).contains(&p) => Ok(WaveEntry::Percent(p)),
                _ => Err(format!("wave {s:?}: a share is 1% to 100%")),
            };
        }
        Err(format!(
            "wave {s:?} is not \"tag:NAME\", \"host:NAME\", \"N%\" or \"rest\""
        ))
    }
}

impl TryFrom<String> for WaveEntry {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl fmt::Display for WaveEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaveEntry::Tag(t) => write!(f, "tag:{t}"),
            WaveEntry::Host(h) => write!(f, "host:{h}"),
            WaveEntry::Percent(p) => write!(f, "{p}%"),
            WaveEntry::Rest => f.write_str("rest"),
        }
    }
}

impl From<WaveEntry> for String {
    fn from(w: WaveEntry) -> String {
        w.to_string()
    }
}

/// `waves`: checked as a whole when read, so a mistake is reported at its line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<WaveEntry>", into = "Vec<WaveEntry>")]
pub struct Waves(Vec<WaveEntry>);

impl Waves {
    pub fn entries(&self) -> &[WaveEntry] {
        &self.0
    }
}

impl Default for Waves {
    fn default() -> Self {
        Waves(vec![WaveEntry::Rest])
    }
}

impl TryFrom<Vec<WaveEntry>> for Waves {
    type Error = String;
    fn try_from(v: Vec<WaveEntry>) -> Result<Self, String> {
        if v.is_empty() {
            return Err(
                "waves is empty: leave [rollout] out for one wave, or end with \"rest\"".into(),
            );
        }
        if let Some(i) = v.iter().position(|w| *w == WaveEntry::Rest) {
            if i + 1 != v.len() {
                return Err(format!(
                    "\"rest\" takes every remaining host, so it must be the last wave (it is wave {} of {})",
                    i + 1,
                    v.len()
                ));
            }
        }
        let mut seen = BTreeSet::new();
        for w in &v {
            if matches!(w, WaveEntry::Tag(_) | WaveEntry::Host(_)) && !seen.insert(w.to_string()) {
                return Err(format!("wave {:?} is listed twice", w.to_string()));
            }
        }
        Ok(Waves(v))
    }
}

impl From<Waves> for Vec<WaveEntry> {
    fn from(w: Waves) -> Self {
        w.0
    }
}

/// `max_failures`: failed hosts a wave may have and the rollout still go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawMaxFailures", into = "RawMaxFailures")]
pub enum MaxFailures {
    Count(u32),
    /// A share of the wave's hosts, rounded down (0..=100).
    Percent(u8),
}

impl Default for MaxFailures {
    fn default() -> Self {
        MaxFailures::Count(0)
    }
}

impl MaxFailures {
    /// How many hosts of a wave of `size` may fail.
    pub fn allowed(self, size: usize) -> usize {
        match self {
            MaxFailures::Count(n) => n as usize,
            MaxFailures::Percent(p) => size * p as usize / 100,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum RawMaxFailures {
    Count(i64),
    Text(String),
}

impl TryFrom<RawMaxFailures> for MaxFailures {
    type Error = String;
    fn try_from(r: RawMaxFailures) -> Result<Self, String> {
        match r {
            RawMaxFailures::Count(n) => u32::try_from(n)
                .map(MaxFailures::Count)
                .map_err(|_| format!("max_failures {n} is not a count of hosts (0 or more)")),
            RawMaxFailures::Text(s) => match s.strip_suffix('%').map(str::parse::<u8>) {
                Some(Ok(p)) if p <= 100 => Ok(MaxFailures::Percent(p)),
                _ => Err(format!(
                    "max_failures {s:?} is neither a count (max_failures = 2) nor a share from \"0%\" to \"100%\""
                )),
            },
        }
    }
}

impl From<MaxFailures> for RawMaxFailures {
    fn from(m: MaxFailures) -> Self {
        match m {
            MaxFailures::Count(n) => RawMaxFailures::Count(n.into()),
            MaxFailures::Percent(p) => RawMaxFailures::Text(format!("{p}%")),
        }
    }
}

/// `offline`: what a wave does with a host that is offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OfflinePolicy {
    /// Wait for it (until the timeout, which makes it "no answer").
    #[default]
    Wait,
    /// Leave it out of the wave's decision (it picks the release up when it returns).
    Skip,
    /// Count it as failed at once.
    Fail,
}

/// `[rollout]` in bento.toml.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSettings {
    #[serde(default)]
    pub waves: Waves,
    #[serde(default)]
    pub max_failures: MaxFailures,
    /// Seconds a wave may take before its silent hosts are "no answer".
    pub wave_timeout: Option<u64>,
    #[serde(default)]
    pub offline: OfflinePolicy,
}

impl RolloutSettings {
    /// Problems only visible with the hosts' settings, for `bento check-config`.
    pub fn problems(&self, hosts: &[(HostName, Vec<String>)]) -> Vec<String> {
        let mut out = Vec::new();
        if self.wave_timeout == Some(0) {
            out.push("rollout.wave_timeout must be at least 1 second".into());
        }
        for w in self.waves.entries() {
            if let WaveEntry::Tag(t) = w {
                if !hosts.iter().any(|(_, tags)| tags.iter().any(|x| x == t)) {
                    out.push(format!(
                        "rollout.waves: no host has the tag {t:?} (add tags = [{t:?}] under [hosts.<name>])"
                    ));
                }
            }
        }
        out
    }
}

/// One wave of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Wave {
    /// The `waves` entry that chose these hosts (or `rest` for the implicit last wave).
    pub entry: String,
    pub hosts: Vec<HostName>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("rollout.waves: wave {entry:?} names no host of the fleet")]
    UnknownHost { entry: String },
    #[error("rollout.waves: wave {entry:?}: no host of this deploy has that tag")]
    UnknownTag { entry: String },
}

/// Splits `hosts` (each with its tags) into ordered waves.
///
/// Deterministic: hosts are taken in name order. A `tag:` or `host:` entry takes
/// the matching hosts not in an earlier wave; `N%` takes that share of the
/// remaining hosts, rounded up; hosts left after the last entry form a last wave
/// (as if the list ended with `rest`). Waves left empty (their hosts were taken
/// earlier) are dropped. A `tag:`/`host:` entry that matches no host at all is an
/// error: it is a typo, and going on would publish to everyone at once.
pub fn plan(
    hosts: &[(HostName, Vec<String>)],
    settings: &RolloutSettings,
) -> Result<Vec<Wave>, PlanError> {
    let mut remaining: Vec<&(HostName, Vec<String>)> = hosts.iter().collect();
    remaining.sort_by(|a, b| a.0.cmp(&b.0));
    remaining.dedup_by(|a, b| a.0 == b.0);
    let mut waves = Vec::new();
    for entry in settings.waves.entries() {
        let taken: Vec<HostName> = match entry {
            WaveEntry::Tag(t) => {
                if !hosts.iter().any(|(_, tags)| tags.contains(t)) {
                    return Err(PlanError::UnknownTag {
                        entry: entry.to_string(),
                    });
                }
                remaining
                    .iter()
                    .filter(|(_, tags)| tags.contains(t))
                    .map(|(h, _)| h.clone())
                    .collect()
            }
            WaveEntry::Host(h) => {
                if !hosts.iter().any(|(x, _)| x == h) {
                    return Err(PlanError::UnknownHost {
                        entry: entry.to_string(),
                    });
                }
                remaining
                    .iter()
                    .filter(|(x, _)| x == h)
                    .map(|(h, _)| h.clone())
                    .collect()
            }
            WaveEntry::Percent(p) => {
                let n = (remaining.len() * *p as usize).div_ceil(100);
                remaining.iter().take(n).map(|(h, _)| h.clone()).collect()
            }
            WaveEntry::Rest => remaining.iter().map(|(h, _)| h.clone()).collect(),
        };
        remaining.retain(|(h, _)| !taken.contains(h));
        if !taken.is_empty() {
            waves.push(Wave {
                entry: entry.to_string(),
                hosts: taken,
            });
        }
    }
    if !remaining.is_empty() {
        waves.push(Wave {
            entry: WaveEntry::Rest.to_string(),
            hosts: remaining.iter().map(|(h, _)| h.clone()).collect(),
        });
    }
    Ok(waves)
}

/// Where one host is with the release published to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Published; the host has not started on it.
    Published,
    /// The agent is downloading and verifying the release.
    Downloading,
    /// The agent is building the system.
    Building,
    /// The agent is fetching the system's closure from its cache.
    Fetching,
    /// The system is switched to; the agent checks its health.
    Activated,
    Success,
    Failed,
    RolledBack,
    /// Offline, or silent past the timeout.
    NoAnswer,
    /// Offline and left out of the wave (`offline = "skip"`).
    Skipped,
}

impl Phase {
    pub fn id(self) -> &'static str {
        match self {
            Phase::Published => "published",
            Phase::Downloading => "downloading",
            Phase::Building => "building",
            Phase::Fetching => "fetching",
            Phase::Activated => "activated",
            Phase::Success => "success",
            Phase::Failed => "failed",
            Phase::RolledBack => "rolled-back",
            Phase::NoAnswer => "no-answer",
            Phase::Skipped => "skipped",
        }
    }

    /// The phase of [`Phase::id`].
    pub fn from_id(id: &str) -> Option<Phase> {
        [
            Phase::Published,
            Phase::Downloading,
            Phase::Building,
            Phase::Fetching,
            Phase::Activated,
            Phase::Success,
            Phase::Failed,
            Phase::RolledBack,
            Phase::NoAnswer,
            Phase::Skipped,
        ]
        .into_iter()
        .find(|p| p.id() == id)
    }

    /// The host is done with this release, one way or the other.
    pub fn concluded(self) -> bool {
        matches!(
            self,
            Phase::Success | Phase::Failed | Phase::RolledBack | Phase::NoAnswer | Phase::Skipped
        )
    }

    /// Counts against `max_failures` (and makes `deploy --wait` exit 1).
    pub fn is_failure(self) -> bool {
        matches!(self, Phase::Failed | Phase::RolledBack | Phase::NoAnswer)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// One host's outcome so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostProgress {
    pub host: HostName,
    pub phase: Phase,
    /// Why it failed, rolled back or gave no answer.
    pub reason: Option<String>,
}

/// What the rollout knows of one host, from its chroot.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    /// The revision the rollout published to the host.
    pub revision: String,
    /// The revision `current` points at now (another deploy may have replaced it).
    pub current_revision: Option<String>,
    /// The status computed from the reports and heartbeat ([`crate::status`]).
    pub state: Option<State>,
    /// The revision of the report that decided `state`, when it has a sidecar.
    pub report_revision: Option<String>,
    pub report_error: Option<String>,
    /// The heartbeat, when it came after the publication.
    pub heartbeat: Option<HeartbeatView>,
    pub offline: bool,
    /// The wave's or rollout's timeout has passed.
    pub timed_out: bool,
}

/// The part of `logs/heartbeat.json` a rollout reads. `phase` is optional: an
/// agent that writes it ("downloading", "building", "fetching", "activated") gives
/// a finer progress; without it an update under way shows as downloading.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HeartbeatView {
    pub state: AgentState,
    pub revision: Option<String>,
    #[serde(default)]
    pub phase: Option<Phase>,
}

/// Decides one host's phase. Pure: see [`observe`] for reading the chroot.
pub fn progress(host: &HostName, obs: &Observation, offline: OfflinePolicy) -> HostProgress {
    let done = |phase: Phase, reason: Option<String>| HostProgress {
        host: host.clone(),
        phase,
        reason,
    };
    if obs.current_revision.as_deref() != Some(obs.revision.as_str()) {
        return done(
            Phase::NoAnswer,
            Some(match &obs.current_revision {
                Some(r) => format!("another deploy replaced the release (now {})", short(r)),
                None => "the release is no longer published".into(),
            }),
        );
    }
    // A report decides only when it is of this revision (or a legacy report after
    // the publication, which status.rs already tells apart).
    let report_of_ours = obs
        .report_revision
        .as_deref()
        .is_none_or(|r| r == obs.revision);
    if report_of_ours {
        match obs.state {
            Some(State::UpToDate) | Some(State::AutoUpdated) => return done(Phase::Success, None),
            Some(State::Failing) => {
                return done(
                    Phase::Failed,
                    Some(
                        obs.report_error
                            .clone()
                            .unwrap_or_else(|| "the update failed".into()),
                    ),
                )
            }
            Some(State::RolledBack) => {
                return done(
                    Phase::RolledBack,
                    Some(
                        obs.report_error
                            .clone()
                            .unwrap_or_else(|| "the agent rolled back".into()),
                    ),
                )
            }
            _ => {}
        }
    }
    // No report, but the heartbeat says the revision is applied (only files
    // changed, nothing to activate).
    if let Some(hb) = &obs.heartbeat {
        if hb.state == AgentState::Idle && hb.revision.as_deref() == Some(obs.revision.as_str()) {
            return done(Phase::Success, None);
        }
    }
    let under_way = obs
        .heartbeat
        .as_ref()
        .filter(|hb| hb.state == AgentState::Updating);
    if obs.offline && under_way.is_none() {
        match offline {
            OfflinePolicy::Fail => return done(Phase::NoAnswer, Some("offline".into())),
            OfflinePolicy::Skip => return done(Phase::Skipped, Some("offline".into())),
            OfflinePolicy::Wait => {}
        }
    }
    let phase = match under_way {
        Some(hb) => match hb.phase {
            Some(p) if !p.concluded() && p != Phase::Published => p,
            _ => Phase::Downloading,
        },
        None => Phase::Published,
    };
    if obs.timed_out {
        let why = if obs.offline {
            "offline until the timeout".to_owned()
        } else {
            format!("still {phase} at the timeout")
        };
        return done(Phase::NoAnswer, Some(why));
    }
    done(phase, None)
}

fn short(rev: &str) -> &str {
    rev.get(..12).unwrap_or(rev)
}

/// Reads what the chroot says of `host` since `revision` was published.
pub fn observe(
    chroot: &Chroot,
    host: &HostName,
    revision: &str,
    published: SystemTime,
    expected_system: Option<&str>,
    opts: &StatusOptions,
) -> Observation {
    let st: HostStatus = status::host_status(chroot, host, expected_system, opts);
    observation_from(chroot, host, revision, published, &st)
}

fn observation_from(
    chroot: &Chroot,
    host: &HostName,
    revision: &str,
    published: SystemTime,
    st: &HostStatus,
) -> Observation {
    let hb_path = chroot.logs_dir(host).join(report::HEARTBEAT_FILE);
    // A heartbeat from before the publication says nothing of this release.
    let heartbeat = std::fs::metadata(&hb_path)
        .ok()
        .filter(|m| report::received_after(report::received_precise(m), published))
        .and_then(|_| report::read_json_capped::<HeartbeatView>(&hb_path).ok());
    let (report_revision, report_error) = match &st.last_report {
        Some(r) => (r.revision.clone(), r.error.clone()),
        None => (None, None),
    };
    // status.rs decides a report counts for the published revision; a report from
    // before the publication (a legacy one) must not decide this release.
    let state = match &st.last_report {
        Some(r) if r.revision.is_none() && !report_received_after(r, published) => None,
        _ => Some(st.state),
    };
    Observation {
        revision: revision.to_owned(),
        current_revision: st.revision.clone(),
        state,
        report_revision,
        report_error,
        heartbeat,
        offline: st.offline,
        timed_out: false,
    }
}

fn report_received_after(r: &status::LastReport, published: SystemTime) -> bool {
    report::received_after(SystemTime::from(r.received), published)
}

/// What to do after looking at the current wave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "kebab-case")]
pub enum Decision {
    /// Hosts of the wave are still under way.
    Wait,
    /// The wave passed: publish the next one.
    Continue,
    /// Too many failures: later waves keep their release. Names the first failed host.
    Halt {
        host: HostName,
        phase: Phase,
        reason: String,
        failures: usize,
        allowed: usize,
    },
    /// The last wave passed.
    Finished,
}

/// Decides on the current wave from its hosts' progress. Halts as soon as the
/// failures exceed `max_failures`, without waiting for the wave's other hosts.
pub fn decide(wave: &[HostProgress], max_failures: MaxFailures, last_wave: bool) -> Decision {
    let allowed = max_failures.allowed(wave.len());
    let failed: Vec<&HostProgress> = wave.iter().filter(|p| p.phase.is_failure()).collect();
    if failed.len() > allowed {
        let first = failed[0];
        return Decision::Halt {
            host: first.host.clone(),
            phase: first.phase,
            reason: first
                .reason
                .clone()
                .unwrap_or_else(|| first.phase.to_string()),
            failures: failed.len(),
            allowed,
        };
    }
    if wave.iter().any(|p| !p.phase.concluded()) {
        Decision::Wait
    } else if last_wave {
        Decision::Finished
    } else {
        Decision::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: &str) -> HostName {
        HostName::new(n).unwrap()
    }

    fn fleet(spec: &[(&str, &[&str])]) -> Vec<(HostName, Vec<String>)> {
        spec.iter()
            .map(|(n, t)| (h(n), t.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    fn settings(toml_text: &str) -> Result<RolloutSettings, String> {
        toml::from_str(toml_text).map_err(|e| e.to_string())
    }

    fn names(w: &Wave) -> Vec<&str> {
        w.hosts.iter().map(|h| h.as_str()).collect()
    }

    #[test]
    fn entries_parse_and_print_back() {
        for s in ["tag:canary", "host:web-1", "25%", "100%", "rest"] {
            assert_eq!(s.parse::<WaveEntry>().unwrap().to_string(), s);
        }
        for bad in [
            "", "tag:", "tag:a b", "host:", "host:-x", "0%", "101%", "x%", "all", "canary",
        ] {
            assert!(bad.parse::<WaveEntry>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn settings_errors_name_the_line() {
        // The line of the `waves` setting, and the entry.
        let e = settings("\nwaves = [\"tag:canary\",\n  \"half\"]\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("\"half\""), "{e}");
        let e = settings("waves = [\"rest\", \"tag:canary\"]\n").unwrap_err();
        assert!(
            e.contains("line 1") && e.contains("must be the last wave"),
            "{e}"
        );
        let e = settings("\nwaves = []\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("empty"), "{e}");
        let e = settings("waves = [\"tag:a\", \"tag:a\"]").unwrap_err();
        assert!(e.contains("twice"), "{e}");
        let e = settings("max_failures = \"lots\"").unwrap_err();
        assert!(e.contains("lots"), "{e}");
        let e = settings("max_failures = -1").unwrap_err();
        assert!(e.contains("-1"), "{e}");
        let e = settings("max_failures = \"150%\"").unwrap_err();
        assert!(e.contains("150%"), "{e}");
        let e = settings("offline = \"maybe\"").unwrap_err();
        assert!(e.contains("maybe"), "{e}");
        let e = settings("wave = [\"rest\"]").unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn settings_defaults_and_values() {
        let s = settings("").unwrap();
        assert_eq!(s, RolloutSettings::default());
        assert_eq!(s.waves.entries(), &[WaveEntry::Rest]);
        assert_eq!(s.max_failures, MaxFailures::Count(0));
        assert_eq!(s.offline, OfflinePolicy::Wait);
        let s = settings(
            "waves = [\"tag:canary\", \"25%\", \"rest\"]\nmax_failures = \"10%\"\nwave_timeout = 600\noffline = \"skip\"",
        )
        .unwrap();
        assert_eq!(s.max_failures, MaxFailures::Percent(10));
        assert_eq!(s.wave_timeout, Some(600));
        assert_eq!(s.offline, OfflinePolicy::Skip);
        assert_eq!(
            settings("max_failures = 2").unwrap().max_failures,
            MaxFailures::Count(2)
        );
        // Round trip through TOML.
        let text = toml::to_string(&s).unwrap();
        assert_eq!(settings(&text).unwrap(), s);
    }

    #[test]
    fn max_failures_allowed() {
        assert_eq!(MaxFailures::Count(0).allowed(10), 0);
        assert_eq!(MaxFailures::Count(3).allowed(1), 3);
        assert_eq!(MaxFailures::Percent(10).allowed(25), 2);
        assert_eq!(MaxFailures::Percent(10).allowed(9), 0);
        assert_eq!(MaxFailures::Percent(100).allowed(4), 4);
    }

    #[test]
    fn no_rollout_section_is_one_wave() {
        let f = fleet(&[("b", &[]), ("a", &["canary"]), ("c", &[])]);
        let w = plan(&f, &RolloutSettings::default()).unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!(names(&w[0]), ["a", "b", "c"]);
        assert!(plan(&[], &RolloutSettings::default()).unwrap().is_empty());
    }

    #[test]
    fn canary_then_share_then_rest() {
        let spec: Vec<(String, Vec<&str>)> = (0..10)
            .map(|i| {
                (
                    format!("h{i:02}"),
                    if i == 7 { vec!["canary"] } else { vec![] },
                )
            })
            .collect();
        let f: Vec<(HostName, Vec<String>)> = spec
            .iter()
            .map(|(n, t)| (h(n), t.iter().map(|s| s.to_string()).collect()))
            .collect();
        let s = settings("waves = [\"tag:canary\", \"25%\", \"rest\"]").unwrap();
        let w = plan(&f, &s).unwrap();
        assert_eq!(w.len(), 3);
        assert_eq!(w[0].entry, "tag:canary");
        assert_eq!(names(&w[0]), ["h07"]);
        // 25% of the 9 remaining, rounded up.
        assert_eq!(names(&w[1]), ["h00", "h01", "h02"]);
        assert_eq!(w[2].hosts.len(), 6);
        assert!(!w[2].hosts.contains(&h("h07")));
        // Deterministic whatever the input order.
        let mut rev = f.clone();
        rev.reverse();
        assert_eq!(plan(&rev, &s).unwrap(), w);
        // Every host exactly once.
        let mut all: Vec<&HostName> = w.iter().flat_map(|w| &w.hosts).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 10);
    }

    #[test]
    fn hosts_left_after_the_list_form_a_last_wave_and_empty_waves_drop() {
        let f = fleet(&[("a", &["canary", "eu"]), ("b", &["eu"]), ("c", &[])]);
        let s = settings("waves = [\"tag:canary\", \"host:a\", \"tag:eu\"]").unwrap();
        let w = plan(&f, &s).unwrap();
        let got: Vec<(&str, Vec<&str>)> = w.iter().map(|w| (w.entry.as_str(), names(w))).collect();
        assert_eq!(
            got,
            [
                ("tag:canary", vec!["a"]),
                ("tag:eu", vec!["b"]),
                ("rest", vec!["c"])
            ]
        );
        let s = settings("waves = [\"50%\", \"50%\", \"50%\"]").unwrap();
        let w = plan(&fleet(&[("a", &[]), ("b", &[]), ("c", &[])]), &s).unwrap();
        let sizes: Vec<usize> = w.iter().map(|w| w.hosts.len()).collect();
        assert_eq!(sizes, [2, 1]);
    }

    #[test]
    fn unknown_tag_or_host_is_an_error() {
        let f = fleet(&[("a", &[]), ("b", &[])]);
        let s = settings("waves = [\"tag:canary\", \"rest\"]").unwrap();
        assert_eq!(
            plan(&f, &s),
            Err(PlanError::UnknownTag {
                entry: "tag:canary".into()
            })
        );
        let s = settings("waves = [\"host:zed\"]").unwrap();
        assert!(matches!(plan(&f, &s), Err(PlanError::UnknownHost { .. })));
        let s = settings("waves = [\"tag:canary\"]\nwave_timeout = 0").unwrap();
        let p = s.problems(&f);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(s.problems(&fleet(&[("a", &["canary"])])).len() == 1);
    }

    fn obs(state: Option<State>) -> Observation {
        Observation {
            revision: "r2".into(),
            current_revision: Some("r2".into()),
            state,
            ..Default::default()
        }
    }

    fn phase(o: &Observation) -> Phase {
        progress(&h("a"), o, OfflinePolicy::Wait).phase
    }

    #[test]
    fn host_phases() {
        assert_eq!(phase(&obs(None)), Phase::Published);
        assert_eq!(phase(&obs(Some(State::RebuildPending))), Phase::Published);
        let mut o = obs(Some(State::Updating));
        o.heartbeat = Some(HeartbeatView {
            state: AgentState::Updating,
            revision: Some("r1".into()),
            phase: None,
        });
        assert_eq!(phase(&o), Phase::Downloading);
        for p in [Phase::Building, Phase::Fetching, Phase::Activated] {
            o.heartbeat.as_mut().unwrap().phase = Some(p);
            assert_eq!(phase(&o), p);
        }
        // A concluded phase in a heartbeat that says updating is not believed.
        o.heartbeat.as_mut().unwrap().phase = Some(Phase::Success);
        assert_eq!(phase(&o), Phase::Downloading);

        let mut o = obs(Some(State::UpToDate));
        o.report_revision = Some("r2".into());
        assert_eq!(phase(&o), Phase::Success);
        o.state = Some(State::AutoUpdated);
        assert_eq!(phase(&o), Phase::Success);
        o.state = Some(State::Failing);
        o.report_error = Some("switch-to-configuration failed".into());
        let p = progress(&h("a"), &o, OfflinePolicy::Wait);
        assert_eq!(p.phase, Phase::Failed);
        assert_eq!(p.reason.as_deref(), Some("switch-to-configuration failed"));
        o.state = Some(State::RolledBack);
        assert_eq!(phase(&o), Phase::RolledBack);
        // A failure of an older revision does not decide this one.
        o.report_revision = Some("r1".into());
        assert_eq!(phase(&o), Phase::Published);

        // Only files changed: the idle heartbeat carries the revision.
        let mut o = obs(Some(State::SyncPending));
        o.heartbeat = Some(HeartbeatView {
            state: AgentState::Idle,
            revision: Some("r2".into()),
            phase: None,
        });
        assert_eq!(phase(&o), Phase::Success);
        o.heartbeat.as_mut().unwrap().revision = Some("r1".into());
        assert_eq!(phase(&o), Phase::Published);
    }

    #[test]
    fn offline_timeout_and_replaced_release() {
        let mut o = obs(Some(State::RebuildPending));
        o.offline = true;
        assert_eq!(phase(&o), Phase::Published);
        assert_eq!(
            progress(&h("a"), &o, OfflinePolicy::Skip).phase,
            Phase::Skipped
        );
        assert_eq!(
            progress(&h("a"), &o, OfflinePolicy::Fail).phase,
            Phase::NoAnswer
        );
        o.timed_out = true;
        let p = progress(&h("a"), &o, OfflinePolicy::Wait);
        assert_eq!(p.phase, Phase::NoAnswer);
        assert!(p.reason.unwrap().contains("offline"));
        o.offline = false;
        let p = progress(&h("a"), &o, OfflinePolicy::Wait);
        assert_eq!(p.reason.as_deref(), Some("still published at the timeout"));
        // A result that came in time still counts after the timeout.
        o.state = Some(State::UpToDate);
        assert_eq!(phase(&o), Phase::Success);
        o.current_revision = Some("r3".into());
        let p = progress(&h("a"), &o, OfflinePolicy::Wait);
        assert_eq!(p.phase, Phase::NoAnswer);
        assert!(p.reason.unwrap().contains("replaced"));
    }

    fn hp(n: &str, phase: Phase) -> HostProgress {
        HostProgress {
            host: h(n),
            phase,
            reason: phase.is_failure().then(|| format!("{n} broke")),
        }
    }

    #[test]
    fn decisions() {
        let m0 = MaxFailures::Count(0);
        assert_eq!(
            decide(&[hp("a", Phase::Downloading)], m0, false),
            Decision::Wait
        );
        assert_eq!(
            decide(&[hp("a", Phase::Success)], m0, false),
            Decision::Continue
        );
        assert_eq!(
            decide(&[hp("a", Phase::Success)], m0, true),
            Decision::Finished
        );
        assert_eq!(decide(&[], m0, true), Decision::Finished);
        assert_eq!(
            decide(
                &[hp("a", Phase::Skipped), hp("b", Phase::Success)],
                m0,
                false
            ),
            Decision::Continue
        );
        // Halts at the first failure, even with hosts still under way.
        let d = decide(
            &[
                hp("a", Phase::Building),
                hp("b", Phase::Failed),
                hp("c", Phase::RolledBack),
            ],
            m0,
            false,
        );
        assert_eq!(
            d,
            Decision::Halt {
                host: h("b"),
                phase: Phase::Failed,
                reason: "b broke".into(),
                failures: 2,
                allowed: 0
            }
        );
        // Within max_failures: wait for the rest, then go on.
        let m1 = MaxFailures::Count(1);
        let wave = [hp("a", Phase::Building), hp("b", Phase::NoAnswer)];
        assert_eq!(decide(&wave, m1, false), Decision::Wait);
        let wave = [hp("a", Phase::Success), hp("b", Phase::NoAnswer)];
        assert_eq!(decide(&wave, m1, false), Decision::Continue);
        let wave = [hp("a", Phase::Failed), hp("b", Phase::NoAnswer)];
        assert!(matches!(decide(&wave, m1, false), Decision::Halt { .. }));
        // Percent of the wave's size.
        let wave: Vec<HostProgress> = (0..10)
            .map(|i| {
                hp(
                    &format!("h{i}"),
                    if i < 2 { Phase::Failed } else { Phase::Success },
                )
            })
            .collect();
        assert_eq!(
            decide(&wave, MaxFailures::Percent(20), true),
            Decision::Finished
        );
        assert!(matches!(
            decide(&wave, MaxFailures::Percent(10), true),
            Decision::Halt {
                failures: 2,
                allowed: 1,
                ..
            }
        ));
    }
}
