//! The bento directory's settings: `bento.toml`, or the original tool's `config.sh`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::HostName;

pub const CONFIG_FILE: &str = "bento.toml";
pub const LEGACY_CONFIG_FILE: &str = "config.sh";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{dir} is not a bento directory: it has no hosts/ directory and no bento.toml or config.sh (create one with `bento init`)")]
    NotABentoDir { dir: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// When an agent may reboot its machine after a kernel change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RebootPolicy {
    /// `never`, `window` (inside `window`), or `immediately` (as the original `REBOOT` file).
    #[serde(default)]
    pub mode: RebootMode,
    /// Daily window `HH:MM-HH:MM` in the host's local time, for `mode = "window"`.
    pub window: Option<String>,
    /// How long users may postpone, at most, in seconds.
    #[serde(default = "default_max_postpone")]
    pub max_postpone_secs: u64,
}

fn default_max_postpone() -> u64 {
    8 * 3600
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RebootMode {
    #[default]
    Never,
    Window,
    Immediately,
}

/// `[hosts.<name>]`: per-host overrides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HostSettings {
    /// System user the host logs in as; owner of its `logs/`. Default: `default_user`,
    /// else the host name.
    pub user: Option<String>,
    /// SSH public keys of the host (for the embedded SFTP server and the NixOS module).
    #[serde(default)]
    pub keys: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub reboot: Option<RebootPolicy>,
    /// Lets the host update its flake inputs when no new release came (`SELF_UPDATE`).
    #[serde(default)]
    pub self_update: bool,
}

/// `[web]`: the panel.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSettings {
    #[serde(default = "default_listen")]
    pub listen: String,
    /// `sqlite://path` (relative to the bento directory) — the default is a file
    /// beside the bento directory's settings.
    #[serde(default = "default_database_url")]
    pub database_url: String,
    /// Set when the panel is served over TLS (directly or by a proxy): cookies get `Secure`.
    #[serde(default)]
    pub secure_cookies: bool,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_database_url() -> String {
    "sqlite://bento.sqlite".into()
}

impl Default for WebSettings {
    fn default() -> Self {
        WebSettings {
            listen: default_listen(),
            database_url: default_database_url(),
            secure_cookies: false,
        }
    }
}

impl fmt::Debug for WebSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A database URL may carry a password (PostgreSQL).
        let redacted = match self.database_url.split_once('@') {
            Some((_, host)) => format!("<redacted>@{host}"),
            None => self.database_url.clone(),
        };
        f.debug_struct("WebSettings")
            .field("listen", &self.listen)
            .field("database_url", &redacted)
            .field("secure_cookies", &self.secure_cookies)
            .finish()
    }
}

