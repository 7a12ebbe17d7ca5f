//! Pieces shared by the pages: the navigation bar, times, state badges.
//! Templates get strings computed here, so they hold no logic beyond loops.

use std::time::SystemTime;

use bento_core::status::{elapsed, State};
use time::OffsetDateTime;

use super::auth::SessionUser;

/// The top bar: who is logged in (with the CSRF token of the logout form) and
/// which section is active.
pub struct Nav {
    pub user: Option<String>,
    pub csrf: String,
    pub active: &'static str,
    /// Why the embedded SFTP server is down, while it is: every page of a
    /// logged-in user says so, since no host can poll meanwhile.
    pub sftp_down: Option<String>,
}

impl Nav {
    pub fn new(user: &SessionUser, active: &'static str) -> Self {
        Nav {
            user: Some(user.name.clone()),
            csrf: user.csrf.clone(),
            active,
            sftp_down: crate::sftp::Health::panel_down(),
        }
    }

    pub fn anonymous() -> Self {
        Nav {
            user: None,
            csrf: String::new(),
            active: "",
            sftp_down: None,
        }
    }

    /// `class` of a navigation link.
    pub fn class(&self, section: &str) -> &'static str {
        if self.active == section {
            "active"
        } else {
            ""
        }
    }
}

/// "3m ago", "2d 4h ago"; "—" when unknown.
pub fn ago(t: Option<OffsetDateTime>, now: SystemTime) -> String {
    match t {
        None => "—".into(),
        Some(t) => {
            let t: SystemTime = t.into();
            match now.duration_since(t) {
                Ok(d) => format!("{} ago", elapsed(d)),
                Err(_) => "just now".into(),
            }
        }
    }
}

/// Full UTC time for `title` attributes and tables: `2024-05-01 12:03:04 UTC`.
pub fn full_time(t: Option<OffsetDateTime>) -> String {
    match t {
        None => String::new(),
        Some(t) => {
            let t = t.to_offset(time::UtcOffset::UTC);
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
                t.year(),
                t.month() as u8,
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        }
    }
}

pub fn full_time_ms(ms: Option<i64>) -> String {
    full_time(ms.map(super::db::from_ms))
}

/// `1.2 s`, `3m 04s`, `1h 02m` (app.js formats a running job's ticking duration
/// the same way).
pub fn duration_ms(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m {:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h {:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

/// `1 host`, `3 hosts`: a count with its noun, singular for one.
pub fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// A time in the past as a short clock reading: `14:03 UTC` within the last day,
/// else `2024-05-01 UTC` — what "since …" needs (an age, "3m ago", reads wrong there).
pub fn since(t: OffsetDateTime, now: SystemTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let age = now
        .duration_since(t.into())
        .unwrap_or(std::time::Duration::ZERO);
    if age < std::time::Duration::from_secs(20 * 3600) {
        format!("{:02}:{:02} UTC", t.hour(), t.minute())
    } else {
        format!("{:04}-{:02}-{:02} UTC", t.year(), t.month() as u8, t.day())
    }
}

/// The CSS class of a state's badge: quiet for the good states, loud for problems.
pub fn state_class(s: State) -> &'static str {
    match s {
        State::UpToDate => "ok",
        State::AutoUpdated => "ok",
        State::SyncPending | State::RebuildPending => "pending",
        State::Updating => "busy",
        State::Failing | State::RolledBack | State::ExtraLogs => "bad",
        State::NewMachine => "new",
    }
}

/// Sort rank: problems first.
pub fn state_rank(s: State) -> u8 {
    match s {
        State::Failing => 0,
        State::RolledBack => 1,
        State::ExtraLogs => 2,
        State::Updating => 3,
        State::RebuildPending => 4,
        State::SyncPending => 5,
        State::NewMachine => 6,
        State::AutoUpdated => 7,
        State::UpToDate => 8,
    }
}

/// The badge class of a report or job status.
pub fn status_class(status: &str) -> &'static str {
    match status {
        "success" | "succeeded" | "autoupdate" => "ok",
        "failure" | "failed" | "rollback" => "bad",
        "running" => "busy",
        "queued" => "pending",
        _ => "new",
    }
}

/// The number of a job or rollout in a URL (from 1), or a clear refusal.
pub fn parse_number(s: &str, what: &str) -> super::error::WebResult<i64> {
    s.parse::<i64>().ok().filter(|i| *i > 0).ok_or_else(|| {
        super::error::WebError::BadRequest(format!("{:?} is not a {what} number.", clip(s, 20)))
    })
}

/// At most `max` characters, with an ellipsis when cut.
pub fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some((i, _)) => format!("{}…", &s[..i]),
    }
}

/// A query string from key/value pairs (empty values left out).
pub fn query(pairs: &[(&str, &str)]) -> String {
    let kept: Vec<(&str, &str)> = pairs
        .iter()
        .copied()
        .filter(|(_, v)| !v.is_empty())
        .collect();
    if kept.is_empty() {
        return String::new();
    }
    format!("?{}", serde_urlencoded::to_string(kept).unwrap_or_default())
}

/// A path segment, percent-encoded (host names are safe already; report file names
/// may hold `+`, `=` or `?`).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn one_is_singular() {
        assert_eq!(plural(1, "host", "hosts"), "1 host");
        assert_eq!(plural(0, "host", "hosts"), "0 hosts");
        assert_eq!(plural(12, "host", "hosts"), "12 hosts");
    }

    #[test]
    fn since_is_a_clock_time_today_and_a_date_before() {
        let t = OffsetDateTime::from_unix_timestamp(1_714_565_000).unwrap(); // 2024-05-01 12:03:20
        let now = SystemTime::from(t) + Duration::from_secs(3600);
        assert_eq!(since(t, now), "12:03 UTC");
        assert_eq!(
            since(t, now + Duration::from_secs(2 * 86400)),
            "2024-05-01 UTC"
        );
    }
}
