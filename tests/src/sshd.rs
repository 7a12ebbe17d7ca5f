//! A real OpenSSH server with chroot SFTP on loopback, one system user per test host.
//!
//! Each [`SshServer`] owns a root-owned 0755 directory `/var/lib/bento-tests/<id>/`
//! (sshd refuses chroots with any group/world-writable or non-root path component, so
//! not under `/tmp`), a group `<id>`, one user per host named like the host, their key
//! pairs and an `sshd -D` on a free loopback port. Dropping it (also on panic) stops sshd
//! and removes users, group and directory. Runs killed before they could clean up are
//! swept by the next server start ([`sweep_stale`]).
//!
//! The per-host chroot directories are left to bento (it creates `<chroot>/<host>/`,
//! root 0755, and `logs/` owned by the host's user); [`SshServer::make_host_dir`] does
//! the same for tests that don't run bento.
//!
//! Requires root. Host names must be valid user names (`[a-z_][a-z0-9_-]*`, at most 32
//! characters) and unique on the machine: build them on [`unique_prefix`].

use std::collections::HashSet;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, Once};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};

use crate::endpoint::Endpoint;
use crate::wait_until;

/// Parent of every server's directory.
pub const TEST_ROOT: &str = "/var/lib/bento-tests";

/// A server directory older than this is considered left over by a killed run.
pub const STALE_AFTER: Duration = Duration::from_secs(3600);

const OWNER_FILE: &str = "bento-tests.json";
const SSHD: &str = "/usr/sbin/sshd";
const START_TIMEOUT: Duration = Duration::from_secs(15);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// useradd & co. lock /etc/passwd and fail instead of waiting when it is taken.
static ACCOUNTS: Mutex<()> = Mutex::new(());
static ISSUED: Mutex<Option<HashSet<String>>> = Mutex::new(None);
static SWEEP: Once = Once::new();

/// A fresh `bt<6 hex>` prefix no user, group or server directory uses yet. Name test
/// hosts `<prefix>-web`, `<prefix>-db`, … so parallel tests never share a user.
pub fn unique_prefix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut issued = ISSUED.lock().unwrap_or_else(|e| e.into_inner());
    let issued = issued.get_or_insert_with(HashSet::new);
    loop {
        // RandomState is seeded randomly per process; mixing in time and pid keeps
        // processes started together apart.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        hasher.write_usize(issued.len());
        let prefix = format!("bt{:06x}", hasher.finish() & 0xff_ffff);
        if !issued.contains(&prefix) && !prefix_in_use(&prefix) {
            issued.insert(prefix.clone());
            return prefix;
        }
    }
}

fn prefix_in_use(prefix: &str) -> bool {
    let in_db = |file: &str| {
        fs::read_to_string(file)
            .map(|text| text.lines().any(|l| l.starts_with(prefix)))
            .unwrap_or(false)
    };
    in_db("/etc/passwd") || in_db("/etc/group") || Path::new(TEST_ROOT).join(prefix).exists()
}

/// The sshd `Match` block of bento's OpenSSH mode, shared with the NixOS module
/// (`nixos/lib.nix` reads the same file): one source for both.
pub const MATCH_BLOCK_TEMPLATE: &str = include_str!("../../nixos/sshd-match.conf");

/// [`MATCH_BLOCK_TEMPLATE`] for the host users of `group`, chrooted under `chroot_dir`.
pub fn match_block(group: &str, chroot_dir: &Path) -> String {
    MATCH_BLOCK_TEMPLATE
        .replace("@group@", group)
        .replace("@chroot@", &chroot_dir.display().to_string())
}

/// A running (or stopped) sshd with its users. See the module docs.
pub struct SshServer {
    id: String,
    root: PathBuf,
    port: u16,
    group_created: bool,
    hosts: Vec<Host>,
    child: Option<Child>,
}

struct Host {
    name: String,
    uid: u32,
}

