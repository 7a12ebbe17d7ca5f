//! The one-command demo: every demo host reaches "up to date" through bento's own
//! SFTP server, real agents and the real panel, and stopping it stops them all.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use bento_tests::{bins, wait_for, wait_until, TestDir};

#[test]
fn the_demo_fleet_comes_up_to_date_rolls_out_a_change_and_stops() -> Result<()> {
    let dir = TestDir::new("demo")?;
    let demo_dir = dir.join("demo");
    let mut child = Command::new(bins::bin("bento-demo"))
        .arg("--dir")
        .arg(&demo_dir)
        .args(["--listen", "127.0.0.1:0", "--interval", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut panel, mut sftp, mut status_cmd) = (None, None, None);
    while status_cmd.is_none() {
        let line = lines.next().context("the demo ended before starting")??;
        let first = |rest: &str| rest.split_whitespace().next().unwrap().to_owned();
        if let Some(rest) = line.trim().strip_prefix("Panel:") {
            panel = Some(first(rest));
        } else if let Some(rest) = line.trim().strip_prefix("SFTP:") {
            sftp = Some(first(rest));
        } else if let Some(rest) = line.trim().strip_prefix("Status:") {
            status_cmd = Some(rest.split("   (").next().unwrap().trim().to_owned());
        }
    }
    let panel = panel.context("no Panel: line before the Status: line")?;
    let sftp = sftp.context("no SFTP: line before the Status: line")?;
    let status_cmd = status_cmd.unwrap();
    let sftp: std::net::SocketAddr = sftp.parse()?;
    std::thread::spawn(move || for _ in lines {});

    let status = || -> Option<Vec<serde_json::Value>> {
        let out = Command::new(bins::bin("bento"))
            .args(["status", "--json"])
            .env("BENTO_DIR", demo_dir.join("bento"))
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    };
    let all_up = wait_for(Duration::from_secs(180), || {
        let rows = status()?;
        (rows.len() == 3 && rows.iter().all(|r| r["state"] == "up-to-date")).then_some(rows)
    });
    let healthz = Command::new("curl")
        .args(["-fsS", &format!("{panel}healthz")])
        .output();
    // What a newcomer does next: change a host's file, deploy from the panel (its
    // API here), and watch the change roll out to the hosts of that flake.
    let rollout = all_up
        .as_ref()
        .map(|rows| -> Result<Vec<serde_json::Value>> {
            let rev = |rows: &[serde_json::Value], h: &str| {
                rows.iter()
                    .find(|r| r["host"] == h)
                    .map(|r| r["revision"].clone())
            };
            let before: Vec<_> = ["demo-web", "demo-db", "demo-lab"]
                .iter()
                .map(|h| rev(rows, h))
                .collect();
            let token = Command::new(bins::bin("bento"))
                .args(["token", "add", "demo-test"])
                .env("BENTO_DIR", demo_dir.join("bento"))
                .output()?;
            anyhow::ensure!(token.status.success(), "bento token add: {token:?}");
            let token = String::from_utf8(token.stdout)?.trim().to_owned();
            std::fs::write(
                demo_dir.join("bento/hosts/demo-office/motd.txt"),
                "Changed by the demo test.\n",
            )?;
            let post = Command::new("curl")
                .args(["-fsS", "-X", "POST", "-H", "Content-Type: application/json"])
                .args(["-H", &format!("Authorization: Bearer {token}")])
                .args(["-d", r#"{"kind":"deploy"}"#, &format!("{panel}api/v1/jobs")])
                .output()?;
            anyhow::ensure!(post.status.success(), "POST /api/v1/jobs: {post:?}");
            wait_for(Duration::from_secs(180), || {
                let rows = status()?;
                let changed = |h: &str, i: usize| rev(&rows, h) != before[i];
                let up = rows.iter().all(|r| r["state"] == "up-to-date");
                (up && changed("demo-web", 0) && changed("demo-db", 1) && !changed("demo-lab", 2))
                    .then_some(rows)
            })
            .with_context(|| format!("the change did not roll out: {:#?}", status()))
        });
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    let exited = wait_until(Duration::from_secs(30), || {
        child.try_wait().ok().flatten().is_some()
    });
    // The banner's status command, pasted into a new shell: no BENTO_DIR, no
    // NIX_PATH or NIX_CONFIG, a plain PATH.
    let pasted = Command::new("sh")
        .args(["-c", &format!("{status_cmd} --once")])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", dir.path())
        .output()?;
    let rows = all_up.with_context(|| format!("demo hosts not up to date: {:#?}", status()))?;
    let table = String::from_utf8_lossy(&pasted.stdout);
    assert!(
        pasted.status.success()
            && ["demo-db", "demo-lab", "demo-web"]
                .iter()
                .all(|h| table.contains(h)),
        "`{status_cmd} --once` in a new shell: {pasted:?}"
    );
    let hosts: Vec<&str> = rows.iter().map(|r| r["host"].as_str().unwrap()).collect();
    assert_eq!(hosts, ["demo-db", "demo-lab", "demo-web"]);
    let h = healthz?;
    assert!(h.status.success(), "{panel}healthz: {h:?}");
    rollout.expect("all up")?;
    assert!(exited, "the demo did not stop on SIGTERM");
    // The demo's hosts came through bento's own SFTP server: nothing else served
    // them, and it is gone with the demo.
    assert!(
        std::net::TcpStream::connect_timeout(&sftp, Duration::from_secs(2)).is_err(),
        "the SFTP server still listens on {sftp}"
    );
    Ok(())
}

/// What CI runs for the README's first command: `--check` exits 0 once every
/// demo host is up to date, and leaves no process behind.
#[test]
fn the_demo_check_mode_exits_once_every_host_is_up_to_date() -> Result<()> {
    let dir = TestDir::new("demo-check")?;
    let out = Command::new(bins::bin("bento-demo"))
        .arg("--dir")
        .arg(dir.join("demo"))
        .args(["--listen", "127.0.0.1:0", "--interval", "2", "--check"])
        .stdin(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("check passed: 3 hosts up to date"), "{text}");
    // A check that cannot pass fails with a pointer to the logs instead of hanging.
    let out = Command::new(bins::bin("bento-demo"))
        .arg("--dir")
        .arg(dir.join("demo2"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--interval",
            "600",
            "--check-timeout",
            "0",
        ])
        .stdin(Stdio::null())
        .output()?;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("check failed"),
        "{out:?}"
    );
    Ok(())
}
