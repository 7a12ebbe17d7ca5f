//! The agent's settings: `/etc/bento/agent.toml` (or `--config`), every key also a
//! flag. Unknown keys are refused, so a typo never silently falls back to a default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bento_core::activate::{BOOTED_SYSTEM, SYSTEM_PROFILE};
use bento_core::config::{parse_window, RebootMode, RebootPolicy};
use bento_core::HostName;
use serde::Deserialize;

pub const DEFAULT_CONFIG: &str = "/etc/bento/agent.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/bento";
pub const DEFAULT_RUNTIME_DIR: &str = "/run/bento";

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{0}")]
    Missing(String),
}

/// Keys of the settings file; each is also a flag (`--server`, `--state-dir`, ...).
/// List-valued keys take repeated flags (`--ssh-option A --ssh-option B`).
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct SettingsFile {
    /// Host name or address of the bento server (as ssh understands it: a
    /// `~/.ssh/config` alias works).
    #[arg(long, global = true)]
    pub server: Option<String>,
    /// SSH port (default: whatever ssh's configuration says, usually 22).
    #[arg(long, global = true)]
    pub port: Option<u16>,
    /// Login on the server (default: the host name).
    #[arg(long, global = true)]
    pub user: Option<String>,
    /// This host's name in the fleet (default: the machine's host name).
    #[arg(long, global = true)]
    pub host: Option<String>,
    /// Private key for the server (default: ssh's own choice).
    #[arg(long, global = true)]
    pub identity_file: Option<PathBuf>,
    /// Extra `-o` options for ssh (`ProxyCommand=...`, `UserKnownHostsFile=...`).
    #[arg(long = "ssh-option", global = true)]
    #[serde(default)]
    pub ssh_options: Vec<String>,
    /// Connection and per-request timeout, in seconds (default 20).
    #[arg(long, global = true)]
    pub timeout: Option<u64>,
    /// Seconds between polls in daemon mode (default 300).
    #[arg(long, global = true)]
    pub interval: Option<u64>,
    /// Up to this many random seconds added to each interval (default 30).
    #[arg(long, global = true)]
    pub jitter: Option<u64>,
    /// Daemon: between polls, keep the SFTP session open and watch the published
    /// revision: with `bento sftp` its held watch tells a release at once; other
    /// servers are asked every this many seconds (default 5; 0 = only poll on
    /// `interval`, no session kept). A dropped session is opened again after
    /// this long, doubling up to 5 minutes, each wait spread over its second half.
    #[arg(long, global = true)]
    pub watch_interval: Option<u64>,
    #[arg(long, global = true)]
    pub state_dir: Option<PathBuf>,
    #[arg(long, global = true)]
    pub runtime_dir: Option<PathBuf>,
    #[arg(long, global = true)]
    pub system_profile: Option<PathBuf>,
    #[arg(long, global = true)]
    pub booted_system: Option<PathBuf>,
    /// Command run to reboot (file: a list; flag: words separated by spaces).
    #[arg(skip)]
    pub reboot_command: Option<Vec<String>>,
    #[arg(long = "reboot-command", global = true)]
    #[serde(skip)]
    pub reboot_command_flag: Option<String>,
    /// `[reboot]`: mode = "never" | "window" | "immediately", window = "HH:MM-HH:MM",
    /// max_postpone_secs.
    #[arg(skip)]
    pub reboot: Option<RebootPolicy>,
    #[arg(long = "reboot-mode", global = true, value_parser = parse_mode)]
    #[serde(skip)]
    pub reboot_mode_flag: Option<RebootMode>,
    #[arg(long = "reboot-window", global = true)]
    #[serde(skip)]
    pub reboot_window_flag: Option<String>,
    /// Seconds between announcing a reboot and doing it, in daemon mode (default 300).
    #[arg(long, global = true)]
    pub reboot_grace: Option<u64>,
    /// Update the flake inputs locally when no new release came (as `SELF_UPDATE`).
    #[arg(long, global = true)]
    pub self_update: Option<bool>,
    /// Seconds between two self-updates (default 86400).
    #[arg(long, global = true)]
    pub self_update_interval: Option<u64>,
    /// Extra arguments for nix (`--fallback`, `--option substituters ...`).
    #[arg(long = "nix-arg", global = true, allow_hyphen_values = true)]
    #[serde(default)]
    pub nix_args: Vec<String>,
    /// `-I` entries for non-flake builds (`nixpkgs=/path`); default: `NIX_PATH`.
    #[arg(long = "nix-path", global = true)]
    #[serde(default)]
    pub nix_path: Vec<String>,
    /// Commands that must succeed after an activation (file: list of argument lists;
    /// flag: words separated by spaces, repeatable).
    #[arg(skip)]
    pub health_checks: Option<Vec<Vec<String>>>,
    #[arg(long = "health-check", global = true)]
    #[serde(skip)]
    pub health_check_flags: Vec<String>,
    /// Seconds each health check may take (default 60).
    #[arg(long, global = true)]
    pub health_check_timeout: Option<u64>,
    /// Group whose members (besides root) may ask for `check-now` and `postpone-reboot`.
    #[arg(long, global = true)]
    pub socket_group: Option<String>,
    /// Where secrets go by default (`<secrets_dir>/<NAME>`; default /run/bento/secrets).
    #[arg(long, global = true)]
    pub secrets_dir: Option<PathBuf>,
    /// Private key that decrypts the host's secrets (default: `identity_file`), e.g.
    /// /etc/ssh/ssh_host_ed25519_key.
    #[arg(long, global = true)]
    pub secret_identity: Option<PathBuf>,
    /// Command that restarts a unit after its secret changed; the unit is appended
    /// (file: a list; flag: words separated by spaces; default `systemctl restart`).
    #[arg(skip)]
    pub restart_command: Option<Vec<String>>,
    #[arg(long = "restart-command", global = true)]
    #[serde(skip)]
    pub restart_command_flag: Option<String>,
    /// The fleet's public signing keys (`name:base64`, as `bento check-config` prints):
    /// manifests and closures must be signed by one of them.
    #[arg(long = "trusted-public-key", global = true)]
    #[serde(default)]
    pub trusted_public_keys: Vec<String>,
    /// How the system is obtained: "fallback" (fetch the server's closure when the
    /// release has one, else build), "never" (never build: a release without a
    /// closure is refused) or "always" (always build locally).
    #[arg(long, global = true, value_parser = parse_build)]
    pub build: Option<BuildPolicy>,
    /// Where downloaded NARs wait for their import (default `<state_dir>/nar-cache`).
    #[arg(long, global = true)]
    pub nar_cache_dir: Option<PathBuf>,
}

