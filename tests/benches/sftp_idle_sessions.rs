//! `bento sftp` holding thousands of idle watching sessions: memory per session and
//! the server's CPU while they watch.
//!
//! ```sh
//! cargo build --release -p bento -p bento-agent
//! cargo bench -p bento-tests --bench sftp_idle_sessions            # 1,000 and 5,000
//! cargo bench -p bento-tests --bench sftp_idle_sessions -- --quick # 100 and 500
//! ```
//!
//! The load generator is in this process: one tokio runtime, one task per session,
//! russh + russh-sftp. Each session logs in as a host with that host's key, opens
//! the `sftp` subsystem, then does what the daemon's watch does between polls
//! (agent `watch.rs`), in one of two modes (`IDLE_BENCH_MODES`, both by default,
//! side by side):
//!
//! - `held`: what the agent does with `bento sftp`: it opens the held watch
//!   (`.releases/.watch`) and reads it, each read answered after the hold (60 s)
//!   when nothing is published; the sessions' phases spread over the hold, and
//!   the window is at least one hold long, after one hold of warm-up;
//! - `poll`: what it does with OpenSSH's server: one `readlink
//!   .releases/current` every `IDLE_BENCH_WATCH_SECS` (5), the sessions' phases
//!   spread evenly over the interval.
//!
//! Both send SSH keepalives after 20 s without traffic, as the agent's ssh does
//! (`ServerAliveInterval` is its `timeout`, 20 s by default). Logins go 8 at a time (the server's
//! `max_unauthenticated_per_source` is 16). Every failure (login, channel, a
//! readlink, a session the server dropped) is counted and printed, never retried.
//!
//! There are `IDLE_BENCH_HOSTS` (50) hosts, one key each; sessions go to them in
//! turn, and the bench's bento.toml raises `[sftp] max_connections_per_host` to
//! sessions / hosts (the default, 16, is for one agent's connections, not a load
//! generator's) and `max_connections` to sessions + 64. A fresh server per
//! session count. Measured on the server process only (`/proc/<pid>`):
//!
//! - RSS and PSS (`smaps_rollup`) with no session, and with every session open and
//!   logged in (before the watch starts): the difference / sessions = KiB per
//!   session; and again after the watch window;
//! - user + system time (`/proc/<pid>/stat`) over `IDLE_BENCH_WINDOW_SECS` (30; 10
//!   with `--quick`) of watching, begun one watch interval after the watch
//!   started: % of one core.
//!
//! Goals (issue #14): at most 64 KiB per session, and under 5% of one core for
//! 5,000 sessions at a 5 s watch interval. `IDLE_BENCH_SESSIONS` (e.g. `1000,5000`)
//! overrides the counts.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bento_core::chroot::{Chroot, WATCH_FILE, WATCH_HOLD};
use bento_tests::embedded::{generate_key, AnyHostKey as Client};
use bento_tests::sshd::unique_prefix;
use bento_tests::TestDir;
use russh::client;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg};
use russh_sftp::client::RawSftpSession;
use russh_sftp::protocol::OpenFlags;
use tokio::sync::{watch, Semaphore};

/// Logins in flight at once (below the server's 16 per source address).
const LOGIN_CONCURRENCY: usize = 8;
/// How long opening every session may take, and the server to start.
const OPEN_TIMEOUT: Duration = Duration::from_secs(600);
/// The path the agent's watch reads from OpenSSH's server.
const CURRENT: &str = ".releases/current";
/// The agent's ssh keepalive (`ServerAliveInterval`, its default `timeout`).
const KEEPALIVE: Duration = Duration::from_secs(20);

