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

mod session;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use bento_core::bentodir::BentoDir;
use bento_core::config::{Settings, SftpSettings, CONFIG_FILE};
use bento_core::jail::{Jail, LogLimits};
use bento_core::HostName;
use russh::keys::{HashAlg, PrivateKey, PublicKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId, MethodKind, MethodSet};
use tracing::{debug, info, warn};

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
        for (host, h) in &settings.hosts {
            for (i, line) in h.keys.iter().enumerate() {
                match PublicKey::from_openssh(line)
                    .map_err(|e| e.to_string())
                    .and_then(|k| k.to_bytes().map_err(|e| e.to_string()))
                {
                    Ok(blob) => {
                        keys.by_key.insert(blob, host.clone());
                    }
                    Err(e) => problems.push(format!("hosts.{host}.keys[{i}]: {e}")),
                }
            }
        }
        (keys, problems)
    }
}

/// Checks every host key of bento.toml parses, for `bento check-config`.
pub fn check_keys(settings: &Settings) -> Vec<String> {
    Keys::from_settings(settings).1
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

/// What every connection shares.
pub struct Shared {
    bento_dir: PathBuf,
    chroot_dir: PathBuf,
    limits: LogLimits,
    max_connections: usize,
    max_per_host: usize,
    connections: AtomicUsize,
    per_host: Mutex<HashMap<HostName, usize>>,
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
        Arc::new(Shared {
            bento_dir: bento.root.clone(),
            chroot_dir: bento.settings.chroot_dir.clone(),
            limits: LogLimits {
                max_bytes: sftp.max_log_bytes,
                max_files: sftp.max_log_files,
            },
            max_connections: sftp.max_connections,
            max_per_host: sftp.max_connections_per_host,
            connections: AtomicUsize::new(0),
            per_host: Mutex::new(HashMap::new()),
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

    /// Counts a logged-in connection of `host`; false when it has too many.
    fn enter(&self, host: &HostName) -> bool {
        let mut m = self.per_host.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(host.clone()).or_insert(0);
        if *n >= self.max_per_host {
            return false;
        }
        *n += 1;
        true
    }

    fn leave(&self, host: &HostName) {
        let mut m = self.per_host.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(host) {
            *n -= 1;
            if *n == 0 {
                m.remove(host);
            }
        }
    }

    /// Opens a host's chroot.
    fn jail(&self, host: &HostName) -> std::io::Result<Jail> {
        Jail::open(&self.chroot_dir.join(host.as_str()), self.limits)
    }
}

/// One SSH connection.
pub struct Connection {
    shared: Arc<Shared>,
    peer: Option<SocketAddr>,
    host: Option<HostName>,
    over_limit: bool,
    channels: HashMap<ChannelId, Channel<Msg>>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
        if let Some(h) = &self.host {
            self.shared.leave(h);
            debug!(target: "bento::sftp", host = %h, "disconnected");
        }
    }
}

fn peer(p: &Option<SocketAddr>) -> String {
    p.map(|a| a.to_string()).unwrap_or_else(|| "?".into())
}

impl Connection {
    fn check_key(&self, user: &str, key: &PublicKey) -> Auth {
        if self.over_limit {
            return Auth::reject();
        }
        match self.shared.authorize(user, key) {
            Ok(_) => Auth::Accept,
            Err(why) => {
                let fp = key.fingerprint(HashAlg::Sha256);
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
            host = self.host.as_ref().map(|h| h.as_str()).unwrap_or("?"),
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
            host = self.host.as_ref().map(|h| h.as_str()).unwrap_or("?"),
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
        if self.over_limit {
            return Ok(Auth::reject());
        }
        match self.shared.authorize(user, key.public_key) {
            Ok(h) if self.host.is_none() && !self.shared.enter(&h) => {
                warn!(
                    target: "bento::sftp", host = %h, peer = %peer(&self.peer),
                    "refused: the host already has {} connections (max_connections_per_host)",
                    self.shared.max_per_host
                );
                Ok(Auth::reject())
            }
            Ok(h) => {
                debug!(target: "bento::sftp", host = %h, peer = %peer(&self.peer), "logged in");
                self.host = Some(h);
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
        if self.host.is_none() || self.channels.len() >= 4 {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
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
        let Some(host) = self.host.clone() else {
            return session.channel_failure(channel_id);
        };
        if name != "sftp" {
            return self.refuse_channel(&format!("subsystem {name:?}"), channel_id, session);
        }
        let Some(channel) = self.channels.remove(&channel_id) else {
            return session.channel_failure(channel_id);
        };
        let jail = match self.shared.jail(&host) {
            Ok(j) => j,
            Err(e) => {
                warn!(target: "bento::sftp", host = %host, "refused: no chroot directory for this host ({e}); deploy it first");
                return session.channel_failure(channel_id);
            }
        };
        session.channel_success(channel_id)?;
        let sftp = SftpSession::new(host, jail);
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

struct Server {
    shared: Arc<Shared>,
}

impl russh::server::Server for Server {
    type Handler = Connection;

    fn new_client(&mut self, peer: Option<SocketAddr>) -> Connection {
        let n = self.shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let over_limit = n > self.shared.max_connections;
        if over_limit {
            warn!(target: "bento::sftp", peer = %self::peer(&peer), "refused: {} connections already open (max_connections)", n - 1);
        }
        Connection {
            shared: self.shared.clone(),
            peer,
            host: None,
            over_limit,
            channels: HashMap::new(),
        }
    }

    fn handle_session_error(&mut self, error: russh::Error) {
        debug!(target: "bento::sftp", "session ended: {error}");
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

/// Serves SFTP on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    host_key: PrivateKey,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    use russh::server::Server as _;
    let config = Arc::new(ssh_config(host_key));
    let mut server = Server { shared };
    let running = server.run_on_socket(config, &listener);
    let handle = running.handle();
    tokio::select! {
        r = running => r.context("the SFTP server stopped")?,
        () = shutdown => handle.shutdown("server stopping".into()),
    }
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

/// Loads the key and binds the address (`listen` overrides `[sftp] listen`).
pub async fn prepare(bento: &BentoDir, listen: Option<&str>) -> anyhow::Result<Prepared> {
    let sftp = bento.settings.sftp.clone().unwrap_or_default();
    for p in check_keys(&bento.settings) {
        warn!(target: "bento::sftp", "{p}: key ignored");
    }
    let key_path = if sftp.host_key.is_absolute() {
        sftp.host_key.clone()
    } else {
        bento.root.join(&sftp.host_key)
    };
    let host_key = load_or_create_host_key(&key_path)?;
    let listen = listen.unwrap_or(&sftp.listen);
    let addr: SocketAddr = listen.parse().with_context(|| {
        format!("{listen:?} is not an address to listen on (like 0.0.0.0:2222)")
    })?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for SFTP"))?;
    Ok(Prepared {
        shared: Shared::new(bento, &sftp),
        host_key,
        listener,
    })
}
