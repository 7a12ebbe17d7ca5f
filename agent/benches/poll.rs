//! The no-change poll, side by side with the original tool's poll, against the same
//! real sshd (chroot SFTP on loopback), plus the daemon's memory when idle.
//!
//! ```sh
//! cargo build --release -p bento-agent -p bento   # the binaries measured
//! cargo bench -p bento-agent --bench poll          # as root (it adds a user)
//! ```
//!
//! Both clients connect through a counting TCP relay, so "bytes" are what crosses the
//! wire (SSH included). CPU is user+system time of the process and its children
//! (`ssh`), from `getrusage(RUSAGE_CHILDREN)`. The two clients alternate, so both see
//! the same machine load. `POLL_BENCH_RUNS` sets the number of runs (default 20);
//! `POLL_BENCH_TRACE=1` also prints one agent poll's timeline and bare `ssh -s sftp`
//! handshakes (which dominate both polls).

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bento_tests::endpoint::Endpoint;
use bento_tests::sshd::{unique_prefix, SshServer};
use bento_tests::toy::ToyFleet;
use bento_tests::{nixenv, wait_for, TestDir};
use nix::sys::resource::{getrusage, UsageWho};

fn main() -> Result<()> {
    let runs: usize = std::env::var("POLL_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let agent_bin = bento_tests::bins::measured("bento-agent")?;
    let bento_bin = bento_tests::bins::measured("bento")?;
    let dir = TestDir::new("poll-bench")?;
    let host = format!("{}-bench", unique_prefix());
    let server = SshServer::start(&[&host])?;
    let mut toy = ToyFleet::new(&dir.join("bento"))?;
    toy.flake_host(&host, &[&host])?;
    fs::write(
        dir.join("bento/bento.toml"),
        format!(
            "chroot_dir = {:?}\nremote = \"127.0.0.1\"\n",
            server.chroot_dir().display().to_string()
        ),
    )?;
    let out = Command::new(&bento_bin)
        .arg("deploy")
        .env("BENTO_DIR", dir.join("bento"))
        .envs(nixenv::nix_env())
        .output()?;
    ensure!(
        out.status.success(),
        "bento deploy: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let relay = Relay::start(server.port())?;
    let root = dir.join("agent");
    fs::create_dir_all(&root)?;
    let config = root.join("agent.toml");
    fs::write(
        &config,
        format!(
            r#"server = "127.0.0.1"
port = {port}
host = "{host}"
identity_file = "{key}"
ssh_options = ["UserKnownHostsFile={kh}", "StrictHostKeyChecking=accept-new", "IdentitiesOnly=yes"]
interval = 3600
jitter = 0
state_dir = "{root}/state"
runtime_dir = "{root}/run"
system_profile = "{root}/profiles/system"
booted_system = "{root}/booted-system"
"#,
            port = relay.port,
            key = server.key_path(&host).display(),
            kh = server.known_hosts_path().display(),
            root = root.display(),
        ),
    )?;
    let agent = |args: &[&str]| {
        let mut c = Command::new(&agent_bin);
        c.arg("--config")
            .arg(&config)
            .args(args)
            .env("BENTO_AGENT_LOG", "warn")
            .envs(nixenv::nix_env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    };
    // The first poll applies the release; the measured ones find nothing new.
    let first = agent(&["run-once"]).output()?;
    ensure!(
        first.status.success(),
        "first poll: {}",
        String::from_utf8_lossy(&first.stderr)
    );

    let sftp_cmd = || {
        let mut c = Command::new("sftp");
        c.args(["-q", "-b", "-", "-P", &relay.port.to_string()])
            .arg("-o")
            .arg(format!("IdentityFile={}", server.key_path(&host).display()))
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                server.known_hosts_path().display()
            ))
            .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
            .arg(format!("{host}@127.0.0.1"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    };
    // Interleaved, so both see the same machine load.
    let mut agent_poll = Measure::default();
    let mut sftp_poll = Measure::default();
    for _ in 0..runs {
        agent_poll.run(&relay, || {
            let o = agent(&["run-once"]).output()?;
            ensure!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            Ok(())
        })?;
        sftp_poll.run(&relay, || {
            let mut c = sftp_cmd().spawn()?;
            c.stdin
                .take()
                .unwrap()
                .write_all(b"ls -l last_change_date\n")?;
            let o = c.wait_with_output()?;
            ensure!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            Ok(())
        })?;
    }

    if std::env::var_os("POLL_BENCH_TRACE").is_some() {
        let start = time::OffsetDateTime::now_utc();
        let o = agent(&["run-once"])
            .env("BENTO_AGENT_LOG", "debug")
            .output()?;
        let end = time::OffsetDateTime::now_utc();
        eprintln!(
            "spawned at {start}\n{}exited at {end}",
            String::from_utf8_lossy(&o.stderr)
        );
        let common = [
            format!("IdentityFile={}", server.key_path(&host).display()),
            format!("UserKnownHostsFile={}", server.known_hosts_path().display()),
            "IdentitiesOnly=yes".to_owned(),
            "BatchMode=yes".to_owned(),
        ];
        for extra in [
            vec![],
            vec![
                "ConnectTimeout=20",
                "ServerAliveInterval=20",
                "ServerAliveCountMax=3",
            ],
            vec![
                "ClearAllForwardings=yes",
                "ForwardAgent=no",
                "ForwardX11=no",
                "PermitLocalCommand=no",
            ],
        ] {
            let mut walls = Vec::new();
            for _ in 0..10 {
                let t = Instant::now();
                let mut c = Command::new("ssh");
                for o in common
                    .iter()
                    .map(String::as_str)
                    .chain(extra.iter().copied())
                {
                    c.arg("-o").arg(o);
                }
                c.args([
                    "-p",
                    &relay.port.to_string(),
                    "-l",
                    &host,
                    "-s",
                    "--",
                    "127.0.0.1",
                    "sftp",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
                walls.push(t.elapsed());
            }
            walls.sort();
            eprintln!("raw ssh -s sftp with {extra:?}: p50 {:?}", walls[5]);
        }
    }

    // The daemon, idle after its first poll.
    let mut daemon = agent(&["daemon"]).stderr(Stdio::null()).spawn()?;
    let status = root.join("run/status.json");
    let idle = wait_for(Duration::from_secs(60), || {
        let s: bento_core::agent_proto::AgentStatus =
            serde_json::from_slice(&fs::read(&status).ok()?).ok()?;
        (s.last_check.is_some() && s.activity == bento_core::agent_proto::Activity::Idle)
            .then_some(())
    });
    // Let the poll's last buffers go before reading.
    std::thread::sleep(Duration::from_millis(500));
    let mem = fs::read_to_string(format!("/proc/{}/status", daemon.id()))?;
    let _ = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    let _ = daemon.wait();
    idle.context("the daemon never finished its first poll")?;
    let field = |name: &str| {
        mem.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };

    println!();
    println!(
        "no-change poll, {runs} runs each, same sshd (chroot internal-sftp, loopback), through a counting relay"
    );
    println!(
        "{:<34} {:>10} {:>10} {:>14} {:>12}",
        "", "wall p50", "wall mean", "CPU/run", "bytes/run"
    );
    for (name, m) in [
        ("bento-agent run-once", &agent_poll),
        ("sftp 'ls -l last_change_date'", &sftp_poll),
    ] {
        println!(
            "{:<34} {:>8.1}ms {:>8.1}ms {:>12.1}ms {:>12}",
            name,
            ms(m.p50()),
            ms(m.mean()),
            ms(m.cpu_per_run()),
            m.bytes_per_run()
        );
    }
    println!(
        "bento-agent daemon, idle after a poll: VmRSS {}, VmHWM {}",
        field("VmRSS:"),
        field("VmHWM:")
    );
    println!(
        "binaries: {} / {}",
        agent_bin.display(),
        bento_tests::bins::ssh_version()
    );
    Ok(())
}

#[derive(Default)]
struct Measure {
    walls: Vec<Duration>,
    cpu: Duration,
    bytes: u64,
}

impl Measure {
    fn run(&mut self, relay: &Relay, once: impl FnOnce() -> Result<()>) -> Result<()> {
        let cpu0 = children_cpu()?;
        let bytes0 = relay.bytes.load(Ordering::SeqCst);
        let t = Instant::now();
        once()?;
        self.walls.push(t.elapsed());
        self.cpu += children_cpu()? - cpu0;
        // The relay counts the last bytes when its threads see the connection end.
        let _ = wait_for(Duration::from_secs(2), || {
            (relay.open.load(Ordering::SeqCst) == 0).then_some(())
        });
        self.bytes += relay.bytes.load(Ordering::SeqCst) - bytes0;
        Ok(())
    }

    fn p50(&self) -> Duration {
        let mut w = self.walls.clone();
        w.sort();
        w[w.len() / 2]
    }

    fn mean(&self) -> Duration {
        self.walls.iter().sum::<Duration>() / self.walls.len() as u32
    }

    fn cpu_per_run(&self) -> Duration {
        self.cpu / self.walls.len() as u32
    }

    fn bytes_per_run(&self) -> u64 {
        self.bytes / self.walls.len() as u64
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn children_cpu() -> Result<Duration> {
    let u = getrusage(UsageWho::RUSAGE_CHILDREN)?;
    let tv =
        |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, (t.tv_usec() as u32) * 1000);
    Ok(tv(u.user_time()) + tv(u.system_time()))
}

/// A TCP relay in front of sshd that counts the bytes in both directions.
struct Relay {
    port: u16,
    bytes: Arc<AtomicU64>,
    /// Relay directions still copying.
    open: Arc<AtomicU64>,
}

impl Relay {
    fn start(target: u16) -> Result<Relay> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        let bytes = Arc::new(AtomicU64::new(0));
        let open = Arc::new(AtomicU64::new(0));
        let counter = bytes.clone();
        let live = open.clone();
        std::thread::spawn(move || {
            for client in l.incoming().flatten() {
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (client.try_clone(), upstream.try_clone()),
                    (upstream.try_clone(), client.try_clone()),
                ]
                .into_iter()
                .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
                {
                    let counter = counter.clone();
                    let live = live.clone();
                    live.fetch_add(1, Ordering::SeqCst);
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            counter.fetch_add(n as u64, Ordering::SeqCst);
                        }
                        let _ = to.shutdown(Shutdown::Write);
                        live.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            }
        });
        Ok(Relay { port, bytes, open })
    }
}
