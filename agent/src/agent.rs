//! One poll: connect, read the published revision, and when it is new: download,
//! verify, build, activate, check health (else roll back), report.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bento_core::activate::{self, SwitchAction};
use bento_core::agent_proto::{Activity, Event, UpdateRecord};
use bento_core::chroot::{
    copy_tree, CONFIG_LINK, CURRENT_LINK, LAST_CHANGE_FILE, LOGS_DIR, RELEASES_DIR,
};
use bento_core::closure::Closure;
use bento_core::nix::{store_basename, BuildMode, Nix};
use bento_core::release::{Manifest, MANIFEST_FILE};
use bento_core::report::{
    AgentState, Heartbeat, Obtained, ReportMeta, ReportName, ReportStatus, HEARTBEAT_FILE,
};
use bento_core::signing::{self, SIGNATURE_FILE};
use time::OffsetDateTime;

use crate::reboot::REBOOT_FILE;
use crate::remote::{Remote, RemoteError};
use crate::report::{now_local, Outbox, UpdateLog};
use crate::settings::{BuildPolicy, Config};
use crate::state::{self, Applied, PersistedState, Refused, StateDir};
use crate::status::{StatusHandle, AGENT_VERSION};

/// The file in a release that lets the host update its flake inputs itself.
pub const SELF_UPDATE_FILE: &str = "SELF_UPDATE";

/// How a poll ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollResult {
    /// Nothing new (or only a release that failed before): the host is as published.
    NothingNew,
    /// The server has no release for this host yet.
    NoRelease,
    /// A release (or a self-update) was applied.
    Updated(ReportStatus),
    /// The update failed or was rolled back; the reason.
    Failed(ReportStatus, String),
    /// The server could not be reached (or went away mid-way); the reason.
    Unreachable(String),
}

/// What the server publishes for this host.
#[derive(Debug, Clone)]
struct Published {
    revision: String,
    /// The original tool's chroot: a plain `config/`, no manifest.
    legacy: bool,
}

/// How an activation ended.
enum Outcome {
    /// Activated and healthy: the new last good system.
    Success {
        changes: Vec<String>,
    },
    Failure {
        error: String,
        after: After,
    },
    /// Failed, then the last good system was activated again.
    Rollback {
        error: String,
    },
}

/// What runs after a failed activation that was not rolled back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// Nothing was activated: whatever ran before still runs.
    Untouched,
    /// The failed system runs in full (its health checks failed, not its activation).
    Activated,
    /// An activation stopped half-way: no system can be named.
    Mixed,
}

pub struct Agent {
    pub cfg: Config,
    pub state: StateDir,
    pub status: StatusHandle,
    /// What the update under way learnt for its report.
    facts: std::sync::Mutex<UpdateFacts>,
}

/// Facts of one update, for its report and the agent state.
#[derive(Debug, Default)]
struct UpdateFacts {
    /// When the applied manifest was made (newer manifests only, from then on).
    created: Option<OffsetDateTime>,
    obtained: Option<Obtained>,
    exact: Option<bool>,
    /// The secrets this update put in place, for the report; set, a failure or
    /// rollback puts the last good set back.
    secrets: Option<Vec<bento_core::report::ReportedSecret>>,
}

impl Agent {
    pub fn new(cfg: Config) -> std::io::Result<Agent> {
        let state = StateDir::new(&cfg.state_dir);
        state.ensure()?;
        let mut initial = StatusHandle::empty(cfg.host.as_str());
        let persisted = state.load();
        initial.revision = persisted.applied.as_ref().map(|a| a.revision.clone());
        initial.system = if persisted.mixed.is_some() {
            None
        } else {
            activate::resolve_system(&cfg.system_profile).map(|p| store_basename(&p))
        };
        initial.history = state.history();
        initial.last_update = initial.history.first().cloned();
        initial.log_tail = state.log_tail();
        let status = StatusHandle::new(initial, Some(&cfg.runtime_dir));
        let agent = Agent {
            cfg,
            state,
            status,
            facts: Default::default(),
        };
        let reboot = agent.reboot_required();
        agent.status.update(|s| s.reboot_required = reboot);
        Ok(agent)
    }

    fn outbox(&self) -> Outbox {
        Outbox::new(self.state.outbox())
    }

    /// The system the profile names: what runs, unless the host is in a mixed state.
    fn current_system(&self) -> Option<PathBuf> {
        activate::resolve_system(&self.cfg.system_profile)
    }

    /// The system the host runs as far as the agent knows: none while it is in a mixed
    /// state (a report or heartbeat must never name a system that does not run).
    fn running_system(&self, st: &PersistedState) -> Option<PathBuf> {
        if st.mixed.is_some() {
            None
        } else {
            self.current_system()
        }
    }

    /// A mixed state ends when someone changed the profile by hand since (`nixos-rebuild
    /// switch`, `--rollback`): the system they switched to is taken as the running one.
    fn forget_stale_mixed(&self, st: &mut PersistedState) {
        let Some(m) = &st.mixed else { return };
        let now = self.current_system();
        if now == m.profile {
            tracing::warn!(
                "the host may be in a mixed state since {} ({}); the next release is activated in full",
                m.since,
                m.error
            );
            return;
        }
        tracing::info!(
            "the system profile changed since the host was left in a mixed state: taking {} as the running system",
            now.as_deref().map_or("nothing".into(), |p| p.display().to_string())
        );
        st.mixed = None;
        if let Err(e) = self.state.save(st) {
            tracing::warn!("cannot save the agent state: {e}");
        }
        let system = now.as_deref().map(store_basename);
        self.status.update(|s| s.system = system);
    }

    /// Kernel, initrd or modules of the active system differ from the booted one.
    pub fn reboot_required(&self) -> bool {
        let (Some(booted), Some(current)) = (
            activate::resolve_system(&self.cfg.booted_system),
            self.current_system(),
        ) else {
            return false;
        };
        activate::reboot_required(
            &activate::boot_files(&booted),
            &activate::boot_files(&current),
        )
    }

    /// Whether the applied release asks for reboots (`REBOOT`).
    pub fn release_asks_reboot(&self) -> bool {
        self.state
            .load()
            .applied
            .is_some_and(|a| self.state.release(&a.revision).join(REBOOT_FILE).exists())
    }

