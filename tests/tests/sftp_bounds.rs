//! Bounds of `bento sftp` that keep hosts served over time: reports rotated at
//! ingestion so a legitimate host never reaches its `logs/` caps.

mod agent_common;

use std::collections::BTreeSet;
use std::fs;
use std::time::SystemTime;

use anyhow::{ensure, Result};
use bento_core::chroot::Chroot;
use bento_core::report::{AgentState, ReportStatus, HEARTBEAT_FILE};
use bento_core::status::{host_status, State, StatusOptions};
use bento_core::HostName;
use bento_tests::embedded::plain_server;
use bento_tests::endpoint::Endpoint;
use bento_tests::reports::{set_mtime, write_heartbeat, Report};
use bento_tests::smallfs::SmallFs;
use bento_tests::sshd::unique_prefix;
use bento_tests::TestDir;

fn names(dir: &std::path::Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_host_keeps_its_newest_reports_and_the_ones_since_publication() -> Result<()> {
    const KEEP: usize = 5;
    let dir = TestDir::new("sftp-rotate")?;
    let p = unique_prefix();
    let host = format!("{p}-a");
    let mut server = plain_server(
        dir.path(),
        &[&host],
        &format!("keep_reports = {KEEP}\nmax_log_files = 40\n"),
    )?;
    server.start()?;
    let chroot = Chroot::new(server.chroot_dir());
    let h = HostName::new(&host)?;
    let revision = chroot.current_revision(&h).expect("published");
    let system = "abc-nixos-system-a-1";
    let key = server.key_path(&host);
    let local = dir.join("outbox");
    let logs = server.host_chroot(&host).join("logs");
    let start = time::OffsetDateTime::now_utc() - time::Duration::hours(1);

    // As the agent uploads: sidecar then log, each under a temporary name, renamed.
    let upload = |i: i64| -> Result<String> {
        let out = local.join(i.to_string());
        let mut r = Report::agent(&host, system, ReportStatus::Success, &revision);
        r.time = start + time::Duration::minutes(i);
        let log = r.write(&out)?;
        let sidecar = log.replace(".log.gz", ".json");
        let mut batch = String::from("cd /logs\n");
        for f in [&sidecar, &log] {
            batch.push_str(&format!(
                "put {src} .{f}.tmp\nrename .{f}.tmp {f}\n",
                src = out.join(f).display()
            ));
        }
        let (ok, text) = server.sftp_outcome(&host, &key, &batch)?;
        ensure!(ok, "upload {i} failed: {text}");
        Ok(log)
    };
    let hb_dir = dir.join("hb");
    write_heartbeat(
        &hb_dir,
        &host,
        Some(system),
        Some(&revision),
        AgentState::Idle,
        false,
    )?;
    let (ok, text) = server.sftp_outcome(
        &host,
        &key,
        &format!(
            "cd /logs\nput {} {HEARTBEAT_FILE}\n",
            hb_dir.join(HEARTBEAT_FILE).display()
        ),
    )?;
    ensure!(ok, "{text}");

    // Reports since the publication are all kept, past the bound too: status
    // reads them.
    let mut logs_sent = Vec::new();
    for i in 0..8 {
        logs_sent.push(upload(i)?);
    }
    let reports = |n: &BTreeSet<String>| n.iter().filter(|f| f.ends_with(".log.gz")).count();
    assert_eq!(reports(&names(&logs)), 8, "{:?}", names(&logs));

    // A new publication: the eight are history now; the next uploads rotate
    // the oldest away, down to exactly the newest KEEP.
    set_mtime(
        &server.host_chroot(&host).join("last_change_date"),
        SystemTime::now(),
    )?;
    for i in 8..10 {
        logs_sent.push(upload(i)?);
    }
    let now = names(&logs);
    let mut want: BTreeSet<String> = logs_sent[logs_sent.len() - KEEP..]
        .iter()
        .flat_map(|l| [l.clone(), l.replace(".log.gz", ".json")])
        .collect();
    want.insert(HEARTBEAT_FILE.into());
    assert_eq!(now, want, "logs/ after rotation");
    assert!(
        server
            .log_with(&["rotated"])
            .contains("old reports away (keep_reports = 5)"),
        "{}",
        server.log()
    );

    let st = host_status(&chroot, &h, None, &StatusOptions::default());
    assert_eq!(st.state, State::UpToDate, "{st:#?}");
    let last = st.last_report.as_ref().expect("a last report");
    assert_eq!(last.revision.as_deref(), Some(revision.as_str()), "{st:#?}");
    assert_eq!(&last.file, logs_sent.last().unwrap(), "{st:#?}");
    assert_eq!(st.total_reports as usize, KEEP, "{st:#?}");
    assert_eq!(st.reports_since_publication, 2, "{st:#?}");
    assert!(server.poll(&host)?.0, "the host still polls");
    Ok(())
}

/// A TCP connection to the server from `from`, that never says a word.
async fn silent_from(from: std::net::IpAddr, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.bind(std::net::SocketAddr::new(from, 0))?;
    s.connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .await
}

#[test]
fn a_handshake_flood_from_many_addresses_does_not_lock_hosts_out() -> Result<()> {
    const FLOOD: usize = 400;
    const BUDGET: usize = 64;
    let dir = TestDir::new("sftp-flood")?;
    let p = unique_prefix();
    let host = format!("{p}-a");
    // A long login grace: the flood holds whatever places it gets for the
    // whole test.
    let mut server = plain_server(
        dir.path(),
        &[&host],
        &format!("login_grace_secs = 60\nmax_unauthenticated = {BUDGET}\n"),
    )?;
    server.start()?;
    // The host has polled before: its address is one hosts log in from.
    let (ok, out) = server.poll(&host)?;
    ensure!(ok, "{out}");
    let port = server.port();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // One connection from each of many addresses of 127/8: the per-address
    // limit never applies, only the budget of connections logging in.
    let sockets = rt.block_on(async {
        let mut v = Vec::new();
        for i in 0..FLOOD {
            let from = std::net::Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8);
            v.push(silent_from(from.into(), port).await?);
        }
        anyhow::Ok(v)
    })?;
    let log = server.log_with(&["dropped at random", "(max_unauthenticated)"]);
    assert!(log.contains("dropped at random"), "no early drop:\n{log}");
    assert!(
        log.contains("too many connections are logging in (max_unauthenticated)"),
        "the flood never filled the budget:\n{log}"
    );
    // While the flood holds every place of the budget, the host still polls.
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let (ok, out) = server.poll(&host)?;
        assert!(
            ok,
            "the host was locked out by the flood:\n{out}\n{}",
            server.log()
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }
    assert!(server.running(), "the server ended:\n{}", server.log());
    drop(sockets);
    Ok(())
}