/// The `build` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildPolicy {
    #[default]
    Fallback,
    Never,
    Always,
}

fn parse_build(s: &str) -> Result<BuildPolicy, String> {
    match s {
        "fallback" => Ok(BuildPolicy::Fallback),
        "never" => Ok(BuildPolicy::Never),
        "always" => Ok(BuildPolicy::Always),
        _ => Err(format!("{s:?}: expected fallback, never or always")),
    }
}

fn parse_mode(s: &str) -> Result<RebootMode, String> {
    match s {
        "never" => Ok(RebootMode::Never),
        "window" => Ok(RebootMode::Window),
        "immediately" => Ok(RebootMode::Immediately),
        _ => Err(format!("{s:?}: expected never, window or immediately")),
    }
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: String,
    pub port: Option<u16>,
    pub user: String,
    pub host: HostName,
    pub identity_file: Option<PathBuf>,
    pub ssh_options: Vec<String>,
    pub timeout: Duration,
    pub interval: Duration,
    pub jitter: Duration,
    /// Zero: no watching between polls.
    pub watch_interval: Duration,
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
    pub system_profile: PathBuf,
    pub booted_system: PathBuf,
    pub reboot_command: Vec<String>,
    pub reboot: RebootPolicy,
    pub reboot_grace: Duration,
    pub self_update: bool,
    pub self_update_interval: Duration,
    pub nix_args: Vec<String>,
    pub nix_path: Vec<String>,
    pub health_checks: Vec<Vec<String>>,
    pub health_check_timeout: Duration,
    pub socket_group: Option<String>,
    pub secrets_dir: PathBuf,
    /// Decrypts the secrets: `secret_identity`, else `identity_file`.
    pub secret_identity: Option<PathBuf>,
    pub restart_command: Vec<String>,
    pub trusted_public_keys: Vec<bento_core::signing::PublicKey>,
    pub build: BuildPolicy,
    pub nar_cache_dir: PathBuf,
}

impl SettingsFile {
    /// Reads a settings file; unknown keys are errors.
    pub fn read(path: &Path) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, SettingsError> {
        toml::from_str(text).map_err(|e| SettingsError::Invalid {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })
    }

