//! The NixOS version of a system, as people know it ("NixOS 24.11"), read from
//! the `nixos-version` file of its toplevel in the Nix store. The agent names
//! systems by store path basename; the file is immutable once the path exists,
//! so what was read is kept.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bento_core::agent_proto::AgentStatus;
use time::{Date, Month};

/// Where the store is unless `NIX_STORE_DIR` says otherwise (as for nix itself).
pub const DEFAULT_STORE: &str = "/nix/store";
/// The longest `nixos-version` file read; a real one is about 30 bytes.
const MAX_LEN: u64 = 256;
/// How many systems are remembered (the agent keeps a short history).
const CAPACITY: usize = 256;

/// One system's NixOS version, parsed from its `nixos-version` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NixosVersion {
    /// The whole line, e.g. "24.11.20241231.edf04b7".
    pub full: String,
    /// The release people name, e.g. "24.11".
    pub release: String,
    /// The date of the nixpkgs it was built from, when the version carries it
    /// (flake builds: `YY.MM.YYYYMMDD.rev`).
    pub date: Option<Date>,
}

impl NixosVersion {
    /// Parses the first line of a `nixos-version` file; `None` for an empty or
    /// unprintable one.
    pub fn parse(text: &str) -> Option<NixosVersion> {
        let full = text.lines().next()?.trim();
        if full.is_empty() || full.len() > MAX_LEN as usize || full.chars().any(char::is_control) {
            return None;
        }
        let mut parts = full.split('.');
        let major = parts.next().unwrap_or(full);
        let release = match parts.next() {
            Some(minor) => {
                // "24.11pre675544" is a pre-release of 24.11.
                let digits: String = minor.chars().take_while(char::is_ascii_digit).collect();
                let pre = minor[digits.len()..].starts_with("pre");
                let base = format!("{major}.{digits}");
                if pre {
                    format!("{base} pre-release")
                } else {
                    base
                }
            }
            None => major.to_owned(),
        };
        // The date part may follow "pre" ("25.05pre20250103.a1b2c3d").
        let date = full
            .split('.')
            .find_map(|p| parse_yyyymmdd(p.rsplit("pre").next().unwrap_or(p)));
        Some(NixosVersion {
            full: full.to_owned(),
            release,
            date,
        })
    }

    /// "NixOS 24.11 (31 December 2024)"; without a date in the version, the
    /// `installed` date stands in ("NixOS 24.11, installed 3 March 2026").
    pub fn label(&self, installed: Option<Date>) -> String {
        match (self.date, installed) {
            (Some(d), _) => format!("NixOS {} ({})", self.release, long_date(d)),
            (None, Some(d)) => format!("NixOS {}, installed {}", self.release, long_date(d)),
            (None, None) => format!("NixOS {}", self.release),
        }
    }
}

/// "31 December 2024".
pub fn long_date(d: Date) -> String {
    format!("{} {} {}", d.day(), d.month(), d.year())
}

fn parse_yyyymmdd(s: &str) -> Option<Date> {
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i32 = s[..4].parse().ok()?;
    let month: u8 = s[4..6].parse().ok()?;
    let day: u8 = s[6..].parse().ok()?;
    if !(1970..=2999).contains(&year) {
        return None;
    }
    Date::from_calendar_date(year, Month::try_from(month).ok()?, day).ok()
}

/// The NixOS versions of the systems the agent names, by store path basename.
#[derive(Debug, Clone)]
pub struct Versions {
    store: PathBuf,
    known: HashMap<String, Option<NixosVersion>>,
}

impl Default for Versions {
    /// Nothing known yet, to be read from `/nix/store`.
    fn default() -> Versions {
        Versions::in_store(DEFAULT_STORE)
    }
}

impl Versions {
    /// Reads from `store` (the Nix store directory).
    pub fn in_store(store: impl Into<PathBuf>) -> Versions {
        Versions {
            store: store.into(),
            known: HashMap::new(),
        }
    }

