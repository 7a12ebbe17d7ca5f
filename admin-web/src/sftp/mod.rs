//! The embedded SFTP server: serves every host its own chroot from the same on-disk
//! layout as the OpenSSH mode, run by an unprivileged user, with no system users
//! and no sshd configuration.
//!
//! - A host logs in as its name with one of the keys listed for it in bento.toml
//!   (`[hosts.<name>] keys`); the file is read again when it changes.
//! - Only the `sftp` subsystem is served: no shell, no commands, no forwarding.
//! - Every path goes through [`bento_core::jail`]: the host sees only its chroot,
//!   read-only except `logs/`, with caps on size and count there.
//! - Unknown keys and every refused operation are logged (target `bento::sftp`).

mod health;
mod limits;
mod rotate;
mod session;
mod watch;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use bento_core::bentodir::BentoDir;
use bento_core::config::{Settings, SftpSettings, CONFIG_FILE};
use bento_core::jail::{Jail, LogLimits, LogQuota};
use bento_core::HostName;
use russh::keys::{HashAlg, PrivateKey, PublicKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId, MethodKind, MethodSet};
use tracing::{debug, info, warn};

pub use health::Health;
use limits::{Admission, AuthFailures, FdBudget, FdPermit, KillSwitch, Killable, Ticket};

pub use session::SftpSession;