/// What a watching session does.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Holds reads of `bento sftp`'s watch.
    Held,
    /// A readlink every watch interval.
    Poll,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Held => "held",
            Mode::Poll => "poll",
        }
    }
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let counts: Vec<usize> = match std::env::var("IDLE_BENCH_SESSIONS") {
        Ok(v) => v
            .split(',')
            .map(|s| s.trim().parse())
            .collect::<Result<_, _>>()
            .with_context(|| format!("IDLE_BENCH_SESSIONS={v:?}"))?,
        Err(_) if quick => vec![100, 500],
        Err(_) => vec![1000, 5000],
    };
    let n_hosts = env_u64("IDLE_BENCH_HOSTS", 50)? as usize;
    let every = Duration::from_secs(env_u64("IDLE_BENCH_WATCH_SECS", 5)?);
    let window = Duration::from_secs(env_u64(
        "IDLE_BENCH_WINDOW_SECS",
        if quick { 10 } else { 30 },
    )?);
    ensure!(
        n_hosts > 0 && !every.is_zero() && !window.is_zero() && counts.iter().all(|&c| c > 0),
        "hosts, sessions, watch interval and window must be at least 1"
    );
    let modes: Vec<Mode> = std::env::var("IDLE_BENCH_MODES")
        .unwrap_or_else(|_| "held,poll".into())
        .split(',')
        .map(|m| match m.trim() {
            "held" => Ok(Mode::Held),
            "poll" => Ok(Mode::Poll),
            other => Err(anyhow::anyhow!(
                "IDLE_BENCH_MODES: {other:?} is not held or poll"
            )),
        })
        .collect::<Result<_>>()?;
    let max_sessions = counts.iter().copied().max().unwrap_or(1);
    let per_host = max_sessions.div_ceil(n_hosts);
    let bento_bin = bento_tests::bins::measured("bento")?;

    eprintln!("sftp_idle_sessions: {counts:?} sessions over {n_hosts} hosts, watch every {every:?}, window {window:?}");
    let dir = TestDir::new("sftp-idle")?;
    let prefix = unique_prefix();
    let hosts: Vec<String> = (0..n_hosts).map(|i| format!("{prefix}-h{i:03}")).collect();
    let chroot_dir = dir.join("chroot");
    let chroot = Chroot::new(&chroot_dir);
    let bento_dir = dir.join("bento");
    fs::create_dir_all(bento_dir.join("hosts"))?;
    fs::create_dir_all(dir.join("keys"))?;
    let mut toml = format!(
        "chroot_dir = {:?}\n\n[sftp]\nlisten = \"127.0.0.1:0\"\nmax_connections = {}\nmax_connections_per_host = {per_host}\n",
        chroot_dir.display().to_string(),
        max_sessions + 64
    );
    let mut keys = Vec::new();
    for h in &hosts {
        bento_tests::release::publish_plain(
            &chroot,
            h,
            &dir.join("stage").join(h),
            Chroot::embedded_owners(None),
        )?;
        let key = dir.join("keys").join(h);
        generate_key(&key, h)?;
        let public = fs::read_to_string(key.with_extension("pub"))?;
        toml.push_str(&format!("\n[hosts.{h}]\nkeys = [{:?}]\n", public.trim()));
        keys.push(Arc::new(russh::keys::load_secret_key(&key, None)?));
    }
    fs::write(bento_dir.join("bento.toml"), toml)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut results = Vec::new();
    for &n in &counts {
        for &mode in &modes {
            let server = Server::start(
                &bento_bin,
                &bento_dir,
                &dir.join(format!("sftp-{n}-{}.log", mode.name())),
            )?;
            eprintln!("{n} sessions, {}…", mode.name());
            let (period, window) = match mode {
                Mode::Held => (WATCH_HOLD, window.max(WATCH_HOLD)),
                Mode::Poll => (every, window),
            };
            let r = rt.block_on(measure(&server, &hosts, &keys, n, mode, period, window));
            match r {
                Ok(r) => results.push(r),
                Err(e) => {
                    eprintln!("--- bento sftp log (tail) ---\n{}", server.log_tail());
                    return Err(e);
                }
            }
        }
    }

    println!();
    println!(
        "`bento sftp`, idle watching sessions, {n_hosts} hosts, russh clients in one process \
         (keepalive after {} s idle); server process only. held: reads of the held watch \
         (answered after {} s); poll: one `readlink {CURRENT}` every {} s; phases spread evenly",
        KEEPALIVE.as_secs(),
        WATCH_HOLD.as_secs(),
        every.as_secs()
    );
    println!();
    println!("| sessions | mode | opened | errors | RSS before → after | PSS before → after | RSS per session | PSS per session | RSS after the window | answers/s | server CPU | client CPU |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &results {
        let per = |a: u64, b: u64| (b as f64 - a as f64) / r.opened.max(1) as f64;
        println!(
            "| {} | {} | {} | {} | {} → {} KiB | {} → {} KiB | {:.1} KiB | {:.1} KiB | {} KiB | {:.0} | {:.2}% of one core | {:.2}% |",
            r.sessions,
            r.mode.name(),
            r.opened,
            r.errors,
            r.before.rss,
            r.open.rss,
            r.before.pss,
            r.open.pss,
            per(r.before.rss, r.open.rss),
            per(r.before.pss, r.open.pss),
            r.watched.rss,
            r.readlinks as f64 / r.window.as_secs_f64(),
            100.0 * r.server_cpu.as_secs_f64() / r.window.as_secs_f64(),
            100.0 * r.client_cpu.as_secs_f64() / r.window.as_secs_f64(),
        );
    }
    println!();
    println!(
        "(CPU over a {} s window of watching, held: {} s; goals: ≤ 64 KiB per session, < 5% of one core for 5,000 sessions at 5 s)",
        window.as_secs(),
        window.max(WATCH_HOLD).as_secs()
    );
    for r in &results {
        for (what, (n, host)) in &r.first_errors {
            println!(
                "  {} sessions, {}: {n} × {what} (first: {host})",
                r.sessions,
                r.mode.name()
            );
        }
    }
    println!("binary: {}", bento_bin.display());
    Ok(())
}

