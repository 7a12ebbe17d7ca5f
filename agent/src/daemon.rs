//! `bento-agent daemon`: polls on its own interval (with jitter), serves the local
//! status socket, and carries out scheduled reboots.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bento_core::agent_proto::{Activity, Event, Request, Response, SOCKET_NAME};
use time::OffsetDateTime;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{broadcast, Notify, Semaphore};

use crate::agent::{jittered, Agent};
use crate::reboot;
use crate::report::now_local;

const MAX_REQUEST: u64 = 8192;
const MAX_CLIENTS: usize = 64;

/// What the socket and the poll loop tell each other.
#[derive(Default)]
pub struct Control {
    pub check_now: Notify,
    pub reboot_changed: Notify,
    /// The reboot command ran (and returned): do not run it again in this process.
    rebooted: AtomicBool,
}

pub async fn run(agent: Arc<Agent>) -> anyhow::Result<()> {
    let ctl = Arc::new(Control::default());
    let socket = agent.cfg.runtime_dir.join(SOCKET_NAME);
    let listener = bind(&socket)?;
    tracing::info!(
        "bento-agent daemon for {} polling {} every {}s (+ up to {}s), socket {}",
        agent.cfg.host,
        agent.cfg.server,
        agent.cfg.interval.as_secs(),
        agent.cfg.jitter.as_secs(),
        socket.display()
    );
    tokio::spawn(serve(listener, agent.clone(), ctl.clone()));
    tokio::spawn(reboot_timer(agent.clone(), ctl.clone()));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            r = agent.poll() => tracing::debug!("poll ended: {r:?}"),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
        schedule_reboot(&agent, &ctl);
        let wait = jittered(agent.cfg.interval, agent.cfg.jitter);
        let next_poll = tokio::time::Instant::now() + wait;
        tokio::select! {
            _ = crate::watch::until_new_release(&agent, next_poll) => {}
            _ = ctl.check_now.notified() => tracing::info!("check requested over the socket"),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stopping");
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

fn bind(socket: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(d) = socket.parent() {
        std::fs::create_dir_all(d)?;
    }
    // A socket left by a killed daemon; a live one would answer.
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        anyhow::bail!(
            "another bento-agent daemon is serving {}; stop it first",
            socket.display()
        );
    }
    let _ = std::fs::remove_file(socket);
    let l = UnixListener::bind(socket)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", socket.display()))?;
    // Everyone may read the status; the peer's credentials decide the rest.
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))?;
    Ok(l)
}

/// Schedules a reboot when one is required and the policy allows one.
fn schedule_reboot(agent: &Agent, ctl: &Control) {
    let snap = agent.status.snapshot();
    if !snap.reboot_required
        || snap.reboot_scheduled.is_some()
        || ctl.rebooted.load(Ordering::SeqCst)
    {
        return;
    }
    let plan = reboot::plan(
        &agent.cfg.reboot,
        agent.release_asks_reboot(),
        now_local(),
        agent.cfg.reboot_grace,
    );
    if let Some(p) = plan {
        tracing::info!(
            "reboot scheduled at {} (at the latest {})",
            p.at,
            p.deadline
        );
        let (at, deadline) = (p.at, p.deadline);
        agent
            .status
            .emit(Event::RebootScheduled { at, deadline }, |s| {
                s.reboot_scheduled = Some(p)
            });
        ctl.reboot_changed.notify_one();
    }
}

async fn reboot_timer(agent: Arc<Agent>, ctl: Arc<Control>) {
    loop {
        let Some(r) = agent.status.snapshot().reboot_scheduled else {
            ctl.reboot_changed.notified().await;
            continue;
        };
        let left = r.at - OffsetDateTime::now_utc();
        let wait = Duration::try_from(left).unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = ctl.reboot_changed.notified() => continue,
        }
        // Postponed meanwhile?
        match agent.status.snapshot().reboot_scheduled {
            Some(now) if now.at <= OffsetDateTime::now_utc() => {}
            _ => continue,
        }
        agent.status.set_activity(Activity::Rebooting);
        let cmd = &agent.cfg.reboot_command;
        tracing::info!("rebooting: {}", cmd.join(" "));
        let out = tokio::process::Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdin(std::process::Stdio::null())
            .output()
            .await;
        match out {
            Ok(o) if o.status.success() => ctl.rebooted.store(true, Ordering::SeqCst),
            Ok(o) => tracing::error!(
                "reboot command failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => tracing::error!("cannot run the reboot command {}: {e}", cmd[0]),
        }
        agent.status.update(|s| {
            s.activity = Activity::Idle;
            s.reboot_scheduled = None;
        });
    }
}