    /// One poll. Never panics on remote or build problems: they end up in the result,
    /// the journal and (when something was attempted) a report.
    pub async fn poll(&self) -> PollResult {
        let state = self.state.clone();
        let lock = tokio::task::spawn_blocking(move || state.lock()).await;
        let _lock = match lock {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                let msg = format!(
                    "cannot lock the state directory {}: {e}",
                    self.state.root().display()
                );
                tracing::error!("{msg}");
                return PollResult::Failed(ReportStatus::Failure, msg);
            }
            Err(e) => return PollResult::Failed(ReportStatus::Failure, e.to_string()),
        };
        let mut st = self.state.load();
        self.forget_stale_mixed(&mut st);
        self.status
            .emit(Event::CheckStarted, |s| s.activity = Activity::Checking);
        let remote = match Remote::connect(&self.cfg).await {
            Ok(r) => r,
            Err(e) => return self.unreachable(e.to_string()),
        };
        tracing::debug!("connected");
        let published = match self.published(&remote).await {
            Ok(p) => p,
            Err(e) => {
                remote.close().await;
                return self.unreachable(e.to_string());
            }
        };
        let now = OffsetDateTime::now_utc();
        self.status.update(|s| {
            s.server_reachable = Some(true);
            s.last_check = Some(now);
        });
        let Some(published) = published else {
            tracing::warn!(
                "the server has no release for {} yet (nothing in .releases/current nor config/): run `bento deploy`",
                self.cfg.host
            );
            self.status
                .emit(Event::CheckFinished { new_release: false }, |s| {
                    s.activity = Activity::Idle
                });
            self.finish(&remote, &st).await;
            remote.close().await;
            return PollResult::NoRelease;
        };
        let applied = st.applied.as_ref().map(|a| a.revision.as_str());
        let refused = st
            .refused
            .as_ref()
            .filter(|r| r.revision == published.revision);
        if applied == Some(published.revision.as_str()) || refused.is_some() {
            if let Some(r) = refused {
                tracing::info!(
                    "release {} gave {} earlier ({}); waiting for a new release",
                    r.revision,
                    r.status,
                    r.error.as_deref().unwrap_or("no reason recorded")
                );
            } else {
                tracing::info!("release {} is applied; nothing new", published.revision);
            }
            self.status
                .emit(Event::CheckFinished { new_release: false }, |s| {
                    s.activity = Activity::Idle
                });
            self.finish(&remote, &st).await;
            tracing::debug!("heartbeat written");
            remote.close().await;
            tracing::debug!("connection closed");
            if let Some(r) = self.self_update(&mut st).await {
                return r;
            }
            return PollResult::NothingNew;
        }
        self.update(remote, published, &mut st).await
    }

    fn unreachable(&self, reason: String) -> PollResult {
        tracing::warn!("{reason}");
        self.status
            .emit(Event::CheckFinished { new_release: false }, |s| {
                s.activity = Activity::Idle;
                s.server_reachable = Some(false);
                s.last_check = Some(OffsetDateTime::now_utc());
            });
        PollResult::Unreachable(reason)
    }

    /// The revision published now, for the daemon's watch between polls (`watch`).
    pub(crate) async fn published_revision(
        &self,
        r: &Remote,
    ) -> Result<Option<String>, RemoteError> {
        Ok(self.published(r).await?.map(|p| p.revision))
    }

    /// The revision `.releases/current` points to; for the original tool's chroots
    /// (plain `config/`), one derived from `last_change_date`.
    async fn published(&self, r: &Remote) -> Result<Option<Published>, RemoteError> {
        if let Some(target) = r
            .read_link(&format!("{RELEASES_DIR}/{CURRENT_LINK}"))
            .await?
        {
            let rev = target.trim_end_matches('/');
            if !valid_revision(rev) {
                return Err(RemoteError::Refused(format!(
                    "{RELEASES_DIR}/{CURRENT_LINK} points to {target:?}, not a revision"
                )));
            }
            return Ok(Some(Published {
                revision: rev.to_owned(),
                legacy: false,
            }));
        }
        if r.is_dir(CONFIG_LINK).await? != Some(true) {
            return Ok(None);
        }
        let (content, mtime) = r
            .read_small(LAST_CHANGE_FILE, 4096)
            .await?
            .unwrap_or_default();
        let content = String::from_utf8_lossy(&content).trim().to_owned();
        let revision = if valid_revision(&content) && content.bytes().all(|b| b.is_ascii_hexdigit())
        {
            content
        } else {
            format!("legacy-{mtime}")
        };
        Ok(Some(Published {
            revision,
            legacy: true,
        }))
    }

    /// End of every poll that reached the server: pending reports, then the heartbeat.
    async fn finish(&self, remote: &Remote, st: &PersistedState) {
        self.send_outbox(remote).await;
        let reboot = self.reboot_required();
        self.note_reboot_required(reboot);
        if let Err(e) = self.heartbeat(remote, st, AgentState::Idle).await {
            tracing::warn!("cannot write the heartbeat: {e}");
        }
    }

    fn note_reboot_required(&self, now_required: bool) {
        let before = self.status.snapshot().reboot_required;
        if now_required && !before {
            tracing::info!("the active system's kernel, initrd or modules differ from the booted one: a reboot is required");
            self.status
                .emit(Event::RebootRequired, |s| s.reboot_required = true);
        } else if !now_required && before {
            self.status.update(|s| {
                s.reboot_required = false;
                s.reboot_scheduled = None;
            });
        }
    }

    async fn send_outbox(&self, remote: &Remote) {
        match self.outbox().send(remote).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("{n} pending report(s) delivered"),
            Err(e) => tracing::warn!(
                "cannot upload reports (kept in {} for the next poll): {e}",
                self.outbox().dir().display()
            ),
        }
    }

    async fn heartbeat(
        &self,
        remote: &Remote,
        st: &PersistedState,
        state: AgentState,
    ) -> Result<(), RemoteError> {
        let hb = Heartbeat {
            format: 1,
            host: self.cfg.host.to_string(),
            time: OffsetDateTime::now_utc(),
            revision: st.applied.as_ref().map(|a| a.revision.clone()),
            system: self.running_system(st).map(|p| store_basename(&p)),
            state,
            reboot_required: self.reboot_required(),
            agent_version: AGENT_VERSION.to_owned(),
            interval_secs: Some(self.cfg.interval.as_secs()),
        };
        let data = serde_json::to_vec_pretty(&hb).expect("heartbeat serializes");
        remote.put_atomic(LOGS_DIR, HEARTBEAT_FILE, &data).await
    }

    async fn update(
        &self,
        remote: Remote,
        published: Published,
        st: &mut PersistedState,
    ) -> PollResult {
        let rev = published.revision.clone();
        let log = UpdateLog::new();
        let started = OffsetDateTime::now_utc();
        let profile_target = self.current_system();
        let previous = self.running_system(st);
        self.status
            .emit(Event::CheckFinished { new_release: true }, |_| {});
        self.status.emit(
            Event::UpdateStarted {
                revision: rev.clone(),
            },
            |s| s.activity = Activity::Downloading,
        );
        log.info(format!(
            "new release {rev} for {} (applied so far: {})",
            self.cfg.host,
            st.applied.as_ref().map_or("none", |a| a.revision.as_str())
        ));
        if let Err(e) = self.heartbeat(&remote, st, AgentState::Updating).await {
            tracing::warn!("cannot write the heartbeat: {e}");
        }
        self.send_outbox(&remote).await;

        // Download into a fresh staging directory: whatever a killed run left is gone.
        let staging = self.state.staging();
        let dl = staging.join(&rev);
        if let Err(e) = state::remove_tree(&staging).and_then(|_| std::fs::create_dir_all(&staging))
        {
            remote.close().await;
            let msg = format!("cannot prepare {}: {e}", staging.display());
            return self.fail(&rev, started, previous, log, msg, st).await;
        }
        let remote_dir = if published.legacy {
            CONFIG_LINK.to_owned()
        } else {
            format!("{RELEASES_DIR}/{rev}")
        };
        let fetched = remote.download_dir(&remote_dir, &dl).await;
        let remote = match fetched {
            Ok(f) => {
                log.info(format!("downloaded {} files ({} bytes)", f.files, f.bytes));
                remote
            }
            Err(RemoteError::Refused(reason)) => {
                remote.close().await;
                let msg = format!("release {rev} refused: {reason}");
                log.error(&msg);
                return self.fail(&rev, started, previous, log, msg, st).await;
            }
            Err(e) => {
                remote.close().await;
                let _ = state::remove_tree(&staging);
                let msg = format!("download of release {rev} interrupted: {e}");
                return self.interrupted(&rev, previous.as_deref(), msg);
            }
        };

        // Verify before anything of it is used.
        let host = self.cfg.host.to_string();
        let (vdir, vrev, vlog, legacy) = (dl.clone(), rev.clone(), log.clone(), published.legacy);
        let verified =
            tokio::task::spawn_blocking(move || verify_release(&vdir, &host, &vrev, legacy, &vlog))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
        // Signed as pinned, and the closure to fetch (the `build` setting decides).
        let planned = verified
            .and_then(|m| self.check_signed(&dl, &rev, m, st, &log))
            .and_then(|m| {
                let c = self.closure_to_fetch(m.as_ref(), &log)?;
                Ok((m, c))
            });
        let (manifest, closure) = match planned {
            Ok(mc) => mc,
            Err(msg) => {
                remote.close().await;
                log.error(&msg);
                let _ = state::remove_tree(&staging);
                return self.fail(&rev, started, previous, log, msg, st).await;
            }
        };
        *self.facts.lock().expect("facts") = UpdateFacts {
            created: manifest.as_ref().map(|m| m.created),
            ..UpdateFacts::default()
        };
        let obtain_started = std::time::Instant::now();
        let mut fetched_paths = None;
        if let Some(c) = &closure {
            self.status.set_activity(Activity::Downloading);
            match self.fetch_closure(&remote, c, &log).await {
                Ok(f) => fetched_paths = Some(f),
                Err(crate::fetch::FetchError::Refused(reason)) => {
                    remote.close().await;
                    crate::fetch::clear(&self.cfg.nar_cache_dir);
                    let msg = format!("release {rev} refused: {reason}");
                    log.error(&msg);
                    let _ = state::remove_tree(&staging);
                    return self.fail(&rev, started, previous, log, msg, st).await;
                }
                Err(crate::fetch::FetchError::Interrupted(reason)) => {
                    remote.close().await;
                    let _ = state::remove_tree(&staging);
                    let msg = format!(
                        "download of the closure of release {rev} interrupted (kept to resume): {reason}"
                    );
                    return self.interrupted(&rev, previous.as_deref(), msg);
                }
            }
        }
        remote.close().await;
        let release = self.state.release(&rev);
        let placed = state::remove_tree(&release).and_then(|_| std::fs::rename(&dl, &release));
        if let Err(e) = placed {
            let msg = format!("cannot move the release into {}: {e}", release.display());
            return self.fail(&rev, started, previous, log, msg, st).await;
        }
        let _ = state::remove_tree(&staging);
        let keep: Vec<&str> = [
            Some(rev.as_str()),
            st.applied.as_ref().map(|a| a.revision.as_str()),
        ]
        .into_iter()
        .flatten()
        .collect();
        self.state.prune_releases(&keep);

        // Secrets: out of the release (never into the store), decrypted in memory.
        let secrets = match crate::secrets::prepare(&self.cfg, &release, published.legacy) {
            Ok(s) => s,
            Err(msg) => {
                log.error(&msg);
                return self.fail(&rev, started, previous, log, msg, st).await;
            }
        };

        // Import the server's closure, or build.
        self.status.set_activity(Activity::Building);
        let obtained = match (&closure, fetched_paths) {
            (Some(c), Some(f)) => self.import_closure(c, f, obtain_started, &log).await,
            _ => self.build(&release, &log).await.map(|system| {
                let millis = obtain_started.elapsed().as_millis() as u64;
                (system, Obtained::Built { millis })
            }),
        };
        let (system, how) = match obtained {
            Ok(sh) => sh,
            Err(msg) => {
                log.error(&msg);
                return self.fail(&rev, started, previous, log, msg, st).await;
            }
        };
        let expected = manifest.as_ref().and_then(|m| m.expected_system.as_deref());
        if let Some(e) = expected.filter(|e| Path::new(e) != system) {
            log.warn(format!(
                "built {} but the server built {e} (different nix inputs or settings?)",
                system.display()
            ));
        }
        {
            let mut facts = self.facts.lock().expect("facts");
            facts.obtained = Some(how);
            facts.exact = expected.map(|e| Path::new(e) == system);
        }
        // Secrets are in place before anything is activated.
        if let Some(s) = &secrets {
            self.facts.lock().expect("facts").secrets = Some(s.reported());
            if let Err(msg) = s.install(&self.cfg, &log) {
                log.error(&msg);
                return self.fail(&rev, started, previous, log, msg, st).await;
            }
        }
        drop(secrets);
        // The profile already names this system because a killed run set it: activate
        // (and check) again, with the generation from before as the one to go back to.
        let interrupted = st
            .activating
            .clone()
            .filter(|a| a.system == system && profile_target.as_deref() == Some(system.as_path()));
        if let Some(m) = &st.mixed {
            log.warn(format!(
                "the host may be in a mixed state since {} ({}): activating {} in full",
                m.since,
                m.error,
                system.display()
            ));
        } else if previous.as_deref() == Some(system.as_path()) && interrupted.is_none() {
            log.info(format!(
                "system unchanged ({}); the release's other files are in place",
                system.display()
            ));
            return self
                .conclude(
                    None,
                    &rev,
                    started,
                    previous,
                    log,
                    Ok((ReportStatus::Success, Vec::new())),
                    st,
                )
                .await;
        }
        let previous = match interrupted {
            Some(a) => {
                log.warn(format!(
                    "the activation of {} was interrupted; activating it again",
                    system.display()
                ));
                a.previous
            }
            None => previous,
        };
        self.mark_activating(st, &system, previous.as_deref());
        let (outcome, conn) = self
            .apply_system(&system, previous.as_deref(), st.last_good.clone(), &log)
            .await;
        let result = self.settle(st, &system, outcome, ReportStatus::Success);
        self.conclude(conn, &rev, started, previous, log, result, st)
            .await
    }

    fn mark_activating(&self, st: &mut PersistedState, system: &Path, previous: Option<&Path>) {
        if st.last_good.is_none() {
            st.last_good = self.first_good_system(st, system, previous);
            if let Some(good) = &st.last_good {
                tracing::info!(
                    "no system recorded as working yet: taking {} as the last good one",
                    good.display()
                );
                self.pin_last_good(good);
            }
        }
        st.activating = Some(state::Activating {
            system: system.to_owned(),
            previous: previous.map(Path::to_owned),
        });
        if let Err(e) = self.state.save(st) {
            tracing::warn!("cannot save the agent state: {e}");
        }
    }

    /// The last good system of a host that has none recorded yet (a first install, or
    /// a state directory from an agent that kept none), before `system` is activated.
    ///
    /// A mature tool (`nixos-rebuild --rollback`, deploy-rs) takes the system the machine
    /// runs as the one to go back to: it booted, it runs this agent and it reached the
    /// server, so it is the best-known system there is. In order: the system of the
    /// last success an older agent recorded, the system the profile names (what runs
    /// after a `nixos-rebuild switch`), the booted system. Never `system` itself (it is
    /// what is being tried) and never anything while the host is in a mixed state.
    fn first_good_system(
        &self,
        st: &PersistedState,
        system: &Path,
        previous: Option<&Path>,
    ) -> Option<PathBuf> {
        if st.mixed.is_some() {
            return None;
        }
        let store = system.parent()?;
        let applied = st
            .applied
            .as_ref()
            .and_then(|a| a.system.as_deref())
            .map(|b| store.join(b));
        let booted = activate::resolve_system(&self.cfg.booted_system);
        [applied, previous.map(Path::to_owned), booted]
            .into_iter()
            .flatten()
            .find(|p| p != system && p.join("bin/switch-to-configuration").exists())
    }

    /// Best effort: a collected last good system makes the next rollback fail, said so.
    fn pin_last_good(&self, system: &Path) {
        if let Err(e) = activate::add_gc_root(&self.state.last_good_root(), system) {
            tracing::warn!(
                "cannot protect {} from garbage collection: {}",
                system.display(),
                e.summary()
            );
        }
    }

    /// Records what an activation left behind (the last good system, a mixed state) and
    /// turns it into the report's status: `success` (or `autoupdate`) for a healthy new
    /// system, `rollback`, or `failure`.
    fn settle(
        &self,
        st: &mut PersistedState,
        system: &Path,
        outcome: Outcome,
        success: ReportStatus,
    ) -> Result<(ReportStatus, Vec<String>), (ReportStatus, String)> {
        match outcome {
            Outcome::Success { changes } => {
                st.mixed = None;
                if st.last_good.as_deref() != Some(system) {
                    st.last_good = Some(system.to_owned());
                    self.pin_last_good(system);
                }
                Ok((success, changes))
            }
            Outcome::Rollback { error } => {
                st.mixed = None;
                Err((ReportStatus::Rollback, error))
            }
            Outcome::Failure { error, after } => {
                match after {
                    After::Untouched => {}
                    After::Activated => st.mixed = None,
                    After::Mixed => {
                        st.mixed = Some(state::Mixed {
                            since: OffsetDateTime::now_utc(),
                            error: one_line(&error),
                            profile: self.current_system(),
                        })
                    }
                }
                Err((ReportStatus::Failure, error))
            }
        }
    }

    /// The server went away during a download: nothing is wrong with the release,
    /// which is tried again at the next poll. Announced (the desktop saw the update
    /// start and now sees it fail) but not recorded.
    fn interrupted(&self, rev: &str, previous: Option<&Path>, msg: String) -> PollResult {
        tracing::warn!("{msg}; trying again at the next poll");
        let record = UpdateRecord {
            time: OffsetDateTime::now_utc(),
            status: ReportStatus::Failure,
            revision: Some(rev.to_owned()),
            system: previous.map(store_basename),
            error: Some(msg.clone()),
            changed_packages: None,
        };
        self.status.emit(Event::UpdateFailed { record }, |s| {
            s.activity = Activity::Idle;
            s.server_reachable = Some(false);
        });
        PollResult::Unreachable(msg)
    }

    /// With pinned keys: the manifest must be signed by one of them, and not older
    /// than the one applied (no swapped release, no downgrade). Without: a warning.
    fn check_signed(
        &self,
        dir: &Path,
        rev: &str,
        manifest: Option<Manifest>,
        st: &PersistedState,
        log: &UpdateLog,
    ) -> Result<Option<Manifest>, String> {
        if self.cfg.trusted_public_keys.is_empty() {
            log.warn("no trusted_public_keys pinned: the release's signature is not checked and its closure is not used (pin the key `bento check-config` prints)");
            return Ok(manifest);
        }
        let Some(m) = manifest else {
            return Err(format!(
                "release {rev} refused: it has no manifest, so no signature (an original tool's chroot cannot be used with trusted_public_keys)"
            ));
        };
        let bytes = std::fs::read(dir.join(MANIFEST_FILE))
            .map_err(|e| format!("release {rev} refused: {e}"))?;
        let sig = std::fs::read_to_string(dir.join(SIGNATURE_FILE)).ok();
        let key = signing::verify_manifest(&self.cfg.trusted_public_keys, &bytes, sig.as_deref())
            .map_err(|e| format!("release {rev} refused: {e}"))?;
        if let Some(applied) = st.applied.as_ref().and_then(|a| a.created.map(|c| (a, c))) {
            let (a, created) = applied;
            if m.created < created || (m.created == created && a.revision != m.revision) {
                return Err(format!(
                    "release {rev} refused: its manifest was made {}, before the release applied ({}, made {}): a downgrade; an admin's rollback publishes a new manifest",
                    m.created, a.revision, created
                ));
            }
        }
        log.info(format!("release {rev}: manifest signed by {key}"));
        Ok(Some(m))
    }

    /// The closure to fetch instead of building, as the `build` setting says.
    fn closure_to_fetch(
        &self,
        manifest: Option<&Manifest>,
        log: &UpdateLog,
    ) -> Result<Option<Closure>, String> {
        let closure = manifest.and_then(|m| m.closure.as_ref());
        match (self.cfg.build, closure) {
            (BuildPolicy::Always, _) => Ok(None),
            (BuildPolicy::Never, None) => Err(
                "the release has no closure from the server and this host never builds (build = \"never\"): deploy with a server that builds (local_build = true, export_closures = true)".into(),
            ),
            (BuildPolicy::Fallback, None) => {
                log.info("the release has no closure from the server: building here");
                Ok(None)
            }
            (policy, Some(c)) => {
                if self.cfg.trusted_public_keys.is_empty() {
                    if policy == BuildPolicy::Never {
                        return Err("build = \"never\" needs trusted_public_keys: the server's closure cannot be checked without the fleet's key".into());
                    }
                    return Ok(None);
                }
                c.check().map_err(|e| format!("the release's closure is malformed: {e}"))?;
                let m = manifest.expect("closure of a manifest");
                if m.expected_system.as_deref() != Some(c.toplevel.as_str()) {
                    return Err(format!(
                        "the release's closure is of {}, its manifest expects {}",
                        c.toplevel,
                        m.expected_system.as_deref().unwrap_or("nothing")
                    ));
                }
                Ok(Some(c.clone()))
            }
        }
    }

    /// Downloads what the store lacks of `c` into the local NAR cache.
    async fn fetch_closure(
        &self,
        remote: &Remote,
        c: &Closure,
        log: &UpdateLog,
    ) -> Result<crate::fetch::Fetched, crate::fetch::FetchError> {
        use crate::fetch::{self, FetchError};
        let cc = c.clone();
        let missing = tokio::task::spawn_blocking(move || fetch::missing_paths(&cc))
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
            .map_err(|e| FetchError::Interrupted(format!("cannot ask the store: {e}")))?;
        if missing.is_empty() {
            log.info(format!(
                "the store has all {} paths of {} already",
                c.paths.len(),
                c.toplevel
            ));
            return Ok(fetch::Fetched::default());
        }
        let l = log.clone();
        fetch::download(
            remote,
            c,
            &missing,
            &self.cfg.nar_cache_dir,
            &self.cfg.trusted_public_keys,
            &move |m| l.info(m),
        )
        .await
    }

    /// Imports `c` from the local NAR cache (nix checks every signature and hash).
    async fn import_closure(
        &self,
        c: &Closure,
        f: crate::fetch::Fetched,
        started: std::time::Instant,
        log: &UpdateLog,
    ) -> Result<(PathBuf, Obtained), String> {
        let (missing, cache, keys, args, l) = (
            f.missing.clone(),
            self.cfg.nar_cache_dir.clone(),
            self.cfg.trusted_public_keys.clone(),
            self.cfg.nix_args.clone(),
            log.clone(),
        );
        if f.paths > 0 {
            log.info(format!("importing {} paths with nix copy", f.paths));
            let r = tokio::task::spawn_blocking(move || {
                crate::fetch::import(&missing, &cache, &keys, &args, |line| l.output(line))
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            // Imported or refused: the downloads are done with either way.
            crate::fetch::clear(&self.cfg.nar_cache_dir);
            r?;
        }
        let system = PathBuf::from(&c.toplevel);
        if !system.join("bin/switch-to-configuration").exists() {
            return Err(format!(
                "{} is not a NixOS system after the import (no bin/switch-to-configuration)",
                system.display()
            ));
        }
        let how = Obtained::Fetched {
            paths: f.paths,
            bytes: f.bytes,
            millis: started.elapsed().as_millis() as u64,
        };
        log.info(format!("system {}: {}", system.display(), how.summary()));
        Ok((system, how))
    }

    async fn build(&self, release: &Path, log: &UpdateLog) -> Result<PathBuf, String> {
        let nix = Nix {
            extra_args: self.cfg.nix_args.clone(),
            include: self.cfg.nix_path.clone(),
        };
        let (dir, host, log) = (release.to_owned(), self.cfg.host.to_string(), log.clone());
        tokio::task::spawn_blocking(move || {
            let on_line = |l: &str| log.output(l);
            let r = if dir.join("flake.nix").is_file() {
                log.info(format!(
                    "building nixosConfigurations.{host} of {}",
                    dir.display()
                ));
                nix.flake_system(&dir, &host, BuildMode::Build, on_line)
            } else if dir.join("configuration.nix").is_file() {
                log.info(format!(
                    "building <nixpkgs/nixos> with nixos-config={}/configuration.nix",
                    dir.display()
                ));
                nix.nonflake_system(&dir, BuildMode::Build, on_line)
            } else {
                return Err("the release has neither flake.nix nor configuration.nix".to_owned());
            };
            let system = r.map_err(|e| format!("build failed: {}", e.summary()))?;
            log.info(format!("built {}", system.display()));
            Ok(system)
        })
        .await
        .unwrap_or_else(|e| Err(format!("build task failed: {e}")))
    }

    /// Activates `system`, checks health, rolls back on failure. Returns the outcome and
    /// the connection the health check opened (reused to report).
    async fn apply_system(
        &self,
        system: &Path,
        previous: Option<&Path>,
        last_good: Option<PathBuf>,
        log: &UpdateLog,
    ) -> (Outcome, Option<Remote>) {
        self.status.set_activity(Activity::Activating);
        let profile = self.cfg.system_profile.clone();
        let (sys, plog) = (system.to_owned(), log.clone());
        log.info(format!(
            "setting {} to {}",
            profile.display(),
            system.display()
        ));
        let already = activate::resolve_system(&profile).as_deref() == Some(system);
        let set = tokio::task::spawn_blocking(move || {
            if already {
                Ok(())
            } else {
                activate::set_profile(&profile, &sys)
            }
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.summary()));
        if let Err(e) = set {
            let error = format!("cannot set the system profile: {e}");
            log.error(&error);
            let after = After::Untouched;
            return (Outcome::Failure { error, after }, None);
        }
        log.info(format!(
            "switch-to-configuration switch ({})",
            system.display()
        ));
        let sys = system.to_owned();
        let switched = tokio::task::spawn_blocking(move || {
            activate::switch_to_configuration(&sys, SwitchAction::Switch, |l| plog.output(l))
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.summary()));
        if let Err(e) = switched {
            let error = format!("activation failed: {e}");
            log.error(&error);
            let outcome = self
                .roll_back(error, system, last_good, After::Mixed, log)
                .await;
            return (outcome, None);
        }
        match self.health_checks(log).await {
            Ok(conn) => {
                let changes = match previous {
                    Some(p) => self.changes(p, system, log).await,
                    None => Vec::new(),
                };
                (Outcome::Success { changes }, Some(conn))
            }
            Err(error) => {
                log.error(&error);
                let outcome = self
                    .roll_back(error, system, last_good, After::Activated, log)
                    .await;
                (outcome, None)
            }
        }
    }

    /// Rolls back to exactly `last_good` after `failed` failed with `error`; `failed`
    /// left the host as `after` says.
    async fn roll_back(
        &self,
        error: String,
        failed: &Path,
        last_good: Option<PathBuf>,
        after: After,
        log: &UpdateLog,
    ) -> Outcome {
        let mixed_note = if after == After::Mixed {
            ": the host may be in a mixed state"
        } else {
            ""
        };
        let target = match last_good {
            None => {
                let error = format!("{error}; no system known to work to roll back to{mixed_note}");
                log.error(&error);
                return Outcome::Failure { error, after };
            }
            Some(g) if g == failed => {
                let error = format!(
                    "{error}; it is the last system known to work: nothing to roll back to{mixed_note}"
                );
                log.error(&error);
                return Outcome::Failure { error, after };
            }
            Some(g) => g,
        };
        if !target.join("bin/switch-to-configuration").exists() {
            let error = format!(
                "rollback failed: the host may be in a mixed state: the last system known to work, {}, is no longer in the store; the update had failed with: {error}",
                target.display()
            );
            log.error(&error);
            return Outcome::Failure { error, after };
        }
        log.info(format!(
            "rolling back to the last system known to work, {}",
            target.display()
        ));
        let (profile, plog, sys) = (self.cfg.system_profile.clone(), log.clone(), target.clone());
        let r = tokio::task::spawn_blocking(move || {
            activate::roll_back_to(&profile, &sys, |l| plog.output(l)).map_err(|e| {
                let after = match e {
                    activate::RollbackError::Profile { .. } => after,
                    activate::RollbackError::Switch { .. } => After::Mixed,
                };
                (e.to_string(), after)
            })
        })
        .await
        .unwrap_or_else(|e| Err((e.to_string(), After::Mixed)));
        match r {
            Ok(change) => {
                let how = match change {
                    activate::ProfileChange::Unchanged => String::new(),
                    activate::ProfileChange::Generation(n) => format!(" (generation {n})"),
                    activate::ProfileChange::NewGeneration => " (a new generation)".to_owned(),
                };
                log.info(format!("rolled back to {}{how}", target.display()));
                Outcome::Rollback { error }
            }
            Err((e, after)) => {
                let boots = self.current_system().map_or_else(
                    || "the system profile names no system".to_owned(),
                    |p| format!("the system profile names {}", p.display()),
                );
                // The rollback's failure first: it is what the admin must act on, and
                // what a table cut short still shows.
                let error = format!(
                    "rollback failed: the host may be in a mixed state: {e}; {boots}; the update had failed with: {error}"
                );
                log.error(&error);
                Outcome::Failure { error, after }
            }
        }
    }

    /// The configured commands, then the server over a new connection.
    async fn health_checks(&self, log: &UpdateLog) -> Result<Remote, String> {
        for check in &self.cfg.health_checks {
            let shown = check.join(" ");
            log.info(format!("health check: {shown}"));
            let mut cmd = tokio::process::Command::new(&check[0]);
            cmd.args(&check[1..])
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true);
            let out = tokio::time::timeout(self.cfg.health_check_timeout, cmd.output()).await;
            match out {
                Err(_) => {
                    return Err(format!(
                        "health check `{shown}` did not finish within {}s",
                        self.cfg.health_check_timeout.as_secs()
                    ))
                }
                Ok(Err(e)) => return Err(format!("health check `{shown}` cannot start: {e}")),
                Ok(Ok(o)) if !o.status.success() => {
                    let stderr = String::from_utf8_lossy(&o.stderr);
                    let last = stderr
                        .lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("");
                    return Err(format!(
                        "health check `{shown}` failed ({}){}",
                        o.status,
                        if last.is_empty() {
                            String::new()
                        } else {
                            format!(": {last}")
                        }
                    ));
                }
                Ok(Ok(_)) => {}
            }
        }
        log.info("health check: the server is reachable");
        let conn = Remote::connect(&self.cfg).await.map_err(|e| {
            format!("health check failed: server unreachable after activation: {e}")
        })?;
        match conn
            .read_link(&format!("{RELEASES_DIR}/{CURRENT_LINK}"))
            .await
        {
            Ok(_) => Ok(conn),
            Err(e) => {
                conn.close().await;
                Err(format!(
                    "health check failed: server unreachable after activation: {e}"
                ))
            }
        }
    }

    /// What changed between two systems (closure diff), best effort.
    async fn changes(&self, from: &Path, to: &Path, log: &UpdateLog) -> Vec<String> {
        let nix = Nix {
            extra_args: Vec::new(),
            include: Vec::new(),
        };
        let (from, to) = (from.to_owned(), to.to_owned());
        let r = tokio::task::spawn_blocking(move || nix.diff_closures(&from, &to)).await;
        match r {
            Ok(Ok(text)) => {
                let lines: Vec<String> = text
                    .lines()
                    .map(|l| l.trim_end().to_owned())
                    .filter(|l| !l.trim().is_empty())
                    .collect();
                for l in &lines {
                    log.output(l);
                }
                lines
            }
            Ok(Err(e)) => {
                log.warn(format!("cannot compute what changed: {}", e.summary()));
                Vec::new()
            }
            Err(_) => Vec::new(),
        }
    }

    /// Ends an update that failed before anything was activated, with a failure report.
    async fn fail(
        &self,
        rev: &str,
        started: OffsetDateTime,
        previous: Option<PathBuf>,
        log: UpdateLog,
        msg: String,
        st: &mut PersistedState,
    ) -> PollResult {
        let result = Err((ReportStatus::Failure, msg));
        self.conclude(None, rev, started, previous, log, result, st)
            .await
    }

    /// Writes the report to the outbox, records the outcome, announces it, then
    /// delivers reports and the heartbeat over `conn` (or a new connection).
    #[allow(clippy::too_many_arguments)]
    async fn conclude(
        &self,
        conn: Option<Remote>,
        rev: &str,
        started: OffsetDateTime,
        previous: Option<PathBuf>,
        log: UpdateLog,
        result: Result<(ReportStatus, Vec<String>), (ReportStatus, String)>,
        st: &mut PersistedState,
    ) -> PollResult {
        let current = self.current_system();
        let system_name = self.running_system(st).as_deref().map(store_basename);
        let booted = activate::resolve_system(&self.cfg.booted_system);
        let booted_files = booted
            .as_deref()
            .map(activate::boot_files)
            .unwrap_or_default();
        let built_files = current
            .as_deref()
            .map(activate::boot_files)
            .unwrap_or_default();
        let reboot_required = booted.is_some() && current.is_some() && booted_files != built_files;
        let facts = std::mem::take(&mut *self.facts.lock().expect("facts"));
        let (status, error, changes) = match &result {
            Ok((s, c)) => (*s, None, c.clone()),
            Err((s, e)) => (*s, Some(one_line(e)), Vec::new()),
        };
        // The secrets follow the system that runs now.
        match status {
            ReportStatus::Success | ReportStatus::Autoupdate => crate::secrets::commit(&self.cfg),
            ReportStatus::Failure | ReportStatus::Rollback if facts.secrets.is_some() => {
                if st.mixed.is_some() {
                    log.warn("the host is in a mixed state: the new secrets stay in place");
                } else {
                    crate::secrets::restore(&self.cfg, &log);
                }
            }
            ReportStatus::Failure | ReportStatus::Rollback => {}
        }
        if reboot_required && status != ReportStatus::Failure {
            log.info("the new system's kernel, initrd or modules differ from the booted system: reboot required");
        }
        let meta = ReportMeta {
            format: ReportMeta::FORMAT,
            host: self.cfg.host.to_string(),
            status,
            revision: Some(rev.to_owned()),
            system: system_name.clone(),
            previous_system: previous.as_deref().map(store_basename),
            booted: booted_files,
            built: built_files,
            reboot_required,
            started,
            finished: OffsetDateTime::now_utc(),
            agent_version: AGENT_VERSION.to_owned(),
            error: error.clone(),
            changed_packages: (!changes.is_empty()).then_some(changes.len() as u32),
            obtained: facts.obtained.clone(),
            exact: facts.exact,
            secrets: facts.secrets.clone(),
        };
        let name = ReportName::new(
            now_local(),
            system_name.as_deref().unwrap_or("unknown-system"),
            status,
        );
        match log
            .gzip()
            .and_then(|gz| self.outbox().add(&name, &gz, &meta))
        {
            Ok(()) => {}
            Err(e) => tracing::error!("cannot queue the report {}: {e}", name.log_file_name()),
        }
        st.activating = None;
        match status {
            ReportStatus::Success | ReportStatus::Autoupdate => {
                st.applied = Some(Applied {
                    revision: rev.to_owned(),
                    system: system_name.clone(),
                    time: OffsetDateTime::now_utc(),
                    created: facts.created,
                });
                st.refused = None;
            }
            ReportStatus::Failure | ReportStatus::Rollback => {
                st.refused = Some(Refused {
                    revision: rev.to_owned(),
                    status,
                    error: error.clone(),
                });
            }
        }
        if let Err(e) = self.state.save(st) {
            tracing::error!("cannot save the agent state: {e}");
        }
        let record = UpdateRecord {
            time: OffsetDateTime::now_utc(),
            status,
            revision: Some(rev.to_owned()),
            system: system_name.clone(),
            error: error.clone(),
            changed_packages: meta.changed_packages,
        };
        let history = self.state.push_history(&record).unwrap_or_else(|e| {
            tracing::warn!("cannot save the update history: {e}");
            self.state.history()
        });
        let tail = log.tail(crate::state::LOG_TAIL_LINES);
        let _ = self.state.save_log_tail(&tail);
        let event = match status {
            ReportStatus::Success | ReportStatus::Autoupdate => Event::UpdateFinished {
                record: record.clone(),
            },
            ReportStatus::Failure => Event::UpdateFailed {
                record: record.clone(),
            },
            ReportStatus::Rollback => Event::RolledBack {
                record: record.clone(),
            },
        };
        let applied_rev = st.applied.as_ref().map(|a| a.revision.clone());
        self.status.emit(event, |s| {
            s.activity = Activity::Idle;
            s.revision = applied_rev;
            s.system = system_name.clone();
            s.log_tail = tail;
            if !changes.is_empty() || status == ReportStatus::Success {
                s.last_changes = changes.iter().take(100).cloned().collect();
            }
            // What runs now: an update that obtained no system keeps the last.
            if matches!(status, ReportStatus::Success | ReportStatus::Autoupdate)
                && facts.obtained.is_some()
            {
                s.obtained = facts.obtained.clone();
                s.exact = facts.exact;
            }
            StatusHandle::record(s, &record, history);
        });

        let conn = match conn {
            Some(c) => Some(c),
            None => match Remote::connect(&self.cfg).await {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!("cannot deliver the report now (kept for the next poll): {e}");
                    self.status.update(|s| s.server_reachable = Some(false));
                    None
                }
            },
        };
        if let Some(c) = conn {
            self.finish(&c, st).await;
            c.close().await;
        } else {
            self.note_reboot_required(self.reboot_required());
        }
        match result {
            Ok((s, _)) => PollResult::Updated(s),
            Err((s, e)) => PollResult::Failed(s, one_line(&e)),
        }
    }

    /// `SELF_UPDATE` (or the setting): with nothing new published, update the applied
    /// flake's inputs locally and apply the result when the system changed.
    async fn self_update(&self, st: &mut PersistedState) -> Option<PollResult> {
        let applied = st.applied.clone()?;
        let release = self.state.release(&applied.revision);
        let enabled = self.cfg.self_update || release.join(SELF_UPDATE_FILE).exists();
        if !enabled || !release.join("flake.nix").is_file() {
            return None;
        }
        let now = OffsetDateTime::now_utc();
        if let Some(last) = st.last_self_update {
            if now - last
                < time::Duration::try_from(self.cfg.self_update_interval)
                    .unwrap_or(time::Duration::DAY)
            {
                return None;
            }
        }
        st.last_self_update = Some(now);
        let _ = self.state.save(st);
        let work = self.state.root().join("self-update");
        let log = UpdateLog::new();
        log.info(format!(
            "self-update: updating the flake inputs of release {}",
            applied.revision
        ));
        let nix = Nix {
            extra_args: self.cfg.nix_args.clone(),
            include: Vec::new(),
        };
        let (w, rel) = (work.clone(), release.clone());
        let updated = tokio::task::spawn_blocking(move || {
            state::remove_tree(&w).map_err(|e| e.to_string())?;
            copy_tree(&rel, &w).map_err(|e| e.to_string())?;
            nix.flake_update(&w, None).map_err(|e| e.summary())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        if let Err(e) = updated {
            tracing::warn!("self-update: cannot update the flake inputs: {e}");
            return None;
        }
        let system = match self.build(&work, &log).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("self-update: {e}");
                return None;
            }
        };
        let previous = self.running_system(st);
        if previous.as_deref() == Some(system.as_path()) {
            tracing::info!("self-update: the system did not change");
            return None;
        }
        let started = now;
        self.status.emit(
            Event::UpdateStarted {
                revision: applied.revision.clone(),
            },
            |s| s.activity = Activity::Activating,
        );
        self.mark_activating(st, &system, previous.as_deref());
        let (outcome, conn) = self
            .apply_system(&system, previous.as_deref(), st.last_good.clone(), &log)
            .await;
        let result = self.settle(st, &system, outcome, ReportStatus::Autoupdate);
        let refused_before = st.refused.clone();
        let r = self
            .conclude(conn, &applied.revision, started, previous, log, result, st)
            .await;
        // A failed self-update does not make the admin's release a refused one.
        if st
            .refused
            .as_ref()
            .is_some_and(|x| x.revision == applied.revision)
        {
            st.refused = refused_before;
            st.applied = Some(applied);
            let _ = self.state.save(st);
        }
        Some(r)
    }
}