    /// The file's settings with the flags' on top.
    pub fn merged(mut self, flags: &SettingsFile) -> SettingsFile {
        let f = flags.clone();
        macro_rules! take {
            ($($field:ident),*) => { $( if f.$field.is_some() { self.$field = f.$field; } )* };
        }
        take!(
            server,
            port,
            user,
            host,
            identity_file,
            timeout,
            interval,
            jitter,
            watch_interval,
            state_dir,
            runtime_dir,
            system_profile,
            booted_system,
            reboot_grace,
            self_update,
            self_update_interval,
            health_check_timeout,
            socket_group,
            secrets_dir,
            secret_identity,
            build,
            nar_cache_dir
        );
        macro_rules! take_list {
            ($($field:ident),*) => { $( if !f.$field.is_empty() { self.$field = f.$field; } )* };
        }
        take_list!(ssh_options, nix_args, nix_path, trusted_public_keys);
        if let Some(c) = f.restart_command_flag {
            self.restart_command = Some(words(&c));
        }
        if let Some(c) = f.reboot_command_flag {
            self.reboot_command = Some(words(&c));
        }
        if !f.health_check_flags.is_empty() {
            self.health_checks = Some(f.health_check_flags.iter().map(|c| words(c)).collect());
        }
        if f.reboot_mode_flag.is_some() || f.reboot_window_flag.is_some() {
            let mut p = self.reboot.take().unwrap_or_default();
            if let Some(m) = f.reboot_mode_flag {
                p.mode = m;
            }
            if let Some(w) = f.reboot_window_flag {
                p.window = Some(w);
            }
            self.reboot = Some(p);
        }
        self
    }

