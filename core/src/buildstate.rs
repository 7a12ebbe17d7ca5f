//! What the server remembers between builds, in `<bento dir>/.bento/builds.json`:
//! for each host, whether its configuration built the last time it was tried and
//! since when it fails; for each flake directory, the hosts it held when it last
//! evaluated. The CLI and the panel both read it, so a host whose configuration no
//! longer builds shows it everywhere, and a flake that stopped evaluating still
//! counts (and names) every host it holds.
//!
//! Written by the build/deploy pipeline (`deploy::run`) only, under the deploy lock
//! for deploys; a plain `bento build` updates it too. A missing or unreadable file is
//! an empty state: it is a cache of facts the next build establishes again.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Folder of the server's own state inside the bento directory.
pub const STATE_DIR: &str = ".bento";
const FILE: &str = "builds.json";

/// The last build outcome of one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostBuild {
    /// The directory under `hosts/` that holds the host.
    pub dir: String,
    /// When its configuration last built (or evaluated, for a dry build).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_ok: Option<OffsetDateTime>,
    /// Set while it fails: the time of the first failure since the last success.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub failing_since: Option<OffsetDateTime>,
    /// The last failure's message (nix's own `error:` block, with the admin's paths).
    #[serde(default)]
    pub error: Option<String>,
}

impl HostBuild {
    pub fn failing(&self) -> bool {
        self.failing_since.is_some()
    }
}

/// Everything in `builds.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildState {
    #[serde(default)]
    pub hosts: BTreeMap<String, HostBuild>,
    /// Flake directory → the host names it had when it last evaluated.
    #[serde(default)]
    pub dirs: BTreeMap<String, Vec<String>>,
}

impl BuildState {
    pub fn path(bento_root: &Path) -> PathBuf {
        bento_root.join(STATE_DIR).join(FILE)
    }

    /// The state, or an empty one when there is none yet (or it cannot be read).
    pub fn load(bento_root: &Path) -> BuildState {
        fs::read(Self::path(bento_root))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Writes the state atomically (temporary file, fsync, rename).
    pub fn save(&self, bento_root: &Path) -> std::io::Result<()> {
        let path = Self::path(bento_root);
        let dir = path.parent().expect("state file has a directory");
        fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{FILE}.{}", std::process::id()));
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    }

    /// Records a successful build (or evaluation) of `host`.
    pub fn record_ok(&mut self, host: &str, dir: &str, at: OffsetDateTime) {
        self.hosts.insert(
            host.to_owned(),
            HostBuild {
                dir: dir.to_owned(),
                last_ok: Some(at),
                failing_since: None,
                error: None,
            },
        );
    }

    /// Records a failure of `host`; `failing_since` keeps the first failure's time.
    pub fn record_failure(&mut self, host: &str, dir: &str, error: &str, at: OffsetDateTime) {
        let e = self.hosts.entry(host.to_owned()).or_insert(HostBuild {
            dir: dir.to_owned(),
            last_ok: None,
            failing_since: None,
            error: None,
        });
        e.dir = dir.to_owned();
        e.failing_since.get_or_insert(at);
        e.error = Some(error.to_owned());
    }

    /// The host's build record, if it was ever built.
    pub fn host(&self, host: &str) -> Option<&HostBuild> {
        self.hosts.get(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_since_keeps_the_first_failure_and_success_clears_it() {
        let t = |s| OffsetDateTime::from_unix_timestamp(s).unwrap();
        let mut st = BuildState::default();
        st.record_ok("a", "d", t(10));
        st.record_failure("a", "d", "error: one", t(20));
        st.record_failure("a", "d", "error: two", t(30));
        let h = st.host("a").unwrap();
        assert_eq!(h.failing_since, Some(t(20)));
        assert_eq!(h.error.as_deref(), Some("error: two"));
        assert_eq!(h.last_ok, Some(t(10)));
        st.record_ok("a", "d", t(40));
        assert!(!st.host("a").unwrap().failing());
    }

    #[test]
    fn round_trips_through_the_file_and_a_broken_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = BuildState::default();
        st.record_failure("a", "d", "error: x", OffsetDateTime::UNIX_EPOCH);
        st.dirs.insert("d".into(), vec!["a".into(), "b".into()]);
        st.save(dir.path()).unwrap();
        assert_eq!(BuildState::load(dir.path()), st);
        fs::write(BuildState::path(dir.path()), b"{not json").unwrap();
        assert_eq!(BuildState::load(dir.path()), BuildState::default());
    }
}
