//! Hosts never evaluate, measured: an agent fetching the server's signed closure
//! through its own chroot, side by side with what a user would otherwise do, on
//! the same toy closure in one run.
//!
//! ```sh
//! cargo build --release -p bento -p bento-agent -p bento-tests --bins
//! cargo bench -p bento-tests --bench closure_fetch            # as root (users, sshd)
//! cargo bench -p bento-tests --bench closure_fetch -- --quick # small sizes
//! ```
//!
//! The closure: a toy NixOS system whose toplevel refers to a shared "kernel"
//! package and a package of `CLOSURE_BENCH_MIB` (64; 8 with `--quick`) random,
//! incompressible bytes, plus a few small files. After `bento deploy` exports it,
//! its paths are deleted from the store, so the agent imports every one.
//!
//! - **Bytes on the wire** (server to agent, counted by a TCP relay in the
//!   agent's `ProxyCommand`, SSH framing included) for a first update and for an
//!   update where only the toplevel changed, against the compressed size of the
//!   paths the store lacked (their narinfos and NARs). The relay costs CPU, so
//!   the times come from an update of their own without it.
//! - **Wall time** of the agent's fetch and import (from the closure's first
//!   narinfo to the end of `nix copy --from file://`, as the agent's report
//!   gives it) and of its whole `run-once` (connect, manifest, fetch, import,
//!   activation of the toy system, a fresh connection for the health check and
//!   the report), against `nix copy --to
//!   ssh://` of the same closure to a fresh store on this machine (what push tools
//!   do, through a root sshd of the bench's own), and against building the same
//!   toy system with nix (a toy's build is trivial: a real NixOS evaluation takes
//!   minutes, so this is a lower bound for building).
//! - **Agent peak RSS** (`VmHWM` of the `bento-agent` process, sampled every
//!   10 ms until it exits) while it fetches a NAR of `CLOSURE_BENCH_BIG_MIB`
//!   (1024; 32 with `--quick`). `nix copy` is its own process.
//! - **Server CPU per fetched MiB**: user + system time of `bento sftp`, or of
//!   sshd with the session processes it reaped, over the timed update.
//! - **Many small paths**: the same wall times for a closure of
//!   `CLOSURE_BENCH_PATHS` (500; 50 with `--quick`) packages of 4 KiB, where
//!   round trips count, not bandwidth.