    /// Checks and fills in defaults. `origin` names where the settings came from.
    pub fn resolve(self, origin: &Path) -> Result<Config, SettingsError> {
        let invalid = |message: String| SettingsError::Invalid {
            path: origin.to_owned(),
            message,
        };
        let server = self
            .server
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| {
                SettingsError::Missing(format!(
                    "no server configured: set `server = \"...\"` in {} or pass --server",
                    origin.display()
                ))
            })?;
        if server.starts_with('-') || server.contains(char::is_whitespace) {
            return Err(invalid(format!("server {server:?} is not a host name")));
        }
        let host_name = match self.host {
            Some(h) => h,
            None => machine_hostname().ok_or_else(|| {
                SettingsError::Missing("cannot tell this machine's host name: set `host`".into())
            })?,
        };
        let host = HostName::new(&host_name).map_err(|e| invalid(format!("host: {e}")))?;
        let user = self.user.unwrap_or_else(|| host.to_string());
        if !bento_core::config::valid_user_name(&user) {
            return Err(invalid(format!("user {user:?} is not a valid user name")));
        }
        for o in &self.ssh_options {
            if !o.contains('=') && !o.contains(' ') {
                return Err(invalid(format!(
                    "ssh_options entry {o:?} is not an ssh option (expected Key=value)"
                )));
            }
        }
        let reboot = self.reboot.unwrap_or_default();
        if reboot.mode == RebootMode::Window
            && reboot.window.as_deref().and_then(parse_window).is_none()
        {
            return Err(invalid(
                "reboot: mode \"window\" needs window = \"HH:MM-HH:MM\"".into(),
            ));
        }
        let reboot_command = self
            .reboot_command
            .unwrap_or_else(|| vec!["systemctl".into(), "reboot".into()]);
        if reboot_command.is_empty() || reboot_command[0].is_empty() {
            return Err(invalid("reboot_command must not be empty".into()));
        }
        let restart_command = self
            .restart_command
            .unwrap_or_else(|| vec!["systemctl".into(), "restart".into()]);
        if restart_command.is_empty() || restart_command[0].is_empty() {
            return Err(invalid("restart_command must not be empty".into()));
        }
        let health_checks = self.health_checks.unwrap_or_default();
        if health_checks
            .iter()
            .any(|c| c.is_empty() || c[0].is_empty())
        {
            return Err(invalid("health_checks: every check needs a program".into()));
        }
        let secs = Duration::from_secs;
        let timeout = self.timeout.unwrap_or(20);
        if timeout == 0 {
            return Err(invalid("timeout must be at least 1 second".into()));
        }
        let interval = self.interval.unwrap_or(300);
        if interval == 0 {
            return Err(invalid("interval must be at least 1 second".into()));
        }
        let abs = |name: &str, p: PathBuf| -> Result<PathBuf, SettingsError> {
            if p.is_absolute() {
                Ok(p)
            } else {
                Err(invalid(format!(
                    "{name} must be an absolute path, not {p:?}"
                )))
            }
        };
        if let Some(g) = &self.socket_group {
            if !bento_core::config::valid_user_name(g) {
                return Err(invalid(format!("socket_group {g:?} is not a group name")));
            }
        }
        let trusted_public_keys = self
            .trusted_public_keys
            .iter()
            .map(|k| {
                bento_core::signing::PublicKey::parse(k)
                    .map_err(|e| invalid(format!("trusted_public_keys: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let state_dir = abs(
            "state_dir",
            self.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
        )?;
        let nar_cache_dir = abs(
            "nar_cache_dir",
            self.nar_cache_dir
                .unwrap_or_else(|| state_dir.join("nar-cache")),
        )?;
        Ok(Config {
            server,
            port: self.port,
            user,
            host,
            secret_identity: self.secret_identity.or_else(|| self.identity_file.clone()),
            identity_file: self.identity_file,
            ssh_options: self.ssh_options,
            timeout: secs(timeout),
            interval: secs(interval),
            jitter: secs(self.jitter.unwrap_or(30)),
            watch_interval: secs(self.watch_interval.unwrap_or(5)),
            state_dir,
            runtime_dir: abs(
                "runtime_dir",
                self.runtime_dir
                    .unwrap_or_else(|| DEFAULT_RUNTIME_DIR.into()),
            )?,
            system_profile: abs(
                "system_profile",
                self.system_profile.unwrap_or_else(|| SYSTEM_PROFILE.into()),
            )?,
            booted_system: abs(
                "booted_system",
                self.booted_system.unwrap_or_else(|| BOOTED_SYSTEM.into()),
            )?,
            reboot_command,
            reboot,
            reboot_grace: secs(self.reboot_grace.unwrap_or(300)),
            self_update: self.self_update.unwrap_or(false),
            self_update_interval: secs(self.self_update_interval.unwrap_or(86400)),
            nix_args: self.nix_args,
            nix_path: self.nix_path,
            health_checks,
            health_check_timeout: secs(self.health_check_timeout.unwrap_or(60)),
            socket_group: self.socket_group,
            secrets_dir: abs(
                "secrets_dir",
                self.secrets_dir
                    .unwrap_or_else(|| crate::secrets::DEFAULT_SECRETS_DIR.into()),
            )?,
            restart_command,
            trusted_public_keys,
            build: self.build.unwrap_or_default(),
            nar_cache_dir,
        })
    }
}

/// Splits a flag value into words (no quoting: flags are for simple commands; the
/// settings file takes lists).
fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

fn machine_hostname() -> Option<String> {
    let h = nix::unistd::gethostname().ok()?.into_string().ok()?;
    // A fully qualified name: the fleet knows the host by its first label.
    let short = h.split('.').next().unwrap_or("").to_owned();
    (!short.is_empty()).then_some(short)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, SettingsError> {
        SettingsFile::parse(text, Path::new("agent.toml"))?.resolve(Path::new("agent.toml"))
    }

    #[test]
    fn defaults_and_unknown_keys() {
        let c = parse("server = \"fleet.example\"\nhost = \"web1\"\n").unwrap();
        assert_eq!(c.user, "web1");
        assert_eq!(c.interval, Duration::from_secs(300));
        assert_eq!(c.reboot_command, ["systemctl", "reboot"]);
        assert_eq!(c.system_profile, Path::new(SYSTEM_PROFILE));
        let e = parse("server = \"x\"\nhost = \"w\"\nintervall = 3\n").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = parse("host = \"w\"\n").unwrap_err();
        assert!(e.to_string().contains("no server"), "{e}");
        let e = parse("server = \"x\"\nhost = \"w\"\n[reboot]\nmode = \"window\"\n").unwrap_err();
        assert!(e.to_string().contains("HH:MM"), "{e}");
        let e = parse("server = \"-oProxyCommand=x\"\nhost = \"w\"\n").unwrap_err();
        assert!(e.to_string().contains("not a host name"), "{e}");
    }

    #[test]
    fn flags_override_the_file() {
        let file = SettingsFile::parse(
            "server = \"a\"\nhost = \"w\"\nnix_args = [\"--fallback\"]\nhealth_checks = [[\"true\"]]\n",
            Path::new("f"),
        )
        .unwrap();
        let flags = SettingsFile {
            server: Some("b".into()),
            health_check_flags: vec!["systemctl is-system-running".into()],
            reboot_mode_flag: Some(RebootMode::Immediately),
            ..Default::default()
        };
        let c = file.merged(&flags).resolve(Path::new("f")).unwrap();
        assert_eq!(c.server, "b");
        assert_eq!(c.nix_args, ["--fallback"]);
        assert_eq!(c.health_checks, [["systemctl", "is-system-running"]]);
        assert_eq!(c.reboot.mode, RebootMode::Immediately);
    }
}