impl SshServer {
    /// Creates users and keys for `hosts` and starts sshd on a free loopback port.
    pub fn start(hosts: &[&str]) -> Result<SshServer> {
        ensure!(
            effective_uid()? == 0,
            "the sshd harness must run as root (it adds users)"
        );
        SWEEP.call_once(|| {
            if let Err(e) = sweep_stale(STALE_AFTER) {
                eprintln!("bento-tests: sweeping stale test servers: {e:#}");
            }
        });
        let id = unique_prefix();
        let mut server = SshServer {
            root: Path::new(TEST_ROOT).join(&id),
            id,
            port: 0,
            group_created: false,
            hosts: Vec::new(),
            child: None,
        };
        // From here on, Drop undoes whatever was done if a step fails.
        server.create_dirs()?;
        server.write_owner_file()?;
        account_tool(Command::new("groupadd").arg("--system").arg(&server.id))?;
        server.group_created = true;
        server.write_owner_file()?;
        crate::run(
            Command::new("ssh-keygen")
                .args([
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    "bento-tests host key",
                ])
                .arg("-f")
                .arg(server.root.join("hostkey")),
        )?;
        for host in hosts {
            server.add_host(host)?;
        }
        server.start_on_free_port()?;
        Ok(server)
    }

    fn create_dirs(&self) -> Result<()> {
        for dir in [
            Path::new(TEST_ROOT),
            &self.root,
            &self.chroot_dir(),
            &self.root.join("keys"),
            &self.root.join("clients"),
        ] {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            chown(dir, Some(0), Some(0)).with_context(|| format!("chown {}", dir.display()))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
                .with_context(|| format!("chmod {}", dir.display()))?;
        }
        Ok(())
    }

    /// What a later [`sweep_stale`] needs to clean up after a killed run.
    fn write_owner_file(&self) -> Result<()> {
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let json = serde_json::json!({
            "created": created,
            "group": self.group_created.then_some(&self.id),
            "users": self.hosts.iter().map(|h| &h.name).collect::<Vec<_>>(),
        });
        fs::write(self.root.join(OWNER_FILE), json.to_string())
            .with_context(|| format!("writing {}", self.root.join(OWNER_FILE).display()))
    }

    /// Adds one more host (user and key pair) to a server; a running sshd accepts it
    /// at once.
    pub fn add_host(&mut self, host: &str) -> Result<()> {
        check_user_name(host)?;
        ensure!(
            !self.hosts.iter().any(|h| h.name == host),
            "host {host} added twice"
        );
        // `*` rather than useradd's default `!`: sshd refuses locked accounts.
        account_tool(
            Command::new("useradd")
                .args(["--system", "--no-create-home", "--no-user-group"])
                .args(["--gid", &self.id, "--home-dir", "/"])
                .args(["--shell", "/usr/sbin/nologin", "--password", "*", host]),
        )?;
        let uid = lookup_uid(host)?;
        self.hosts.push(Host {
            name: host.to_owned(),
            uid,
        });
        self.write_owner_file()?;
        let key = self.key_path(host);
        crate::run(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", ""])
                .args(["-C", &format!("bento-tests {host}")])
                .arg("-f")
                .arg(&key),
        )?;
        let mut public = key.into_os_string();
        public.push(".pub");
        let authorized = self.root.join("keys").join(host);
        fs::copy(&public, &authorized)
            .with_context(|| format!("writing {}", authorized.display()))?;
        Ok(())
    }

    fn config_text(&self) -> String {
        let root = self.root.display();
        format!(
            "# sshd of one bento test, written by bento-tests (tests/src/sshd.rs).
Port {port}
ListenAddress 127.0.0.1
HostKey {root}/hostkey
PidFile {root}/sshd.pid
AuthorizedKeysFile {root}/keys/%u
AllowGroups {group}
PermitRootLogin no
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
{match_block}",
            port = self.port,
            group = self.id,
            match_block = match_block(&self.id, &self.chroot_dir()),
        )
    }

