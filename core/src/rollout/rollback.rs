//! Rolling a rollout back: each host it published goes back to the revision it
//! had before, republished from the releases the chroot keeps (the same files,
//! the same signed closure: nothing is built). Shared by `bento rollout
//! rollback` and the panel's Rollback button, which then follow it as a
//! one-wave rollout through [`super::driver`].

use std::collections::BTreeMap;
use std::path::Path;

use super::driver::Published;
use super::Wave;
use crate::chroot::Chroot;
use crate::signing::SigningKey;
use crate::HostName;

/// The name of the one wave a rollback publishes.
pub const WAVE_ENTRY: &str = "rollback";

/// One host of the rollout rolled back, as its record says.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: HostName,
    /// What the rollout published to it (`None`: its wave never was).
    pub revision: Option<String>,
    /// What it had before.
    pub previous: Option<String>,
}

/// Which hosts go back, and why the others do not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Host and the revision it goes back to.
    pub to_republish: Vec<(HostName, String)>,
    /// Host and why it is left as it is.
    pub skipped: Vec<(HostName, String)>,
}

impl Plan {
    /// The one wave of the rollback.
    pub fn wave(&self) -> Wave {
        Wave {
            entry: WAVE_ENTRY.to_owned(),
            hosts: self.to_publish_hosts(),
        }
    }

    fn to_publish_hosts(&self) -> Vec<HostName> {
        self.to_republish.iter().map(|(h, _)| h.clone()).collect()
    }
}

fn short(rev: &str) -> &str {
    rev.get(..12).unwrap_or(rev)
}

/// Decides, from the rollout's record and the chroot as it is now, which hosts go
/// back. A host goes back only while the rollout's revision is still its current
/// one (a later deploy is never undone behind the admin's back) and the release
/// it had before is still kept.
pub fn plan(chroot: &Chroot, targets: &[Target]) -> Plan {
    let mut out = Plan::default();
    for t in targets {
        let skip = |why: String| (t.host.clone(), why);
        let Some(revision) = &t.revision else {
            out.skipped.push(skip(
                "its wave was never published: it kept its release".into(),
            ));
            continue;
        };
        let Some(previous) = &t.previous else {
            out.skipped.push(skip(
                "it had no other release before this rollout: nothing to go back to".into(),
            ));
            continue;
        };
        match chroot.current_revision(&t.host) {
            Some(cur) if cur == *previous => {
                out.skipped
                    .push(skip(format!("it is back on {} already", short(previous))));
            }
            Some(cur) if cur != *revision => out.skipped.push(skip(format!(
                "it has {} since (a later deploy): left as it is",
                short(&cur)
            ))),
            None => out
                .skipped
                .push(skip("it has no release in the chroot".into())),
            Some(_) => {
                if chroot
                    .releases_dir(&t.host)
                    .join(previous)
                    .symlink_metadata()
                    .is_ok_and(|m| m.is_dir())
                {
                    out.to_republish.push((t.host.clone(), previous.clone()));
                } else {
                    out.skipped.push(skip(format!(
                        "its release {} is no longer kept in the chroot (keep_releases): deploy the configuration it was built from",
                        short(previous)
                    )));
                }
            }
        }
    }
    out
}

/// The system the kept release `revision` of `host` runs (its manifest's
/// expected system), if it names one.
pub fn system_of(chroot: &Chroot, host: &HostName, revision: &str) -> Option<String> {
    crate::release::Manifest::read_from(&chroot.releases_dir(host).join(revision))
        .ok()?
        .expected_system
}

/// Republishes each host's previous revision, signed with the fleet's key (the
/// key the agents trust), and points `states.txt` at the systems they name.
/// Stops at the first host that cannot be republished (the hosts before it are
/// published, and returned in the error's text).
pub fn republish(
    chroot: &Chroot,
    key_path: &Path,
    to_republish: &[(HostName, String)],
    keep: usize,
) -> Result<Vec<Published>, String> {
    let key = SigningKey::read(key_path).map_err(|e| format!("signing key: {e}"))?;
    let chroot = chroot.clone().with_signer(std::sync::Arc::new(key));
    let mut out = Vec::new();
    let mut states = BTreeMap::new();
    let mut failure = None;
    for (host, revision) in to_republish {
        let published = match chroot.republish(host, revision, keep) {
            Ok(p) => p,
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        };
        let system =
            system_of(&chroot, host, revision).map(|s| crate::nix::store_basename(Path::new(&s)));
        states.insert(host.clone(), system);
        let at = std::fs::metadata(chroot.last_change_path(host))
            .and_then(|m| m.modified())
            .map_err(|e| format!("cannot read the publication time of {host}: {e}"))?;
        out.push(Published {
            host: host.clone(),
            revision: published.revision().to_owned(),
            at,
            previous: match published {
                crate::chroot::Published::New { previous, .. } => previous,
                crate::chroot::Published::Unchanged { .. } => None,
            },
        });
    }
    if !states.is_empty() {
        chroot
            .update_states(&states)
            .map_err(|e| format!("cannot update states.txt: {e}"))?;
    }
    match failure {
        None => Ok(out),
        Some(e) if out.is_empty() => Err(e),
        Some(e) => Err(format!(
            "{e} (already back: {})",
            out.iter()
                .map(|p| p.host.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(n: &str) -> HostName {
        HostName::new(n).unwrap()
    }

    #[test]
    fn only_hosts_still_on_the_rollouts_revision_with_a_kept_previous_go_back() {
        let dir = tempfile::tempdir().unwrap();
        let chroot = Chroot::new(dir.path());
        let mk = |h: &str, current: &str, kept: &[&str]| {
            let rel = chroot.releases_dir(&host(h));
            std::fs::create_dir_all(&rel).unwrap();
            for k in kept {
                std::fs::create_dir_all(rel.join(k)).unwrap();
            }
            std::os::unix::fs::symlink(current, rel.join("current")).unwrap();
        };
        mk("a", "r2", &["r1", "r2"]);
        mk("b", "r3", &["r1", "r2", "r3"]);
        mk("c", "r2", &["r2"]);
        mk("d", "r1", &["r1", "r2"]);
        let t = |h: &str, rev: Option<&str>, prev: Option<&str>| Target {
            host: host(h),
            revision: rev.map(str::to_owned),
            previous: prev.map(str::to_owned),
        };
        let p = plan(
            &chroot,
            &[
                t("a", Some("r2"), Some("r1")),
                t("b", Some("r2"), Some("r1")),
                t("c", Some("r2"), Some("r1")),
                t("d", Some("r2"), Some("r1")),
                t("e", None, None),
                t("f", Some("r2"), None),
            ],
        );
        assert_eq!(p.to_republish, vec![(host("a"), "r1".to_owned())]);
        let why: BTreeMap<_, _> = p.skipped.iter().cloned().collect();
        assert!(why[&host("b")].contains("a later deploy"), "{why:?}");
        assert!(why[&host("c")].contains("no longer kept"), "{why:?}");
        assert!(why[&host("d")].contains("back on r1 already"), "{why:?}");
        assert!(why[&host("e")].contains("never published"), "{why:?}");
        assert!(why[&host("f")].contains("nothing to go back to"), "{why:?}");
        assert_eq!(p.wave().hosts, vec![host("a")]);
        assert_eq!(p.wave().entry, WAVE_ENTRY);
    }
}