/// Loads the server's host key, or creates it (ed25519, mode 0600) with its `.pub`
/// beside it on first start.
pub fn load_or_create_host_key(path: &Path) -> anyhow::Result<PrivateKey> {
    if path.exists() {
        return PrivateKey::read_openssh_file(path)
            .with_context(|| format!("cannot read the SFTP host key {}", path.display()));
    }
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
    let pair = russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed);
    let key = PrivateKey::from(pair);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let pem = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .context("cannot encode the host key")?;
    // Written under a temporary name with mode 0600, then renamed: never a
    // readable or half-written key.
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(pem.as_bytes())?;
        f.sync_all()?;
    }
    let public = key
        .public_key()
        .to_openssh()
        .context("cannot encode the public key")?;
    let pub_path = public_key_path(path);
    std::fs::write(&pub_path, format!("{public}\n"))
        .with_context(|| format!("cannot write {}", pub_path.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(key)
}

/// `<host_key>.pub`.
pub fn public_key_path(host_key: &Path) -> PathBuf {
    let mut s = host_key.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// Which host each listed key belongs to.
#[derive(Default)]
struct Keys {
    by_key: HashMap<Vec<u8>, HostName>,
}

impl Keys {
    /// Builds the index; a key that does not parse is reported and left out.
    fn from_settings(settings: &Settings) -> (Keys, Vec<String>) {
        let mut keys = Keys::default();
        let mut problems = Vec::new();
        let mut shared = Vec::new();
        for (host, h) in &settings.hosts {
            for (i, line) in h.keys.iter().enumerate() {
                match PublicKey::from_openssh(line)
                    .map_err(|e| e.to_string())
                    .and_then(|k| k.to_bytes().map_err(|e| e.to_string()))
                {
                    Ok(blob) => match keys.by_key.get(&blob) {
                        Some(other) if other != host => {
                            problems.push(shared_key_problem(host, i, other));
                            shared.push(blob);
                        }
                        _ => {
                            keys.by_key.insert(blob, host.clone());
                        }
                    },
                    Err(e) => problems.push(format!("hosts.{host}.keys[{i}]: {e}")),
                }
            }
        }
        // The key is what tells bento sftp which host logs in: a key of two
        // hosts lets neither in, rather than whichever was listed last.
        for blob in shared {
            keys.by_key.remove(&blob);
        }
        (keys, problems)
    }
}

fn shared_key_problem(host: &HostName, i: usize, other: &HostName) -> String {
    format!(
        "hosts.{host}.keys[{i}] is also a key of host {other}: with bento sftp the key \
         says which host logs in, so each host needs a key of its own"
    )
}

/// Keys listed for two hosts (fatal for `bento sftp`, harmless with sshd's
/// per-user chroots).
pub fn shared_keys(settings: &Settings) -> Vec<String> {
    let (_, problems) = Keys::from_settings(settings);
    problems
        .into_iter()
        .filter(|p| p.contains(" is also a key of host "))
        .collect()
}

/// Checks every host key of bento.toml parses and the `[sftp]` limits make
/// sense, for `bento check-config`. A key shared by two hosts is a problem only
/// with `[sftp]`.
pub fn check_keys(settings: &Settings) -> Vec<String> {
    let mut problems = Keys::from_settings(settings).1;
    if settings.sftp.is_none() {
        problems.retain(|p| !p.contains(" is also a key of host "));
    }
    if let Some(sftp) = &settings.sftp {
        problems.extend(sftp.problems());
    }
    problems
}

/// Why a key was refused.
enum Refused {
    Unknown,
    OtherHost(HostName),
    NotAHost,
}

struct KeyState {
    /// mtime and length of bento.toml when `keys` was read.
    stamp: Option<(SystemTime, u64)>,
    keys: Keys,
}

/// Descriptors a connection holds: its socket.
const CONNECTION_FDS: usize = 1;
/// Descriptors an SFTP session holds besides its handles: the host's root.
const SESSION_FDS: usize = 1;
/// Descriptors one operation opens and closes (a directory, `logs/`, a scan of
/// it). An operation runs to its end without yielding, so at most one per
/// runtime thread holds them: they are reserved per thread, not per session
/// (per session, 5,000 idle watching hosts would not fit in 20,000).
const OPERATION_FDS: usize = 3;

/// What every connection of one host shares, kept while the server runs (hosts
/// are those of bento.toml, so there are few).
pub struct HostShared {
    connections: AtomicUsize,
    /// Open handles over all the host's sessions.
    handles: AtomicUsize,
    quota: Arc<LogQuota>,
}

/// What every connection shares.
pub struct Shared {
    bento_dir: PathBuf,
    chroot_dir: PathBuf,
    limits: LogLimits,
    max_per_host: usize,
    max_channels: usize,
    max_handles_per_host: usize,
    keep_reports: usize,
    login_grace: Duration,
    fds: Arc<FdBudget>,
    /// The descriptors of the operations in flight ([`OPERATION_FDS`] per thread),
    /// taken from `fds` for good (none when the limit is tiny).
    _operations: Option<FdPermit>,
    admission: Arc<Admission>,
    failures: Arc<AuthFailures>,
    /// Refusals logged at most once a minute per kind and address.
    refusals: limits::Throttled,
    hosts: Mutex<HashMap<HostName, Arc<HostShared>>>,
    /// What held watch reads wait on.
    publications: Arc<watch::Publications>,
    keys: RwLock<KeyState>,
    reload_lock: Mutex<()>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let md = std::fs::metadata(path).ok()?;
    Some((md.modified().ok()?, md.len()))
}

impl Shared {
    pub fn new(bento: &BentoDir, sftp: &SftpSettings) -> Arc<Shared> {
        let (keys, problems) = Keys::from_settings(&bento.settings);
        for p in problems {
            warn!(target: "bento::sftp", "{p}: key ignored");
        }
        let nofile = limits::raise_nofile();
        let fds = FdBudget::new(nofile);
        // The runtime's worker threads (tokio starts one per core), and one more
        // for the thread that blocks on the server.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) + 1;
        let operations = fds.take(OPERATION_FDS * threads);
        info!(
            target: "bento::sftp",
            "file descriptors: {nofile} (RLIMIT_NOFILE), {} for clients", fds.limit() - fds.used()
        );
        Arc::new(Shared {
            bento_dir: bento.root.clone(),
            chroot_dir: bento.settings.chroot_dir.clone(),
            limits: LogLimits {
                max_bytes: sftp.max_log_bytes,
                max_files: sftp.max_log_files,
                max_total_bytes: sftp.max_log_bytes_total,
                min_free_bytes: sftp.min_free_bytes,
            },
            max_per_host: sftp.max_connections_per_host,
            max_channels: sftp.max_channels_per_connection,
            max_handles_per_host: sftp.max_handles_per_host,
            // A report is two files, beside heartbeat.json.
            keep_reports: sftp
                .keep_reports
                .min((sftp.max_log_files.saturating_sub(1) / 2).max(1)),
            login_grace: Duration::from_secs(sftp.login_grace_secs),
            fds,
            _operations: operations,
            admission: Admission::new(
                sftp.max_connections,
                sftp.max_unauthenticated,
                sftp.max_unauthenticated_per_source,
            ),
            failures: AuthFailures::new(sftp.max_auth_failures_per_minute),
            refusals: limits::Throttled::default(),
            hosts: Mutex::new(HashMap::new()),
            publications: Arc::new(watch::Publications::new(&bento.settings.chroot_dir)),
            keys: RwLock::new(KeyState {
                stamp: stamp(&bento.root.join(CONFIG_FILE)),
                keys,
            }),
            reload_lock: Mutex::new(()),
        })
    }

    /// Reads bento.toml again when it changed; a broken file keeps the old keys.
    fn refresh(&self) {
        let path = self.bento_dir.join(CONFIG_FILE);
        let now = stamp(&path);
        if self.keys.read().unwrap_or_else(|e| e.into_inner()).stamp == now {
            return;
        }
        let _one = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.keys.read().unwrap_or_else(|e| e.into_inner()).stamp == now {
            return;
        }
        let (keys, problems) = match BentoDir::open(&self.bento_dir) {
            Ok(b) => Keys::from_settings(&b.settings),
            Err(e) => {
                warn!(target: "bento::sftp", "bento.toml changed but cannot be read, keeping the previous keys: {e}");
                // Do not retry on every login until the file changes again.
                self.keys.write().unwrap_or_else(|e| e.into_inner()).stamp = now;
                return;
            }
        };
        for p in problems {
            warn!(target: "bento::sftp", "{p}: key ignored");
        }
        info!(target: "bento::sftp", "host keys reloaded from {}", path.display());
        let mut st = self.keys.write().unwrap_or_else(|e| e.into_inner());
        st.stamp = now;
        st.keys = keys;
    }

    /// The host a user name and key log in as.
    fn authorize(&self, user: &str, key: &PublicKey) -> Result<HostName, Refused> {
        self.refresh();
        let Ok(blob) = key.to_bytes() else {
            return Err(Refused::Unknown);
        };
        let st = self.keys.read().unwrap_or_else(|e| e.into_inner());
        match st.keys.by_key.get(&blob) {
            None => Err(Refused::Unknown),
            Some(h) if h.as_str() == user => Ok(h.clone()),
            Some(h) if HostName::new(user).is_ok() => Err(Refused::OtherHost(h.clone())),
            Some(_) => Err(Refused::NotAHost),
        }
    }

    fn host(&self, host: &HostName) -> Arc<HostShared> {
        let mut m = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(host.clone())
            .or_insert_with(|| {
                Arc::new(HostShared {
                    connections: AtomicUsize::new(0),
                    handles: AtomicUsize::new(0),
                    quota: Arc::default(),
                })
            })
            .clone()
    }

    /// Counts a logged-in connection of `host`; `None` when it has too many.
    fn enter(&self, host: &HostName) -> Option<Arc<HostShared>> {
        let h = self.host(host);
        let mut n = h.connections.load(Ordering::Acquire);
        loop {
            if n >= self.max_per_host {
                return None;
            }
            match h
                .connections
                .compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(h),
                Err(now) => n = now,
            }
        }
    }

    /// Opens a host's chroot.
    fn jail(&self, host: &HostName, shared: &HostShared) -> std::io::Result<Jail> {
        Jail::open_with_quota(
            &self.chroot_dir.join(host.as_str()),
            self.limits,
            shared.quota.clone(),
        )
    }

    /// Logs a refusal, at most once a minute per `key`.
    fn refused(&self, key: &str, line: impl FnOnce(String)) {
        self.refusals.log(key, |held| {
            line(if held > 0 {
                format!(" ({held} more like it in the last minute)")
            } else {
                String::new()
            })
        });
    }
}

/// One SSH connection.
pub struct Connection {
    shared: Arc<Shared>,
    peer: Option<SocketAddr>,
    host: Option<(HostName, Arc<HostShared>)>,
    ticket: Ticket,
    /// Set once logged in: the login grace timer lets the connection be.
    authenticated: Arc<AtomicBool>,
    /// Channels opened that have not started their subsystem yet.
    channels: HashMap<ChannelId, Channel<Msg>>,
    /// SFTP sessions running on this connection.
    live: Arc<AtomicUsize>,
    /// Per running session: dropped when its channel ends (or the connection
    /// does), which ends a watch read held for it at once.
    closers: HashMap<ChannelId, tokio::sync::watch::Sender<()>>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some((h, shared)) = &self.host {
            shared.connections.fetch_sub(1, Ordering::AcqRel);
            debug!(target: "bento::sftp", host = %h, "disconnected");
        }
    }
}