#[path = "../tests/agent_common/mod.rs"]
mod agent_common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_common::Fleet;
use anyhow::{ensure, Context, Result};
use bento_core::closure::{store_hash, Closure};
use bento_core::report::Obtained;
use bento_tests::endpoint::Endpoint;
use bento_tests::nixenv::{delete, valid};
use bento_tests::{nixenv, wait_for, TestDir};

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let mib = env_u64("CLOSURE_BENCH_MIB", if quick { 8 } else { 64 })?;
    let big_mib = env_u64("CLOSURE_BENCH_BIG_MIB", if quick { 32 } else { 1024 })?;
    let paths = env_u64("CLOSURE_BENCH_PATHS", if quick { 50 } else { 500 })?;
    eprintln!("closure_fetch: payload {mib} MiB, large NAR {big_mib} MiB, {paths} small paths");

    let sftp = Fleet::embedded("bench-closure-sftp", &["a"], "", "")?;
    let on_sftp = updates(&sftp, mib, ServerCpu::Embedded, sftp.server.pid())?;
    let sshd = Fleet::new("bench-closure-sshd", &["a"], "")?;
    let on_sshd = updates(&sshd, mib, ServerCpu::Sshd, sshd.server.pid())?;

    // The same closure as on the bento sftp run, pushed the way push tools do.
    let push = push_with_nix_copy(&sftp, &on_sftp.toplevel).map_err(|e| format!("{e:#}"));
    let many_sftp = many_paths(&sftp, paths)?;
    let many_sshd = many_paths(&sshd, paths)?;
    let many_push = push_with_nix_copy(&sftp, &many_sftp.toplevel).map_err(|e| format!("{e:#}"));
    let build = build_locally(&sftp, mib)?;
    let rss = peak_rss(big_mib)?;

    println!();
    println!("| closure of {mib} MiB (random) | bento sftp | OpenSSH sshd |");
    println!("|---|---|---|");
    for (what, f) in [
        ("first update: bytes on the wire", Figure::FirstWire),
        (
            "first update: compressed size of the missing paths",
            Figure::FirstSize,
        ),
        ("first update: wire / compressed", Figure::FirstRatio),
        (
            "toplevel-only update: bytes on the wire",
            Figure::SecondWire,
        ),
        (
            "toplevel-only update: compressed size of the missing paths",
            Figure::SecondSize,
        ),
        (
            "toplevel-only update: wire / compressed",
            Figure::SecondRatio,
        ),
        ("a poll with nothing new: bytes on the wire", Figure::Idle),
        (
            "first update: agent run-once wall time (no relay)",
            Figure::Wall,
        ),
        ("server CPU per fetched MiB", Figure::CpuPerMib),
    ] {
        println!("| {what} | {} | {} |", on_sftp.show(f), on_sshd.show(f));
    }
    println!();
    println!("| getting the same system onto a host | wall time | against `nix copy` |");
    println!("|---|---|---|");
    let against = |d: Duration| match &push {
        Ok(p) => format!("{:.2}×", d.as_secs_f64() / p.as_secs_f64()),
        Err(_) => "not measured".into(),
    };
    for (what, d) in [
        (
            "bento-agent fetch and import over bento sftp",
            on_sftp.fetch.0,
        ),
        ("bento-agent fetch and import over sshd", on_sshd.fetch.0),
    ] {
        println!(
            "| {what} (its report) | {:.2} s | {} |",
            d.as_secs_f64(),
            against(d)
        );
    }
    println!(
        "| bento-agent run-once, closure fetched over bento sftp | {:.2} s | {} |",
        on_sftp.wall.as_secs_f64(),
        against(on_sftp.wall)
    );
    println!(
        "| bento-agent run-once, closure fetched over sshd | {:.2} s | {} |",
        on_sshd.wall.as_secs_f64(),
        against(on_sshd.wall)
    );
    match &push {
        Ok(d) => println!(
            "| `nix copy --to ssh://` (push, to a fresh store) | {:.2} s | 1.00× |",
            d.as_secs_f64()
        ),
        Err(e) => println!("| `nix copy --to ssh://` (push) | not measured: {e} | |"),
    }
    println!(
        "| building the toy system with nix (no substituters) | {:.2} s | {} |",
        build.as_secs_f64(),
        against(build)
    );
    println!();
    println!("| a closure of {paths} small paths (4 KiB each) | wall time | against `nix copy` |");
    println!("|---|---|---|");
    let against = |d: Duration| match &many_push {
        Ok(p) => format!("{:.2}×", d.as_secs_f64() / p.as_secs_f64()),
        Err(_) => "not measured".into(),
    };
    for (what, d) in [
        (
            "bento-agent fetch and import over bento sftp",
            many_sftp.fetch,
        ),
        ("bento-agent fetch and import over sshd", many_sshd.fetch),
    ] {
        println!(
            "| {what} (its report) | {:.2} s | {} |",
            d.as_secs_f64(),
            against(d)
        );
    }
    match &many_push {
        Ok(d) => println!(
            "| `nix copy --to ssh://` (push, to a fresh store) | {:.2} s | 1.00× |",
            d.as_secs_f64()
        ),
        Err(e) => println!("| `nix copy --to ssh://` (push) | not measured: {e} | |"),
    }
    println!();
    println!(
        "agent peak RSS fetching and importing a {big_mib} MiB NAR over bento sftp: {:.1} MiB (VmHWM)",
        rss as f64 / 1048576.0
    );
    Ok(())
}

#[derive(Clone, Copy)]
enum Figure {
    FirstWire,
    FirstSize,
    FirstRatio,
    SecondWire,
    SecondSize,
    SecondRatio,
    Idle,
    Wall,
    CpuPerMib,
}

/// The figures of one server.
struct Updates {
    toplevel: String,
    /// Bytes of a poll with nothing new.
    idle: u64,
    first: (u64, u64),
    second: (u64, u64),
    /// The timed update's fetch and import, as the agent reported it, and the
    /// bytes it fetched.
    fetch: (Duration, u64),
    wall: Duration,
    cpu: Duration,
}