/// `[sftp]`: the embedded SFTP server (`bento sftp`, or `bento serve` with `enable`),
/// which serves every host its chroot with no system users and no sshd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftpSettings {
    /// `bento serve` runs the SFTP server too.
    #[serde(default)]
    pub enable: bool,
    #[serde(default = "default_sftp_listen")]
    pub listen: String,
    /// The server's ed25519 host key (relative to the bento directory), made on
    /// first start; `<host_key>.pub` is written beside it for the hosts' known_hosts.
    #[serde(default = "default_host_key")]
    pub host_key: PathBuf,
    /// Largest file a host may upload into its `logs/`, in bytes.
    #[serde(default = "default_max_log_bytes")]
    pub max_log_bytes: u64,
    /// Most files a host's `logs/` may hold.
    #[serde(default = "default_max_log_files")]
    pub max_log_files: usize,
    /// Most SSH connections at once, all hosts together.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most SSH connections at once of one host (a compromised host cannot take
    /// the others' places).
    #[serde(default = "default_max_connections_per_host")]
    pub max_connections_per_host: usize,
    /// Most bytes a host's `logs/` may hold, all files together.
    #[serde(default = "default_max_log_bytes_total")]
    pub max_log_bytes_total: u64,
    /// Seconds a connection has to finish the SSH handshake and log in; it is
    /// closed after that (OpenSSH's `LoginGraceTime`).
    #[serde(default = "default_login_grace_secs")]
    pub login_grace_secs: u64,
    /// Most connections that have not logged in yet, all sources together; they
    /// do not take the places of `max_connections`, which are for hosts.
    #[serde(default = "default_max_unauthenticated")]
    pub max_unauthenticated: usize,
    /// Most connections not logged in yet from one source address.
    #[serde(default = "default_max_unauthenticated_per_source")]
    pub max_unauthenticated_per_source: usize,
    /// Failed logins from one source address in a minute before its new
    /// connections are closed at once for the rest of that minute.
    #[serde(default = "default_max_auth_failures_per_minute")]
    pub max_auth_failures_per_minute: usize,
    /// SFTP channels (sessions) at once on one connection.
    #[serde(default = "default_max_channels_per_connection")]
    pub max_channels_per_connection: usize,
    /// Open files and directories of one host at once, over all its connections.
    #[serde(default = "default_max_handles_per_host")]
    pub max_handles_per_host: usize,
    /// Reports (log and sidecar) kept per host: past this many, the oldest are
    /// removed when a new one arrives, so a host never fills its `logs/` caps.
    /// The newest report and every one since the current publication are kept.
    /// At most half of `max_log_files` (a report is a log and a sidecar).
    #[serde(default = "default_keep_reports")]
    pub keep_reports: usize,
    /// Free bytes kept on the chroot's file system for `bento deploy`: an upload
    /// that would leave less is refused (the heartbeat excepted), so hosts' logs
    /// never fill the disk a publication needs. 0 turns the reserve off.
    #[serde(default = "default_min_free_bytes")]
    pub min_free_bytes: u64,
}

impl SftpSettings {
    /// What is wrong with these settings, for `bento check-config` and at start.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, v) in [
            ("max_log_bytes", self.max_log_bytes),
            ("max_log_files", self.max_log_files as u64),
            ("max_connections", self.max_connections as u64),
            (
                "max_connections_per_host",
                self.max_connections_per_host as u64,
            ),
            ("max_log_bytes_total", self.max_log_bytes_total),
            ("login_grace_secs", self.login_grace_secs),
            ("max_unauthenticated", self.max_unauthenticated as u64),
            (
                "max_unauthenticated_per_source",
                self.max_unauthenticated_per_source as u64,
            ),
            (
                "max_auth_failures_per_minute",
                self.max_auth_failures_per_minute as u64,
            ),
            (
                "max_channels_per_connection",
                self.max_channels_per_connection as u64,
            ),
            ("max_handles_per_host", self.max_handles_per_host as u64),
            ("keep_reports", self.keep_reports as u64),
        ] {
            if v == 0 {
                out.push(format!("sftp.{name} must be at least 1"));
            }
        }
        if self.max_log_bytes_total < self.max_log_bytes {
            out.push(format!(
                "sftp.max_log_bytes_total ({}) is below max_log_bytes ({}): no report of the largest size would fit",
                self.max_log_bytes_total, self.max_log_bytes
            ));
        }
        out
    }
}

