//! What the held watch ([`bento_core::chroot::WATCH_FILE`]) waits on: one inotify
//! watcher for the whole server, one watch per watched host's `.releases/`, and
//! per host a counter that moves when its `current` is replaced. A session
//! holding a watch read waits on its host's counter, so thousands of idle
//! watching hosts cost nothing until a release is published.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bento_core::chroot::{CURRENT_LINK, RELEASES_DIR};
use bento_core::HostName;
use notify::{RecursiveMode, Watcher};
use tokio::sync::watch;
use tracing::{debug, warn};

struct HostWatch {
    moved: watch::Sender<u64>,
    /// Whether the host's `.releases/` is watched now.
    watched: AtomicBool,
}

impl HostWatch {
    fn bump(&self) {
        self.moved.send_modify(|n| *n = n.wrapping_add(1));
    }
}

type Hosts = Arc<Mutex<HashMap<PathBuf, Arc<HostWatch>>>>;

/// The publications of the hosts that watch.
pub struct Publications {
    chroot_dir: PathBuf,
    /// By the host's `.releases/` path (what inotify's events name).
    hosts: Hosts,
    /// Made at the first watch; `Err` once it could not be (then sessions look
    /// again now and then instead).
    watcher: Mutex<Option<Result<notify::RecommendedWatcher, ()>>>,
}

/// What a session waits on.
pub struct Subscription {
    pub moved: watch::Receiver<u64>,
    /// Whether changes are told: when not, the session looks again now and then.
    pub told: bool,
}

impl Publications {
    pub fn new(chroot_dir: &Path) -> Self {
        Publications {
            chroot_dir: chroot_dir.to_owned(),
            hosts: Arc::default(),
            watcher: Mutex::new(None),
        }
    }

    /// Subscribes to `host`'s publications. Subscribe first, then read
    /// `current`: a change after the subscription is always told.
    pub fn subscribe(&self, host: &HostName) -> Subscription {
        let dir = self.chroot_dir.join(host.as_str()).join(RELEASES_DIR);
        let hw = {
            let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
            hosts
                .entry(dir.clone())
                .or_insert_with(|| {
                    Arc::new(HostWatch {
                        moved: watch::Sender::new(0),
                        watched: AtomicBool::new(false),
                    })
                })
                .clone()
        };
        let moved = hw.moved.subscribe();
        if hw.watched.load(Ordering::Acquire) {
            return Subscription { moved, told: true };
        }
        // Not under `hosts`' lock: the watcher's thread takes it to tell events,
        // and `watch` waits on that thread.
        let mut w = self.watcher.lock().unwrap_or_else(|e| e.into_inner());
        let watcher = w.get_or_insert_with(|| {
            make_watcher(self.hosts.clone()).map_err(|e| {
                warn!(target: "bento::sftp", "cannot watch the chroot for publications ({e}): watching hosts look every few seconds instead");
            })
        });
        let told = match watcher {
            Ok(watcher) => match watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    hw.watched.store(true, Ordering::Release);
                    true
                }
                Err(e) => {
                    debug!(target: "bento::sftp", host = %host, "cannot watch {}: {e}", dir.display());
                    false
                }
            },
            Err(()) => false,
        };
        Subscription { moved, told }
    }
}

fn make_watcher(hosts: Hosts) -> notify::Result<notify::RecommendedWatcher> {
    notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let hosts = hosts.lock().unwrap_or_else(|e| e.into_inner());
        let ev = match ev {
            Ok(ev) if !ev.need_rescan() => ev,
            // Events lost: every watching host looks again.
            _ => {
                hosts.values().for_each(|h| h.bump());
                return;
            }
        };
        for p in &ev.paths {
            if p.file_name().is_some_and(|n| n == CURRENT_LINK) {
                if let Some(h) = p.parent().and_then(|d| hosts.get(d)) {
                    h.bump();
                }
            } else if let Some(h) = hosts.get(p) {
                // `.releases/` itself went or moved: watched again at the next read.
                h.watched.store(false, Ordering::Release);
                h.bump();
            }
        }
    })
}