struct Outcome {
    sessions: usize,
    mode: Mode,
    opened: u64,
    errors: u64,
    first_errors: BTreeMap<String, (u64, String)>,
    before: Mem,
    open: Mem,
    watched: Mem,
    readlinks: u64,
    window: Duration,
    server_cpu: Duration,
    client_cpu: Duration,
}

/// What the sessions tell the bench.
#[derive(Default)]
struct Counters {
    opened: AtomicU64,
    /// Sessions that ended, by error or at the end.
    done: AtomicU64,
    readlinks: AtomicU64,
    errors: AtomicU64,
    /// By kind: how many, and the first host.
    first_errors: Mutex<BTreeMap<String, (u64, String)>>,
}

impl Counters {
    /// Counts a failure; its kind (`what`) is counted too, the first host kept.
    fn error(&self, host: &str, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut e = self.first_errors.lock().unwrap_or_else(|e| e.into_inner());
        let (n, _) = e.entry(what).or_insert((0, host.to_owned()));
        *n += 1;
    }
}

async fn measure(
    server: &Server,
    hosts: &[String],
    keys: &[Arc<PrivateKey>],
    n: usize,
    mode: Mode,
    every: Duration,
    window: Duration,
) -> Result<Outcome> {
    let pid = server.child.id();
    let before = mem_of(pid)?;
    let counters = Arc::new(Counters::default());
    let logins = Arc::new(Semaphore::new(LOGIN_CONCURRENCY));
    // The moment the watch starts, sent once every session is open; then stop.
    let (start_tx, start_rx) = watch::channel(None::<tokio::time::Instant>);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for i in 0..n {
        let host = hosts[i % hosts.len()].clone();
        let key = keys[i % keys.len()].clone();
        let phase = every.mul_f64(i as f64 / n as f64);
        tasks.push(tokio::spawn(session(
            server.port,
            host,
            key,
            logins.clone(),
            counters.clone(),
            mode,
            phase,
            every,
            start_rx.clone(),
            stop_rx.clone(),
        )));
    }
    let deadline = Instant::now() + OPEN_TIMEOUT;
    let opened_at = Instant::now();
    while counters.opened.load(Ordering::Acquire) + counters.done.load(Ordering::Acquire) < n as u64
    {
        if Instant::now() > deadline {
            bail!("the sessions did not open within {OPEN_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let opened = counters.opened.load(Ordering::Acquire);
    eprintln!(
        "  {opened} open in {:.1} s, {} errors",
        opened_at.elapsed().as_secs_f64(),
        counters.errors.load(Ordering::Acquire)
    );
    let open = mem_of(pid)?;
    let t0 = tokio::time::Instant::now();
    start_tx.send_replace(Some(t0));
    // One interval in, every session is watching.
    tokio::time::sleep_until(t0 + every).await;
    let (cpu0, client0, links0) = (
        cpu_of(pid)?,
        cpu_of(std::process::id())?,
        counters.readlinks.load(Ordering::Acquire),
    );
    let w0 = Instant::now();
    tokio::time::sleep(window).await;
    let window = w0.elapsed();
    let (cpu1, client1, links1) = (
        cpu_of(pid)?,
        cpu_of(std::process::id())?,
        counters.readlinks.load(Ordering::Acquire),
    );
    let watched = mem_of(pid)?;
    stop_tx.send_replace(true);
    for t in tasks {
        let _ = t.await;
    }
    let errors = counters.errors.load(Ordering::Acquire);
    let first_errors = counters
        .first_errors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok(Outcome {
        sessions: n,
        mode,
        opened,
        errors,
        first_errors,
        before,
        open,
        watched,
        readlinks: links1 - links0,
        window,
        server_cpu: cpu1.saturating_sub(cpu0),
        client_cpu: client1.saturating_sub(client0),
    })
}

/// One watching session: log in, open SFTP, then from `start + phase` a readlink
/// every `every` (`poll`) or held watch reads one after the other (`held`),
/// until told to stop. Every failure is counted and ends it.
#[allow(clippy::too_many_arguments)]
async fn session(
    port: u16,
    host: String,
    key: Arc<PrivateKey>,
    logins: Arc<Semaphore>,
    counters: Arc<Counters>,
    mode: Mode,
    phase: Duration,
    every: Duration,
    mut start: watch::Receiver<Option<tokio::time::Instant>>,
    mut stop: watch::Receiver<bool>,
) {
    let opened = async {
        let _login = logins.acquire().await.map_err(|e| e.to_string())?;
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let config = Arc::new(client::Config {
            keepalive_interval: Some(KEEPALIVE),
            ..Default::default()
        });
        let mut h = client::connect_stream(config, stream, Client)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let auth = h
            .authenticate_publickey(&host, PrivateKeyWithHashAlg::new(key, None))
            .await
            .map_err(|e| format!("login: {e}"))?;
        if !auth.success() {
            return Err("login refused".to_owned());
        }
        let ch = h
            .channel_open_session()
            .await
            .map_err(|e| format!("channel: {e}"))?;
        ch.request_subsystem(true, "sftp")
            .await
            .map_err(|e| format!("subsystem: {e}"))?;
        let sftp = RawSftpSession::new(ch.into_stream());
        sftp.set_timeout((WATCH_HOLD + Duration::from_secs(30)).as_secs());
        sftp.init().await.map_err(|e| format!("sftp init: {e}"))?;
        Ok::<_, String>((h, sftp))
    }
    .await;
    let (handle, sftp) = match opened {
        Ok(s) => s,
        Err(e) => {
            counters.error(&host, e);
            counters.done.fetch_add(1, Ordering::AcqRel);
            return;
        }
    };
    counters.opened.fetch_add(1, Ordering::AcqRel);
    let t0 = loop {
        if let Some(t) = *start.borrow_and_update() {
            break t;
        }
        tokio::select! {
            r = start.changed() => if r.is_err() { return },
            _ = stop.changed() => return,
        }
    };
    let watching = async {
        match mode {
            Mode::Poll => {
                let mut ticks = tokio::time::interval_at(t0 + phase, every);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    sftp.readlink(CURRENT)
                        .await
                        .map_err(|e| format!("readlink: {e}"))?;
                    counters.readlinks.fetch_add(1, Ordering::Relaxed);
                }
            }
            Mode::Held => {
                tokio::time::sleep_until(t0 + phase).await;
                let w = sftp
                    .open(WATCH_FILE, OpenFlags::READ, Default::default())
                    .await
                    .map_err(|e| format!("open the watch: {e}"))?
                    .handle;
                loop {
                    sftp.read(&w, 0, 512)
                        .await
                        .map_err(|e| format!("watch read: {e}"))?;
                    counters.readlinks.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    };
    tokio::select! {
        r = watching => {
            let r: Result<(), String> = r;
            if let Err(e) = r {
                counters.error(&host, e);
            }
        }
        _ = stop.changed() => {}
    }
    let _ = handle
        .disconnect(russh::Disconnect::ByApplication, "", "")
        .await;
    counters.done.fetch_add(1, Ordering::AcqRel);
}

/// `bento sftp`, its stderr into a file; killed and reaped when dropped.
struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Server {
    fn start(bin: &Path, bento_dir: &Path, log: &Path) -> Result<Server> {
        let child = Command::new(bin)
            .arg("-C")
            .arg(bento_dir)
            .args(["sftp", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(log)?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut s = Server {
            child,
            port: 0,
            log: log.to_owned(),
        };
        let port = bento_tests::wait_for(Duration::from_secs(30), || {
            bento_tests::embedded::listening_port(&fs::read_to_string(&s.log).ok()?)
        });
        let Some(port) = port else {
            bail!("bento sftp did not start:\n{}", s.log_tail());
        };
        s.port = port;
        Ok(s)
    }

    fn log_tail(&self) -> String {
        let l = fs::read_to_string(&self.log).unwrap_or_default();
        let mut start = l.len().saturating_sub(4000);
        while !l.is_char_boundary(start) {
            start += 1;
        }
        l[start..].to_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// KiB.
#[derive(Clone, Copy)]
struct Mem {
    rss: u64,
    pss: u64,
}

fn mem_of(pid: u32) -> Result<Mem> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("reading /proc/{pid}/smaps_rollup"))?;
    let field = |name: &str| -> Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/smaps_rollup"))
    };
    Ok(Mem {
        rss: field("Rss:")?,
        pss: field("Pss:")?,
    })
}

/// User + system time of `pid` (all its threads).
fn cpu_of(pid: u32) -> Result<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("odd stat")?.1;
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // After the command: state, ppid, …; utime and stime are the 12th and 13th.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks()))
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`, else 100).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|t: &f64| *t > 0.0)
            .unwrap_or(100.0)
    })
}

fn env_u64(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}