fn default_keep_reports() -> usize {
    200
}
fn default_min_free_bytes() -> u64 {
    256 << 20
}
fn default_sftp_listen() -> String {
    "0.0.0.0:2222".into()
}
fn default_host_key() -> PathBuf {
    "sftp_host_ed25519_key".into()
}
fn default_max_log_bytes() -> u64 {
    4 << 20
}
fn default_max_log_files() -> usize {
    2000
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_connections_per_host() -> usize {
    16
}
fn default_max_log_bytes_total() -> u64 {
    256 << 20
}
fn default_login_grace_secs() -> u64 {
    15
}
fn default_max_unauthenticated() -> usize {
    256
}
fn default_max_unauthenticated_per_source() -> usize {
    16
}
fn default_max_auth_failures_per_minute() -> usize {
    30
}
fn default_max_channels_per_connection() -> usize {
    4
}
fn default_max_handles_per_host() -> usize {
    256
}

impl Default for SftpSettings {
    fn default() -> Self {
        SftpSettings {
            enable: false,
            listen: default_sftp_listen(),
            host_key: default_host_key(),
            max_log_bytes: default_max_log_bytes(),
            max_log_files: default_max_log_files(),
            max_connections: default_max_connections(),
            max_connections_per_host: default_max_connections_per_host(),
            max_log_bytes_total: default_max_log_bytes_total(),
            login_grace_secs: default_login_grace_secs(),
            max_unauthenticated: default_max_unauthenticated(),
            max_unauthenticated_per_source: default_max_unauthenticated_per_source(),
            max_auth_failures_per_minute: default_max_auth_failures_per_minute(),
            max_channels_per_connection: default_max_channels_per_connection(),
            max_handles_per_host: default_max_handles_per_host(),
            keep_reports: default_keep_reports(),
            min_free_bytes: default_min_free_bytes(),
        }
    }
}

/// `[secrets]` (see `secrets`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsSettings {
    /// Admin recipients (`age1…` or `ssh-ed25519 …` lines), so admins can decrypt
    /// (and `bento secret rekey`) every secret.
    #[serde(default)]
    pub recipients: Vec<String>,
    /// OpenSSH mode: where sshd finds the keys a host's user logs in with, as
    /// sshd's `AuthorizedKeysFile` (`%u` the user, `%h` its home; relative to the
    /// home). A host with no `[hosts.<name>] keys` has its secrets encrypted to
    /// these. Default `.ssh/authorized_keys`.
    #[serde(default = "default_authorized_keys_file")]
    pub authorized_keys_file: String,
}

impl Default for SecretsSettings {
    fn default() -> Self {
        SecretsSettings {
            recipients: Vec::new(),
            authorized_keys_file: default_authorized_keys_file(),
        }
    }
}

fn default_authorized_keys_file() -> String {
    ".ssh/authorized_keys".into()
}

/// `bento.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where the per-host chroots live (sshd `ChrootDirectory` parent).
    pub chroot_dir: PathBuf,
    /// Host name or address the agents connect to.
    #[serde(default = "default_remote")]
    pub remote: String,
    #[serde(default = "default_port")]
    pub remote_port: u16,
    /// Connection timeout of the agents, in seconds.
    #[serde(default = "default_timeout")]
    pub timeout: u64,
    /// `false`: the server only evaluates (dry-build) instead of building.
    #[serde(default = "default_true")]
    pub local_build: bool,
    /// Extra arguments to `nix build` on the server (e.g. `--max-jobs`, `--builders`).
    #[serde(default)]
    pub build_args: Vec<String>,
    /// Extra nix arguments the agents use (e.g. `--fallback`).
    #[serde(default)]
    pub agent_nix_args: Vec<String>,
    /// Releases kept per host, the current one included.
    #[serde(default = "default_keep")]
    pub keep_releases: usize,
    /// How many hosts are built at once.
    #[serde(default = "default_jobs")]
    pub build_jobs: usize,
    /// User owning every host's `logs/` when a host sets none (default: the host name).
    pub default_user: Option<String>,
    /// Unprivileged user that publishes releases (owner of `.releases/`); when
    /// `bento deploy` runs as root it hands those files to this user.
    pub publish_user: Option<String>,
    /// Poll interval the agents use, in seconds (to tell when a host is offline).
    #[serde(default = "default_poll")]
    pub poll_interval: u64,
    /// A host is offline after this many missed polls.
    #[serde(default = "default_offline_after")]
    pub offline_after_polls: u32,
    #[serde(default)]
    pub web: WebSettings,
    /// Present: the hosts are served by the embedded SFTP server (no system users;
    /// `bento deploy` needs no root).
    pub sftp: Option<SftpSettings>,
    #[serde(default)]
    pub hosts: BTreeMap<HostName, HostSettings>,
    /// `[secrets]`: admin recipients every secret is also encrypted to.
    #[serde(default)]
    pub secrets: SecretsSettings,
    /// The fleet's Nix signing key (secret half; the public half beside it as
    /// `<name>.pub`), relative to the bento directory. Made on first use.
    #[serde(default = "default_signing_key")]
    pub signing_key: PathBuf,
    /// Export every built system's closure into its host's chroot as a signed
    /// binary cache, so agents fetch it instead of building.
    #[serde(default = "default_true")]
    pub export_closures: bool,
    /// `[rollout]`: waves and their gates (see `rollout`); without it, one wave.
    #[serde(default)]
    pub rollout: crate::rollout::RolloutSettings,
    /// `[alerts]`: where `bento serve` sends what goes wrong.
    #[serde(default)]
    pub alerts: crate::alerts::AlertSettings,
}

