//! The real `bento-agent` against a hostile or broken SFTP server (russh + russh-sftp
//! on loopback, behind the agent's real `ssh`): sizes that lie, more bytes than
//! listed, a packet far larger than asked for, a READ never answered, directories
//! nested forever, and an honest large file. The agent must end with a clear error in
//! bounded time, keep its peak RSS (the kernel's own `ru_maxrss` for the agent and
//! its `ssh`) under 32 MiB, and a daemon must go on polling.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bento_tests::{bins, nixenv, TestDir};
use russh::keys::PrivateKey;
use russh::server::{Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId, MethodKind, MethodSet};
use russh_sftp::protocol::{
    Attrs, Data, File, FileAttributes, Handle, Name, OpenFlags, Status, StatusCode, Version,
};

const RSS_LIMIT_KIB: u64 = 32 * 1024;
const REVISION: &str = "0123456789abcdef0123456789abcdef";
/// What the "more than listed" server sends at most (the old agent held it all).
const FLOOD: u64 = 256 << 20;
/// One DATA packet of this size answers a 64 KiB READ.
const HUGE_PACKET: usize = 48 << 20;

#[derive(Clone, Copy, Debug)]
enum Mode {
    /// `f` is listed as 10 bytes (and holds them), `stat`/`fstat` say 2^62.
    FstatLies,
    /// `f` is listed as 1 byte, and every READ is answered in full up to [`FLOOD`].
    MoreThanListed,
    /// `f` is listed as [`HUGE_PACKET`] bytes and the first READ gets it all at once.
    HugePacket,
    /// The first READ is never answered.
    HangRead,
    /// Every directory holds a directory `d`.
    Nested,
    /// `f` holds this many zero bytes, listed honestly.
    Honest(u64),
    /// The held watch (`.releases/.watch`) answers at once, with what is no
    /// revision.
    WatchNotRevision,
    /// The held watch answers with [`HUGE_PACKET`] bytes.
    WatchFlood,
}

#[derive(Default)]
struct Stats {
    connections: AtomicUsize,
    hung_reads: AtomicUsize,
    dirs_listed: AtomicUsize,
    watch_reads: AtomicUsize,
    bytes_sent: AtomicU64,
    uploads: Mutex<Vec<String>>,
}

struct Sftp {
    mode: Mode,
    stats: Arc<Stats>,
    listed: std::collections::HashSet<String>,
}

fn attrs(dir: bool, size: u64) -> FileAttributes {
    FileAttributes {
        size: Some(size),
        permissions: Some(if dir { 0o040755 } else { 0o100644 }),
        uid: Some(0),
        gid: Some(0),
        atime: Some(0),
        mtime: Some(0),
        ..Default::default()
    }
}

fn ok(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Ok".into(),
        language_tag: "en-US".into(),
    }
}

impl Sftp {
    fn file_size(&self) -> (u64, u64) {
        // (listed, stat/fstat)
        match self.mode {
            Mode::FstatLies => (10, 1 << 62),
            Mode::MoreThanListed => (1, 1),
            Mode::HugePacket => (HUGE_PACKET as u64, HUGE_PACKET as u64),
            Mode::HangRead => (10, 10),
            Mode::Nested => (0, 0),
            Mode::Honest(n) => (n, n),
            Mode::WatchNotRevision | Mode::WatchFlood => (10, 10),
        }
    }

    fn is_release_dir(path: &str) -> bool {
        path.trim_start_matches("./").starts_with(".releases/")
    }
}

impl russh_sftp::server::Handler for Sftp {
    type Error = StatusCode;

    fn unimplemented(&self) -> Self::Error {
        StatusCode::OpUnsupported
    }

    async fn init(
        &mut self,
        _version: u32,
        _extensions: std::collections::HashMap<String, String>,
    ) -> Result<Version, Self::Error> {
        Ok(Version::new())
    }