fn peer(p: &Option<SocketAddr>) -> String {
    p.map(|a| a.to_string()).unwrap_or_else(|| "?".into())
}

fn source(p: &Option<SocketAddr>) -> IpAddr {
    p.map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// What an SFTP session holds of its connection and host; given back when the
/// session ends.
pub struct SessionPlace {
    live: Arc<AtomicUsize>,
    _fds: FdPermit,
}

impl Drop for SessionPlace {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Connection {
    fn host_name(&self) -> &str {
        self.host.as_ref().map(|(h, _)| h.as_str()).unwrap_or("?")
    }

    fn check_key(&self, user: &str, key: &PublicKey) -> Auth {
        let src = source(&self.peer);
        if self.shared.failures.penalized(src) {
            return Auth::reject();
        }
        match self.shared.authorize(user, key) {
            Ok(_) => Auth::Accept,
            Err(why) => {
                let fp = key.fingerprint(HashAlg::Sha256);
                let what = match &why {
                    Refused::Unknown => format!("unknown key {fp}"),
                    Refused::OtherHost(h) => format!("the key {fp} of host {h} for user {user}"),
                    Refused::NotAHost => format!("user name {user:?} is no host name"),
                };
                if !self.shared.failures.failed(src, &what) {
                    return Auth::reject();
                }
                let peer = peer(&self.peer);
                match why {
                    Refused::Unknown => {
                        warn!(target: "bento::sftp", %peer, user, key = %fp, "refused: unknown key")
                    }
                    Refused::OtherHost(h) => warn!(
                        target: "bento::sftp", %peer, user, key = %fp,
                        "refused: the key belongs to host {h}"
                    ),
                    Refused::NotAHost => warn!(
                        target: "bento::sftp", %peer, user, key = %fp,
                        "refused: the user name is not a host name"
                    ),
                }
                Auth::reject()
            }
        }
    }

    fn refuse_forwarding(&self, what: &str) {
        warn!(
            target: "bento::sftp",
            host = self.host_name(),
            peer = %peer(&self.peer),
            "refused forwarding {what}: only the sftp subsystem is served"
        );
    }

    fn refuse_channel(
        &self,
        what: &str,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        warn!(
            target: "bento::sftp",
            host = self.host_name(),
            peer = %peer(&self.peer),
            "refused {what}: only the sftp subsystem is served"
        );
        session.channel_failure(channel)
    }
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
            partial_success: false,
        })
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.check_key(user, offer.public_key))
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        match self.shared.authorize(user, key.public_key) {
            Ok(h) if self.host.is_some() => {
                debug!(target: "bento::sftp", host = %h, "logged in again");
                Ok(Auth::Accept)
            }
            Ok(h) => {
                let Some(hs) = self.shared.enter(&h) else {
                    warn!(
                        target: "bento::sftp", host = %h, peer = %peer(&self.peer),
                        "refused: the host already has {} connections (max_connections_per_host)",
                        self.shared.max_per_host
                    );
                    return Ok(Auth::reject());
                };
                if !self.ticket.promote() {
                    hs.connections.fetch_sub(1, Ordering::AcqRel);
                    warn!(
                        target: "bento::sftp", host = %h, peer = %peer(&self.peer),
                        "refused: {}", limits::Refusal::Full.text()
                    );
                    return Ok(Auth::reject());
                }
                debug!(target: "bento::sftp", host = %h, peer = %peer(&self.peer), "logged in");
                self.authenticated.store(true, Ordering::Release);
                self.host = Some((h, hs));
                Ok(Auth::Accept)
            }
            Err(_) => Ok(self.check_key(user, key.public_key)),
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let open = self.channels.len() + self.live.load(Ordering::Acquire);
        if self.host.is_none() || open >= self.shared.max_channels {
            if self.host.is_some() {
                let host = self.host_name().to_owned();
                let max = self.shared.max_channels;
                self.shared
                    .refused(&format!("channels {host}"), |more| {
                        warn!(
                            target: "bento::sftp", host, peer = %peer(&self.peer),
                            "refused a channel: {max} are open on this connection (max_channels_per_connection){more}"
                        )
                    });
            }
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        self.closers.remove(&channel);
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel_id: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some((host, hs)) = self.host.clone() else {
            return session.channel_failure(channel_id);
        };
        if name != "sftp" {
            return self.refuse_channel(&format!("subsystem {name:?}"), channel_id, session);
        }
        let Some(channel) = self.channels.remove(&channel_id) else {
            return session.channel_failure(channel_id);
        };
        let Some(fds) = self.shared.fds.take(SESSION_FDS) else {
            self.shared.refused("fds session", |more| {
                warn!(target: "bento::sftp", host = %host, "refused an SFTP session: {}{more}", limits::Refusal::NoDescriptors.text())
            });
            return session.channel_failure(channel_id);
        };
        let jail = match self.shared.jail(&host, &hs) {
            Ok(j) => j,
            Err(e) => {
                warn!(target: "bento::sftp", host = %host, "refused: no chroot directory for this host ({e}); deploy it first");
                return session.channel_failure(channel_id);
            }
        };
        session.channel_success(channel_id)?;
        self.live.fetch_add(1, Ordering::AcqRel);
        let (closer, closed) = tokio::sync::watch::channel(());
        self.closers.insert(channel_id, closer);
        let place = SessionPlace {
            live: self.live.clone(),
            _fds: fds,
        };
        let sftp = SftpSession::new(
            host,
            jail,
            session::Bounds {
                host: hs,
                max_handles_per_host: self.shared.max_handles_per_host,
                keep_reports: self.shared.keep_reports,
                fds: self.shared.fds.clone(),
                publications: self.shared.publications.clone(),
                closed,
                _place: place,
            },
        );
        russh_sftp::server::run(channel.into_stream(), sftp).await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_channel("a command", channel, session)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_channel("a shell", channel, session)
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.closers.remove(&channel);
        session.close(channel)
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_forwarding(&format!("to {host_to_connect}:{port_to_connect}"));
        reply
            .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse_forwarding(&format!("from {address}:{port}"));
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        socket_path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse_forwarding(&format!("from {socket_path}"));
        Ok(false)
    }
}

