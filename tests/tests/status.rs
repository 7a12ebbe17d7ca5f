//! `bento status` decides every state of DESIGN.md from reports in the real on-disk
//! format, with the server's own file times, and decides the same on a copy of the
//! chroot (`cp -a`, `rsync -a`, a `tar` backup restored).

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::Result;
use bento_core::report::{AgentState, ReportStatus};
use bento_tests::cli::{current_release, BentoFixture};
use bento_tests::reports::{set_mtime, write_heartbeat, Report};
use bento_tests::run;
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

/// How an admin copies, moves or restores a chroot.
#[derive(Debug, Clone, Copy)]
enum CopyMethod {
    CpA,
    RsyncA,
    /// GNU tar's default format keeps whole seconds only.
    Tar,
}

fn copy_chroot(how: CopyMethod, src: &Path, dst: &Path) -> Result<()> {
    match how {
        CopyMethod::CpA => {
            run(Command::new("cp").arg("-a").arg(src).arg(dst))?;
        }
        CopyMethod::RsyncA => {
            fs::create_dir(dst)?;
            let from = format!("{}/", src.display());
            run(Command::new("rsync").arg("-a").arg(from).arg(dst))?;
        }
        CopyMethod::Tar => {
            let archive = dst.with_extension("tar");
            run(Command::new("tar")
                .arg("-C")
                .arg(src)
                .arg("-cf")
                .arg(&archive)
                .arg("."))?;
            fs::create_dir(dst)?;
            run(Command::new("tar")
                .arg("-C")
                .arg(dst)
                .arg("-xf")
                .arg(&archive))?;
        }
    }
    Ok(())
}