    async fn readlink(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        if path.ends_with(".releases/current") {
            return Ok(Name {
                id,
                files: vec![File::dummy(REVISION)],
            });
        }
        Err(StatusCode::NoSuchFile)
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        if path.ends_with("/f") {
            return Ok(Attrs {
                id,
                attrs: attrs(false, self.file_size().1),
            });
        }
        if Self::is_release_dir(&path) {
            return Ok(Attrs {
                id,
                attrs: attrs(true, 4096),
            });
        }
        Err(StatusCode::NoSuchFile)
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        self.stat(id, path).await
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        if !Self::is_release_dir(&path) {
            return Err(StatusCode::NoSuchFile);
        }
        self.stats.dirs_listed.fetch_add(1, Ordering::Relaxed);
        Ok(Handle {
            id,
            handle: format!("d:{path}"),
        })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        if !self.listed.insert(handle) {
            return Err(StatusCode::Eof);
        }
        let entry = match self.mode {
            Mode::Nested => File::new("d", attrs(true, 4096)),
            _ => File::new("f", attrs(false, self.file_size().0)),
        };
        Ok(Name {
            id,
            files: vec![entry],
        })
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        _attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        let watching = matches!(self.mode, Mode::WatchNotRevision | Mode::WatchFlood);
        let kind = if pflags.contains(OpenFlags::WRITE) {
            "w"
        } else if watching && filename.ends_with(bento_core::chroot::WATCH_FILE) {
            "watch"
        } else if filename.ends_with("/f") {
            "r"
        } else {
            return Err(StatusCode::NoSuchFile);
        };
        Ok(Handle {
            id,
            handle: format!("{kind}:{filename}"),
        })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        Ok(Attrs {
            id,
            attrs: attrs(handle.starts_with("d:"), self.file_size().1),
        })
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, Self::Error> {
        let len = u64::from(len);
        if handle.starts_with("watch:") {
            self.stats.watch_reads.fetch_add(1, Ordering::Relaxed);
            let data = match self.mode {
                Mode::WatchFlood => vec![b'x'; HUGE_PACKET],
                _ => b"../../etc\n".to_vec(),
            };
            return Ok(Data { id, data });
        }
        let data = match self.mode {
            Mode::FstatLies if offset < 10 => b"0123456789"[offset as usize..].to_vec(),
            Mode::MoreThanListed if offset < FLOOD => vec![b'x'; len.min(FLOOD - offset) as usize],
            Mode::HugePacket if offset == 0 => vec![0; HUGE_PACKET],
            Mode::Honest(n) if offset < n => vec![0; len.min(n - offset) as usize],
            Mode::HangRead => {
                self.stats.hung_reads.fetch_add(1, Ordering::Relaxed);
                std::future::pending::<()>().await;
                unreachable!()
            }
            _ => return Err(StatusCode::Eof),
        };
        self.stats
            .bytes_sent
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(Data { id, data })
    }

    async fn write(
        &mut self,
        id: u32,
        _handle: String,
        _offset: u64,
        _data: Vec<u8>,
    ) -> Result<Status, Self::Error> {
        Ok(ok(id))
    }

    async fn close(&mut self, id: u32, _handle: String) -> Result<Status, Self::Error> {
        Ok(ok(id))
    }

    async fn rename(
        &mut self,
        id: u32,
        _oldpath: String,
        newpath: String,
    ) -> Result<Status, Self::Error> {
        self.stats.uploads.lock().unwrap().push(newpath);
        Ok(ok(id))
    }

    async fn remove(&mut self, id: u32, _filename: String) -> Result<Status, Self::Error> {
        Ok(ok(id))
    }
}

struct Conn {
    mode: Mode,
    stats: Arc<Stats>,
    channels: std::collections::HashMap<ChannelId, Channel<Msg>>,
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
            partial_success: false,
        })
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        _offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        _key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel_id: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(channel) = self.channels.remove(&channel_id).filter(|_| name == "sftp") else {
            return session.channel_failure(channel_id);
        };
        session.channel_success(channel_id)?;
        let sftp = Sftp {
            mode: self.mode,
            stats: self.stats.clone(),
            listed: Default::default(),
        };
        // Packets far above the usual 256 KiB, for the huge-packet server.
        let cfg = russh_sftp::server::Config {
            max_client_packet_len: 1 << 20,
        };
        russh_sftp::server::run_with_config(channel.into_stream(), sftp, cfg).await;
        Ok(())
    }
}

struct Server {
    mode: Mode,
    stats: Arc<Stats>,
}

impl russh::server::Server for Server {
    type Handler = Conn;

    fn new_client(&mut self, _peer: Option<std::net::SocketAddr>) -> Conn {
        Conn {
            mode: self.mode,
            stats: self.stats.clone(),
            channels: Default::default(),
        }
    }
}