fn default_signing_key() -> PathBuf {
    PathBuf::from(crate::signing::DEFAULT_SECRET_FILE)
}

fn default_remote() -> String {
    "localhost".into()
}
fn default_port() -> u16 {
    22
}
fn default_timeout() -> u64 {
    20
}
fn default_true() -> bool {
    true
}
fn default_keep() -> usize {
    5
}
fn default_jobs() -> usize {
    4
}
fn default_poll() -> u64 {
    300
}
fn default_offline_after() -> u32 {
    3
}

impl Settings {
    pub fn with_chroot(chroot_dir: PathBuf) -> Self {
        Settings {
            chroot_dir,
            remote: default_remote(),
            remote_port: default_port(),
            timeout: default_timeout(),
            local_build: true,
            build_args: Vec::new(),
            agent_nix_args: Vec::new(),
            keep_releases: default_keep(),
            build_jobs: default_jobs(),
            default_user: None,
            publish_user: None,
            poll_interval: default_poll(),
            offline_after_polls: default_offline_after(),
            web: WebSettings::default(),
            sftp: None,
            hosts: BTreeMap::new(),
            secrets: SecretsSettings::default(),
            signing_key: default_signing_key(),
            export_closures: true,
            rollout: Default::default(),
            alerts: Default::default(),
        }
    }

