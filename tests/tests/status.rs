//! `bento status` decides every state of DESIGN.md from reports in the real on-disk
//! format, with the server's own file times.

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::Result;
use bento_core::report::{AgentState, ReportStatus};
use bento_tests::cli::{current_release, BentoFixture};
use bento_tests::reports::{set_mtime, write_heartbeat, Report};
use bento_tests::sshd::unique_prefix;
use serde_json::Value;

struct Fleet {
    f: BentoFixture,
    p: String,
}

impl Fleet {
    fn host(&self, short: &str) -> String {
        format!("{}-{short}", self.p)
    }
    fn logs(&self, short: &str) -> std::path::PathBuf {
        self.f.host_chroot(&self.host(short)).join("logs")
    }
    fn revision(&self, short: &str) -> String {
        current_release(&self.f.host_chroot(&self.host(short)))
            .unwrap()
            .0
    }
    fn expected(&self, short: &str) -> String {
        let states = fs::read_to_string(self.f.chroot().join("states.txt")).unwrap();
        let host = self.host(short);
        states
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{host}=")))
            .unwrap()
            .to_owned()
    }
    /// Places the publication of `short` `secs` seconds in the past (negative: future).
    fn published_ago(&self, short: &str, secs: i64) -> Result<()> {
        let t = if secs >= 0 {
            SystemTime::now() - Duration::from_secs(secs as u64)
        } else {
            SystemTime::now() + Duration::from_secs((-secs) as u64)
        };
        set_mtime(
            &self
                .f
                .host_chroot(&self.host(short))
                .join("last_change_date"),
            t,
        )
    }
}

const SHORTS: [&str; 14] = [
    "new",
    "ok",
    "auto",
    "sync",
    "rebuild",
    "updating",
    "fail",
    "rollback",
    "extra",
    "old",
    "failure-lab",
    "offline",
    "reboot",
    "junk",
];

