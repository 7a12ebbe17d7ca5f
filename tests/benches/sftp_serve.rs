//! bento's embedded SFTP server (`bento sftp`) against OpenSSH's sshd, in the same
//! run, serving the same chroots to the same host keys: polls per second, and memory
//! per connected client.
//!
//! ```sh
//! cargo build --release -p bento -p bento-agent   # the binary measured
//! cargo bench -p bento-tests --bench sftp_serve    # as root (it adds users)
//! ```
//!
//! A poll is what a polling shell client does: one OpenSSH `sftp -b -` process that
//! logs in as a host, runs `ls -l /last_change_date` and exits 0. `C` workers poll in a
//! loop for `D` seconds against one server, then the other, for `R` rounds each,
//! interleaved (and alternating which goes first) so both see the same machine load;
//! the figure is the median round. The clients run on the same machine, so they share
//! its cores with the server.
//!
//! Memory: `M` idle `sftp` sessions (logged in, one `pwd` answered, stdin kept open),
//! opened one after the other; the server's RSS and PSS (`/proc/<pid>/smaps_rollup`)
//! before and after, summed over every process of the server (sshd: the listener and
//! all its descendants). The sessions go to the hosts in turn, so `M / hosts` per host
//! (5 by default) must stay within bento's `[sftp] max_connections_per_host`.
//!
//! Settings (environment): `SFTP_BENCH_HOSTS` (20), `SFTP_BENCH_CONCURRENCY` (8),
//! `SFTP_BENCH_SECS` (10), `SFTP_BENCH_ROUNDS` (3), `SFTP_BENCH_CLIENTS` (100),
//! `SFTP_BENCH_SSH_OPTIONS` (more `-o` options for every client, space-separated, e.g.
//! `KexAlgorithms=curve25519-sha256`), `BENTO_BIN` (else `target/release/bento`, else
//! the debug one).
//!
//! The key exchange is whatever the client and each server agree on, and it is printed:
//! OpenSSH 9.x pairs pick `sntrup761x25519-sha512` (post-quantum, costly for the
//! client), bento's server (russh) `curve25519-sha256`.
//!
//! sshd runs with OpenSSH's default `MaxStartups 10:30:100` (the harness does not set
//! it): above 10 connections still authenticating it drops new ones at random, so
//! concurrency above 10 shows sshd failures by design. Failures are counted, never
//! retried.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bento_core::chroot::{Chroot, Owners};
use bento_tests::endpoint::{run_batch, Endpoint};
use bento_tests::sshd::{unique_prefix, SshServer};
use bento_tests::{wait_for, wait_until, TestDir};

/// The sshd default the harness keeps (`MaxStartups 10:30:100`).
const SSHD_MAX_STARTUPS: usize = 10;
/// Sequential polls for the one-client figures.
const SINGLE_RUNS: usize = 20;
/// How long one client may take to log in and answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to close its connections after the clients are gone.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);

