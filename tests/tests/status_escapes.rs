//! A compromised host writes terminal control sequences into everything it
//! controls (report names, sidecars, heartbeat); `bento status` and `bento diff`
//! must show them escaped and never send one to the admin's terminal.

use std::fs;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use bento_core::report::{AgentState, ReportName, ReportStatus};
use bento_core::text::is_unsafe;
use bento_tests::cli::{current_release, BentoFixture};
use bento_tests::reports::{write_heartbeat, Report};
use bento_tests::sshd::unique_prefix;
use bento_tests::{bins, nixenv, wait_until};

/// Title change, bell, carriage return, backspace, clear screen (C0 and C1 CSI),
/// erase line, a bidi override and a line separator.
const HOSTILE: &str = "\x1b]0;pwned\x07\r\x08\x1b[2J\u{9b}2K\u{202e}\u{2028}\x7fX";

/// Every unsafe character in `bytes` other than newline, with its position.
/// Anything not UTF-8 counts too (a lone C1 byte).
fn raw_controls(bytes: &[u8]) -> Vec<(usize, char)> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return vec![(0, '\u{fffd}')];
    };
    text.char_indices()
        .filter(|&(_, c)| is_unsafe(c) && c != '\n')
        .collect()
}

fn hostile_fleet(label: &str) -> Result<(BentoFixture, String)> {
    let mut f = BentoFixture::new(label)?;
    let host = format!("{}-evil", unique_prefix());
    f.fleet.flake_host(&host, &[&host])?;
    f.ok(&["deploy"])?;
    let hc = f.host_chroot(&host);
    let logs = hc.join("logs");
    let rev = current_release(&hc).unwrap().0;
    // The heartbeat's system is the table's "remote version" (its first 8 chars)
    // and `bento diff`'s "running" system.
    let system = format!("\x1b]0;pw\x07{HOSTILE}");
    write_heartbeat(
        &logs,
        &host,
        Some(&system),
        Some(&format!("{rev}{HOSTILE}")),
        AgentState::Idle,
        false,
    )?;
    // A report whose name is refused becomes a warning quoting the name.
    let name = format!("2026-01-01T00:00_{HOSTILE}\n_success.log.gz");
    fs::write(logs.join(name), b"x")?;
    // A sidecar that does not parse becomes a warning quoting serde's error,
    // which quotes the host's string.
    let r = Report::agent(
        &host,
        "aaaa-nixos-system-evil-1",
        ReportStatus::Failure,
        &rev,
    );
    let log = r.write(&logs)?;
    let sidecar = ReportName::parse(&log).unwrap().sidecar_file_name();
    fs::write(
        logs.join(sidecar),
        serde_json::to_string(&serde_json::json!({ "format": HOSTILE }))?,
    )?;
    Ok((f, host))
}

fn assert_clean(what: &str, bytes: &[u8]) {
    let bad = raw_controls(bytes);
    assert!(
        bad.is_empty(),
        "{what} sent raw control characters {bad:?}:\n{}",
        String::from_utf8_lossy(bytes)
    );
}

#[test]
fn status_once_json_and_diff_show_host_text_escaped() -> Result<()> {
    let (f, host) = hostile_fleet("escapes-once")?;

    let out = f.run(&["status", "--once"])?;
    assert_clean("status --once (stdout)", &out.stdout);
    assert_clean("status --once (stderr)", &out.stderr);
    let table = String::from_utf8(out.stdout)?;
    let row = table
        .lines()
        .find(|l| l.starts_with(&host))
        .unwrap_or_else(|| panic!("no row for {host}:\n{table}"));
    assert!(row.contains("\\x1b]0;pw\\x07"), "{row}");
    let warnings = String::from_utf8(out.stderr)?;
    assert!(warnings.contains("\\x1b[2J\\x9b2K\\u{202e}"), "{warnings}");
    assert!(warnings.contains("\\x0a_success.log.gz"), "{warnings}");
    assert!(
        warnings
            .lines()
            .all(|l| l.is_empty() || l.starts_with("warning: ")),
        "a host forged a line:\n{warnings}"
    );

    let out = f.run(&["status", "--json"])?;
    assert_clean("status --json", &out.stdout);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
    let row = rows.iter().find(|r| r["host"] == host.as_str()).unwrap();
    // JSON keeps the exact value for scripts.
    assert_eq!(
        row["running_system"].as_str().unwrap(),
        format!("\x1b]0;pw\x07{HOSTILE}")
    );

    let out = f.run(&["diff"])?;
    assert_clean("diff (stdout)", &out.stdout);
    assert_clean("diff (stderr)", &out.stderr);
    let text = String::from_utf8(out.stdout)?;
    assert!(
        text.contains(&format!(
            "Changes in {host} between \\x1b]0;pw\\x07\\x1b]0;pwned"
        )),
        "{text}"
    );
    Ok(())
}

#[test]
fn status_in_a_terminal_shows_host_text_escaped() -> Result<()> {
    let (f, host) = hostile_fleet("escapes-tty")?;
    // `script` gives bento a real pseudo-terminal, as an admin's shell would.
    let mut child = Command::new("script")
        .args(["-qfec"])
        .arg(format!("{} status", bins::bin("bento").display()))
        .arg("/dev/null")
        .env("BENTO_DIR", f.bento_dir())
        .envs(nixenv::nix_env())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let screen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let mut out = child.stdout.take().unwrap();
    let s2 = screen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            s2.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let seen = |needle: &str| String::from_utf8_lossy(&screen.lock().unwrap()).contains(needle);
    let ok = wait_until(Duration::from_secs(20), || seen("(watching "));
    let _ = child.kill();
    let _ = child.wait();
    let bytes = screen.lock().unwrap().clone();
    assert!(ok, "no table drawn: {}", String::from_utf8_lossy(&bytes));
    let text = String::from_utf8(bytes)?;
    // What bento itself sends: its redraw, and the terminal's CR before LF.
    let own = text.replace("\x1b[2J\x1b[H", "").replace("\r\n", "\n");
    assert_clean("status in a terminal", own.as_bytes());
    assert!(own.contains(&host), "{own}");
    assert!(own.contains("\\x1b]0;pw\\x07"), "{own}");
    assert!(
        own.contains("\\u{202e}"),
        "warnings not shown escaped: {own}"
    );
    Ok(())
}