    fn start_on_free_port(&mut self) -> Result<()> {
        let mut last_error = None;
        for _ in 0..10 {
            self.port = free_port()?;
            match self.spawn() {
                Ok(()) => return Ok(()),
                // Someone took the port between our probe and sshd's bind: pick another.
                Err(e) if format!("{e:#}").contains("Address already in use") => {
                    last_error = Some(e)
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.expect("tried at least once")).context("no free port for sshd")
    }

    fn spawn(&mut self) -> Result<()> {
        ensure!(self.child.is_none(), "sshd is already running");
        // sshd's privilege separation directory.
        fs::create_dir_all("/run/sshd").context("creating /run/sshd")?;
        fs::write(self.config_path(), self.config_text())
            .with_context(|| format!("writing {}", self.config_path().display()))?;
        let log_start = fs::metadata(self.log_path()).map(|m| m.len()).unwrap_or(0);
        let child = Command::new(SSHD)
            .arg("-D")
            .arg("-f")
            .arg(self.config_path())
            .arg("-E")
            .arg(self.log_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {SSHD}"))?;
        self.child = Some(child);
        let listening = format!("Server listening on 127.0.0.1 port {}.", self.port);
        let mut exited = None;
        let ready = wait_until(START_TIMEOUT, || {
            let child = self.child.as_mut().expect("just spawned");
            if let Ok(Some(status)) = child.try_wait() {
                exited = Some(status);
                return true;
            }
            self.log_since(log_start).contains(&listening)
                && TcpStream::connect_timeout(&self.socket_addr(), Duration::from_secs(1)).is_ok()
        });
        if let Some(status) = exited {
            self.child = None;
            bail!(
                "sshd exited at start ({status}); its log:\n{}",
                self.log_since(log_start)
            );
        }
        if !ready {
            self.stop()?;
            bail!(
                "sshd did not accept connections on port {} within {START_TIMEOUT:?}; its log:\n{}",
                self.port,
                self.log_since(log_start)
            );
        }
        Ok(())
    }

    /// Stops sshd and closes every connection it serves ("server down"). The users,
    /// keys and port stay: [`SshServer::restart`] brings it back.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // Connection processes outlive the listener unless killed with it.
        let connections = children_of(child.id());
        signal(child.id(), "TERM");
        for pid in &connections {
            signal(*pid, "TERM");
        }
        let mut exited = false;
        if wait_until(STOP_TIMEOUT, || matches!(child.try_wait(), Ok(Some(_)))) {
            exited = true;
        }
        if !exited {
            child.kill().context("killing sshd")?;
            child.wait().context("waiting for sshd")?;
        }
        self.kill_user_processes();
        Ok(())
    }

    /// Starts sshd again, on the same port, after [`SshServer::stop`].
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        let mut result = Ok(());
        // The port was ours a moment ago; give a transient holder a few seconds.
        let started = wait_until(Duration::from_secs(10), || {
            result = self.spawn();
            !matches!(&result, Err(e) if format!("{e:#}").contains("Address already in use"))
        });
        if !started {
            return result.context("sshd could not get its port back");
        }
        result
    }

    /// Whether the sshd process is alive.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn socket_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// This server's group, also the name of its directory under [`TEST_ROOT`].
    /// The listening sshd's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn group(&self) -> &str {
        &self.id
    }