/// The hostile server on a loopback port, in its own runtime thread.
struct Hostile {
    port: u16,
    stats: Arc<Stats>,
    _rt: tokio::runtime::Runtime,
}

impl Hostile {
    fn start(mode: Mode) -> Result<Hostile> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let mut seed = [0u8; 32];
        fs::File::open("/dev/urandom")?.read_exact(&mut seed)?;
        let key = PrivateKey::from(russh::keys::ssh_key::private::Ed25519Keypair::from_seed(
            &seed,
        ));
        let config = Arc::new(russh::server::Config {
            methods: MethodSet::from(&[MethodKind::PublicKey][..]),
            keys: vec![key],
            auth_rejection_time: Duration::from_millis(10),
            auth_rejection_time_initial: Some(Duration::ZERO),
            nodelay: true,
            ..Default::default()
        });
        let stats = Arc::new(Stats::default());
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let port = listener.local_addr()?.port();
        let mut server = Server {
            mode,
            stats: stats.clone(),
        };
        rt.spawn(async move {
            use russh::server::Server as _;
            let _ = server.run_on_socket(config, &listener).await;
        });
        Ok(Hostile {
            port,
            stats,
            _rt: rt,
        })
    }
}

/// An agent's settings and files, pointed at `port`.
struct AgentFiles {
    dir: TestDir,
    config: PathBuf,
}

impl AgentFiles {
    fn new(label: &str, port: u16, timeout: u64) -> Result<AgentFiles> {
        Self::with(label, port, timeout, "interval = 1")
    }

    /// With `settings` (the intervals) instead of a poll every second.
    fn with(label: &str, port: u16, timeout: u64, settings: &str) -> Result<AgentFiles> {
        let dir = TestDir::new(label)?;
        let root = dir.path();
        fs::set_permissions(root, fs::Permissions::from_mode(0o755))?;
        let key = root.join("key");
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()?;
        ensure!(st.success(), "ssh-keygen failed");
        let config = root.join("agent.toml");
        fs::write(
            &config,
            format!(
                r#"server = "127.0.0.1"
port = {port}
user = "victim"
host = "victim"
identity_file = "{key}"
ssh_options = ["UserKnownHostsFile={root}/known_hosts", "StrictHostKeyChecking=accept-new", "IdentitiesOnly=yes"]
timeout = {timeout}
{settings}
jitter = 0
state_dir = "{root}/state"
runtime_dir = "{root}/run"
system_profile = "{root}/profiles/system"
booted_system = "{root}/booted-system"
reboot_command = ["/bin/true"]
"#,
                key = key.display(),
                root = root.display(),
            ),
        )?;
        Ok(AgentFiles { dir, config })
    }

    fn command(&self, args: &[&str]) -> Result<(Command, PathBuf)> {
        let log = self.dir.join(format!("{}.log", args[0]));
        let mut c = Command::new(bins::bin("bento-agent"));
        c.arg("--config")
            .arg(&self.config)
            .args(args)
            .env("BENTO_AGENT_LOG", "debug")
            .envs(nixenv::nix_env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?);
        Ok((c, log))
    }
}

