//! The small state file that remembers which events were already notified, so a
//! tray restart (or a new login) does not repeat them.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const FILE_NAME: &str = "notified.json";

#[derive(Serialize, Deserialize)]
struct OnDisk {
    /// Keys of notified events (see `model::Decider`), oldest first.
    notified: Vec<String>,
}

/// `<dir>/notified.json`.
#[derive(Debug, Clone)]
pub struct SeenFile {
    path: PathBuf,
}

impl SeenFile {
    pub fn in_dir(dir: &Path) -> SeenFile {
        SeenFile {
            path: dir.join(FILE_NAME),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The keys saved last time; none when the file is missing or unreadable (a
    /// damaged file costs at most one repeated notification, so it is not fatal).
    pub fn load(&self) -> Vec<String> {
        match std::fs::read(&self.path) {
            Ok(bytes) => match serde_json::from_slice::<OnDisk>(&bytes) {
                Ok(d) => d.notified,
                Err(e) => {
                    tracing::warn!("ignoring {}: {e}", self.path.display());
                    Vec::new()
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::warn!("cannot read {}: {e}", self.path.display());
                Vec::new()
            }
        }
    }

    /// Replaces the file atomically (write beside it, then rename).
    pub fn save<'a>(&self, keys: impl Iterator<Item = &'a str>) -> io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let body = serde_json::to_vec_pretty(&OnDisk {
            notified: keys.map(str::to_owned).collect(),
        })
        .map_err(io::Error::other)?;
        let tmp = dir.join(format!(".{FILE_NAME}.{}", std::process::id()));
        std::fs::write(&tmp, body)?;
        std::fs::rename(&tmp, &self.path)
    }
}

/// `$XDG_STATE_HOME/bento-tray`, else `~/.local/state/bento-tray`.
pub fn default_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(base.join("bento-tray"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let f = SeenFile::in_dir(&dir.path().join("sub"));
        assert!(f.load().is_empty());
        f.save(["a", "b"].into_iter()).unwrap();
        assert_eq!(f.load(), ["a", "b"]);
        std::fs::write(f.path(), "{oops").unwrap();
        assert!(f.load().is_empty());
    }
}
