//! Whether each host's configuration still builds, as the pages and the API show
//! it: core's [`BuildState`] (`.bento/builds.json`), written by every build and
//! deploy — the panel's jobs and `bento build`/`bento deploy` alike.
//!
//! The file is read again only when it changed (its size, time or inode: it is
//! replaced by a rename), so a page costs one `stat`, and a build run from the
//! command line shows at the next page load without the panel being told.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bento_core::buildstate::{BuildState, HostBuild};

use super::views;

/// What identifies one version of the file.
type Stamp = (Option<SystemTime>, u64, u64);

#[derive(Default)]
pub struct Builds {
    cached: Mutex<Option<(Option<Stamp>, Arc<BuildState>)>>,
}

impl Builds {
    /// The build state of the bento directory at `bento_root`, as it is now.
    pub fn get(&self, bento_root: &Path) -> Arc<BuildState> {
        let path = BuildState::path(bento_root);
        let stamp = std::fs::metadata(&path)
            .ok()
            .map(|m| (m.modified().ok(), m.len(), m.ino()));
        let mut c = self.cached.lock().expect("build state cache");
        if let Some((s, st)) = c.as_ref() {
            if *s == stamp {
                return st.clone();
            }
        }
        let st = Arc::new(if stamp.is_some() {
            BuildState::load(bento_root)
        } else {
            BuildState::default()
        });
        *c = Some((stamp, st.clone()));
        st
    }
}

/// A host whose configuration does not build, as the pages say it.
pub struct Failure {
    /// `14:03 UTC`: for "does not build since …".
    pub since: String,
    /// The full time, for titles.
    pub since_full: String,
    pub ago: String,
    /// nix's message, as written (several lines).
    pub error: String,
    /// Its first line, for a tooltip.
    pub first_line: String,
    /// "2024-05-01 12:03:04 UTC (3d 2h ago)", or "never (since the panel knows)".
    pub last_ok: String,
}

impl Failure {
    pub fn of(b: &HostBuild, now: SystemTime) -> Option<Failure> {
        let since = b.failing_since?;
        let error = b
            .error
            .clone()
            .unwrap_or_else(|| "(no message recorded)".into());
        Some(Failure {
            since: views::since(since, now),
            since_full: views::full_time(Some(since)),
            ago: views::ago(Some(since), now),
            first_line: views::clip(error.lines().next().unwrap_or(""), 200),
            error,
            last_ok: match b.last_ok {
                Some(t) => format!(
                    "{} ({})",
                    views::full_time(Some(t)),
                    views::ago(Some(t), now)
                ),
                None => "none recorded".into(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;

    #[test]
    fn a_rewritten_file_is_read_again_and_an_unchanged_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let b = Builds::default();
        assert!(b.get(dir.path()).hosts.is_empty());
        let mut st = BuildState::default();
        st.record_failure("web1", "web1", "error: x", OffsetDateTime::now_utc());
        st.save(dir.path()).unwrap();
        let first = b.get(dir.path());
        assert!(first.host("web1").unwrap().failing());
        assert!(Arc::ptr_eq(&first, &b.get(dir.path())), "read twice");
        st.record_ok("web1", "web1", OffsetDateTime::now_utc());
        st.save(dir.path()).unwrap();
        assert!(!b.get(dir.path()).host("web1").unwrap().failing());
        std::fs::remove_file(BuildState::path(dir.path())).unwrap();
        assert!(b.get(dir.path()).hosts.is_empty());
    }
}
