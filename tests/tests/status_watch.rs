//! `bento status` in a terminal redraws when a report lands in the chroot.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Result;
use bento_core::report::ReportStatus;
use bento_tests::cli::{current_release, BentoFixture};
use bento_tests::reports::{set_mtime, Report};
use bento_tests::sshd::unique_prefix;
use bento_tests::{bins, nixenv, wait_until};

#[test]
fn the_table_redraws_when_a_report_arrives() -> Result<()> {
    let mut f = BentoFixture::new("status-watch")?;
    let host = format!("{}-web", unique_prefix());
    f.fleet.flake_host(&host, &[&host])?;
    f.ok(&["deploy"])?;
    let hc = f.host_chroot(&host);
    set_mtime(
        &hc.join("last_change_date"),
        SystemTime::now() - Duration::from_secs(60),
    )?;

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
    let screen = Arc::new(Mutex::new(String::new()));
    let mut out = child.stdout.take().unwrap();
    let s2 = screen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            s2.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let seen = |needle: &str| screen.lock().unwrap().contains(needle);
    let ok = wait_until(Duration::from_secs(20), || seen("new machine"));
    assert!(ok, "no table drawn: {}", screen.lock().unwrap());
    assert!(seen("(watching "), "{}", screen.lock().unwrap());

    let states = std::fs::read_to_string(f.chroot().join("states.txt"))?;
    let expected = states
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{host}=")))
        .unwrap()
        .to_owned();
    let rev = current_release(&hc).unwrap().0;
    Report::agent(&host, &expected, ReportStatus::Success, &rev).write(&hc.join("logs"))?;
    let ok = wait_until(Duration::from_secs(10), || seen("up to date 💚"));
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok, "no redraw after the report: {}", screen.lock().unwrap());
    Ok(())
}
