//! The bento directory: settings plus `hosts/<dir>/` (flake or non-flake) and `utils/`.

use std::fs;
use std::path::{Path, PathBuf};

use crate::config::{ConfigError, Settings, CONFIG_FILE, LEGACY_CONFIG_FILE};

/// File taken as a lock by `bento deploy` (and the panel's jobs): one deploy at a time.
pub const LOCK_FILE: &str = ".bento.lock";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// `flake.nix`: each `nixosConfigurations.<name>` is a host.
    Flake,
    /// `configuration.nix`: the directory name is the host.
    NonFlake,
}

/// A directory under `hosts/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDir {
    pub dir_name: String,
    pub path: PathBuf,
    pub kind: HostKind,
}

#[derive(Debug, Clone)]
pub struct BentoDir {
    pub root: PathBuf,
    pub settings: Settings,
    /// Read from the original tool's `config.sh`.
    pub legacy: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another bento deploy is running in {0} (lock {LOCK_FILE} is held); wait for it to finish"
    )]
    Busy(PathBuf),
    #[error("cannot take the deploy lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Held while a deploy runs; released on drop (and by the kernel if the process dies).
#[derive(Debug)]
pub struct DeployLock {
    _file: fs::File,
}

impl BentoDir {
    /// Opens a bento directory: `bento.toml` if present, else the original `config.sh`.
    pub fn open(root: &Path) -> Result<Self, ConfigError> {
        let root = fs::canonicalize(root).map_err(|source| ConfigError::Read {
            path: root.to_owned(),
            source,
        })?;
        let toml_path = root.join(CONFIG_FILE);
        let legacy_path = root.join(LEGACY_CONFIG_FILE);
        let read = |p: &Path| {
            fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_owned(),
                source,
            })
        };
        let (settings, legacy) = if toml_path.exists() {
            (Settings::from_toml(&read(&toml_path)?, &toml_path)?, false)
        } else if legacy_path.exists() {
            (
                Settings::from_legacy_config_sh(&read(&legacy_path)?, &legacy_path)?,
                true,
            )
        } else {
            return Err(ConfigError::NotABentoDir { dir: root });
        };
        if !root.join("hosts").is_dir() {
            return Err(ConfigError::NotABentoDir { dir: root });
        }
        Ok(BentoDir {
            root,
            settings,
            legacy,
        })
    }

    /// The fleet's signing key (secret half), `signing_key` in `bento.toml`.
    pub fn signing_key_path(&self) -> PathBuf {
        self.root.join(&self.settings.signing_key)
    }

    pub fn hosts_dir(&self) -> PathBuf {
        self.root.join("hosts")
    }

    /// Every host directory, sorted. Directories with neither `flake.nix` nor
    /// `configuration.nix` are returned as errors by name so the caller can warn.
    pub fn host_dirs(&self) -> std::io::Result<(Vec<HostDir>, Vec<String>)> {
        let mut dirs = Vec::new();
        let mut unusable = Vec::new();
        let mut entries: Vec<_> = fs::read_dir(self.hosts_dir())?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for ent in entries {
            let path = ent.path();
            if !path.is_dir() {
                continue;
            }
            let Some(name) = ent.file_name().to_str().map(str::to_owned) else {
                unusable.push(ent.file_name().to_string_lossy().into_owned());
                continue;
            };
            let kind = if path.join("flake.nix").is_file() {
                HostKind::Flake
            } else if path.join("configuration.nix").is_file() {
                HostKind::NonFlake
            } else {
                unusable.push(name);
                continue;
            };
            dirs.push(HostDir {
                dir_name: name,
                path,
                kind,
            });
        }
        Ok((dirs, unusable))
    }

    /// Takes the deploy lock without waiting.
    pub fn try_lock(&self) -> Result<DeployLock, LockError> {
        let path = self.root.join(LOCK_FILE);
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| LockError::Io {
                path: path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(DeployLock { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(LockError::Busy(self.root.clone())),
            Err(fs::TryLockError::Error(source)) => Err(LockError::Io { path, source }),
        }
    }

    /// The panel's database URL with a relative SQLite path made absolute.
    pub fn database_url(&self) -> String {
        let url = &self.settings.web.database_url;
        match url.strip_prefix("sqlite://") {
            Some(p) if !p.starts_with('/') => {
                format!("sqlite://{}", self.root.join(p).display())
            }
            _ => url.clone(),
        }
    }
}