/// The server's SSH settings.
pub fn ssh_config(host_key: PrivateKey) -> russh::server::Config {
    russh::server::Config {
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        keys: vec![host_key],
        auth_rejection_time: Duration::from_millis(500),
        // OpenSSH clients try "none" first: answer at once with "publickey".
        auth_rejection_time_initial: Some(Duration::ZERO),
        inactivity_timeout: Some(Duration::from_secs(600)),
        max_auth_attempts: 6,
        nodelay: true,
        ..Default::default()
    }
}

/// Decides on a new connection at once: a refused one is closed before the SSH
/// handshake, so it holds nothing.
fn admit(shared: &Arc<Shared>, peer: SocketAddr) -> Result<(Ticket, FdPermit), limits::Refusal> {
    if shared.failures.penalized(peer.ip()) {
        return Err(limits::Refusal::Penalized);
    }
    let ticket = shared.admission.enter(peer.ip())?;
    let fds = shared
        .fds
        .take(CONNECTION_FDS)
        .ok_or(limits::Refusal::NoDescriptors)?;
    Ok((ticket, fds))
}

/// Gives the memory freed by a connection that ended back to the system: glibc
/// keeps freed heap in its arenas, so a client that made the server allocate a
/// lot would otherwise leave the process that large after it left.
#[allow(unsafe_code)]
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and trims the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// One connection from accept to close, then the memory it freed returned.
async fn connection(
    shared: Arc<Shared>,
    config: Arc<russh::server::Config>,
    socket: tokio::net::TcpStream,
    peer: SocketAddr,
    ticket: Ticket,
    fds: FdPermit,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let authenticated = serve_connection(shared, config, socket, peer, ticket, fds, stop).await;
    if authenticated {
        return_freed_memory();
    }
}

