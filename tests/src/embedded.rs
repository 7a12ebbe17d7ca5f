//! bento's own SFTP server (`bento sftp`) run for a test: one key pair per host,
//! listed in `bento.toml`, and the real binary on a free loopback port.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::endpoint::Endpoint;
use crate::{bins, wait_for};

pub struct EmbeddedSftp {
    root: PathBuf,
    bento_dir: PathBuf,
    chroot_dir: PathBuf,
    hosts: Vec<String>,
    /// `[sftp]` keys beyond `listen`.
    settings: String,
    port: u16,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    /// `RLIMIT_NOFILE` (soft and hard) the server runs under, when set.
    nofile: Option<u64>,
}

impl EmbeddedSftp {
    /// Key pairs for `hosts` under `root/keys/`; nothing runs until [`EmbeddedSftp::start`].
    /// The test writes [`Endpoint::bento_toml`] into `bento_dir/bento.toml` first.
    pub fn new(root: &Path, bento_dir: &Path, chroot_dir: &Path, hosts: &[&str]) -> Result<Self> {
        fs::create_dir_all(root.join("keys"))?;
        let mut s = EmbeddedSftp {
            root: root.to_owned(),
            bento_dir: bento_dir.to_owned(),
            chroot_dir: chroot_dir.to_owned(),
            hosts: Vec::new(),
            settings: String::new(),
            port: 0,
            child: None,
            log: Arc::default(),
            nofile: None,
        };
        for h in hosts {
            s.add_host(h)?;
        }
        Ok(s)
    }

    /// Extra `[sftp]` settings (e.g. `max_log_bytes = 1000`).
    pub fn with_settings(mut self, toml: &str) -> Self {
        self.settings = toml.to_owned();
        self
    }

    /// A new key pair for `host`; it is in [`Endpoint::bento_toml`] from now on.
    pub fn add_host(&mut self, host: &str) -> Result<()> {
        generate_key(&self.key_path(host), host)?;
        self.hosts.push(host.to_owned());
        Ok(())
    }

    /// The `.pub` line of a host's key.
    pub fn public_key(&self, host: &str) -> Result<String> {
        let p = self.key_path(host).with_extension("pub");
        Ok(fs::read_to_string(&p)
            .with_context(|| format!("reading {}", p.display()))?
            .trim()
            .to_owned())
    }