/// `bento status --json` of a bento directory whose chroot is `chroot`.
fn status_of_chroot(f: &BentoFixture, chroot: &Path, label: &str) -> Result<Vec<Value>> {
    let dir = f.dir.join(format!("bento-{label}"));
    fs::create_dir_all(dir.join("hosts"))?;
    fs::write(
        dir.join("bento.toml"),
        format!("chroot_dir = {:?}\n", chroot.display().to_string()),
    )?;
    let out = run(f.cmd().env("BENTO_DIR", &dir).args(["status", "--json"]))?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

const OLD_REVISION: &str = "0123456789abcdef0123456789abcdef";
const OLD_SYSTEM: &str = "00000000aaaa-nixos-system-old-0";

/// Hosts of the copy test: `a-` report with sidecars (bento-agent), `l-` without
/// (the original shell clients), each with the state it must show.
const COPY_FLEET: [(&str, &str); 19] = [
    ("a-new", "new-machine"),
    ("a-ok", "up-to-date"),
    ("a-auto", "auto-updated"),
    ("a-sync", "sync-pending"),
    ("a-rebuild", "rebuild-pending"),
    ("a-updating", "updating"),
    ("a-fail", "failing"),
    ("a-rollback", "rolled-back"),
    ("a-old", "rebuild-pending"),
    ("a-offline", "up-to-date"),
    ("a-reboot", "up-to-date"),
    ("l-ok", "up-to-date"),
    ("l-auto", "auto-updated"),
    ("l-applied-auto", "auto-updated"),
    ("l-sync", "sync-pending"),
    ("l-rebuild", "rebuild-pending"),
    ("l-fail", "failing"),
    ("l-rollback", "rolled-back"),
    ("l-extra", "extra-logs"),
];

/// Every state, legacy and sidecar hosts, each with a history from before the
/// publication as a fleet in use has, then the reports since it.
fn copy_fleet() -> Result<Fleet> {
    let mut f = BentoFixture::new("status-copy")?;
    let p = unique_prefix();
    let names: Vec<String> = COPY_FLEET.iter().map(|(s, _)| format!("{p}-{s}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    f.fleet.flake_host(&format!("{p}-fleet"), &refs)?;
    f.ok(&["deploy"])?;
    let fl = Fleet { f, p };

    // Reports received a day before the publication (the file times a backup keeps).
    let day_ago = SystemTime::now() - Duration::from_secs(86400);
    for (short, _) in COPY_FLEET.iter().filter(|(s, _)| *s != "a-new") {
        let host = fl.host(short);
        let exp = fl.expected(short);
        let system = if short.ends_with("-sync") {
            exp.as_str()
        } else {
            OLD_SYSTEM
        };
        let mut r = if short.starts_with("a-") {
            Report::agent(&host, system, ReportStatus::Success, OLD_REVISION)
        } else {
            Report::legacy(&host, system, ReportStatus::Success)
        };
        r.time -= time::Duration::days(2);
        let log = r.write(&fl.logs(short))?;
        set_mtime(&fl.logs(short).join(&log), day_ago)?;
        if r.revision.is_some() {
            set_mtime(
                &fl.logs(short).join(log.replace(".log.gz", ".json")),
                day_ago,
            )?;
        }
    }
    // The publication comes after every history file changed (the old rule compared
    // change times), then the reports come a clear second later.
    let published = SystemTime::now() + Duration::from_secs(2);
    for (short, _) in COPY_FLEET {
        set_mtime(
            &fl.f.host_chroot(&fl.host(short)).join("last_change_date"),
            published,
        )?;
    }
    let later = published + Duration::from_millis(1100);
    assert!(bento_tests::wait_until(Duration::from_secs(10), || {
        SystemTime::now() >= later
    }));

    let agent = |short: &str, status, minutes_ago: i64| -> Result<()> {
        let host = fl.host(short);
        let (exp, rev) = (fl.expected(short), fl.revision(short));
        let mut r = Report::agent(&host, &exp, status, &rev);
        r.time -= time::Duration::minutes(minutes_ago);
        r.write(&fl.logs(short))?;
        Ok(())
    };
    let legacy = |short: &str, status, minutes_ago: i64| -> Result<()> {
        let host = fl.host(short);
        let exp = fl.expected(short);
        let mut r = Report::legacy(&host, &exp, status);
        r.time -= time::Duration::minutes(minutes_ago);
        r.write(&fl.logs(short))?;
        Ok(())
    };
    use ReportStatus::*;
    agent("a-ok", Success, 0)?;
    agent("a-auto", Autoupdate, 0)?;
    agent("a-updating", Success, 0)?;
    agent("a-fail", Failure, 0)?;
    agent("a-rollback", Rollback, 0)?;
    agent("a-offline", Success, 0)?;
    agent("a-reboot", Success, 0)?;
    let old_host = fl.host("a-old");
    Report::agent(
        &old_host,
        "11111111bbbb-nixos-system-old-0",
        Success,
        OLD_REVISION,
    )
    .write(&fl.logs("a-old"))?;
    legacy("l-ok", Success, 0)?;
    legacy("l-auto", Autoupdate, 0)?;
    legacy("l-applied-auto", Success, 2)?;
    legacy("l-applied-auto", Autoupdate, 1)?;
    legacy("l-fail", Failure, 0)?;
    legacy("l-rollback", Rollback, 0)?;
    legacy("l-extra", Failure, 2)?;
    legacy("l-extra", Success, 1)?;

    let hb = |short: &str, state, reboot| {
        let (exp, rev) = (fl.expected(short), fl.revision(short));
        write_heartbeat(
            &fl.logs(short),
            &fl.host(short),
            Some(&exp),
            Some(&rev),
            state,
            reboot,
        )
    };
    hb("a-updating", AgentState::Updating, false)?;
    hb("a-offline", AgentState::Idle, false)?;
    set_mtime(
        &fl.logs("a-offline").join("heartbeat.json"),
        SystemTime::now() - Duration::from_secs(3600),
    )?;
    hb("a-reboot", AgentState::Idle, true)?;
    Ok(fl)
}

/// What changed between two `bento status --json` outputs, host by host.
fn differences(before: &[Value], after: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    if before.len() != after.len() {
        out.push(format!(
            "{} hosts before, {} after",
            before.len(),
            after.len()
        ));
    }
    for b in before {
        let host = b["host"].as_str().unwrap_or("?");
        match after.iter().find(|a| a["host"] == b["host"]) {
            None => out.push(format!("{host}: missing")),
            Some(a) if a != b => {
                let fields: Vec<String> = b
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(k, v)| a.get(k.as_str()) != Some(v))
                    .map(|(k, v)| {
                        format!("{k}: {v} -> {}", a.get(k.as_str()).unwrap_or(&Value::Null))
                    })
                    .collect();
                out.push(format!("{host}: {}", fields.join("; ")));
            }
            Some(_) => {}
        }
    }
    out
}

#[test]
fn status_is_the_same_after_copying_the_chroot() -> Result<()> {
    let fl = copy_fleet()?;
    let before = fl.f.status()?;
    let mut problems = Vec::new();
    for how in [CopyMethod::CpA, CopyMethod::RsyncA, CopyMethod::Tar] {
        let label = format!("{how:?}").to_lowercase();
        let copy = fl.f.dir.join(format!("chroot-{label}"));
        copy_chroot(how, &fl.f.chroot(), &copy)?;
        let after = status_of_chroot(&fl.f, &copy, &label)?;
        for d in differences(&before, &after) {
            problems.push(format!("after {how:?}: {d}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    for (short, state) in COPY_FLEET {
        let row = by_host(&before, &fl.host(short));
        assert_eq!(row["state"], state, "{short}: {row:#}");
    }
    assert_eq!(by_host(&before, &fl.host("a-offline"))["offline"], true);
    assert_eq!(
        by_host(&before, &fl.host("a-reboot"))["reboot_pending"],
        true
    );
    assert_eq!(
        by_host(&before, &fl.host("l-ok"))["reports_since_publication"],
        1
    );
    Ok(())
}

#[test]
fn a_self_update_after_a_release_is_auto_updated_and_contradictions_are_extra_logs() -> Result<()> {
    use ReportStatus::*;
    // Oldest first; every one arrived after the publication.
    let cases: [(&str, &[ReportStatus], &str); 7] = [
        ("applied-auto", &[Success, Autoupdate], "auto-updated"),
        (
            "applied-autos",
            &[Success, Autoupdate, Autoupdate],
            "auto-updated",
        ),
        ("auto-applied", &[Autoupdate, Success], "up-to-date"),
        ("twice", &[Success, Success], "up-to-date"),
        ("fail-ok", &[Failure, Success], "extra-logs"),
        ("ok-rollback", &[Success, Rollback], "extra-logs"),
        ("fail-auto", &[Failure, Autoupdate], "extra-logs"),
    ];
    let mut f = BentoFixture::new("status-story")?;
    let p = unique_prefix();
    let names: Vec<String> = cases.iter().map(|(s, _, _)| format!("{p}-{s}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    f.fleet.flake_host(&format!("{p}-fleet"), &refs)?;
    f.ok(&["deploy"])?;
    let fl = Fleet { f, p };
    for (short, reports, _) in cases {
        fl.published_ago(short, 120)?;
        let host = fl.host(short);
        let exp = fl.expected(short);
        for (i, status) in reports.iter().enumerate() {
            let mut r = Report::legacy(&host, &exp, *status);
            r.time -= time::Duration::minutes((reports.len() - i) as i64);
            r.write(&fl.logs(short))?;
        }
    }
    let rows = fl.f.status()?;
    let mut wrong = Vec::new();
    for (short, reports, state) in cases {
        let row = by_host(&rows, &fl.host(short));
        if row["state"] != state {
            wrong.push(format!(
                "{short} {reports:?}: {} instead of {state}",
                row["state"]
            ));
        }
        if row["reports_since_publication"] != reports.len() {
            wrong.push(format!("{short}: {}", row["reports_since_publication"]));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let auto = by_host(&rows, &fl.host("applied-auto"));
    assert_eq!(auto["last_report"]["status"], "autoupdate", "{auto:#}");
    Ok(())
}

#[test]
fn a_host_cannot_date_a_report_after_the_next_publication() -> Result<()> {
    let mut f = BentoFixture::new("status-forged")?;
    let host = format!("{}-forger", unique_prefix());
    f.fleet.nonflake_host(&host)?;
    f.ok(&["deploy"])?;
    let logs = f.host_chroot(&host).join("logs");
    // With OpenSSH a host may `put -p` or setstat its upload's times: a report dated a
    // day ahead must not count after a publication that comes later.
    let log = Report::legacy(
        &host,
        "abcdefgh-nixos-system-forger-1",
        ReportStatus::Success,
    )
    .write(&logs)?;
    set_mtime(
        &logs.join(log),
        SystemTime::now() + Duration::from_secs(86400),
    )?;
    set_mtime(
        &f.host_chroot(&host).join("last_change_date"),
        SystemTime::now() + Duration::from_secs(60),
    )?;
    let st = f.host_status(&host)?;
    assert_eq!(st["state"], "rebuild-pending", "{st:#}");
    assert_eq!(st["reports_since_publication"], 0, "{st:#}");
    Ok(())
}