    /// `/var/lib/bento-tests/<id>`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.join("sshd_config")
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.join("sshd.log")
    }

    /// The sshd log so far (listening, connections, authentication failures).
    pub fn log(&self) -> String {
        self.log_since(0)
    }

    fn log_since(&self, offset: u64) -> String {
        let bytes = fs::read(self.log_path()).unwrap_or_default();
        let start = (offset as usize).min(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    /// The uid of the host's user.
    pub fn uid(&self, host: &str) -> Result<u32> {
        self.hosts
            .iter()
            .find(|h| h.name == host)
            .map(|h| h.uid)
            .with_context(|| format!("no host {host} on this server"))
    }

    /// The gid of this server's group.
    pub fn gid(&self) -> Result<u32> {
        lookup_gid(&self.id)
    }

    /// Creates `<chroot>/<host>/` (root, 0755) and its `logs/` (the host's user, 0755),
    /// as bento does when adding a host. Returns the host's chroot.
    pub fn make_host_dir(&self, host: &str) -> Result<PathBuf> {
        let uid = self.uid(host)?;
        let gid = self.gid()?;
        let dir = self.host_chroot(host);
        let logs = dir.join("logs");
        fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        for (path, owner) in [(&dir, (0, 0)), (&logs, (uid, gid))] {
            chown(path, Some(owner.0), Some(owner.1))
                .with_context(|| format!("chown {}", path.display()))?;
            fs::set_permissions(path, fs::Permissions::from_mode(0o755))
                .with_context(|| format!("chmod {}", path.display()))?;
        }
        Ok(dir)
    }

    /// Writes a root-owned file (0644) into the host's chroot, creating parent dirs.
    pub fn write_host_file(&self, host: &str, rel: &str, contents: &[u8]) -> Result<PathBuf> {
        let path = self.host_chroot(host).join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
        Ok(path)
    }

    fn kill_user_processes(&self) {
        let uids: Vec<u32> = self.hosts.iter().map(|h| h.uid).collect();
        kill_processes_of(&uids);
    }
}

impl Drop for SshServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- sshd log of {} (port {}) ---\n{}--- end of sshd log ---",
                self.root.display(),
                self.port,
                self.log()
            );
        }
        if let Err(e) = self.stop() {
            eprintln!("bento-tests: stopping sshd: {e:#}");
        }
        let users: Vec<String> = self.hosts.iter().map(|h| h.name.clone()).collect();
        let group = self.group_created.then_some(self.id.as_str());
        if let Err(e) = remove_accounts(&users, group) {
            eprintln!("bento-tests: removing test users: {e:#}");
        }
        if let Err(e) = fs::remove_dir_all(&self.root) {
            eprintln!("bento-tests: removing {}: {e}", self.root.display());
        }
    }
}

/// Removes server directories under [`TEST_ROOT`] older than `max_age`, with their sshd,
/// users and group (as recorded in their owner file): leftovers of killed test runs.
pub fn sweep_stale(max_age: Duration) -> Result<()> {
    let entries = match fs::read_dir(TEST_ROOT) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).context(format!("listing {TEST_ROOT}")),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    for entry in entries {
        let dir = entry?.path();
        let owner: Option<serde_json::Value> = fs::read(dir.join(OWNER_FILE))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let created = match owner.as_ref().and_then(|o| o["created"].as_u64()) {
            Some(created) => created,
            None => fs::metadata(&dir)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(now, |d| d.as_secs()),
        };
        if now.saturating_sub(created) < max_age.as_secs() {
            continue;
        }
        let users: Vec<String> = owner
            .as_ref()
            .and_then(|o| o["users"].as_array())
            .map(|users| {
                users
                    .iter()
                    .filter_map(|u| u.as_str())
                    .filter(|u| check_user_name(u).is_ok())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let group = owner
            .as_ref()
            .and_then(|o| o["group"].as_str())
            .filter(|g| check_user_name(g).is_ok())
            .map(str::to_owned);
        stop_stale_sshd(&dir);
        let uids: Vec<u32> = users.iter().filter_map(|u| lookup_uid(u).ok()).collect();
        kill_processes_of(&uids);
        let existing: Vec<String> = users
            .into_iter()
            .filter(|u| lookup_uid(u).is_ok())
            .collect();
        let group = group.filter(|g| lookup_gid(g).is_ok());
        remove_accounts(&existing, group.as_deref())?;
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        eprintln!("bento-tests: swept stale test server {}", dir.display());
    }
    Ok(())
}

/// Kills the sshd of a stale server directory, if its pid still names that sshd.
fn stop_stale_sshd(dir: &Path) {
    let Some(pid) = fs::read_to_string(dir.join("sshd.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
    else {
        return;
    };
    let config = dir.join("sshd_config");
    let config = config.as_os_str().as_encoded_bytes();
    // sshd rewrites its title ("sshd: /usr/sbin/sshd -D -f <config> … [listener]"), so
    // look for the config path anywhere in it.
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let ours = cmdline.windows(config.len()).any(|w| w == config);
    if ours {
        for child in children_of(pid) {
            signal(child, "KILL");
        }
        signal(pid, "KILL");
    }
}

fn remove_accounts(users: &[String], group: Option<&str>) -> Result<()> {
    let mut errors = Vec::new();
    for user in users {
        if let Err(e) = account_tool(Command::new("userdel").arg(user)) {
            errors.push(format!("{e:#}"));
        }
    }
    if let Some(group) = group {
        if let Err(e) = account_tool(Command::new("groupdel").arg(group)) {
            errors.push(format!("{e:#}"));
        }
    }
    ensure!(errors.is_empty(), "{}", errors.join("\n"));
    Ok(())
}

/// Runs useradd/userdel/groupadd/groupdel, one at a time in this process and retrying
/// while another process holds the account database lock.
fn account_tool(cmd: &mut Command) -> Result<()> {
    let _guard = ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
    let mut result = Ok(());
    wait_until(Duration::from_secs(20), || {
        result = crate::run(cmd).map(drop);
        !matches!(&result, Err(e) if format!("{e:#}").contains("lock"))
    });
    result
}

fn check_user_name(name: &str) -> Result<()> {
    let bytes = name.as_bytes();
    ensure!(
        !bytes.is_empty()
            && bytes.len() <= 32
            && (bytes[0].is_ascii_lowercase() || bytes[0] == b'_')
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(b)),
        "{name:?} cannot be a test host: it must be a valid user name \
         ([a-z_][a-z0-9_-]*, at most 32 characters)"
    );
    Ok(())
}

fn lookup_uid(user: &str) -> Result<u32> {
    lookup_id("passwd", user)
}

fn lookup_gid(group: &str) -> Result<u32> {
    lookup_id("group", group)
}

/// The id field of `getent <db> <name>` (`name:x:ID:…`).
fn lookup_id(db: &str, name: &str) -> Result<u32> {
    let output = crate::run(Command::new("getent").arg(db).arg(name))?;
    let line = String::from_utf8_lossy(&output.stdout).into_owned();
    line.split(':')
        .nth(2)
        .and_then(|id| id.trim().parse().ok())
        .with_context(|| format!("unexpected getent {db} {name} output {line:?}"))
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("probing a free port")?;
    Ok(listener.local_addr()?.port())
}

fn effective_uid() -> Result<u32> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|id| id.parse().ok())
        .context("no effective uid in /proc/self/status")
}