fn fleet() -> Result<Fleet> {
    let mut f = BentoFixture::new("status")?;
    let p = unique_prefix();
    let names: Vec<String> = SHORTS.iter().map(|s| format!("{p}-{s}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    f.fleet.flake_host(&format!("{p}-fleet"), &refs)?;
    f.ok(&["deploy"])?;
    Ok(Fleet { f, p })
}

fn by_host(rows: &[Value], host: &str) -> Value {
    rows.iter().find(|r| r["host"] == host).cloned().unwrap()
}

#[test]
fn every_state_is_decided_from_parsed_reports() -> Result<()> {
    let fl = fleet()?;
    let h = |s: &str| fl.host(s);
    for s in SHORTS.iter().filter(|s| **s != "new") {
        fl.published_ago(s, 120)?;
    }
    let agent = |short: &'static str, status| -> Result<()> {
        let host = h(short);
        let exp = fl.expected(short);
        let rev = fl.revision(short);
        Report::agent(&host, &exp, status, &rev).write(&fl.logs(short))?;
        Ok(())
    };
    agent("ok", ReportStatus::Success)?;
    agent("auto", ReportStatus::Autoupdate)?;
    agent("fail", ReportStatus::Failure)?;
    agent("rollback", ReportStatus::Rollback)?;
    agent("failure-lab", ReportStatus::Success)?;

    // Reports that came before the publication: pending, by the system they ran.
    let exp = fl.expected("sync");
    Report::legacy(&h("sync"), &exp, ReportStatus::Success).write(&fl.logs("sync"))?;
    fl.published_ago("sync", -5)?;
    Report::legacy(
        &h("rebuild"),
        "00000000aaaa-nixos-system-old-0",
        ReportStatus::Success,
    )
    .write(&fl.logs("rebuild"))?;
    fl.published_ago("rebuild", -5)?;

    // Two reports of an original shell client since publication.
    let exp = fl.expected("extra");
    let extra = h("extra");
    let mut r = Report::legacy(&extra, &exp, ReportStatus::Success);
    r.write(&fl.logs("extra"))?;
    r.time -= time::Duration::minutes(1);
    r.status = ReportStatus::Failure;
    r.write(&fl.logs("extra"))?;

    // A success of an older revision, received after the publication: not up to date
    // (the original tool's first caveat).
    Report::agent(
        &h("old"),
        "11111111bbbb-nixos-system-old-0",
        ReportStatus::Success,
        "0123456789abcdef0123456789abcdef",
    )
    .write(&fl.logs("old"))?;

    write_heartbeat(
        &fl.logs("updating"),
        &h("updating"),
        None,
        None,
        AgentState::Updating,
        false,
    )?;
    agent("updating", ReportStatus::Success)?;

    agent("offline", ReportStatus::Success)?;
    write_heartbeat(
        &fl.logs("offline"),
        &h("offline"),
        None,
        None,
        AgentState::Idle,
        false,
    )?;
    set_mtime(
        &fl.logs("offline").join("heartbeat.json"),
        SystemTime::now() - Duration::from_secs(3600),
    )?;

    agent("reboot", ReportStatus::Success)?;
    let (exp, rev) = (fl.expected("reboot"), fl.revision("reboot"));
    write_heartbeat(
        &fl.logs("reboot"),
        &h("reboot"),
        Some(&exp),
        Some(&rev),
        AgentState::Idle,
        true,
    )?;

    // A compromised or confused host: junk names and a broken sidecar are skipped.
    agent("junk", ReportStatus::Success)?;
    let junk = fl.logs("junk");
    fs::write(junk.join("20240101-0000_x_exploded.log.gz"), b"x")?;
    fs::write(junk.join("not-a-report.log.gz"), b"x")?;
    let junk_host = h("junk");
    let mut r = Report::legacy(
        &junk_host,
        "aaaa-nixos-system-junk-1",
        ReportStatus::Failure,
    );
    r.time -= time::Duration::days(400);
    let name = r.write(&junk)?;
    fs::write(junk.join(name.replace(".log.gz", ".json")), b"{ not json")?;

    let rows = fl.f.status()?;
    let expect = [
        ("new", "new-machine"),
        ("ok", "up-to-date"),
        ("auto", "auto-updated"),
        ("sync", "sync-pending"),
        ("rebuild", "rebuild-pending"),
        ("updating", "updating"),
        ("fail", "failing"),
        ("rollback", "rolled-back"),
        ("extra", "extra-logs"),
        ("old", "rebuild-pending"),
        ("failure-lab", "up-to-date"),
        ("offline", "up-to-date"),
        ("reboot", "up-to-date"),
        ("junk", "up-to-date"),
    ];
    for (short, state) in expect {
        let row = by_host(&rows, &h(short));
        assert_eq!(row["state"], state, "{short}: {row:#}");
    }
    let ok = by_host(&rows, &h("ok"));
    assert_eq!(ok["running_system"], ok["expected_system"]);
    assert_eq!(ok["last_report"]["status"], "success");
    assert_eq!(ok["last_report"]["revision"], ok["revision"].clone());
    assert_eq!(ok["offline"], false);
    assert_eq!(by_host(&rows, &h("offline"))["offline"], true);
    assert_eq!(by_host(&rows, &h("reboot"))["reboot_pending"], true);
    assert_eq!(by_host(&rows, &h("ok"))["reboot_pending"], false);
    assert!(by_host(&rows, &h("fail"))["last_seen"].is_string());
    assert!(by_host(&rows, &h("new"))["last_report"].is_null());
    let junk_row = by_host(&rows, &h("junk"));
    let warnings = junk_row["warnings"].to_string();
    assert!(
        warnings.contains("exploded") && warnings.contains("not-a-report"),
        "{warnings}"
    );

    // The table of the original tool: one line per host with label and emoji.
    let out = fl.f.ok(&["status"])?;
    let table = String::from_utf8(out.stdout)?;
    let line = |short: &str| {
        table
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{} ", h(short))))
            .unwrap_or_else(|| panic!("{short} missing from\n{table}"))
            .to_owned()
    };
    assert!(table.starts_with(&format!(
        "{}machine",
        " ".repeat(table.lines().next().unwrap().find('m').unwrap())
    )));
    assert!(line("ok").contains("up to date 💚"), "{table}");
    assert!(
        line("ok").contains(&format!("{} 💚", &fl.expected("ok")[..8])),
        "{table}"
    );
    assert!(line("rebuild").contains("rebuild pending 🚩"), "{table}");
    assert!(line("rebuild").contains("00000000 🛑"), "{table}");
    assert!(line("fail").contains("failing 🔥"), "{table}");
    assert!(line("rollback").contains("rolled back ⏪"), "{table}");
    assert!(line("auto").contains("auto updated 🤖"), "{table}");
    assert!(line("new").contains("new machine"), "{table}");
    assert!(line("reboot").contains("reboot 🔄"), "{table}");
    assert!(line("offline").contains("offline 📴"), "{table}");
    assert!(
        line("ok").contains("(build ") && line("ok").contains("(new config 2m)"),
        "{table}"
    );
    let err = String::from_utf8(out.stderr)?;
    assert!(err.contains("exploded"), "{err}");
    Ok(())
}

#[test]
fn non_flake_hosts_show_non_flakes_and_a_pin() -> Result<()> {
    let mut f = BentoFixture::new("status-nonflake")?;
    let host = format!("{}-lab", unique_prefix());
    f.fleet.nonflake_host(&host)?;
    f.ok(&["deploy"])?;
    // File times have a coarse clock: place the publication clearly before the report.
    set_mtime(
        &f.host_chroot(&host).join("last_change_date"),
        SystemTime::now() - Duration::from_secs(60),
    )?;
    Report::legacy(&host, "abcdefgh-nixos-system-lab-1", ReportStatus::Success)
        .write(&f.host_chroot(&host).join("logs"))?;
    let st = f.host_status(&host)?;
    assert_eq!(st["state"], "up-to-date");
    assert!(st["expected_system"].is_null());
    let table = String::from_utf8(f.ok(&["status"])?.stdout)?;
    let line = table.lines().find(|l| l.contains(&host)).unwrap();
    assert!(
        line.contains("non-flakes") && line.contains("abcdefgh 📌"),
        "{table}"
    );
    Ok(())
}

#[test]
fn a_compromised_host_cannot_hang_or_redirect_status() -> Result<()> {
    let mut f = BentoFixture::new("status-hostile")?;
    let host = format!("{}-evil", unique_prefix());
    f.fleet.nonflake_host(&host)?;
    f.ok(&["deploy"])?;
    let logs = f.host_chroot(&host).join("logs");
    // A FIFO as heartbeat would block a plain open() forever; a symlink would make the
    // server read a file of its own.
    let fifo = logs.join("heartbeat.json");
    let st = Command::new("mkfifo").arg(&fifo).status()?;
    assert!(st.success());
    let mut r = Report::legacy(&host, "aaaa-nixos-system-evil-1", ReportStatus::Success);
    let name = r.write(&logs)?;
    std::os::unix::fs::symlink("/etc/shadow", logs.join(name.replace(".log.gz", ".json")))?;
    r.time -= time::Duration::minutes(5);
    r.write(&logs)?;

    let mut child = f
        .cmd()
        .args(["status", "--json"])
        .stdout(Stdio::piped())
        .spawn()?;
    let done = bento_tests::wait_until(Duration::from_secs(20), || {
        child.try_wait().ok().flatten().is_some()
    });
    if !done {
        let _ = child.kill();
    }
    assert!(done, "bento status hung on a FIFO in a host's logs/");
    let out = child.wait_with_output()?;
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout)?;
    let row = by_host(&rows, &host);
    let warnings = row["warnings"].to_string();
    assert!(warnings.contains("heartbeat.json"), "{warnings}");
    assert!(!warnings.contains("root:"), "{warnings}");
    Ok(())
}
