//! A demo fleet on this machine, in one command (`scripts/run.sh` runs it): toy
//! NixOS hosts built by the real nix, published by the real `bento deploy` into
//! chroots served by bento's own SFTP server (`bento serve` with `[sftp]`: no
//! system users, no sshd), one real `bento-agent daemon` per host in sandbox
//! paths with its own key, and the panel. Only the toy systems are simulated.
//!
//! Ctrl-C stops everything; the demo directory is kept so it can be looked at, and
//! the next run starts afresh.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bento_tests::embedded::{generate_key, known_hosts_line};
use bento_tests::toy::ToyFleet;
use bento_tests::{bins, nixenv};

struct Options {
    dir: PathBuf,
    listen: String,
    interval: u64,
    user: String,
    password: String,
    /// Exit once every demo host is up to date (0), or when this many seconds
    /// passed first (1): what CI runs to prove the quick start works.
    check: Option<u64>,
}

fn parse_args() -> Result<Options> {
    let mut o = Options {
        dir: PathBuf::from("/var/lib/bento-demo"),
        listen: "127.0.0.1:8080".into(),
        interval: 15,
        user: "admin".into(),
        password: "bento-demo".into(),
        check: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--dir" => o.dir = PathBuf::from(val()?),
            "--listen" => o.listen = val()?,
            "--interval" => o.interval = val()?.parse().context("--interval takes seconds")?,
            "--password" => o.password = val()?,
            "--check" => o.check = Some(300),
            "--check-timeout" => {
                o.check = Some(val()?.parse().context("--check-timeout takes seconds")?)
            }
            "-h" | "--help" => {
                println!(
                    "usage: bento-demo [--dir DIR] [--listen ADDR] [--interval SECS] [--password PW]\n\
                     \x20                 [--check [--check-timeout SECS]]\n\
                     --check: exit 0 once every demo host is up to date, 1 if not within the timeout (300 s)"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    Ok(o)
}

/// Children killed (and waited for) on drop.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

fn bento(dir: &Path, fleet: &ToyFleet) -> Command {
    let mut c = Command::new(bins::bin("bento"));
    c.env("BENTO_DIR", dir.join("bento"))
        .env("NIX_PATH", fleet.nix_path())
        .envs(nixenv::nix_env());
    c
}

/// `<dir>/bin/bento`: the real `bento` with the demo's environment, so the
/// commands the banner prints work when pasted into a new shell.
fn write_wrapper(dir: &Path, fleet: &ToyFleet) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    fn sh_quote(s: &str) -> String {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
    let bin_dir = dir.join("bin");
    fs::create_dir_all(&bin_dir)?;
    let mut script = String::from(
        "#!/bin/sh\n# The demo's bento: written by bento-demo, removed with the demo directory.\n",
    );
    script.push_str(&format!(
        "export BENTO_DIR={}\nexport NIX_PATH={}\n",
        sh_quote(&dir.join("bento").display().to_string()),
        sh_quote(&fleet.nix_path()),
    ));
    for (k, v) in nixenv::nix_env() {
        script.push_str(&format!("export {k}={}\n", sh_quote(&v)));
    }
    script.push_str(&format!(
        "exec {} \"$@\"\n",
        sh_quote(&bins::bin("bento").display().to_string())
    ));
    let path = bin_dir.join("bento");
    fs::write(&path, script)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

fn main() -> Result<()> {
    let o = parse_args()?;
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;

    // A fresh bento directory each run: the demo shows a fleet from its first poll.
    let _ = fs::remove_dir_all(&o.dir);
    fs::create_dir_all(o.dir.join("keys"))?;
    let hosts = ["demo-web", "demo-db", "demo-lab"];
    let mut fleet = ToyFleet::new(&o.dir.join("bento"))?;
    fleet.flake_host("demo-office", &hosts[..2])?;
    fleet.nonflake_host(hosts[2])?;
    fleet.write_file("demo-office", "motd.txt", "Welcome to the demo office.\n")?;

    // Each host's key pair, as its admin would make it; the public halves go in
    // bento.toml, which is all the SFTP server needs.
    let mut host_tables = String::new();
    for (host, tags) in hosts.iter().zip([
        r#"["office", "web"]"#,
        r#"["office", "database"]"#,
        r#"["lab"]"#,
    ]) {
        let key = o.dir.join("keys").join(host);
        generate_key(&key, host)?;
        let public = fs::read_to_string(key.with_extension("pub"))?;
        host_tables.push_str(&format!(
            "\n[hosts.{host}]\ntags = {tags}\nkeys = [{:?}]\n",
            public.trim()
        ));
    }
    fs::write(
        o.dir.join("bento/bento.toml"),
        format!(
            r#"# The demo fleet: edit a host under hosts/, then deploy from the panel.
chroot_dir = {chroot:?}
remote = "127.0.0.1"
poll_interval = {interval}

[web]
listen = {listen:?}
database_url = "sqlite://{db}"

# bento serve also serves every host its chroot over SFTP (no sshd, no users).
[sftp]
enable = true
listen = "127.0.0.1:0"
{host_tables}"#,
            chroot = o.dir.join("chroot").display().to_string(),
            interval = o.interval,
            listen = o.listen,
            db = o.dir.join("panel.sqlite").display(),
        ),
    )?;

    eprintln!("bento-demo: bento deploy (real nix builds of the toy systems)…");
    let out = bento(&o.dir, &fleet).arg("deploy").output()?;
    if !out.status.success() {
        bail!(
            "bento deploy failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let mut add_user = bento(&o.dir, &fleet)
        .args(["user", "add", &o.user, "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    {
        use std::io::Write;
        add_user
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{}\n", o.password).as_bytes())?;
    }
    if !add_user.wait()?.success() {
        bail!("cannot create the demo login");
    }

    let mut children = Children(Vec::new());
    let panel_log = fs::File::create(o.dir.join("panel.log"))?;
    children.0.push(
        bento(&o.dir, &fleet)
            .arg("serve")
            .stdout(panel_log.try_clone()?)
            .stderr(panel_log)
            .spawn()
            .context("starting bento serve")?,
    );
    // The panel prints where it listens (the ports may have been chosen by the system).
    let panel_log = o.dir.join("panel.log");
    let addrs = bento_tests::wait_for(Duration::from_secs(60), || {
        let log = fs::read_to_string(&panel_log).ok()?;
        let after = |marker: &str| -> Option<String> {
            let rest = log.split(marker).nth(1)?;
            Some(
                rest.split_whitespace()
                    .next()?
                    .trim_end_matches('/')
                    .to_owned(),
            )
        };
        Some((after("listening on http://")?, after("SFTP on ")?))
    });
    let Some((addr, sftp_addr)) = addrs else {
        bail!("the panel did not start; see {}", panel_log.display());
    };
    let sftp_port: u16 = sftp_addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .context("the SFTP address has no port")?;
    let known_hosts = o.dir.join("known_hosts");
    fs::write(
        &known_hosts,
        known_hosts_line(&o.dir.join("bento"), sftp_port)?,
    )?;

    for host in hosts {
        let adir = o.dir.join("agents").join(host);
        fs::create_dir_all(adir.join("profiles"))?;
        fleet.fake_booted_system(&adir.join("booted-system"), "6.1.0")?;
        let opts = [
            format!("UserKnownHostsFile={}", known_hosts.display()),
            "StrictHostKeyChecking=yes".to_owned(),
            "IdentitiesOnly=yes".to_owned(),
        ];
        let config = format!(
            r#"server = "127.0.0.1"
port = {port}
user = {host:?}
host = {host:?}
identity_file = {key:?}
ssh_options = {opts:?}
interval = {interval}
jitter = 3
state_dir = {state:?}
runtime_dir = {run:?}
system_profile = {profile:?}
booted_system = {booted:?}
reboot_command = ["true"]
nix_path = [{nix_path:?}]
"#,
            port = sftp_port,
            key = o.dir.join("keys").join(host).display().to_string(),
            interval = o.interval,
            state = adir.join("state").display().to_string(),
            run = adir.join("run").display().to_string(),
            profile = adir.join("profiles/system").display().to_string(),
            booted = adir.join("booted-system").display().to_string(),
            nix_path = fleet.nix_path(),
        );
        fs::write(adir.join("agent.toml"), config)?;
        let log = fs::File::create(adir.join("agent.log"))?;
        children.0.push(
            Command::new(bins::bin("bento-agent"))
                .arg("--config")
                .arg(adir.join("agent.toml"))
                .arg("daemon")
                .envs(nixenv::nix_env())
                .env("NIX_PATH", fleet.nix_path())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting bento-agent")?,
        );
    }

    let wrapper = write_wrapper(&o.dir, &fleet)?;

    println!();
    println!("  bento demo fleet is running.");
    println!(
        "  Panel:     http://{addr}/   (login {} / {})",
        o.user, o.password
    );
    println!(
        "  Hosts:     {} (agents poll every {} s)",
        hosts.join(", "),
        o.interval
    );
    println!("  SFTP:      {sftp_addr}   (bento's own server, keys in bento.toml)");
    println!(
        "  Directory: {}   (edit hosts/, then deploy from the panel)",
        o.dir.join("bento").display()
    );
    println!(
        "  Status:    {} status   (works in any shell: it sets the demo's BENTO_DIR, NIX_PATH and NIX_CONFIG)",
        wrapper.display()
    );
    println!(
        "  Logs:      {}/agents/<host>/agent.log, {}/panel.log",
        o.dir.display(),
        o.dir.display()
    );
    println!("  Ctrl-C stops the demo.");
    println!();

    if let Some(secs) = o.check {
        let started = std::time::Instant::now();
        let up = bento_tests::wait_for(Duration::from_secs(secs), || {
            if stop.load(Ordering::Relaxed) {
                return Some(false);
            }
            for c in &mut children.0 {
                if let Ok(Some(_)) = c.try_wait() {
                    return Some(false);
                }
            }
            let out = bento(&o.dir, &fleet)
                .args(["status", "--json"])
                .output()
                .ok()?;
            let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).ok()?;
            let up = rows.len() == hosts.len() && rows.iter().all(|r| r["state"] == "up-to-date");
            up.then_some(true)
        });
        drop(children);
        if up == Some(true) {
            println!(
                "bento-demo: check passed: {} hosts up to date {:.1} s after the agents started",
                hosts.len(),
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        bail!(
            "check failed: not every demo host was up to date within {secs} s; see {}/agents/*/agent.log and {}/panel.log",
            o.dir.display(),
            o.dir.display()
        );
    }

    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        for c in &mut children.0 {
            if let Ok(Some(st)) = c.try_wait() {
                eprintln!("bento-demo: a demo process exited ({st}); stopping");
                stop.store(true, Ordering::Relaxed);
            }
        }
    }
    eprintln!("bento-demo: stopping…");
    drop(children);
    Ok(())
}