fn main() -> Result<()> {
    let n_hosts = env_usize("SFTP_BENCH_HOSTS", 20)?;
    let concurrency = env_usize("SFTP_BENCH_CONCURRENCY", 8)?;
    let secs = env_usize("SFTP_BENCH_SECS", 10)?;
    let rounds = env_usize("SFTP_BENCH_ROUNDS", 3)?;
    let n_clients = env_usize("SFTP_BENCH_CLIENTS", 100)?;
    ensure!(
        n_hosts > 0 && concurrency > 0 && secs > 0 && rounds > 0,
        "hosts, concurrency, seconds and rounds must be at least 1"
    );
    if concurrency > SSHD_MAX_STARTUPS {
        eprintln!(
            "note: concurrency {concurrency} > {SSHD_MAX_STARTUPS}: sshd's default MaxStartups \
             10:30:100 will drop some connections (counted as failures)"
        );
    }
    let bento_bin = bento_tests::bins::measured("bento")?;
    let dir = TestDir::new("sftp-bench")?;
    let prefix = unique_prefix();
    let hosts: Vec<String> = (0..n_hosts).map(|i| format!("{prefix}-h{i:02}")).collect();
    let refs: Vec<&str> = hosts.iter().map(String::as_str).collect();

    // OpenSSH: one chroot user per host, a key pair each.
    eprintln!("setting up sshd with {n_hosts} host users…");
    let server = SshServer::start(&refs)?;
    let chroot = Chroot::new(server.chroot_dir());
    for h in &hosts {
        publish(&server, &chroot, h, &dir.join("stage").join(h))?;
    }
    let sshd_pid: u32 = wait_for(Duration::from_secs(10), || {
        fs::read_to_string(server.root().join("sshd.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    })
    .context("sshd wrote no sshd.pid")?;
    let sshd_kh = dir.join("known_hosts_sshd");
    fs::write(
        &sshd_kh,
        known_hosts_line(&server.root().join("hostkey.pub"), server.port())?,
    )?;

    // bento sftp: the same chroot_dir, the same public keys.
    let bento_dir = dir.join("bento");
    fs::create_dir_all(bento_dir.join("hosts"))?;
    let mut toml = format!(
        "chroot_dir = {:?}\n\n[sftp]\nlisten = \"127.0.0.1:0\"\nmax_connections = 4096\n",
        server.chroot_dir().display().to_string()
    );
    for h in &hosts {
        toml.push_str(&format!(
            "\n[hosts.{h}]\nkeys = [{:?}]\n",
            public_key(&server.key_path(h))?
        ));
    }
    fs::write(bento_dir.join("bento.toml"), toml)?;
    let embedded = Embedded::start(&bento_bin, &bento_dir)?;
    let embedded_kh = dir.join("known_hosts_embedded");
    fs::write(
        &embedded_kh,
        known_hosts_line(&bento_dir.join("sftp_host_ed25519_key.pub"), embedded.port)?,
    )?;

    let targets = [
        Target {
            name: "bento sftp (embedded)",
            port: embedded.port,
            known_hosts: embedded_kh,
            pid: embedded.child.id(),
            kind: Kind::Embedded {
                idle_fds: embedded.idle_fds,
            },
        },
        Target {
            name: "OpenSSH sshd",
            port: server.port(),
            known_hosts: sshd_kh,
            pid: sshd_pid,
            kind: Kind::Sshd,
        },
    ];
    let result = measure(
        &targets,
        &server,
        &hosts,
        concurrency,
        secs,
        rounds,
        n_clients,
    );
    if result.is_err() {
        eprintln!("--- bento sftp log ---\n{}", embedded.log());
        eprintln!("--- sshd log (tail) ---\n{}", tail(&server.log(), 4000));
    }
    let (singles, polls, mems) = result?;

    println!();
    println!("one client at a time: {SINGLE_RUNS} sequential polls ('ls -l /last_change_date')");
    println!(
        "{:<24} {:<34} {:>10} {:>12} {:>12}",
        "server", "key exchange (client's choice)", "wall p50", "server CPU", "client CPU"
    );
    for (t, s) in targets.iter().zip(&singles) {
        println!(
            "{:<24} {:<34} {:>7.1} ms {:>9.2} ms {:>9.2} ms",
            t.name,
            s.kex,
            s.wall,
            ms(s.server_cpu),
            ms(s.client_cpu)
        );
    }
    println!();
    println!(
        "polls/s: {n_hosts} hosts, {concurrency} concurrent `sftp -b -` clients \
         ('ls -l /last_change_date'), {rounds} rounds x {secs} s each, interleaved; \
         {} cores shared by clients and server",
        cores()
    );
    println!(
        "{:<24} {:>9} {:>24} {:>14} {:>12} {:>12} {:>12}",
        "server", "polls/s", "rounds", "failures", "server CPU", "client CPU", "server-bound"
    );
    println!(
        "{:<24} {:>9} {:>24} {:>14} {:>12} {:>12} {:>12}",
        "", "(median)", "", "(all rounds)", "per poll", "per poll", "polls/s/core"
    );
    for (t, rs) in targets.iter().zip(&polls) {
        let ok: u64 = rs.iter().map(|r| r.ok).sum();
        let failed: u64 = rs.iter().map(|r| r.failed).sum();
        let server_cpu: Duration = rs.iter().map(|r| r.server_cpu).sum();
        let client_cpu: Duration = rs.iter().map(|r| r.client_cpu).sum();
        let per = |d: Duration| format!("{:.2} ms", ms(d) / ok.max(1) as f64);
        let per_core = 1000.0 * ok as f64 / ms(server_cpu).max(1.0);
        println!(
            "{:<24} {:>9.1} {:>24} {:>14} {:>12} {:>12} {:>12.0}",
            t.name,
            median(rs.iter().map(Round::rate).collect()),
            rs.iter()
                .map(|r| format!("{:.1}", r.rate()))
                .collect::<Vec<_>>()
                .join(" "),
            format!("{failed}/{}", ok + failed),
            per(server_cpu),
            per(client_cpu),
            per_core,
        );
    }
    println!("(server-bound: polls one core would serve if the clients cost nothing: 1 / server CPU per poll)");
    for (t, rs) in targets.iter().zip(&polls) {
        let mut errors: Vec<&String> = rs.iter().flat_map(|r| &r.errors).collect();
        errors.dedup();
        for e in errors.iter().take(3) {
            println!("  {} failure: {}", t.name, e.trim());
        }
    }
    println!();
    println!(
        "memory per connected client: {n_clients} idle `sftp` sessions over {n_hosts} hosts \
         (KiB, from smaps_rollup, summed over the server's processes)"
    );
    println!(
        "{:<24} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "server",
        "procs",
        "RSS before",
        "RSS after",
        "PSS before",
        "PSS after",
        "RSS/client",
        "PSS/client",
        "RSS closed"
    );
    for (t, m) in targets.iter().zip(&mems) {
        let per = |a: u64, b: u64| (b as f64 - a as f64) / n_clients.max(1) as f64;
        println!(
            "{:<24} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10.1} {:>10.1} {:>12}",
            t.name,
            m.after.procs,
            m.before.rss,
            m.after.rss,
            m.before.pss,
            m.after.pss,
            per(m.before.rss, m.after.rss),
            per(m.before.pss, m.after.pss),
            m.closed.rss,
        );
    }
    println!("(procs: server processes with the clients connected; RSS closed: after they left)");
    println!(
        "binaries: {} / {}",
        bento_bin.display(),
        bento_tests::bins::ssh_version()
    );
    if !extra_options().is_empty() {
        println!("extra client options: {}", extra_options().join(" "));
    }
    drop(embedded);
    drop(server);
    Ok(())
}

type Measured = (Vec<Single>, Vec<Vec<Round>>, Vec<Memory>);

fn measure(
    targets: &[Target; 2],
    server: &SshServer,
    hosts: &[String],
    concurrency: usize,
    secs: usize,
    rounds: usize,
    n_clients: usize,
) -> Result<Measured> {
    // Both serve every host before anything is measured.
    for t in targets {
        for h in hosts {
            poll(t, h, &server.key_path(h))
                .with_context(|| format!("{}: first poll as {h}", t.name))?;
        }
        t.settle();
    }
    let mut singles = Vec::new();
    for t in targets {
        eprintln!("{SINGLE_RUNS} sequential polls: {}…", t.name);
        singles.push(single(t, server, hosts)?);
    }
    let mut polls = vec![Vec::new(), Vec::new()];
    for r in 0..rounds {
        let order = if r % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let t = &targets[i];
            eprintln!("round {}/{rounds}: {}…", r + 1, t.name);
            let round = t.round(server, hosts, concurrency, Duration::from_secs(secs as u64))?;
            eprintln!("  {:.1} polls/s, {} failed", round.rate(), round.failed);
            polls[i].push(round);
        }
    }
    let mut mems = Vec::new();
    for t in targets {
        eprintln!("memory: {n_clients} idle clients on {}…", t.name);
        mems.push(t.memory(server, hosts, n_clients)?);
    }
    Ok((singles, polls, mems))
}

/// Publishes a small release for `host` into the sshd chroot (root-owned, `logs/` the
/// host user's), as `bento deploy` does for OpenSSH.
fn publish(server: &SshServer, chroot: &Chroot, host: &str, stage: &Path) -> Result<()> {
    let owners = Owners {
        dirs: (0, 0),
        logs: (server.uid(host)?, server.gid()?),
        publisher: (0, 0),
    };
    bento_tests::release::publish_plain(chroot, host, stage, owners)?;
    Ok(())
}

enum Kind {
    /// One process; its open descriptors when no client is connected.
    Embedded { idle_fds: usize },
    /// The listener; one process per connection and one per session below it.
    Sshd,
}

struct Target {
    name: &'static str,
    port: u16,
    known_hosts: PathBuf,
    pid: u32,
    kind: Kind,
}

impl Target {
    fn sftp(&self, host: &str, key: &Path) -> Command {
        let mut c = Command::new("sftp");
        c.args(["-q", "-b", "-"]).args(self.options(host, key));
        c
    }

    /// `-o` options of the clients, then the address.
    fn options(&self, host: &str, key: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for o in [
            format!("Port={}", self.port),
            format!("User={host}"),
            format!("IdentityFile={}", key.display()),
            "IdentitiesOnly=yes".to_owned(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "StrictHostKeyChecking=yes".to_owned(),
            "BatchMode=yes".to_owned(),
            // A stuck poll ends (as a failure) instead of stalling the bench.
            "ConnectTimeout=30".to_owned(),
            "ServerAliveInterval=10".to_owned(),
            "ServerAliveCountMax=3".to_owned(),
        ]
        .into_iter()
        .chain(extra_options())
        {
            out.push("-o".to_owned());
            out.push(o);
        }
        out.push("127.0.0.1".to_owned());
        out
    }

    /// Waits until the server has no connection left (so its CPU is all counted and
    /// the next measure starts clean). Best effort.
    fn settle(&self) -> bool {
        wait_until(SETTLE_TIMEOUT, || match self.kind {
            Kind::Embedded { idle_fds } => fd_count(self.pid) <= idle_fds,
            Kind::Sshd => descendants(self.pid).is_empty(),
        })
    }

    /// CPU used by the server so far: the process, plus (sshd) its reaped children.
    fn cpu(&self) -> Result<Duration> {
        let f = stat_fields(self.pid)?;
        let ticks: u64 = match self.kind {
            // utime, stime
            Kind::Embedded { .. } => f[11] + f[12],
            // + cutime, cstime: connection processes, reaped by the listener
            Kind::Sshd => f[11] + f[12] + f[13] + f[14],
        };
        Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks()))
    }

    fn round(
        &self,
        server: &SshServer,
        hosts: &[String],
        concurrency: usize,
        length: Duration,
    ) -> Result<Round> {
        let ok = AtomicU64::new(0);
        let failed = AtomicU64::new(0);
        let errors = Mutex::new(Vec::new());
        let server_cpu = self.cpu()?;
        let client_cpu = children_cpu();
        let start = Instant::now();
        let deadline = start + length;
        std::thread::scope(|s| {
            for w in 0..concurrency {
                let (ok, failed, errors) = (&ok, &failed, &errors);
                s.spawn(move || {
                    let mut i = w;
                    while Instant::now() < deadline {
                        let host = &hosts[i % hosts.len()];
                        i += concurrency;
                        match poll(self, host, &server.key_path(host)) {
                            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                let mut errors = errors.lock().unwrap_or_else(|e| e.into_inner());
                                if errors.len() < 10 {
                                    errors.push(format!("{e:#}"));
                                }
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                });
            }
        });
        let elapsed = start.elapsed();
        let client_cpu = children_cpu().saturating_sub(client_cpu);
        if !self.settle() {
            eprintln!(
                "  note: {} still had connections after {SETTLE_TIMEOUT:?}",
                self.name
            );
        }
        Ok(Round {
            ok: ok.into_inner(),
            failed: failed.into_inner(),
            elapsed,
            server_cpu: self.cpu()?.saturating_sub(server_cpu),
            client_cpu,
            errors: errors.into_inner().unwrap_or_else(|e| e.into_inner()),
        })
    }

    /// Opens `n` idle sessions one after the other and reads the server's memory before,
    /// with them, and after they closed.
    fn memory(&self, server: &SshServer, hosts: &[String], n: usize) -> Result<Memory> {
        self.settle();
        let before = mem_of_tree(self.pid)?;
        let mut clients = IdleClients::default();
        let (tx, rx) = mpsc::channel::<(usize, bool)>();
        let mut lost = Vec::new();
        for i in 0..n {
            let host = &hosts[i % hosts.len()];
            let mut child = self
                .sftp(host, &server.key_path(host))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting sftp")?;
            let mut stdin = child.stdin.take().expect("piped");
            let stdout = child.stdout.take().expect("piped");
            let stderr = child.stderr.take().expect("piped");
            stdin.write_all(b"pwd\n").context("writing to sftp")?;
            clients.0.push(Idle {
                child,
                stdin: Some(stdin),
                stderr: None,
            });
            let tx = tx.clone();
            // Says when the session answered, or ended; then drains until the end.
            std::thread::spawn(move || {
                let mut answered = false;
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if !answered && line.contains("Remote working directory") {
                        answered = true;
                        let _ = tx.send((i, true));
                    }
                }
                let _ = tx.send((i, false));
            });
            let deadline = Instant::now() + CONNECT_TIMEOUT;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok((j, true)) if j == i => break,
                    Ok((j, false)) if j == i => {
                        let _ = clients.0[i].child.kill();
                        let mut err = String::new();
                        let _ = BufReader::new(stderr).read_to_string(&mut err);
                        bail!(
                            "{}: idle client {i} ({host}) ended: {}",
                            self.name,
                            err.trim()
                        );
                    }
                    // An earlier session ended under us: counted below.
                    Ok((j, false)) => lost.push(j),
                    Ok(_) => {}
                    Err(_) => bail!(
                        "{}: idle client {i} ({host}) did not connect within {CONNECT_TIMEOUT:?}",
                        self.name
                    ),
                }
            }
            // Kept open (unread: nothing comes there) until the session is killed.
            clients.0[i].stderr = Some(stderr);
        }
        while let Ok((j, false)) = rx.try_recv() {
            lost.push(j);
        }
        ensure!(
            lost.is_empty(),
            "{}: {} idle sessions ended before the measure: {lost:?}",
            self.name,
            lost.len()
        );
        let after = mem_of_tree(self.pid)?;
        drop(clients);
        if !self.settle() {
            eprintln!(
                "  note: {} still had connections after {SETTLE_TIMEOUT:?}",
                self.name
            );
        }
        let closed = mem_of_tree(self.pid)?;
        Ok(Memory {
            before,
            after,
            closed,
        })
    }
}

/// One poll: log in as `host`, `ls -l /last_change_date`, exit 0.
fn poll(t: &Target, host: &str, key: &Path) -> Result<()> {
    let out = run_batch(t.sftp(host, key), "ls -l /last_change_date\n")?;
    if !out.status.success() {
        bail!(
            "sftp {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// One client at a time: what it negotiated (`ssh -v`), then `SINGLE_RUNS` polls.
fn single(t: &Target, server: &SshServer, hosts: &[String]) -> Result<Single> {
    let key = server.key_path(&hosts[0]);
    let mut cmd = Command::new("sftp");
    cmd.args(["-v", "-b", "-"]).args(t.options(&hosts[0], &key));
    let out = run_batch(cmd, "ls -l /last_change_date\n")?;
    let kex = String::from_utf8_lossy(&out.stderr)
        .lines()
        .find_map(|l| {
            l.split_once("kex: algorithm: ")
                .map(|(_, k)| k.trim().to_owned())
        })
        .unwrap_or_else(|| "?".to_owned());
    t.settle();
    let (cpu0, server0) = (children_cpu(), t.cpu()?);
    let mut walls = Vec::new();
    for i in 0..SINGLE_RUNS {
        let host = &hosts[i % hosts.len()];
        let start = Instant::now();
        poll(t, host, &server.key_path(host))
            .with_context(|| format!("{}: poll as {host}", t.name))?;
        walls.push(ms(start.elapsed()));
    }
    t.settle();
    Ok(Single {
        kex,
        wall: median(walls),
        client_cpu: children_cpu().saturating_sub(cpu0) / SINGLE_RUNS as u32,
        server_cpu: t.cpu()?.saturating_sub(server0) / SINGLE_RUNS as u32,
    })
}

struct Single {
    kex: String,
    /// Median, ms.
    wall: f64,
    client_cpu: Duration,
    server_cpu: Duration,
}

struct Round {
    ok: u64,
    failed: u64,
    elapsed: Duration,
    server_cpu: Duration,
    client_cpu: Duration,
    errors: Vec<String>,
}

impl Round {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

struct Memory {
    before: Mem,
    after: Mem,
    closed: Mem,
}

/// KiB, and how many processes they were summed over.
#[derive(Default, Clone, Copy)]
struct Mem {
    rss: u64,
    pss: u64,
    procs: usize,
}

/// Idle `sftp` sessions with their stdin kept open; killed and reaped when dropped.
#[derive(Default)]
struct IdleClients(Vec<Idle>);

struct Idle {
    child: Child,
    stdin: Option<ChildStdin>,
    stderr: Option<ChildStderr>,
}

impl Drop for IdleClients {
    fn drop(&mut self) {
        for c in &mut self.0 {
            drop(c.stdin.take());
            drop(c.stderr.take());
            let _ = c.child.kill();
        }
        for c in &mut self.0 {
            let _ = c.child.wait();
        }
    }
}

/// `bento sftp`, killed and reaped when dropped.
struct Embedded {
    child: Child,
    port: u16,
    /// Open descriptors once listening, before any client.
    idle_fds: usize,
    log: Arc<Mutex<String>>,
}

impl Embedded {
    fn start(bin: &Path, bento_dir: &Path) -> Result<Embedded> {
        let mut child = Command::new(bin)
            .arg("-C")
            .arg(bento_dir)
            .args(["sftp", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stderr = child.stderr.take().expect("piped");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap_or_else(|e| e.into_inner());
                // Keep the start and the latest lines, not an unbounded log.
                if l.len() > 256 << 10 {
                    let cut = l.len() - (128 << 10);
                    let cut = (cut..l.len()).find(|&c| l.is_char_boundary(c)).unwrap_or(0);
                    l.drain(..cut);
                }
                l.push_str(&line);
                l.push('\n');
            }
        });
        let mut e = Embedded {
            child,
            port: 0,
            idle_fds: 0,
            log,
        };
        let port = wait_for(Duration::from_secs(30), || {
            bento_tests::embedded::listening_port(&e.log())
        });
        let Some(port) = port else {
            bail!("bento sftp did not start:\n{}", e.log());
        };
        e.port = port;
        e.idle_fds = fd_count(e.child.id());
        Ok(e)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `[127.0.0.1]:PORT <type> <blob>` from a `.pub` file.
fn known_hosts_line(public: &Path, port: u16) -> Result<String> {
    let text =
        fs::read_to_string(public).with_context(|| format!("reading {}", public.display()))?;
    let mut f = text.split_whitespace();
    let (kind, blob) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
    ensure!(!blob.is_empty(), "{} is not a public key", public.display());
    Ok(format!("[127.0.0.1]:{port} {kind} {blob}\n"))
}

/// The public key of the private key `key`: its `.pub`, else derived by ssh-keygen.
fn public_key(key: &Path) -> Result<String> {
    let mut p = key.as_os_str().to_owned();
    p.push(".pub");
    if let Ok(text) = fs::read_to_string(&p) {
        return Ok(text.trim().to_owned());
    }
    let out = bento_tests::run(Command::new("ssh-keygen").arg("-y").arg("-f").arg(key))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The fields of `/proc/<pid>/stat` after the command name, as numbers (state is 0).
fn stat_fields(pid: u32) -> Result<Vec<u64>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("odd stat")?.1;
    Ok(rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect())
}

/// Every live process below `root` (children, grandchildren, …).
fn descendants(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for pid in fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
    {
        if let Ok(f) = stat_fields(pid) {
            if let Some(&ppid) = f.get(1) {
                children.entry(ppid as u32).or_default().push(pid);
            }
        }
    }
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or_default() {
            out.push(c);
            stack.push(c);
        }
    }
    out
}

/// RSS and PSS summed over `pid` and its descendants.
fn mem_of_tree(pid: u32) -> Result<Mem> {
    let mut m = mem_of(pid).with_context(|| format!("memory of server process {pid}"))?;
    for p in descendants(pid) {
        // A process may end between the listing and the read.
        if let Ok(d) = mem_of(p) {
            m.rss += d.rss;
            m.pss += d.pss;
            m.procs += 1;
        }
    }
    Ok(m)
}

fn mem_of(pid: u32) -> Result<Mem> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let field = |name: &str| -> Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/smaps_rollup"))
    };
    Ok(Mem {
        rss: field("Rss:")?,
        pss: field("Pss:")?,
        procs: 1,
    })
}

fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
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

/// User+system time of this process's reaped children (the `sftp` clients and their
/// `ssh`; the servers are reaped only at the end).
fn children_cpu() -> Duration {
    let ticks = stat_fields(std::process::id())
        .map(|f| f[13] + f[14])
        .unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / clock_ticks())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn tail(s: &str, bytes: usize) -> &str {
    let mut start = s.len().saturating_sub(bytes);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `SFTP_BENCH_SSH_OPTIONS`: more client options for both servers, space-separated
/// (e.g. `KexAlgorithms=curve25519-sha256`).
fn extra_options() -> Vec<String> {
    std::env::var("SFTP_BENCH_SSH_OPTIONS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn env_usize(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}