#[test]
fn a_full_disk_fails_one_upload_cleanly_and_the_others_go_on() -> Result<()> {
    let dir = TestDir::new("sftp-full-disk")?;
    let p = unique_prefix();
    let (evil, good) = (format!("{p}-evil"), format!("{p}-good"));
    let Some(_fs) = SmallFs::mount(&dir.join("chroot"), "4m")? else {
        return Ok(());
    };
    // No reserve: the file system really fills up.
    let mut server = plain_server(dir.path(), &[&evil, &good], "min_free_bytes = 0\n")?;
    server.start()?;
    let work = dir.join("work");
    fs::create_dir_all(&work)?;
    fs::write(work.join("big"), vec![b'x'; 1 << 20])?;
    let logs = server.host_chroot(&evil).join("logs");
    let key = server.key_path(&evil);
    let put = |server: &bento_tests::embedded::EmbeddedSftp, name: &str| {
        server.sftp_outcome(
            &evil,
            &key,
            &format!("put {} /logs/{name}\n", work.join("big").display()),
        )
    };
    // Fill the file system from one host's uploads.
    let mut failed = None;
    for i in 0..8 {
        let name = format!("big{i}");
        let (ok, out) = put(&server, &name)?;
        if !ok {
            failed = Some((name, out));
            break;
        }
    }
    let (failed, out) = failed.expect("a 4 MiB file system took 8 MiB of uploads");
    // The partial upload is gone: it holds no space and is never read.
    assert!(
        !logs.join(&failed).exists(),
        "the partial upload {failed} was left behind ({out})\n{}",
        server.log()
    );
    assert!(server.running(), "the server ended:\n{}", server.log());
    assert!(
        server
            .log_with(&["the partial file was removed"])
            .contains("No space left on device"),
        "{}",
        server.log()
    );

    // The other host still polls, reads its release and sends its heartbeat.
    let gkey = server.key_path(&good);
    let (ok, out) = server.poll(&good)?;
    assert!(ok, "{out}");
    let (ok, out) = server.sftp_outcome(
        &good,
        &gkey,
        &format!(
            "get /config/configuration.nix {}\n",
            work.join("got.nix").display()
        ),
    )?;
    assert!(ok, "{out}");
    assert!(fs::read_to_string(work.join("got.nix"))?.contains(&good));
    fs::write(work.join("hb"), b"{}")?;
    let (ok, out) = server.sftp_outcome(
        &good,
        &gkey,
        &format!("put {} /logs/{HEARTBEAT_FILE}\n", work.join("hb").display()),
    )?;
    assert!(ok, "the heartbeat failed: {out}");

    // Once the host frees its space, its next upload works: nothing of the
    // failed one is still counted.
    let (ok, out) = server.sftp_outcome(&evil, &key, "rm /logs/big0\nrm /logs/big1\n")?;
    assert!(ok, "{out}");
    let (ok, out) = put(&server, "again")?;
    assert!(ok, "{out}\n{}", server.log());
    assert!(server.poll(&good)?.0);
    drop(server);
    Ok(())
}

