//! The original tool's status table, with emoji-aware alignment.

use std::fmt::Write;
use std::time::SystemTime;

use bento_core::status::{elapsed, HostStatus};
use bento_core::text::display_safe;

/// Display width: emoji and other wide symbols take two columns.
pub fn width(s: &str) -> usize {
    s.chars()
        .map(|c| match c as u32 {
            0x1F000..=0x1FAFF | 0x2600..=0x27BF | 0x23E9..=0x23FA | 0x2B50..=0x2B55 => 2,
            0xFE0F | 0x200D => 0,
            _ => 1,
        })
        .sum()
}

fn pad_left(s: &str, w: usize) -> String {
    format!("{}{s}", " ".repeat(w.saturating_sub(width(s))))
}

fn since(now: SystemTime, t: Option<time::OffsetDateTime>) -> Option<String> {
    let t: SystemTime = t?.into();
    Some(elapsed(now.duration_since(t).unwrap_or_default()))
}

/// Renders the table: machine, local version, remote version, state, elapsed times.
pub fn render(rows: &[HostStatus], now: SystemTime) -> String {
    let mut cells: Vec<[String; 5]> = vec![
        [
            "machine".into(),
            "local version".into(),
            "remote version".into(),
            "state".into(),
            "elapsed time since".into(),
        ],
        [
            "-------".into(),
            "-------------".into(),
            "--------------".into(),
            "-----".into(),
            "------------------".into(),
        ],
    ];
    for h in rows {
        let remote = if h.running_system.is_some() {
            format!("{} {}", h.short_running(), h.match_emoji())
        } else {
            String::new()
        };
        let mut state = format!("{} {}", h.state.label(), h.state.emoji());
        if h.reboot_pending {
            state.push_str(" reboot 🔄");
        }
        if h.offline {
            state.push_str(" offline 📴");
        }
        let mut times = Vec::new();
        if let Some(b) = since(now, h.last_report.as_ref().map(|r| r.received)) {
            // A host that fetched the server's closure built nothing itself.
            let fetched = h.last_report.as_ref().is_some_and(|r| {
                matches!(
                    r.obtained,
                    Some(bento_core::report::Obtained::Fetched { .. })
                )
            });
            times.push(format!(
                "({} {b})",
                if fetched { "fetched" } else { "build" }
            ));
        }
        if let Some(c) = since(now, h.published_at) {
            times.push(format!("(new config {c})"));
        }
        // The running system comes from the host's heartbeat: a control sequence
        // in it must show, not redraw the admin's terminal.
        cells.push(
            [
                h.host.clone(),
                h.short_expected().to_owned(),
                remote,
                state,
                times.join(" "),
            ]
            .map(|c| display_safe(&c).into_owned()),
        );
    }
    let mut widths = [0usize; 5];
    for row in &cells {
        for (i, c) in row.iter().enumerate() {
            widths[i] = widths[i].max(width(c));
        }
    }
    let mut out = String::with_capacity(cells.len() * 100);
    for row in &cells {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| pad_left(c, widths[i]))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}