/// Checks a downloaded release against its manifest (and the host and revision it was
/// published as). The original tool's releases have no manifest: accepted, with a warning.
fn verify_release(
    dir: &Path,
    host: &str,
    revision: &str,
    legacy: bool,
    log: &UpdateLog,
) -> Result<Option<Manifest>, String> {
    if legacy && !dir.join(MANIFEST_FILE).exists() {
        log.warn("the release has no manifest (a chroot of the original bento tool): accepted without verification");
        return Ok(None);
    }
    // Parsed in memory: bounded like every other part of a release download.
    let manifest_len = std::fs::metadata(dir.join(MANIFEST_FILE)).map_or(0, |m| m.len());
    if manifest_len > crate::remote::MAX_MANIFEST_BYTES {
        return Err(format!(
            "release {revision} refused: its manifest is larger than {} bytes",
            crate::remote::MAX_MANIFEST_BYTES
        ));
    }
    let m = Manifest::read_from(dir).map_err(|e| format!("release {revision} refused: {e}"))?;
    if !legacy && m.revision != revision {
        return Err(format!(
            "release {revision} refused: its manifest names revision {}",
            m.revision
        ));
    }
    if m.host != host {
        return Err(format!(
            "release {revision} refused: it was made for host {}, this is {host}",
            m.host
        ));
    }
    m.verify(dir)
        .map_err(|e| format!("release {revision} refused: {e}"))?;
    log.info(format!(
        "release {revision} verified: {} files match the manifest",
        m.files.len()
    ));
    Ok(Some(m))
}

/// A revision is a plain path component.
pub(crate) fn valid_revision(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 128
        && !r.starts_with('.')
        && r.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn one_line(s: &str) -> String {
    let l = s
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" / ");
    if l.len() > 500 {
        let mut end = 500;
        while !l.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &l[..end])
    } else {
        l
    }
}

/// Sleeps are only used by the daemon between polls.
pub fn jittered(interval: Duration, jitter: Duration) -> Duration {
    use rand::Rng;
    if jitter.is_zero() {
        return interval;
    }
    interval + Duration::from_millis(rand::thread_rng().gen_range(0..=jitter.as_millis() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_are_plain_names() {
        assert!(valid_revision("0123abcd"));
        assert!(valid_revision("legacy-1700000000"));
        for bad in ["", "..", ".hidden", "a/b", "../x", "a b"] {
            assert!(!valid_revision(bad), "{bad}");
        }
    }

    #[test]
    fn errors_fit_on_one_line() {
        assert_eq!(one_line("a\n\n b \nc"), "a / b / c");
    }
}