    /// Starts `bento sftp` (on the port it had, after a [`EmbeddedSftp::stop`]) and
    /// waits until it listens; writes the host key into known_hosts.
    pub fn start(&mut self) -> Result<()> {
        let listen = format!("127.0.0.1:{}", self.port);
        // prlimit sets the limit and execs the server: the pid stays the server's.
        let mut cmd = match self.nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg(bins::bin("bento"));
                c
            }
            None => Command::new(bins::bin("bento")),
        };
        let mut child = cmd
            .arg("-C")
            .arg(&self.bento_dir)
            .args(["sftp", "--listen", &listen])
            .env("BENTO_LOG", "bento=debug,warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting bento sftp")?;
        let stderr = child.stderr.take().expect("piped");
        let log = self.log.clone();
        let log_file = self.root.join("sftp.log");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
                l.push_str(&line);
                l.push('\n');
                let _ = fs::write(&log_file, l.as_bytes());
            }
        });
        self.child = Some(child);
        let port = wait_for(Duration::from_secs(30), || listening_port(&self.log()));
        let Some(port) = port else {
            self.stop();
            bail!("bento sftp did not start:\n{}", self.log());
        };
        self.port = port;
        fs::write(
            self.known_hosts_path(),
            known_hosts_line(&self.bento_dir, port)?,
        )?;
        Ok(())
    }

    /// Kills the server ("server down"); [`EmbeddedSftp::start`] brings it back.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The log once it holds every one of `needles` (the server's stderr is read by
    /// another thread, so a line may land just after the client that caused it
    /// ended), or as it is after 10 s. Assert on what it returns.
    pub fn log_with(&self, needles: &[&str]) -> String {
        crate::wait_until(Duration::from_secs(10), || {
            let l = self.log();
            needles.iter().all(|n| l.contains(n))
        });
        self.log()
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// For a server another process runs on `port` (`bento serve --sftp`): the
    /// client options and known_hosts point at it from now on.
    pub fn attach(&mut self, port: u16) -> Result<()> {
        self.port = port;
        fs::write(
            self.known_hosts_path(),
            known_hosts_line(&self.bento_dir, port)?,
        )?;
        Ok(())
    }

    /// The bento directory the server serves.
    pub fn bento_dir(&self) -> &Path {
        &self.bento_dir
    }

    /// Runs the server under this `RLIMIT_NOFILE` (soft and hard), from the next start.
    pub fn with_nofile(mut self, n: u64) -> Self {
        self.nofile = Some(n);
        self
    }

    /// Descriptors the server holds open now (0 when it is not running).
    pub fn fd_count(&self) -> usize {
        self.pid()
            .and_then(|pid| fs::read_dir(format!("/proc/{pid}/fd")).ok())
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// The server's resident memory in bytes (`VmRSS`), 0 when it is not running.
    pub fn rss(&self) -> u64 {
        self.pid()
            .and_then(|pid| fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_owned();
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .map_or(0, |kib| kib * 1024)
    }

    /// Whether the server process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// An honest host's poll, as the original client does it: `ls -l
    /// /last_change_date` through OpenSSH's `sftp -b`. (worked, everything printed)
    pub fn poll(&self, host: &str) -> Result<(bool, String)> {
        let (ok, out) =
            self.sftp_outcome(host, &self.key_path(host), "ls -l /last_change_date\n")?;
        Ok((ok && out.contains("last_change_date"), out))
    }
}

/// `bento sftp` serving each of `hosts` a plain release (no nix) from
/// `dir/chroot`, with `[sftp]` `settings`; not started yet.
pub fn plain_server(dir: &Path, hosts: &[&str], settings: &str) -> Result<EmbeddedSftp> {
    use bento_core::chroot::Chroot;
    let bento = dir.join("bento");
    fs::create_dir_all(bento.join("hosts"))?;
    let chroot_dir = dir.join("chroot");
    let chroot = Chroot::new(&chroot_dir);
    for h in hosts {
        crate::release::publish_plain(
            &chroot,
            h,
            &dir.join("stage").join(h),
            Chroot::embedded_owners(None),
        )?;
    }
    let server =
        EmbeddedSftp::new(&dir.join("sftp"), &bento, &chroot_dir, hosts)?.with_settings(settings);
    fs::write(
        bento.join("bento.toml"),
        format!(
            "chroot_dir = {:?}\n{}",
            chroot_dir.display().to_string(),
            server.bento_toml()
        ),
    )?;
    Ok(server)
}

/// An ed25519 key pair at `path` and `path.pub`, as a host's admin makes one.
pub fn generate_key(path: &Path, comment: &str) -> Result<()> {
    crate::run(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment])
            .arg("-f")
            .arg(path),
    )?;
    Ok(())
}

/// The known_hosts line of the server of `bento_dir` (its default host key) on
/// loopback port `port`.
pub fn known_hosts_line(bento_dir: &Path, port: u16) -> Result<String> {
    let p = bento_dir.join("sftp_host_ed25519_key.pub");
    let public = fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let mut fields = public.split_whitespace();
    let (kind, blob) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""));
    Ok(format!("[127.0.0.1]:{port} {kind} {blob}\n"))
}

impl Drop for EmbeddedSftp {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Endpoint for EmbeddedSftp {
    fn port(&self) -> u16 {
        self.port
    }

    fn chroot_dir(&self) -> PathBuf {
        self.chroot_dir.clone()
    }

    fn key_path(&self, host: &str) -> PathBuf {
        self.root.join("keys").join(host)
    }

    fn known_hosts_path(&self) -> PathBuf {
        self.root.join("known_hosts")
    }

    fn bento_toml(&self) -> String {
        let mut s = format!("\n[sftp]\nlisten = \"127.0.0.1:0\"\n{}\n", self.settings);
        for h in &self.hosts {
            let key = self.public_key(h).unwrap_or_default();
            s.push_str(&format!("[hosts.{h}]\nkeys = [{key:?}]\n"));
        }
        s
    }
}

/// The port `bento sftp` says it listens on, once its log says so.
pub fn listening_port(log: &str) -> Option<u16> {
    log.lines()
        .find_map(|l| l.strip_prefix("bento sftp: listening on "))?
        .trim()
        .rsplit(':')
        .next()?
        .parse()
        .ok()
}

/// A russh client handler that takes any server key: the tests' and benches'
/// own clients of a `bento sftp` they started on loopback.
pub struct AnyHostKey;

impl russh::client::Handler for AnyHostKey {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}