/// How a measured run ended.
#[derive(Debug)]
struct Measured {
    /// Exit code; `None` when killed by a signal (an abort, or our deadline).
    code: Option<i32>,
    timed_out: bool,
    elapsed: Duration,
    /// The agent's peak RSS (`VmHWM`, sampled every few milliseconds), KiB.
    max_rss_kib: u64,
    stderr: String,
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Waits for `child` until `deadline` (then kills it), sampling its peak RSS; ends it
/// with SIGTERM once `stop` holds.
fn wait_measured(
    mut child: Child,
    log: &Path,
    deadline: Duration,
    mut stop: impl FnMut() -> bool,
) -> Result<Measured> {
    let start = Instant::now();
    let pid = child.id();
    let (mut timed_out, mut stopping, mut max_rss_kib) = (false, false, 0);
    let status = loop {
        // VmHWM only grows: the last sample before the exit holds the peak.
        if let Some(k) = vm_hwm_kib(pid) {
            max_rss_kib = max_rss_kib.max(k);
        }
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if start.elapsed() > deadline && !timed_out {
            timed_out = true;
            child.kill()?;
        } else if !stopping && stop() {
            stopping = true;
            Command::new("kill")
                .args(["-s", "TERM", &pid.to_string()])
                .status()?;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stderr = fs::read_to_string(log).unwrap_or_default();
    eprintln!("--- bento-agent ({status}, {max_rss_kib} KiB peak) ---\n{stderr}--- end ---");
    Ok(Measured {
        code: status.code(),
        timed_out,
        elapsed: start.elapsed(),
        max_rss_kib,
        stderr,
    })
}

fn run_once(
    label: &str,
    mode: Mode,
    timeout: u64,
    deadline: Duration,
) -> Result<(Measured, Arc<Stats>)> {
    let server = Hostile::start(mode)?;
    let agent = AgentFiles::new(label, server.port, timeout)?;
    let (mut cmd, log) = agent.command(&["run-once"])?;
    let child = cmd.spawn().context("starting bento-agent")?;
    let m = wait_measured(child, &log, deadline, || false)?;
    Ok((m, server.stats.clone()))
}

fn assert_bounded(m: &Measured, within: Duration) {
    assert!(
        !m.timed_out,
        "the agent did not finish within {within:?}:\n{}",
        m.stderr
    );
    assert!(m.elapsed < within, "took {:?}:\n{}", m.elapsed, m.stderr);
    assert!(
        m.code.is_some(),
        "the agent died of a signal:\n{}",
        m.stderr
    );
    assert!(
        m.max_rss_kib < RSS_LIMIT_KIB,
        "peak RSS {} KiB (limit {RSS_LIMIT_KIB} KiB)",
        m.max_rss_kib
    );
}

#[test]
fn a_file_whose_fstat_says_2_pow_62_is_read_by_its_bytes() -> Result<()> {
    let (m, _) = run_once(
        "hostile-fstat",
        Mode::FstatLies,
        10,
        Duration::from_secs(60),
    )?;
    assert_bounded(&m, Duration::from_secs(60));
    // Downloaded (10 bytes), then refused for want of a manifest: a clear failure.
    assert!(
        m.stderr.contains("downloaded 1 files (10 bytes)"),
        "{}",
        m.stderr
    );
    assert!(m.stderr.contains("manifest"), "{}", m.stderr);
    assert_eq!(m.code, Some(1), "{}", m.stderr);
    Ok(())
}

#[test]
fn more_bytes_than_listed_are_refused() -> Result<()> {
    let (m, stats) = run_once(
        "hostile-flood",
        Mode::MoreThanListed,
        10,
        Duration::from_secs(60),
    )?;
    assert_bounded(&m, Duration::from_secs(30));
    assert!(
        m.stderr.contains("than the 1 bytes it listed"),
        "{}",
        m.stderr
    );
    assert_eq!(m.code, Some(1), "{}", m.stderr);
    let sent = stats.bytes_sent.load(Ordering::Relaxed);
    assert!(sent < 8 << 20, "the server got {sent} bytes out");
    // The failure report reached the server.
    let uploads = stats.uploads.lock().unwrap().clone();
    assert!(
        uploads.iter().any(|u| u.ends_with("_failure.json")),
        "{uploads:?}"
    );
    Ok(())
}

#[test]
fn a_packet_larger_than_asked_for_is_refused_unread() -> Result<()> {
    let (m, _) = run_once(
        "hostile-packet",
        Mode::HugePacket,
        10,
        Duration::from_secs(60),
    )?;
    assert_bounded(&m, Duration::from_secs(30));
    assert!(m.stderr.contains("SFTP packet of"), "{}", m.stderr);
    assert_eq!(m.code, Some(1), "{}", m.stderr);
    Ok(())
}

#[test]
fn an_unanswered_read_times_out() -> Result<()> {
    let (m, stats) = run_once("hostile-hang", Mode::HangRead, 3, Duration::from_secs(60))?;
    assert_bounded(&m, Duration::from_secs(30));
    assert!(
        m.stderr.contains("did not answer within 3s"),
        "{}",
        m.stderr
    );
    // Not the release's fault: the next poll tries again (unreachable, exit 3).
    assert_eq!(m.code, Some(3), "{}", m.stderr);
    assert_eq!(stats.hung_reads.load(Ordering::Relaxed), 1);
    Ok(())
}

#[test]
fn the_daemon_keeps_polling_after_an_unanswered_read() -> Result<()> {
    let server = Hostile::start(Mode::HangRead)?;
    let agent = AgentFiles::new("hostile-hang-daemon", server.port, 2)?;
    let (mut cmd, log) = agent.command(&["daemon"])?;
    let child = cmd.spawn().context("starting bento-agent daemon")?;
    let stats = server.stats.clone();
    // Three polls, each stuck on a READ the server never answers.
    let polled = || stats.hung_reads.load(Ordering::Relaxed) >= 3;
    let m = wait_measured(child, &log, Duration::from_secs(90), polled)?;
    assert!(
        !m.timed_out,
        "only {} polls:\n{}",
        stats.hung_reads.load(Ordering::Relaxed),
        m.stderr
    );
    assert!(stats.connections.load(Ordering::Relaxed) >= 3);
    assert!(
        m.max_rss_kib < RSS_LIMIT_KIB,
        "peak RSS {} KiB",
        m.max_rss_kib
    );
    assert!(
        m.stderr.contains("did not answer within 2s"),
        "{}",
        m.stderr
    );
    Ok(())
}

#[test]
fn directories_nested_forever_are_refused_quickly() -> Result<()> {
    let (m, stats) = run_once("hostile-nested", Mode::Nested, 10, Duration::from_secs(90))?;
    assert_bounded(&m, Duration::from_secs(20));
    assert!(
        m.stderr.contains("nested more than 32 directories deep"),
        "{}",
        m.stderr
    );
    assert_eq!(m.code, Some(1), "{}", m.stderr);
    assert!(stats.dirs_listed.load(Ordering::Relaxed) <= 40);
    Ok(())
}

/// 256 MiB keeps CI quick; `BENTO_HOSTILE_HONEST_MIB=1024` measures 1 GiB.
#[test]
fn an_honest_large_file_is_streamed_to_disk() -> Result<()> {
    let mib: u64 = std::env::var("BENTO_HOSTILE_HONEST_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let size = mib << 20;
    let (m, stats) = run_once(
        "hostile-honest",
        Mode::Honest(size),
        10,
        Duration::from_secs(300),
    )?;
    assert_bounded(&m, Duration::from_secs(300));
    assert!(
        m.stderr
            .contains(&format!("downloaded 1 files ({size} bytes)")),
        "{}",
        m.stderr
    );
    assert_eq!(stats.bytes_sent.load(Ordering::Relaxed), size);
    eprintln!(
        "{mib} MiB in {:?}, peak RSS {} KiB",
        m.elapsed, m.max_rss_kib
    );
    Ok(())
}

/// A held watch that answers what is no revision, or a flood: the daemon's watch
/// refuses the answer, drops the session and opens another only after a
/// backoff that doubles (1 s, 2 s, 4 s, each spread over its second half: never
/// a loop of reconnections), with its memory bounded.
#[test]
fn a_hostile_watch_is_refused_and_retried_with_backoff() -> Result<()> {
    for (label, mode, says) in [
        ("hostile-watch", Mode::WatchNotRevision, "not a revision"),
        ("hostile-watch-flood", Mode::WatchFlood, "SFTP packet of"),
    ] {
        let server = Hostile::start(mode)?;
        let agent = AgentFiles::with(
            label,
            server.port,
            10,
            "interval = 3600\nwatch_interval = 1",
        )?;
        let (mut cmd, log) = agent.command(&["daemon"])?;
        let child = cmd.spawn().context("starting bento-agent daemon")?;
        let stats = server.stats.clone();
        let watched = || stats.watch_reads.load(Ordering::Relaxed) >= 4;
        let m = wait_measured(child, &log, Duration::from_secs(90), watched)?;
        assert!(
            !m.timed_out,
            "{mode:?}: only {} watch reads:\n{}",
            stats.watch_reads.load(Ordering::Relaxed),
            m.stderr
        );
        assert!(m.stderr.contains(says), "{mode:?}:\n{}", m.stderr);
        let waits: Vec<&str> = m
            .stderr
            .lines()
            .filter(|l| l.contains("watch: the session dropped"))
            .filter_map(|l| l.rsplit("(backoff ").next()?.strip_suffix(')'))
            .collect();
        assert!(
            waits.len() >= 3 && waits[..3] == ["1s", "2s", "4s"],
            "{mode:?}: waits {waits:?}:\n{}",
            m.stderr
        );
        assert!(
            m.max_rss_kib < RSS_LIMIT_KIB,
            "{mode:?}: peak RSS {} KiB",
            m.max_rss_kib
        );
    }
    Ok(())
}