impl Updates {
    fn show(&self, f: Figure) -> String {
        let mib = |b: u64| format!("{:.2} MiB", b as f64 / 1048576.0);
        let ratio = |(w, s): (u64, u64)| format!("{:.3}×", w as f64 / s.max(1) as f64);
        match f {
            Figure::FirstWire => mib(self.first.0),
            Figure::FirstSize => mib(self.first.1),
            Figure::FirstRatio => ratio(self.first),
            Figure::SecondWire => format!("{} B", self.second.0),
            Figure::SecondSize => format!("{} B", self.second.1),
            Figure::SecondRatio => ratio(self.second),
            Figure::Idle => format!("{} B", self.idle),
            Figure::Wall => format!("{:.2} s", self.wall.as_secs_f64()),
            Figure::CpuPerMib => format!(
                "{:.1} ms",
                self.cpu.as_secs_f64() * 1000.0 / (self.fetch.1 as f64 / 1048576.0).max(1e-9)
            ),
        }
    }
}

#[derive(Clone, Copy)]
enum ServerCpu {
    /// `bento sftp`: one process, every session a task in it.
    Embedded,
    /// sshd: the listener, and the session processes it forked and reaped.
    Sshd,
}

fn updates<S: Endpoint>(
    fleet: &Fleet<S>,
    mib: u64,
    cpu: ServerCpu,
    pid: Option<u32>,
) -> Result<Updates> {
    let a = fleet.host(0).to_owned();
    // Paths of this run only, so deleting them is safe.
    fleet.toy.set_kernel(&a, &format!("6.1.0-{a}"))?;

    // Timed: the agent alone on its connection, as `nix copy` is.
    fleet.toy.set_payload(&a, mib << 20)?;
    fleet.deploy()?;
    let agent = fleet.agent(&a)?;
    agent.pin(&fleet.public_key()?)?;
    let c = fleet.closure(&a)?;
    delete(&c.paths.keys().map(String::as_str).collect::<Vec<_>>())?;
    let cpu_before = server_cpu(pid, cpu)?;
    let started = Instant::now();
    let run = agent.run_once()?;
    let wall = started.elapsed();
    ensure!(run.ok(), "the timed update failed:\n{}", run.stderr);
    let used = server_cpu(pid, cpu)?.saturating_sub(cpu_before);
    // The agent's own measure of its fetch and import, from its report.
    let (_, meta) = fleet.report_for(&a, &fleet.published(&a)?)?;
    let fetch = match meta.obtained {
        Some(Obtained::Fetched { millis, bytes, .. }) => (Duration::from_millis(millis), bytes),
        other => anyhow::bail!("the timed update was not fetched: {other:?}"),
    };

    // Counted: the same closure with a new payload, through the relay.
    fleet.toy.set_payload(&a, (mib << 20) + 1)?;
    fleet.toy.set_system_version(&a, "1b")?;
    fleet.deploy()?;
    let c1 = fleet.closure(&a)?;
    // The timed system is the host's now (its profile holds the kernel): the
    // payload and toplevel are new.
    let new: Vec<&str> = c1
        .paths
        .keys()
        .filter(|p| !c.paths.contains_key(*p))
        .map(String::as_str)
        .collect();
    delete(&new)?;
    let missing = missing_size(fleet, &a, &c1)?;
    let (wire, run) = fleet.run_via_relay(&agent, None)?;
    ensure!(run.ok(), "the first update failed:\n{}", run.stderr);

    fleet.toy.set_system_version(&a, "2")?;
    fleet.deploy()?;
    let c2 = fleet.closure(&a)?;
    // The server built the new toplevel in this machine's store: gone again.
    delete(&[c2.toplevel.as_str()])?;
    let missing2 = missing_size(fleet, &a, &c2)?;
    let (wire2, run) = fleet.run_via_relay(&agent, None)?;
    ensure!(run.ok(), "the second update failed:\n{}", run.stderr);
    ensure!(
        agent.active_system().as_deref() == Some(Path::new(&c2.toplevel)),
        "the second update did not activate the server's toplevel"
    );
    // What any poll costs (login, listing, heartbeat), for the small update.
    let (idle, run) = fleet.run_via_relay(&agent, None)?;
    ensure!(
        run.ok(),
        "the poll with nothing new failed:\n{}",
        run.stderr
    );
    Ok(Updates {
        idle,
        toplevel: c.toplevel,
        first: (wire, missing),
        second: (wire2, missing2),
        wall,
        fetch,
        cpu: used,
    })
}