/// One connection from accept to close, cut when it has not logged in within
/// the login grace or when the server stops; whether it logged in.
async fn serve_connection(
    shared: Arc<Shared>,
    config: Arc<russh::server::Config>,
    socket: tokio::net::TcpStream,
    peer: SocketAddr,
    ticket: Ticket,
    _fds: FdPermit,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> bool {
    let _ = socket.set_nodelay(true);
    let deadline = tokio::time::Instant::now() + shared.login_grace;
    let switch = Arc::new(KillSwitch::default());
    let authenticated = Arc::new(AtomicBool::new(false));
    let handler = Connection {
        shared: shared.clone(),
        peer: Some(peer),
        host: None,
        ticket,
        authenticated: authenticated.clone(),
        channels: HashMap::new(),
        live: Arc::default(),
        closers: HashMap::new(),
    };
    let stream = Killable::new(socket, switch.clone());
    let grace_over = |what: &str| {
        shared.refused(&format!("grace {}", peer.ip()), |more| {
            info!(
                target: "bento::sftp", peer = %peer,
                "closed: {what} within {} s (login_grace_secs){more}",
                shared.login_grace.as_secs()
            )
        })
    };
    let session = tokio::select! {
        r = tokio::time::timeout_at(deadline, russh::server::run_stream(config, stream, handler)) => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                debug!(target: "bento::sftp", peer = %peer, "connection setup failed: {e}");
                return authenticated.load(Ordering::Acquire);
            }
            Err(_) => {
                grace_over("no SSH handshake");
                return authenticated.load(Ordering::Acquire);
            }
        },
        _ = stop.changed() => return false,
    };
    let handle = session.handle();
    tokio::pin!(session);
    let grace = tokio::time::sleep_until(deadline);
    tokio::pin!(grace);
    let mut graced = false;
    loop {
        tokio::select! {
            r = &mut session => {
                if let Err(e) = r {
                    debug!(target: "bento::sftp", peer = %peer, "session ended: {e}");
                }
                return authenticated.load(Ordering::Acquire);
            }
            () = &mut grace, if !graced => {
                graced = true;
                if !authenticated.load(Ordering::Acquire) {
                    grace_over("not logged in");
                    switch.kill();
                }
            }
            _ = stop.changed() => {
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    handle.disconnect(russh::Disconnect::ByApplication, "server stopping".into(), String::new()),
                ).await;
                switch.kill();
                return authenticated.load(Ordering::Acquire);
            }
        }
    }
}