/// (pid, parent pid, real uid) of every live process.
fn processes() -> Vec<(u32, u32, u32)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name may hold spaces and parentheses: fields follow the last ')'.
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let uid = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some((pid, ppid, uid))
        })
        .collect()
}

fn children_of(parent: u32) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|(_, ppid, _)| *ppid == parent)
        .map(|(pid, _, _)| pid)
        .collect()
}

/// Kills (by pid) every process running as one of `uids`: sftp sessions of test users.
fn kill_processes_of(uids: &[u32]) {
    if uids.is_empty() {
        return;
    }
    let of_users = || -> Vec<u32> {
        processes()
            .into_iter()
            .filter(|(_, _, uid)| uids.contains(uid))
            .map(|(pid, _, _)| pid)
            .collect()
    };
    for pid in of_users() {
        signal(pid, "KILL");
    }
    wait_until(STOP_TIMEOUT, || of_users().is_empty());
}

/// Best effort: the process may already be gone.
fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Endpoint for SshServer {
    fn port(&self) -> u16 {
        self.port
    }

    /// The chroot base (`ChrootDirectory <chroot>/%u`).
    fn chroot_dir(&self) -> PathBuf {
        self.root.join("chroot")
    }

    /// The host's private key (0600, root-owned).
    fn key_path(&self, host: &str) -> PathBuf {
        self.root.join("clients").join(host)
    }

    /// Filled by `accept-new`.
    fn known_hosts_path(&self) -> PathBuf {
        self.root.join("known_hosts")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_are_checked() {
        assert!(check_user_name("bt1a2b3c-web").is_ok());
        assert!(check_user_name("Web").is_err());
        assert!(check_user_name("1web").is_err());
        assert!(check_user_name(&"a".repeat(33)).is_err());
    }

    #[test]
    fn prefixes_are_unique() {
        let a = unique_prefix();
        let b = unique_prefix();
        assert_ne!(a, b);
        assert!(a.starts_with("bt") && a.len() == 8, "{a}");
    }
}