async fn serve(listener: UnixListener, agent: Arc<Agent>, ctl: Arc<Control>) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("socket accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue; // too many clients: drop this one
        };
        let (agent, ctl) = (agent.clone(), ctl.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = client(stream, &agent, &ctl).await {
                tracing::debug!("socket client: {e}");
            }
        });
    }
}

/// Root, and members of the configured group, may change things.
fn may_control(uid: u32, gid: u32, group: Option<&str>) -> bool {
    if uid == 0 {
        return true;
    }
    let Some(group) = group else { return false };
    let Ok(Some(g)) = nix::unistd::Group::from_name(group) else {
        return false;
    };
    if g.gid.as_raw() == gid {
        return true;
    }
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => u.gid == g.gid || g.mem.contains(&u.name),
        _ => false,
    }
}

async fn client(stream: UnixStream, agent: &Agent, ctl: &Control) -> std::io::Result<()> {
    let cred = stream.peer_cred()?;
    let allowed = may_control(cred.uid(), cred.gid(), agent.cfg.socket_group.as_deref());
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut rd)
            .take(MAX_REQUEST)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        if !line.ends_with(b"\n") && n as u64 == MAX_REQUEST {
            send(
                &mut wr,
                &Response::Error {
                    message: "request too long".into(),
                },
            )
            .await?;
            return Ok(());
        }
        let req: Request = match serde_json::from_slice(&line) {
            Ok(r) => r,
            Err(e) => {
                send(
                    &mut wr,
                    &Response::Error {
                        message: format!("not a request: {e}"),
                    },
                )
                .await?;
                continue;
            }
        };
        let denied = || Response::Denied {
            message: match &agent.cfg.socket_group {
                Some(g) => format!("only root and members of group {g} may do this"),
                None => "only root may do this".into(),
            },
        };
        let resp = match req {
            Request::Status => Response::Status {
                status: Box::new(agent.status.snapshot()),
            },
            Request::Subscribe => return follow(agent, &mut rd, &mut wr).await,
            Request::CheckNow if !allowed => denied(),
            Request::CheckNow => {
                ctl.check_now.notify_one();
                Response::Ok {
                    message: "a check starts now".into(),
                }
            }
            Request::PostponeReboot { .. } if !allowed => denied(),
            Request::PostponeReboot { seconds } => match agent.status.snapshot().reboot_scheduled {
                None => Response::Error {
                    message: "no reboot is scheduled".into(),
                },
                Some(r) => {
                    let p = reboot::postpone(
                        &r,
                        OffsetDateTime::now_utc(),
                        Duration::from_secs(seconds),
                    );
                    let at = p.at;
                    let capped = p.at == p.deadline;
                    agent.status.emit(Event::RebootPostponed { at }, |s| {
                        s.reboot_scheduled = Some(p)
                    });
                    ctl.reboot_changed.notify_one();
                    Response::Ok {
                        message: if capped {
                            format!("reboot postponed to {at}, the latest the policy allows")
                        } else {
                            format!("reboot postponed to {at}")
                        },
                    }
                }
            },
        };
        send(&mut wr, &resp).await?;
    }
}

/// The status, then every event until the client leaves.
async fn follow(
    agent: &Agent,
    rd: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    wr: &mut tokio::net::unix::OwnedWriteHalf,
) -> std::io::Result<()> {
    let (snap, mut rx) = agent.status.subscribe();
    send(
        wr,
        &Response::Status {
            status: Box::new(snap),
        },
    )
    .await?;
    let mut sink = [0u8; 256];
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Ok(event) => send(wr, &Response::Event { event }).await?,
                // Too slow a reader: it gets the whole status again.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    send(wr, &Response::Status { status: Box::new(agent.status.snapshot()) }).await?
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            n = rd.read(&mut sink) => if n? == 0 { return Ok(()) },
        }
    }
}

async fn send(wr: &mut tokio::net::unix::OwnedWriteHalf, r: &Response) -> std::io::Result<()> {
    wr.write_all(r.to_line().as_bytes()).await
}

/// The socket path for client commands.
pub fn socket_path(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join(SOCKET_NAME)
}
