//! When to reboot after a kernel change: the admin's policy (never, inside a daily
//! window, immediately) or a `REBOOT` file in the release (as the original tool).

use std::time::Duration;

use bento_core::agent_proto::ScheduledReboot;
use bento_core::config::{parse_window, RebootMode, RebootPolicy};
use time::OffsetDateTime;

/// The file in a release that asks for a reboot whenever the kernel changed.
pub const REBOOT_FILE: &str = "REBOOT";

/// Plans a reboot at local time `now`: `None` when the policy never reboots.
/// `at` is the earliest moment (after `grace`), `deadline` the latest the admin allows:
/// the end of the window, or `max_postpone_secs` after `at`.
pub fn plan(
    policy: &RebootPolicy,
    reboot_file: bool,
    now: OffsetDateTime,
    grace: Duration,
) -> Option<ScheduledReboot> {
    let max_postpone = time::Duration::seconds(policy.max_postpone_secs as i64);
    let grace = time::Duration::try_from(grace).unwrap_or(time::Duration::ZERO);
    let mode = match policy.mode {
        RebootMode::Never if reboot_file => RebootMode::Immediately,
        m => m,
    };
    match mode {
        RebootMode::Never => None,
        RebootMode::Immediately => {
            let at = now + grace;
            Some(ScheduledReboot {
                at,
                deadline: at + max_postpone,
            })
        }
        RebootMode::Window => {
            let (start, end) = parse_window(policy.window.as_deref()?)?;
            let (start, end) = (start as i64, end as i64);
            let len = if end > start {
                end - start
            } else {
                end + 1440 - start
            };
            let midnight = now.replace_time(time::Time::MIDNIGHT);
            // The window that contains now, or the next one to open.
            for day in -1..=1i64 {
                let open = midnight + time::Duration::minutes(day * 1440 + start);
                let close = open + time::Duration::minutes(len);
                if now < close {
                    let at = (now + grace).max(open);
                    if at >= close {
                        continue;
                    }
                    return Some(ScheduledReboot {
                        at,
                        deadline: close.min(at + max_postpone).max(at),
                    });
                }
            }
            None
        }
    }
}

/// Moves a scheduled reboot `by` later, never past its deadline.
pub fn postpone(r: &ScheduledReboot, now: OffsetDateTime, by: Duration) -> ScheduledReboot {
    let by = time::Duration::try_from(by).unwrap_or(time::Duration::ZERO);
    ScheduledReboot {
        at: (r.at.max(now) + by).min(r.deadline),
        deadline: r.deadline,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn policy(mode: RebootMode, window: Option<&str>) -> RebootPolicy {
        RebootPolicy {
            mode,
            window: window.map(str::to_owned),
            max_postpone_secs: 3600,
        }
    }

    #[test]
    fn never_unless_the_release_asks() {
        let now = datetime!(2024-05-01 12:00 UTC);
        let p = policy(RebootMode::Never, None);
        assert_eq!(plan(&p, false, now, Duration::ZERO), None);
        let r = plan(&p, true, now, Duration::from_secs(60)).unwrap();
        assert_eq!(r.at, datetime!(2024-05-01 12:01 UTC));
        assert_eq!(r.deadline, datetime!(2024-05-01 13:01 UTC));
    }

    #[test]
    fn window_today_tomorrow_and_across_midnight() {
        let p = policy(RebootMode::Window, Some("02:00-04:00"));
        let inside = plan(&p, false, datetime!(2024-05-01 03:00 UTC), Duration::ZERO).unwrap();
        assert_eq!(inside.at, datetime!(2024-05-01 03:00 UTC));
        assert_eq!(inside.deadline, datetime!(2024-05-01 04:00 UTC));
        let later = plan(&p, false, datetime!(2024-05-01 12:00 UTC), Duration::ZERO).unwrap();
        assert_eq!(later.at, datetime!(2024-05-02 02:00 UTC));
        assert_eq!(later.deadline, datetime!(2024-05-02 03:00 UTC));
        let night = policy(RebootMode::Window, Some("23:00-01:00"));
        let r = plan(
            &night,
            false,
            datetime!(2024-05-02 00:30 UTC),
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(r.at, datetime!(2024-05-02 00:30 UTC));
        assert_eq!(r.deadline, datetime!(2024-05-02 01:00 UTC));
    }

    #[test]
    fn postponing_stops_at_the_deadline() {
        let r = ScheduledReboot {
            at: datetime!(2024-05-01 12:00 UTC),
            deadline: datetime!(2024-05-01 13:00 UTC),
        };
        let now = datetime!(2024-05-01 11:50 UTC);
        let p = postpone(&r, now, Duration::from_secs(1800));
        assert_eq!(p.at, datetime!(2024-05-01 12:30 UTC));
        let p = postpone(&p, now, Duration::from_secs(7200));
        assert_eq!(p.at, r.deadline);
    }
}