    /// Parses `bento.toml` text; unknown keys are refused.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let s: Settings = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        s.validate(path)?;
        Ok(s)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |message: String| {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                message,
            })
        };
        if !self.chroot_dir.is_absolute() {
            return invalid(format!(
                "chroot_dir must be an absolute path, not {:?}",
                self.chroot_dir
            ));
        }
        if self.keep_releases == 0 {
            return invalid("keep_releases must be at least 1".into());
        }
        if self.build_jobs == 0 {
            return invalid("build_jobs must be at least 1".into());
        }
        if self.rollout.wave_timeout == Some(0) {
            return invalid("rollout.wave_timeout must be at least 1 second".into());
        }
        if let Some(p) = self
            .sftp
            .as_ref()
            .and_then(|s| s.problems().into_iter().next())
        {
            return invalid(p);
        }
        for (name, h) in &self.hosts {
            if let Some(u) = &h.user {
                if !valid_user_name(u) {
                    return invalid(format!("hosts.{name}.user {u:?} is not a valid user name"));
                }
            }
            if let Some(RebootPolicy {
                mode: RebootMode::Window,
                window,
                ..
            }) = &h.reboot
            {
                match window.as_deref().map(parse_window) {
                    Some(Some(_)) => {}
                    _ => {
                        return invalid(format!(
                            "hosts.{name}.reboot: mode \"window\" needs window = \"HH:MM-HH:MM\""
                        ))
                    }
                }
            }
        }
        for (i, r) in self.secrets.recipients.iter().enumerate() {
            if let Err(e) = crate::secrets::parse_recipient(r) {
                return invalid(format!("secrets.recipients[{i}]: {e}"));
            }
        }
        let mut seen_keys: BTreeMap<&str, &HostName> = BTreeMap::new();
        for (name, h) in &self.hosts {
            for (i, k) in h.keys.iter().enumerate() {
                let mut fields = k.split_whitespace();
                let (Some(kind), Some(blob)) = (fields.next(), fields.next()) else {
                    return invalid(format!(
                        "hosts.{name}.keys[{i}] is not an SSH public key line (\"ssh-ed25519 AAAA… comment\")"
                    ));
                };
                if !(kind.starts_with("ssh-")
                    || kind.starts_with("ecdsa-")
                    || kind.starts_with("sk-"))
                {
                    return invalid(format!("hosts.{name}.keys[{i}]: unknown key type {kind:?}"));
                }
                // With `bento sftp` the key is what tells which host logs in, so a
                // shared key would hand one host's chroot to another. sshd checks the
                // key against the user it is listed for and chroots that user, so
                // there two hosts may share one (one admin key for a lab, say).
                if let Some(other) = seen_keys.insert(blob, name) {
                    if self.sftp.is_some() {
                        return invalid(format!(
                            "hosts.{name}.keys[{i}] is also a key of host {other}: with [sftp] (bento's own SFTP server) the key tells the host, so each host needs a key of its own"
                        ));
                    }
                }
            }
        }
        if let Some(sftp) = &self.sftp {
            if sftp.max_log_files == 0
                || sftp.max_log_bytes == 0
                || sftp.max_connections == 0
                || sftp.max_connections_per_host == 0
            {
                return invalid(
                    "sftp: max_log_bytes, max_log_files, max_connections and max_connections_per_host must be at least 1"
                        .into(),
                );
            }
        }
        for (key, u) in [
            ("default_user", &self.default_user),
            ("publish_user", &self.publish_user),
        ] {
            if let Some(u) = u.as_deref().filter(|u| !valid_user_name(u)) {
                return invalid(format!("{key} {u:?} is not a valid user name"));
            }
        }
        Ok(())
    }

    pub fn host(&self, host: &HostName) -> HostSettings {
        self.hosts.get(host).cloned().unwrap_or_default()
    }

    /// The system user of a host in the chroot (owner of its `logs/`).
    pub fn host_user(&self, host: &HostName) -> String {
        self.hosts
            .get(host)
            .and_then(|h| h.user.clone())
            .or_else(|| self.default_user.clone())
            .unwrap_or_else(|| host.to_string())
    }

    /// Parses the original tool's `config.sh` without running it: `KEY=value` lines,
    /// optionally quoted, optionally `export`ed; anything else is ignored.
    pub fn from_legacy_config_sh(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut vars = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            let line = line.strip_prefix("export ").unwrap_or(line);
            if line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                continue;
            }
            let v = v.split(" #").next().unwrap_or("").trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            vars.insert(k.to_owned(), v.to_owned());
        }
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let chroot = vars
            .get("CHROOT_DIR")
            .filter(|v| !v.is_empty())
            .ok_or_else(|| invalid("CHROOT_DIR is not set".into()))?;
        let mut s = Settings::with_chroot(PathBuf::from(chroot));
        if let Some(v) = vars.get("REMOTE_IP") {
            s.remote = v.clone();
        }
        if let Some(v) = vars.get("REMOTE_PORT").filter(|v| !v.is_empty()) {
            s.remote_port = v
                .parse()
                .map_err(|_| invalid(format!("REMOTE_PORT {v:?} is not a port number")))?;
        }
        if let Some(v) = vars.get("TIMEOUT").filter(|v| !v.is_empty()) {
            s.timeout = v
                .parse()
                .map_err(|_| invalid(format!("TIMEOUT {v:?} is not a number of seconds")))?;
        }
        if vars.get("NOLOCALBUILD").is_some_and(|v| !v.is_empty()) {
            s.local_build = false;
        }
        s.validate(path)?;
        Ok(s)
    }
}