/// A closure of many small paths.
struct Many {
    toplevel: String,
    /// The fetch and import, as the agent reported it.
    fetch: Duration,
}

/// An update to a system of `count` small packages of its own (and no payload),
/// every one deleted from the store first: many round trips, little data.
fn many_paths<S: Endpoint>(fleet: &Fleet<S>, count: u64) -> Result<Many> {
    let a = fleet.host(0).to_owned();
    fleet.toy.set_payload(&a, 0)?;
    fleet.toy.set_package_count(&a, count)?;
    fleet.toy.set_system_version(&a, "many")?;
    fleet.deploy()?;
    let c = fleet.closure(&a)?;
    let own: Vec<&str> = c
        .paths
        .keys()
        .map(String::as_str)
        .filter(|p| p.contains("-toy-pkg-") || *p == c.toplevel)
        .collect();
    ensure!(
        own.len() as u64 == count + 1,
        "{} paths of its own",
        own.len()
    );
    delete(&own)?;
    let agent = fleet.agent(&a)?;
    agent.pin(&fleet.public_key()?)?;
    let run = agent.run_once()?;
    ensure!(run.ok(), "the update of many paths failed:\n{}", run.stderr);
    let (_, meta) = fleet.report_for(&a, &fleet.published(&a)?)?;
    let fetch = match meta.obtained {
        Some(Obtained::Fetched { paths, millis, .. }) if paths == count + 1 => {
            Duration::from_millis(millis)
        }
        other => anyhow::bail!("the update of many paths was not fetched whole: {other:?}"),
    };
    Ok(Many {
        toplevel: c.toplevel,
        fetch,
    })
}

/// Compressed bytes of the paths the local store lacks: narinfos and NARs.
fn missing_size<S: Endpoint>(fleet: &Fleet<S>, host: &str, c: &Closure) -> Result<u64> {
    let cache = fleet.host_chroot(host).join(&c.cache);
    let mut total = 0;
    for (path, nar) in &c.paths {
        if valid(path) {
            continue;
        }
        let hash = store_hash(path).context("not a store path")?;
        total += fs::metadata(cache.join(format!("{hash}.narinfo")))?.len() + nar.file_size;
    }
    Ok(total)
}

/// utime + stime (+ the reaped children's, for sshd) of the server process `pid`.
fn server_cpu(pid: Option<u32>, kind: ServerCpu) -> Result<Duration> {
    let pid = pid.context("the server is not running")?;
    let f = stat_fields(pid)?;
    let ticks = match kind {
        ServerCpu::Embedded => f[13] + f[14],
        ServerCpu::Sshd => f[13] + f[14] + f[15] + f[16],
    };
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks()))
}

/// The fields of `/proc/<pid>/stat` after the command name, numbered as in
/// proc(5) from 0 (utime is 13).
fn stat_fields(pid: u32) -> Result<Vec<u64>> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &s[s.rfind(')').context("stat")? + 2..];
    let mut v = vec![0, 0];
    v.extend(
        rest.split_whitespace()
            .map(|f| f.parse::<u64>().unwrap_or(0)),
    );
    Ok(v)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