/// Serves SFTP on `listener` until `shutdown` resolves. Accepting never ends the
/// server: a refused connection is closed and logged, running out of file
/// descriptors makes it wait and try again.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    host_key: PrivateKey,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let config = Arc::new(ssh_config(host_key));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sweeper = {
        let failures = shared.failures.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(10));
            loop {
                t.tick().await;
                failures.sweep();
            }
        })
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    match admit(&shared, peer) {
                        Ok((ticket, fds)) => {
                            tokio::spawn(connection(
                                shared.clone(), config.clone(), socket, peer, ticket, fds, stop_rx.clone(),
                            ));
                        }
                        Err(why) => {
                            drop(socket);
                            shared.refused(&format!("{why:?} {}", peer.ip()), |more| {
                                warn!(target: "bento::sftp", peer = %peer, "refused a connection: {}{more}", why.text())
                            });
                        }
                    }
                }
                Err(e) if limits::is_exhaustion(&e) => {
                    shared.refused("accept exhausted", |more| {
                        warn!(target: "bento::sftp", "cannot accept a connection: {e}; waiting for descriptors to free up{more}")
                    });
                    // The connection stays in the listen backlog meanwhile.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    shared.refused("accept error", |more| {
                        warn!(target: "bento::sftp", "accepting a connection failed: {e}{more}")
                    });
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
    sweeper.abort();
    let _ = stop_tx.send(true);
    Ok(())
}

/// What `bento sftp` and `bento serve` need to start the server.
pub struct Prepared {
    pub shared: Arc<Shared>,
    pub host_key: PrivateKey,
    pub listener: tokio::net::TcpListener,
}

impl Prepared {
    /// `SHA256:…` of the host key, for the admin to compare with what hosts see.
    pub fn fingerprint(&self) -> String {
        self.host_key
            .public_key()
            .fingerprint(HashAlg::Sha256)
            .to_string()
    }
}

/// The address to listen on (`listen` overrides `[sftp] listen`).
pub fn listen_address(bento: &BentoDir, listen: Option<&str>) -> anyhow::Result<SocketAddr> {
    let sftp = bento.settings.sftp.clone().unwrap_or_default();
    let listen = listen.unwrap_or(&sftp.listen);
    listen
        .parse()
        .with_context(|| format!("{listen:?} is not an address to listen on (like 0.0.0.0:2222)"))
}

/// Checks the settings, loads the key and binds the address (`listen` overrides
/// `[sftp] listen`).
pub async fn prepare(bento: &BentoDir, listen: Option<&str>) -> anyhow::Result<Prepared> {
    let sftp = bento.settings.sftp.clone().unwrap_or_default();
    let problems = sftp.problems();
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("; "));
    }
    let shared = shared_keys(&bento.settings);
    if !shared.is_empty() {
        anyhow::bail!("{}", shared.join("; "));
    }
    for p in check_keys(&bento.settings) {
        warn!(target: "bento::sftp", "{p}: key ignored");
    }
    let key_path = if sftp.host_key.is_absolute() {
        sftp.host_key.clone()
    } else {
        bento.root.join(&sftp.host_key)
    };
    let host_key = load_or_create_host_key(&key_path)?;
    let addr = listen_address(bento, listen)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for SFTP"))?;
    Ok(Prepared {
        shared: Shared::new(bento, &sftp),
        host_key,
        listener,
    })
}
