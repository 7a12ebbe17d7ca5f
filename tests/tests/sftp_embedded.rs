//! bento's own SFTP server (`bento sftp`): OpenSSH's `sftp` client and the real
//! `bento-agent` against it on loopback, with no sshd and no system users.

mod agent_common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bento_core::chroot::Chroot;
use bento_core::status::State;
use bento_tests::embedded::{generate_key, EmbeddedSftp};
use bento_tests::endpoint::{writes_outside_logs, Endpoint};
use bento_tests::release::publish_plain;
use bento_tests::{wait_until, TestDir};

use agent_common::Fleet;

/// Every file under `dir` with its content (symlinks as their target).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap().to_owned();
            let ft = e.file_type().unwrap();
            if ft.is_symlink() {
                let t = fs::read_link(&p).unwrap();
                out.insert(rel, t.into_os_string().into_encoded_bytes());
            } else if ft.is_dir() {
                out.insert(rel, Vec::new());
                stack.push(p);
            } else {
                out.insert(rel, fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Runs a batch as `user` with `key`: (success, everything printed).
fn sftp(server: &EmbeddedSftp, user: &str, key: &Path, batch: &str) -> Result<(bool, String)> {
    server.sftp_outcome(user, key, batch)
}

#[test]
fn a_host_reads_its_own_release_and_nothing_else() -> Result<()> {
    let fleet = Fleet::embedded("sftp-isolation", &["a", "b"], "", "")?;
    let (a, b) = (fleet.host(0).to_owned(), fleet.host(1).to_owned());
    fleet.deploy()?;
    let s = &fleet.server;
    let key_a = s.key_path(&a);
    let chroot = s.chroot_dir();
    let rev_a = fleet.published(&a)?;
    let work = fleet.dir.join("work");
    fs::create_dir_all(&work)?;

    // What the original tool's update.sh does, unchanged: look at last_change_date,
    // fetch the whole config/ tree, put a report into logs/.
    fs::write(work.join("report.txt"), "original client report\n")?;
    let (ok, out) = sftp(
        s,
        &a,
        &key_a,
        &format!(
            "ls -l /last_change_date\ncd config\nlcd {w}\nget -R .\ncd /logs\nput {w}/report.txt\n",
            w = work.display()
        ),
    )?;
    assert!(ok, "{out}");
    assert!(out.contains("last_change_date"), "{out}");
    let release = chroot.join(&a).join(".releases").join(&rev_a);
    for f in ["flake.nix", bento_core::release::MANIFEST_FILE] {
        assert_eq!(
            fs::read(work.join(f)).with_context(|| format!("{f} not fetched:\n{out}"))?,
            fs::read(release.join(f))?,
            "{f}"
        );
    }
    assert_eq!(
        fs::read_to_string(chroot.join(&a).join("logs/report.txt"))?,
        "original client report\n"
    );

    // Symlinks planted in a's release, pointing at b's files by a relative and by
    // an absolute path; and one in its logs/.
    let b_file = chroot.join(&b).join("last_change_date");
    symlink(format!("../../../{b}/last_change_date"), release.join("up"))?;
    symlink(&b_file, release.join("abs"))?;
    symlink(
        chroot.join(&b).join("logs"),
        chroot.join(&a).join("logs/to-b"),
    )?;
    fs::write(chroot.join(&b).join("logs/secret.txt"), "b's report\n")?;
    let before_b = snapshot(&chroot.join(&b));
    let got = work.join("got");
    for path in [
        format!("../{b}/last_change_date"),
        format!("/../../{b}/last_change_date"),
        format!("/{b}/last_change_date"),
        b_file.display().to_string(),
        "config/up".to_owned(),
        "config/abs".to_owned(),
        "logs/to-b/secret.txt".to_owned(),
    ] {
        let (ok, out) = sftp(s, &a, &key_a, &format!("get {path} {}\n", got.display()))?;
        assert!(!ok && !got.exists(), "get {path} worked:\n{out}");
    }
    for batch in [
        format!("ls /{b}\n"),
        format!("ls ../{b}/logs\n"),
        format!("put {}/report.txt logs/to-b/x\n", work.display()),
        format!("put {}/report.txt ../{b}/logs/x\n", work.display()),
        format!("rename logs/report.txt ../{b}/logs/report.txt\n"),
        format!("rename logs/report.txt /{b}/logs/report.txt\n"),
    ] {
        let (ok, out) = sftp(s, &a, &key_a, &batch)?;
        assert!(!ok, "{batch:?} worked:\n{out}");
    }
    assert_eq!(snapshot(&chroot.join(&b)), before_b, "b's files changed");

    // Read-only outside logs/.
    let before_a = snapshot(&chroot.join(&a));
    let mut refused = writes_outside_logs(&work.join("report.txt"), &rev_a);
    refused.extend(
        [
            "chmod 777 logs/report.txt\n",
            "mkdir logs/sub\n",
            "symlink /etc/passwd logs/pw\n",
        ]
        .map(str::to_owned),
    );
    for batch in refused {
        let (ok, out) = sftp(s, &a, &key_a, &batch)?;
        assert!(!ok, "{batch:?} worked:\n{out}");
    }
    assert_eq!(snapshot(&chroot.join(&a)), before_a, "a's files changed");

    // a's key does not open b's chroot.
    let (ok, out) = sftp(s, &b, &key_a, "ls\n")?;
    assert!(!ok, "a's key logged in as b:\n{out}");
    let ops = [
        "\"write\"",
        "\"remove\"",
        "\"rename\"",
        "\"mkdir\"",
        "\"setstat\"",
        "\"symlink\"",
    ];
    let belongs = format!("the key belongs to host {a}");
    let log = s.log_with(&[&[belongs.as_str()][..], &ops[..]].concat());
    assert!(log.contains(&belongs), "{log}");
    for op in ops {
        assert!(log.contains(op), "refused {op} not logged:\n{log}");
    }
    Ok(())
}

#[test]
fn uploads_into_logs_are_capped_in_size_and_count() -> Result<()> {
    let fleet = Fleet::embedded(
        "sftp-caps",
        &["a"],
        "",
        "max_log_bytes = 65536\nmax_log_files = 3\n",
    )?;
    let a = fleet.host(0).to_owned();
    fleet.deploy()?;
    let s = &fleet.server;
    let key = s.key_path(&a);
    let logs = s.host_chroot(&a).join("logs");
    let work = fleet.dir.join("work");
    fs::create_dir_all(&work)?;
    fs::write(work.join("big"), vec![b'x'; 200_000])?;
    fs::write(work.join("exact"), vec![b'y'; 65536])?;
    fs::write(work.join("small"), "ok\n")?;

    let (ok, out) = sftp(
        s,
        &a,
        &key,
        &format!("put {}/big logs/big\n", work.display()),
    )?;
    assert!(!ok, "a file over the cap was taken:\n{out}");
    assert!(
        !logs.join("big").exists(),
        "a capped upload was left behind"
    );
    let log = s.log_with(&["may hold at most 65536 bytes"]);
    assert!(log.contains("may hold at most 65536 bytes"), "{log}");

    let (ok, out) = sftp(
        s,
        &a,
        &key,
        &format!("put {}/exact logs/exact\n", work.display()),
    )?;
    assert!(ok, "a file of exactly the cap was refused:\n{out}");
    assert_eq!(fs::metadata(logs.join("exact"))?.len(), 65536);

    let existing = fs::read_dir(&logs)?.count();
    for i in existing..3 {
        let (ok, out) = sftp(
            s,
            &a,
            &key,
            &format!("put {}/small logs/r{i}\n", work.display()),
        )?;
        assert!(ok, "{out}");
    }
    let (ok, out) = sftp(
        s,
        &a,
        &key,
        &format!("put {}/small logs/one-too-many\n", work.display()),
    )?;
    assert!(!ok, "a fourth file was taken:\n{out}");
    assert!(!logs.join("one-too-many").exists());
    let log = s.log_with(&["already holds 3 files"]);
    assert!(log.contains("already holds 3 files"), "{log}");
    // Replacing a file that is there is no new file.
    let (ok, out) = sftp(
        s,
        &a,
        &key,
        &format!("put {}/small logs/exact\n", work.display()),
    )?;
    assert!(ok, "{out}");
    Ok(())
}

#[test]
fn unknown_keys_are_refused_and_logged_and_new_keys_need_no_restart() -> Result<()> {
    let mut fleet = Fleet::embedded("sftp-keys", &["a"], "", "max_connections_per_host = 1\n")?;
    let a = fleet.host(0).to_owned();
    fleet.deploy()?;
    let stranger = fleet.dir.join("stranger");
    generate_key(&stranger, "stranger")?;
    let fp = String::from_utf8(
        Command::new("ssh-keygen")
            .arg("-lf")
            .arg(&stranger)
            .output()?
            .stdout,
    )?;
    let fp = fp
        .split_whitespace()
        .nth(1)
        .context("no fingerprint")?
        .to_owned();

    let (ok, out) = sftp(&fleet.server, &a, &stranger, "ls\n")?;
    assert!(
        !ok && out.contains("Permission denied (publickey)"),
        "{out}"
    );
    let log = fleet.server.log_with(&["refused: unknown key", &fp]);
    assert!(
        log.contains("refused: unknown key") && log.contains(&fp),
        "{log}"
    );
    // Neither a shell nor a command is served, even with the right key.
    let out = Command::new("ssh")
        .args(fleet.server.client_options(&a))
        .args(["127.0.0.1", "cat", "/etc/passwd"])
        .output()?;
    assert!(!out.status.success(), "a command ran: {out:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("root:"));

    // Nor any forwarding.
    let out = Command::new("ssh")
        .args(fleet.server.client_options(&a))
        .args([
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            "0:127.0.0.1:9",
        ])
        .arg("127.0.0.1")
        .output()?;
    assert!(
        !out.status.success(),
        "a remote forward was set up: {out:?}"
    );
    let log = fleet.server.log_with(&["refused forwarding"]);
    assert!(log.contains("refused forwarding"), "{out:?}\n{log}");

    // The admin lists the key for a in bento.toml: it works at once.
    let toml_path = fleet.bento_dir().join("bento.toml");
    let text = fs::read_to_string(&toml_path)?;
    let new_key = fs::read_to_string(stranger.with_extension("pub"))?;
    let line = format!("[hosts.{a}]\nkeys = [");
    ensure!(text.contains(&line), "{text}");
    fs::write(
        &toml_path,
        text.replace(&line, &format!("{line}{:?}, ", new_key.trim())),
    )?;
    let (ok, out) = sftp(&fleet.server, &a, &stranger, "ls config\n")?;
    assert!(
        ok,
        "the new key was not picked up:\n{out}\n{}",
        fleet.server.log()
    );

    // A broken bento.toml keeps the keys the server had.
    fs::write(&toml_path, "this is not toml [")?;
    let (ok, out) = sftp(&fleet.server, &a, &stranger, "ls config\n")?;
    assert!(ok, "{out}");
    assert!(fleet
        .server
        .log_with(&["keeping the previous keys"])
        .contains("keeping the previous keys"));
    fs::write(&toml_path, &text)?;

    // One connection per host here: a second one waits its turn.
    let mut idle = Command::new("sftp")
        .args(fleet.server.client_options(&a))
        .arg("127.0.0.1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let logged_in = |s: &EmbeddedSftp| s.log().matches("logged in").count();
    let before = logged_in(&fleet.server);
    assert!(
        wait_until(Duration::from_secs(20), || logged_in(&fleet.server)
            > before),
        "the idle client did not log in:\n{}",
        fleet.server.log()
    );
    let (ok, out) = sftp(&fleet.server, &a, &fleet.server.key_path(&a), "ls\n")?;
    assert!(!ok, "a second connection of {a} was let in:\n{out}");
    assert!(fleet
        .server
        .log_with(&["max_connections_per_host"])
        .contains("max_connections_per_host"));
    idle.kill()?;
    idle.wait()?;
    assert!(wait_until(Duration::from_secs(20), || {
        sftp(&fleet.server, &a, &fleet.server.key_path(&a), "ls\n").is_ok_and(|(ok, _)| ok)
    }));
    fleet.server.stop();
    Ok(())
}

#[test]
fn the_agent_updates_and_reports_through_it_and_survives_it_being_down() -> Result<()> {
    let mut fleet = Fleet::embedded("sftp-agent", &["a"], "", "")?;
    let a = fleet.host(0).to_owned();
    fleet.deploy()?;
    let agent = fleet.agent(&a)?;
    let run = agent.run_once()?;
    assert!(run.ok(), "{}", run.stderr);
    assert_eq!(fleet.status(&a)?.state, State::UpToDate);
    let first = fleet.published(&a)?;
    assert!(fleet.report_for(&a, &first).is_ok());

    // A change, deployed and pulled.
    let second = fleet.deploy_version(&agent, &a, "2")?;
    assert!(fleet.report_for(&a, &second).is_ok());

    // Server down: the agent says it cannot reach it, and catches up afterwards.
    // The host key made at the first start is kept (and printed at every start).
    let pub_key = fleet.bento_dir().join("sftp_host_ed25519_key.pub");
    let key_before = fs::read_to_string(&pub_key)?;
    let fp = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(&pub_key)
        .output()?;
    let fp = String::from_utf8(fp.stdout)?;
    let fp = fp
        .split_whitespace()
        .nth(1)
        .context("no fingerprint")?
        .to_owned();
    let printed = format!("host key {fp}");
    let log = fleet.server.log_with(&[&printed]);
    assert!(log.contains(&printed), "{log}");
    fleet.server.stop();
    let run = agent.run_once()?;
    assert_eq!(run.code, Some(3), "{}", run.stderr);
    fleet.server.start()?;
    assert_eq!(fs::read_to_string(&pub_key)?, key_before);
    let run = agent.run_once()?;
    assert!(run.ok(), "{}", run.stderr);
    Ok(())
}

#[test]
fn two_hundred_clients_polling_at_once_are_all_served() -> Result<()> {
    const HOSTS: usize = 20;
    const PER_HOST: usize = 10;
    let dir = TestDir::new("sftp-200")?;
    let bento = dir.join("bento");
    fs::create_dir_all(bento.join("hosts"))?;
    let chroot_dir = dir.join("chroot");
    let chroot = Chroot::new(&chroot_dir);
    let names: Vec<String> = (0..HOSTS).map(|i| format!("poll{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut revisions = Vec::new();
    for n in &names {
        revisions.push(publish_plain(
            &chroot,
            n,
            &dir.join("stage").join(n),
            Chroot::embedded_owners(None),
        )?);
    }
    let mut server = EmbeddedSftp::new(&dir.join("sftp"), &bento, &chroot_dir, &refs)?;
    fs::write(
        bento.join("bento.toml"),
        format!(
            "chroot_dir = {:?}\n{}",
            chroot_dir.display().to_string(),
            server.bento_toml()
        ),
    )?;
    server.start()?;

    // Each client does what a polling shell client does: read last_change_date
    // and list its release.
    let clients: Vec<_> = (0..HOSTS * PER_HOST)
        .map(|i| {
            let host = &names[i % HOSTS];
            let mut cmd = Command::new("sftp");
            // Each host from its own address, as in a fleet: the server limits
            // connections not logged in yet per source address.
            cmd.arg("-b")
                .arg("-")
                .args(server.client_options(host))
                .args(["-o", &format!("BindAddress=127.0.0.{}", 10 + i % HOSTS)])
                .arg("127.0.0.1")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let mut child = cmd.spawn().expect("sftp starts");
            use std::io::Write;
            let got = dir.join(format!("got-{i}"));
            let _ = child.stdin.take().unwrap().write_all(
                format!("get last_change_date {}\nls -l config/\n", got.display()).as_bytes(),
            );
            (i % HOSTS, got, child)
        })
        .collect();
    let mut served = 0;
    let mut failures = Vec::new();
    for (h, got, child) in clients {
        let out = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let polled = fs::read_to_string(&got).unwrap_or_default();
        if out.status.success()
            && polled.trim() == revisions[h]
            && stdout.contains("configuration.nix")
        {
            served += 1;
        } else {
            failures.push(format!(
                "{}: {stdout}{}",
                names[h],
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert_eq!(served, HOSTS * PER_HOST, "{failures:#?}\n{}", server.log());
    // Every connection is closed afterwards (nothing leaks per client).
    let pid = server.pid().context("server running")?;
    let fds = || {
        fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(10), || fds() < 40),
        "{} descriptors still open",
        fds()
    );
    Ok(())
}

#[test]
fn a_key_that_does_not_parse_fails_check_config() -> Result<()> {
    let f = bento_tests::cli::BentoFixture::new("sftp-check")?;
    f.write_config("[sftp]\n[hosts.web1]\nkeys = [\"ssh-ed25519 not-base64!! web1\"]\n")?;
    let out = f.run(&["check-config"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("hosts.web1.keys[0]"), "{err}");
    // Two hosts with one key: refused before anything is served.
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBgFMhajUng+Rjj/sCFXI9PzG8BQjru2n7JgUVF1Kbv5";
    f.write_config(&format!(
        "[sftp]\n[hosts.web1]\nkeys = [\"{key} a\"]\n[hosts.web2]\nkeys = [\"{key} b\"]\n"
    ))?;
    let out = f.run(&["sftp", "--listen", "127.0.0.1:0"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("also a key of host web1"), "{err}");
    // Without [sftp] (OpenSSH mode) the settings may share a key, but `bento sftp`
    // started on them still refuses: no host may silently win the key.
    f.write_config(&format!(
        "[hosts.web1]\nkeys = [\"{key} a\"]\n[hosts.web2]\nkeys = [\"{key} b\"]\n"
    ))?;
    let out = f.run(&["check-config"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = f.run(&["sftp", "--listen", "127.0.0.1:0"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("hosts.web2.keys[0] is also a key of host web1"),
        "{err}"
    );
    f.write_config(&format!("[sftp]\n[hosts.web1]\nkeys = [\"{key} a\"]\n"))?;
    let out = f.run(&["check-config"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