/// `nix copy --to ssh://root@127.0.0.1?remote-store=<fresh store>` of `toplevel`'s
/// closure, through a root sshd of this bench on a free port.
fn push_with_nix_copy<S: Endpoint>(fleet: &Fleet<S>, toplevel: &str) -> Result<Duration> {
    let dir = TestDir::new("bench-push")?;
    let root = dir.path();
    let sshd = which("sshd")
        .or_else(|| Some(PathBuf::from("/usr/sbin/sshd")).filter(|p| p.exists()))
        .context("no sshd")?;
    let nix_store = which("nix-store").context("no nix-store")?;
    for (f, args) in [
        ("hostkey", vec!["-t", "ed25519"]),
        ("client", vec!["-t", "ed25519"]),
    ] {
        let out = Command::new("ssh-keygen")
            .args(["-q", "-N", ""])
            .args(args)
            .arg("-f")
            .arg(root.join(f))
            .output()?;
        ensure!(out.status.success(), "ssh-keygen failed");
    }
    fs::copy(root.join("client.pub"), root.join("authorized"))?;
    let port = free_port()?;
    let config = root.join("sshd_config");
    fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {r}/hostkey\nPidFile {r}/sshd.pid\nAuthorizedKeysFile {r}/authorized\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nSetEnv PATH={bin}:/usr/bin:/bin\n",
            r = root.display(),
            bin = nix_store.parent().unwrap_or(Path::new("/usr/bin")).display()
        ),
    )?;
    let mut child = Command::new(&sshd)
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(fs::File::create(root.join("sshd.log"))?)
        .spawn()?;
    let stop = scopeguard(|| {
        let _ = child.kill();
        let _ = child.wait();
    });
    wait_for(Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .context("the bench's sshd does not answer")?;
    let store = root.join("pushed");
    let url = format!(
        "ssh://root@127.0.0.1?remote-store={}",
        format!("local?root={}", store.display())
            .replace('%', "%25")
            .replace('?', "%3F")
            .replace('=', "%3D")
            .replace('/', "%2F")
    );
    let sshopts = format!(
        "-p {port} -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o LogLevel=ERROR",
        root.join("client").display()
    );
    let started = Instant::now();
    let out = Command::new("nix")
        .args(["copy", "--no-check-sigs", "--to", &url, toplevel])
        .env("NIX_SSHOPTS", sshopts)
        .env("NIX_PATH", fleet.toy.nix_path())
        .envs(nixenv::nix_env())
        .output()?;
    let took = started.elapsed();
    drop(stop);
    ensure!(
        out.status.success(),
        "nix copy failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        fs::read_to_string(root.join("sshd.log")).unwrap_or_default()
    );
    Ok(took)
}

/// Runs `f` when dropped.
fn scopeguard<F: FnMut()>(f: F) -> impl Drop {
    struct G<F: FnMut()>(F);
    impl<F: FnMut()> Drop for G<F> {
        fn drop(&mut self) {
            (self.0)()
        }
    }
    G(f)
}

fn free_port() -> Result<u16> {
    // sshd binds it itself right after; a clash fails the push figure loudly.
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The same toy system built by nix, after its paths were deleted: what a host
/// building its own configuration does (without the evaluation of a real NixOS).
fn build_locally<S: Endpoint>(fleet: &Fleet<S>, mib: u64) -> Result<Duration> {
    let a = fleet.host(0).to_owned();
    fleet.toy.set_system_version(&a, "3")?;
    fleet.toy.set_package_count(&a, 0)?;
    // A payload no update used: built, not found in the store.
    fleet.toy.set_payload(&a, (mib << 20) + 2)?;
    let started = Instant::now();
    fleet.toy.build_toplevel(&a)?;
    Ok(started.elapsed())
}

/// Peak RSS of the agent fetching a large NAR over bento sftp.
fn peak_rss(mib: u64) -> Result<u64> {
    let fleet = Fleet::embedded("bench-closure-big", &["a"], "", "")?;
    let a = fleet.host(0).to_owned();
    fleet.toy.set_kernel(&a, &format!("6.1.0-{a}"))?;
    fleet.toy.set_payload(&a, mib << 20)?;
    fleet.deploy()?;
    let c = fleet.closure(&a)?;
    let paths: Vec<&str> = c.paths.keys().map(String::as_str).collect();
    delete(&paths)?;
    let agent = fleet.agent(&a)?;
    agent.pin(&fleet.public_key()?)?;
    let mut child = agent.spawn(&["run-once"], "big")?;
    let pid = child.id();
    let mut peak = 0;
    let status = loop {
        if let Some(kb) = fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
        {
            peak = peak.max(kb * 1024);
        }
        if let Some(st) = child.try_wait()? {
            break st;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    ensure!(
        status.success(),
        "the large update failed:\n{}",
        agent.spawned_log("big")
    );
    ensure!(
        agent.active_system().as_deref() == Some(Path::new(&c.toplevel)),
        "the large update did not activate"
    );
    // Best effort: the agent's profile still roots the system until its test
    // directory goes.
    let _ = delete(&paths);
    Ok(peak)
}

fn which(prog: &str) -> Option<PathBuf> {
    agent_common::which(prog)
}

fn env_u64(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}
