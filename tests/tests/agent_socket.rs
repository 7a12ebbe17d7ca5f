//! The daemon's local socket, as the tray follows it: a cycle's events in order,
//! reboots scheduled and postponed, and who may ask for what.

mod agent_common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bento_core::agent_proto::{Activity, Event, Request, Response, SOCKET_NAME};
use bento_core::report::ReportStatus;
use bento_tests::bins;

use agent_common::{signal, Agent, Fleet, AGENT_TIMEOUT};

struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    fn connect(agent: &Agent) -> Result<Client> {
        let s = UnixStream::connect(agent.runtime_dir().join(SOCKET_NAME))?;
        s.set_read_timeout(Some(AGENT_TIMEOUT))?;
        Ok(Client {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    fn send(&mut self, r: &Request) -> Result<()> {
        self.writer.write_all(r.to_line().as_bytes())?;
        Ok(())
    }

    fn next(&mut self) -> Result<Response> {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .context("no answer from the agent")?;
        serde_json::from_str(&line).with_context(|| format!("bad line {line:?}"))
    }

    fn next_event(&mut self) -> Result<Event> {
        match self.next()? {
            Response::Event { event } => Ok(event),
            other => bail!("expected an event, got {other:?}"),
        }
    }
}

/// `bento-agent ARGS` as another user (setpriv from util-linux).
fn as_user(agent: &Agent, uid: u32, gid: u32, args: &[&str]) -> Result<(Option<i32>, String)> {
    let out = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg(bins::bin("bento-agent"))
        .arg("--runtime-dir")
        .arg(agent.runtime_dir())
        .args(args)
        .output()?;
    Ok((
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

fn kind(e: &Event) -> &'static str {
    match e {
        Event::CheckStarted => "check-started",
        Event::CheckFinished { new_release: true } => "check-finished(new)",
        Event::CheckFinished { new_release: false } => "check-finished",
        Event::UpdateStarted { .. } => "update-started",
        Event::UpdateFinished { .. } => "update-finished",
        Event::UpdateFailed { .. } => "update-failed",
        Event::RolledBack { .. } => "rolled-back",
        Event::RebootRequired => "reboot-required",
        Event::RebootScheduled { .. } => "reboot-scheduled",
        Event::RebootPostponed { .. } => "reboot-postponed",
    }
}

#[test]
fn daemon_streams_a_cycle_and_checks_who_asks() -> Result<()> {
    let fleet = Fleet::new("agent-socket", &["desk"], "")?;
    let host = fleet.host(0).to_owned();
    fleet.deploy()?;
    let rev1 = fleet.published(&host)?;
    let agent = fleet.agent(&host)?;
    fleet.toy.fake_booted_system(&agent.booted(), "6.1.0")?;
    let (uid, gid) = (fleet.server.uid(&host)?, fleet.server.gid()?);
    agent.set_config(&format!(
        "socket_group = \"{}\"\nreboot_grace = 3600\n[reboot]\nmode = \"immediately\"\nmax_postpone_secs = 7200\n",
        fleet.server.group()
    ))?;
    let mut daemon = agent.spawn(&["daemon"], "daemon")?;
    let result = (|| -> Result<()> {
        // The first poll applies the published release.
        agent.wait_daemon(&mut daemon, "daemon", |s| {
            s.revision.as_deref() == Some(rev1.as_str()) && s.activity == Activity::Idle
        })?;

        let mut sub = Client::connect(&agent)?;
        sub.send(&Request::Subscribe)?;
        match sub.next()? {
            Response::Status { status } => {
                assert_eq!(status.revision.as_deref(), Some(rev1.as_str()));
                assert!(!status.reboot_required);
            }
            other => bail!("expected the status first, got {other:?}"),
        }

        // Anyone may read the status; only root and the group may ask for a check.
        let (code, out) = as_user(&agent, 65534, 65534, &["check-now"])?;
        assert_eq!(code, Some(4), "nobody was not refused: {out}");
        assert!(out.contains("denied"), "{out}");
        let mut plain = Client::connect(&agent)?;
        plain.send(&Request::Status)?;
        assert!(matches!(plain.next()?, Response::Status { .. }));

        // A new release with a new kernel.
        fleet.toy.set_system_version(&host, "2")?;
        fleet.toy.set_kernel(&host, "6.6.1")?;
        fleet.deploy()?;
        let rev2 = fleet.published(&host)?;
        let (code, out) = as_user(&agent, uid, gid, &["check-now"])?;
        assert_eq!(code, Some(0), "a member of the group was refused: {out}");

        let mut events = Vec::new();
        loop {
            let e = sub.next_event()?;
            let done = matches!(e, Event::RebootScheduled { .. });
            events.push(e);
            if done || events.len() > 20 {
                break;
            }
        }
        let kinds: Vec<&str> = events.iter().map(kind).collect();
        assert_eq!(
            kinds,
            [
                "check-started",
                "check-finished(new)",
                "update-started",
                "update-finished",
                "reboot-required",
                "reboot-scheduled"
            ]
        );
        match &events[2] {
            Event::UpdateStarted { revision } => assert_eq!(revision, &rev2),
            _ => unreachable!(),
        }
        match &events[3] {
            Event::UpdateFinished { record } => {
                assert_eq!(record.status, ReportStatus::Success);
                assert_eq!(record.revision.as_deref(), Some(rev2.as_str()));
            }
            _ => unreachable!(),
        }
        let Event::RebootScheduled { at, deadline } = events[5].clone() else {
            unreachable!()
        };
        assert_eq!(deadline - at, time::Duration::seconds(7200));

        // Postponing: refused to nobody, allowed to root, never past the deadline.
        let (code, _) = as_user(&agent, 65534, 65534, &["postpone-reboot", "600"])?;
        assert_eq!(code, Some(4));
        let mut root = Client::connect(&agent)?;
        root.send(&Request::PostponeReboot { seconds: 600 })?;
        assert!(matches!(root.next()?, Response::Ok { .. }));
        match sub.next_event()? {
            Event::RebootPostponed { at: later } => {
                assert_eq!(later - at, time::Duration::seconds(600))
            }
            other => bail!("expected reboot-postponed, got {other:?}"),
        }
        root.send(&Request::PostponeReboot { seconds: 86400 })?;
        assert!(matches!(root.next()?, Response::Ok { .. }));
        match sub.next_event()? {
            Event::RebootPostponed { at: later } => assert_eq!(later, deadline),
            other => bail!("expected reboot-postponed, got {other:?}"),
        }
        let local = agent.local_status().context("status.json")?;
        assert!(local.reboot_required);
        assert_eq!(local.reboot_scheduled.map(|r| r.at), Some(deadline));
        assert_eq!(agent.reboots(), 0, "the reboot is an hour away");
        let st = fleet.status(&host)?;
        assert!(st.reboot_pending, "{st:#?}");
        Ok(())
    })();
    signal(daemon.id(), "TERM");
    let stopped = bento_tests::wait_until(Duration::from_secs(10), || {
        matches!(daemon.try_wait(), Ok(Some(_)))
    });
    if !stopped {
        daemon.kill()?;
    }
    daemon.wait()?;
    if result.is_err() {
        eprintln!("--- daemon log ---\n{}", agent.spawned_log("daemon"));
    }
    result?;
    assert!(
        !agent.runtime_dir().join(SOCKET_NAME).exists(),
        "the socket is removed on SIGTERM"
    );
    Ok(())
}