    /// The store nix uses: `$NIX_STORE_DIR`, else `/nix/store`.
    pub fn from_env() -> Versions {
        Versions::in_store(
            std::env::var_os("NIX_STORE_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STORE)),
        )
    }

    /// The version of `system` (a store path basename), if it was learned.
    pub fn get(&self, system: &str) -> Option<&NixosVersion> {
        self.known.get(system)?.as_ref()
    }

    /// Records a version without reading the store (tests, and callers that
    /// know it otherwise).
    pub fn insert(&mut self, system: &str, v: NixosVersion) {
        self.known.insert(system.to_owned(), Some(v));
    }

    /// Reads the versions of the running system and of every system in the
    /// history that is not known yet. A system whose file is missing (not NixOS,
    /// or already collected) is remembered as unknown.
    pub fn learn(&mut self, status: &AgentStatus) {
        let names = status
            .system
            .iter()
            .chain(status.history.iter().filter_map(|r| r.system.as_ref()))
            .chain(status.last_update.iter().filter_map(|r| r.system.as_ref()));
        for name in names {
            if self.known.contains_key(name) {
                continue;
            }
            if self.known.len() >= CAPACITY {
                self.known.clear();
            }
            let v = read(&self.store, name);
            self.known.insert(name.clone(), v);
        }
    }
}

fn read(store: &Path, name: &str) -> Option<NixosVersion> {
    // The name comes from the agent; it must stay one entry of the store.
    if name.is_empty() || name.starts_with('.') || name.contains('/') {
        tracing::warn!("ignoring a system name that is no store path basename: {name:?}");
        return None;
    }
    let path = store.join(name).join("nixos-version");
    let read = std::fs::File::open(&path).and_then(|f| {
        use std::io::Read;
        let mut s = String::new();
        f.take(MAX_LEN).read_to_string(&mut s)?;
        Ok(s)
    });
    match read {
        Ok(text) => NixosVersion::parse(&text),
        Err(e) => {
            tracing::debug!("no NixOS version at {}: {e}", path.display());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn versions_read_like_nixos_names_them() {
        let v = NixosVersion::parse("24.11.20241231.edf04b7\n").unwrap();
        assert_eq!(
            (v.release.as_str(), v.date),
            ("24.11", Some(date!(2024 - 12 - 31)))
        );
        assert_eq!(v.label(None), "NixOS 24.11 (31 December 2024)");
        let pre = NixosVersion::parse("25.05pre20250103.a1b2c3d").unwrap();
        assert_eq!(pre.release, "25.05 pre-release");
        assert_eq!(pre.date, Some(date!(2025 - 01 - 03)));
        // A channel build has a revision count, not a date.
        let chan = NixosVersion::parse("23.05.4567.0123abc").unwrap();
        assert_eq!(chan.date, None);
        assert_eq!(
            chan.label(Some(date!(2026 - 03 - 03))),
            "NixOS 23.05, installed 3 March 2026"
        );
        assert_eq!(NixosVersion::parse("2").unwrap().label(None), "NixOS 2");
        assert_eq!(NixosVersion::parse(""), None);
        assert_eq!(NixosVersion::parse("24.11\u{1b}[31m"), None);
    }

    #[test]
    fn learns_from_the_store_and_refuses_paths_outside_it() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("aaaa-nixos-system-ws1-24.11");
        std::fs::create_dir_all(&sys).unwrap();
        std::fs::write(sys.join("nixos-version"), "24.11.20241231.edf04b7\n").unwrap();
        std::fs::write(dir.path().join("nixos-version"), "6.6.6").unwrap();
        assert_eq!(
            read(dir.path(), "aaaa-nixos-system-ws1-24.11")
                .unwrap()
                .release,
            "24.11"
        );
        assert_eq!(read(dir.path(), ".."), None);
        assert_eq!(read(dir.path(), "a/../.."), None);
        assert_eq!(read(dir.path(), "missing"), None);
    }
}