#[test]
fn hosts_filling_the_disk_stop_at_the_reserve_and_the_next_deploy_publishes() -> Result<()> {
    const RESERVE: u64 = 6 << 20;
    let (mut fleet, small) = agent_common::Fleet::embedded_on(
        "sftp-reserve",
        &["evil", "good"],
        "",
        &format!("min_free_bytes = {RESERVE}\nmax_log_bytes_total = 1073741824\n"),
        |chroot| SmallFs::mount(chroot, "24m"),
    )?;
    let Some(small) = small else {
        return Ok(());
    };
    let (evil, good) = (fleet.host(0).to_owned(), fleet.host(1).to_owned());
    fleet.deploy()?;
    let agent = fleet.agent(&good)?;
    let run = agent.run_once()?;
    ensure!(run.ok(), "{}", run.stderr);

    // One host uploads 1 MiB files until the server refuses.
    let work = fleet.dir.join("work");
    fs::create_dir_all(&work)?;
    fs::write(work.join("big"), vec![b'x'; 1 << 20])?;
    let key = fleet.server.key_path(&evil);
    let mut refused = None;
    for i in 0..40 {
        let (ok, out) = fleet.server.sftp_outcome(
            &evil,
            &key,
            &format!("put {} /logs/big{i}\n", work.join("big").display()),
        )?;
        if !ok {
            refused = Some((i, out));
            break;
        }
    }
    let (i, out) = refused.expect("24 MiB took 40 MiB of uploads");
    let log = fleet.server.log_with(&["min_free_bytes"]);
    assert!(
        log.contains("keeps 6291456 bytes of its disk free for publication (min_free_bytes)"),
        "{out}\n{log}"
    );
    assert!(
        !fleet
            .host_chroot(&evil)
            .join(format!("logs/big{i}"))
            .exists(),
        "the refused upload was left behind"
    );
    // The uploads stopped short of the reserve (a write in flight may take one
    // upload's last chunk of it).
    let free = small.free()?;
    assert!(free + (64 << 10) >= RESERVE, "{free} bytes free");

    // The host's heartbeat still goes through (one small file rewritten).
    fs::write(work.join("hb"), b"{}")?;
    let (ok, out) = fleet.server.sftp_outcome(
        &evil,
        &key,
        &format!("put {} /logs/{HEARTBEAT_FILE}\n", work.join("hb").display()),
    )?;
    assert!(ok, "the heartbeat was refused: {out}");

    // The next deploy publishes a new system (its files and closure go into the
    // reserve), and the other host fetches and activates it.
    fleet.deploy_version(&agent, &good, "2")?;
    assert!(fleet.server.running(), "{}", fleet.server.log());
    Ok(())
}