/// A user name as `useradd` accepts it (and short enough for it).
pub fn valid_user_name(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 32
        && !u.starts_with('-')
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Parses `HH:MM-HH:MM` into minutes since midnight.
pub fn parse_window(w: &str) -> Option<(u16, u16)> {
    let (a, b) = w.split_once('-')?;
    let hm = |s: &str| -> Option<u16> {
        let (h, m) = s.trim().split_once(':')?;
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60).then_some(h * 60 + m)
    };
    Some((hm(a)?, hm(b)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_config_sh_is_read_without_running_it() {
        let s = Settings::from_legacy_config_sh(
            "CHROOT_DIR=\"/home/chroot/\"\nREMOTE_IP=fleet.example\nREMOTE_PORT=2222\nTIMEOUT=5\n# NOLOCALBUILD=1\n$(rm -rf /)\n",
            Path::new("config.sh"),
        )
        .unwrap();
        assert_eq!(s.chroot_dir, PathBuf::from("/home/chroot/"));
        assert_eq!(s.remote, "fleet.example");
        assert_eq!(s.remote_port, 2222);
        assert_eq!(s.timeout, 5);
        assert!(s.local_build);
    }

    #[test]
    fn unknown_keys_and_bad_hosts_are_refused() {
        let p = Path::new("bento.toml");
        let e = Settings::from_toml("chroot_dir = \"/c\"\nchroot_dri = 1\n", p).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = Settings::from_toml("chroot_dir = \"/c\"\n[hosts.\"a/b\"]\n", p).unwrap_err();
        assert!(e.to_string().contains("invalid host name"), "{e}");
        let e = Settings::from_toml("chroot_dir = \"rel\"\n", p).unwrap_err();
        assert!(e.to_string().contains("absolute"), "{e}");
    }

    #[test]
    fn sftp_section_and_host_keys() {
        let p = Path::new("bento.toml");
        let s = Settings::from_toml(
            "chroot_dir = \"/c\"\n[sftp]\nlisten = \"127.0.0.1:2200\"\n[hosts.a]\nkeys = [\"ssh-ed25519 AAAAC3 a@x\"]\n",
            p,
        )
        .unwrap();
        let sftp = s.sftp.unwrap();
        assert_eq!(sftp.listen, "127.0.0.1:2200");
        assert_eq!(sftp.max_log_bytes, 4 << 20);
        let shared = "[hosts.a]\nkeys = [\"ssh-ed25519 AAAAC3\"]\n[hosts.b]\nkeys = [\"ssh-ed25519 AAAAC3 b\"]\n";
        let e =
            Settings::from_toml(&format!("chroot_dir = \"/c\"\n[sftp]\n{shared}"), p).unwrap_err();
        assert!(e.to_string().contains("also a key of host a"), "{e}");
        // Without [sftp] the hosts log in through sshd, as their own users.
        let s = Settings::from_toml(&format!("chroot_dir = \"/c\"\n{shared}"), p).unwrap();
        assert_eq!(s.hosts.len(), 2);
        let e = Settings::from_toml("chroot_dir = \"/c\"\n[hosts.a]\nkeys = [\"AAAAC3\"]\n", p)
            .unwrap_err();
        assert!(e.to_string().contains("not an SSH public key"), "{e}");
        let e =
            Settings::from_toml("chroot_dir = \"/c\"\n[sftp]\nmax_log_files = 0\n", p).unwrap_err();
        assert!(e.to_string().contains("at least 1"), "{e}");
    }

    #[test]
    fn database_password_is_redacted_in_debug() {
        let w = WebSettings {
            database_url: "postgres://bento:hunter2@db/bento".into(),
            ..WebSettings::default()
        };
        assert!(!format!("{w:?}").contains("hunter2"));
    }
}
