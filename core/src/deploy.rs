//! Building and publishing a fleet: the pipeline behind `bento build`, `bento
//! deploy` and the panel's jobs. It reports progress through a callback and never
//! prints.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::bentodir::{BentoDir, HostDir, HostKind};
use crate::buildstate::BuildState;
use crate::chroot::{self, Chroot, Owners, Published};
use crate::nix::{store_basename, BuildMode, Nix};
use crate::release::{self, Manifest, TreeListing};
use crate::HostName;

/// Progress of a build or deploy, one event at a time.
#[derive(Debug, Clone)]
pub enum Event {
    /// Hosts found, in build order.
    Planned {
        hosts: Vec<String>,
    },
    Started {
        host: String,
    },
    /// A line of nix's output for this host.
    Line {
        host: String,
        line: String,
    },
    /// Built, or only evaluated when `evaluated` (a dry build): then the store path
    /// is known but nothing was built.
    Built {
        host: String,
        system: PathBuf,
        elapsed: Duration,
        evaluated: bool,
    },
    Failed {
        host: String,
        error: String,
    },
    Published {
        host: String,
        outcome: Published,
    },
    /// A problem outside any one host (an unusable directory, ...).
    Warning {
        message: String,
    },
}

/// What happened to one host.
#[derive(Debug, Clone)]
pub struct HostOutcome {
    pub host: String,
    pub dir: String,
    pub kind: Option<HostKind>,
    pub system: Option<PathBuf>,
    pub error: Option<String>,
    pub published: Option<Published>,
    pub elapsed: Duration,
}

impl HostOutcome {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("cannot read the bento directory: {0}")]
    Io(#[from] std::io::Error),
    /// `--host` names that match no host; each with the closest known name.
    #[error("{}", no_such_host_message(.0))]
    NoSuchHost(Vec<(String, Option<String>)>),
}

fn no_such_host_message(names: &[(String, Option<String>)]) -> String {
    names
        .iter()
        .map(|(n, near)| match near {
            Some(m) => format!("no host named {n} (did you mean {m}?)"),
            None => format!("no host named {n}"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The known name closest to `name`, when it is close enough to be a typo.
pub fn did_you_mean<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let limit = (name.chars().count() / 3).max(2);
    known
        .into_iter()
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, k)| *d <= limit || k.starts_with(name) || name.starts_with(*k))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.to_owned())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(row[j]).min(row[j + 1])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

/// Maps the paths nix prints back to the admin's files: the staging copy
/// (`/tmp/bento-stage-…/<dir>/x.nix`) and the store copy nix makes of a flake
/// (`/nix/store/<hash>-source/x.nix`, when that file is the staged one) become
/// `hosts/<dir>/x.nix`.
pub fn admin_paths(message: &str, staged: &Path, dir_name: &str) -> String {
    let ours = format!("hosts/{dir_name}");
    let mut out = message.to_owned();
    let mut prefixes = vec![staged.display().to_string()];
    if let Ok(c) = fs::canonicalize(staged) {
        prefixes.push(c.display().to_string());
    }
    for p in prefixes {
        out = out.replace(&p, &ours);
    }
    const STORE: &str = "/nix/store/";
    let mut result = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.find(STORE) {
        result.push_str(&rest[..i]);
        let cand = &rest[i..];
        let end = cand
            .find(|c: char| c.is_whitespace() || c == ':' || c == '\'' || c == '"')
            .unwrap_or(cand.len());
        let path = &cand[..end];
        let base = &path[STORE.len()..];
        let mapped = base.split_once('/').and_then(|(name, rel)| {
            let is_source =
                name.len() > 33 && name.as_bytes()[32] == b'-' && name.ends_with("-source");
            let same = is_source
                && matches!(
                    (fs::read(staged.join(rel)), fs::read(path)),
                    (Ok(a), Ok(b)) if a == b
                );
            same.then(|| format!("{ours}/{rel}"))
        });
        match mapped {
            Some(m) => result.push_str(&m),
            None => result.push_str(path),
        }
        rest = &cand[end..];
    }
    result.push_str(rest);
    result
}

/// Options of a run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Only these hosts (empty: every host).
    pub only: Vec<HostName>,
    /// Evaluate only instead of building (also forced by `local_build = false`).
    pub dry: bool,
    /// Publish the hosts that built (deploy) — otherwise only build.
    pub publish: bool,
}

/// One host to build: its staged directory and how to build it.
struct Job {
    host: String,
    dir: String,
    kind: HostKind,
    staged: PathBuf,
}

/// A temporary directory removed on drop (core does not depend on `tempfile`).
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> std::io::Result<Self> {
        let base = std::env::temp_dir();
        for i in 0..100u32 {
            let p = base.join(format!(
                "bento-stage-{}-{}-{i}",
                std::process::id(),
                OffsetDateTime::now_utc().unix_timestamp_nanos() % 1_000_000_000
            ));
            match fs::create_dir(&p) {
                Ok(()) => return Ok(Scratch(p)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::other("cannot create a staging directory"))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Builds (and with `opts.publish`, publishes) every host. A host that fails does
/// not stop the others; the outcome of each host is returned in build order.
pub fn run(
    bento: &BentoDir,
    opts: &RunOptions,
    on_event: &(dyn Fn(Event) + Sync),
) -> Result<Vec<HostOutcome>, DeployError> {
    run_verifying(bento, opts, false, on_event)
}

/// [`run`]; with `verify`, an unchanged host's live release is hashed whole
/// (`bento deploy --verify`) instead of checked by sizes, modes and stamps.
pub fn run_verifying(
    bento: &BentoDir,
    opts: &RunOptions,
    verify: bool,
    on_event: &(dyn Fn(Event) + Sync),
) -> Result<Vec<HostOutcome>, DeployError> {
    let settings = &bento.settings;
    let nix = Nix {
        extra_args: settings.build_args.clone(),
        include: Vec::new(),
    };
    let mode = if opts.dry || !settings.local_build {
        BuildMode::DryBuild
    } else {
        BuildMode::Build
    };
    let scratch = Scratch::new()?;
    let (dirs, unusable) = bento.host_dirs()?;
    for name in unusable {
        on_event(Event::Warning {
            message: format!("hosts/{name}: neither flake.nix nor configuration.nix, skipped"),
        });
    }

    let mut state = BuildState::load(&bento.root);
    let mut outcomes: Vec<HostOutcome> = Vec::new();
    let mut jobs: Vec<Job> = Vec::new();
    // Every host name seen, wanted or not, for `--host` typos.
    let mut known: Vec<String> = Vec::new();
    // A flake that fails to evaluate and was never seen evaluating: its hosts are
    // unknown, so a `--host` name may be one of them.
    let mut unknown_hosts_failed = false;
    let wanted = |h: &str| opts.only.is_empty() || opts.only.iter().any(|o| o.as_str() == h);
    for d in dirs {
        if d.kind == HostKind::NonFlake {
            known.push(d.dir_name.clone());
            // Known by name before staging: skip unwanted ones early.
            if !wanted(&d.dir_name) {
                continue;
            }
        }
        let fail = |host: &str, error: String| HostOutcome {
            host: host.to_owned(),
            dir: d.dir_name.clone(),
            kind: Some(d.kind),
            system: None,
            error: Some(error),
            published: None,
            elapsed: Duration::ZERO,
        };
        let staged = scratch.0.join(&d.dir_name);
        let discovered = release::stage_tree(&d.path, &staged, &bento.root)
            .map_err(|e| e.to_string())
            .and_then(|_| {
                discover(&nix, &d, &staged).map_err(|e| admin_paths(&e, &staged, &d.dir_name))
            });
        match discovered {
            Ok(names) => {
                if d.kind == HostKind::Flake {
                    state.dirs.insert(d.dir_name.clone(), names.clone());
                }
                known.extend(names.iter().cloned());
                for name in names {
                    match HostName::new(&name) {
                        Ok(h) if wanted(h.as_str()) => jobs.push(Job {
                            host: h.to_string(),
                            dir: d.dir_name.clone(),
                            kind: d.kind,
                            staged: staged.clone(),
                        }),
                        Ok(_) => {}
                        Err(e) => outcomes.push(fail(&name, e.to_string())),
                    }
                }
            }
            // A directory that cannot be staged or evaluated fails every host it
            // held when it last evaluated (each counted and named), else itself.
            Err(error) => {
                let cached: Vec<String> = match d.kind {
                    HostKind::NonFlake => vec![d.dir_name.clone()],
                    HostKind::Flake => state.dirs.get(&d.dir_name).cloned().unwrap_or_default(),
                };
                if cached.is_empty() {
                    unknown_hosts_failed = true;
                    if opts.only.is_empty() {
                        outcomes.push(fail(&d.dir_name, error));
                    }
                    continue;
                }
                for h in &cached {
                    known.push(h.clone());
                    if wanted(h) {
                        outcomes.push(fail(h, error.clone()));
                    }
                }
            }
        }
    }
    let missing: Vec<(String, Option<String>)> = opts
        .only
        .iter()
        .filter(|n| !known.iter().any(|k| k == n.as_str()))
        .map(|n| {
            (
                n.to_string(),
                did_you_mean(n.as_str(), known.iter().map(String::as_str)),
            )
        })
        .collect();
    if !missing.is_empty() && !unknown_hosts_failed {
        return Err(DeployError::NoSuchHost(missing));
    }
    for o in &outcomes {
        on_event(Event::Failed {
            host: o.host.clone(),
            error: o.error.clone().unwrap_or_default(),
        });
    }
    on_event(Event::Planned {
        hosts: jobs.iter().map(|j| j.host.clone()).collect(),
    });

    let results: Mutex<Vec<HostOutcome>> = Mutex::new(Vec::new());
    let queue = Mutex::new(jobs.iter());
    let workers = settings.build_jobs.min(jobs.len()).max(1);
    if workers > 1 {
        nix.open_store();
    }
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let Some(job) = queue.lock().expect("queue").next() else {
                    break;
                };
                let o = build_one(&nix, job, mode, on_event);
                results.lock().expect("results").push(o);
            });
        }
    });
    let mut built = results.into_inner().expect("results");
    built.sort_by_key(|o| jobs.iter().position(|j| j.host == o.host));

    if opts.publish {
        let export = mode == BuildMode::Build && settings.export_closures;
        publish_all(bento, &jobs, &mut built, verify, export, on_event);
    }
    outcomes.extend(built);
    record(&mut state, &outcomes, mode);
    if let Err(e) = state.save(&bento.root) {
        on_event(Event::Warning {
            message: format!(
                "cannot record the build results in {}: {e}",
                BuildState::path(&bento.root).display()
            ),
        });
    }
    Ok(outcomes)
}

/// Remembers which hosts build. A publication failure is not the configuration's
/// fault, and a dry build that evaluates does not prove that a host which failed
/// to build builds again.
fn record(state: &mut BuildState, outcomes: &[HostOutcome], mode: BuildMode) {
    let now = OffsetDateTime::now_utc();
    for o in outcomes {
        match (&o.system, &o.error) {
            (None, Some(e)) => state.record_failure(&o.host, &o.dir, e, now),
            (Some(_), _) if mode == BuildMode::Build => state.record_ok(&o.host, &o.dir, now),
            (Some(_), _) => {
                if !state.host(&o.host).is_some_and(|h| h.failing()) {
                    state.record_ok(&o.host, &o.dir, now);
                }
            }
            (None, None) => {}
        }
    }
}

/// The fleet's host names, without building: `hosts` as (host, directory), and
/// the flake directories whose hosts could not be listed (with nix's message),
/// unless an earlier evaluation named them.
#[derive(Debug, Default, Clone)]
pub struct HostList {
    pub hosts: Vec<(String, String)>,
    pub unlisted: Vec<(String, String)>,
}

pub fn host_names(bento: &BentoDir) -> std::io::Result<HostList> {
    let nix = Nix {
        extra_args: bento.settings.build_args.clone(),
        include: Vec::new(),
    };
    let state = BuildState::load(&bento.root);
    let scratch = Scratch::new()?;
    let (dirs, _) = bento.host_dirs()?;
    let mut list = HostList::default();
    for d in dirs {
        let staged = scratch.0.join(&d.dir_name);
        let found = match d.kind {
            HostKind::NonFlake => Ok(vec![d.dir_name.clone()]),
            HostKind::Flake => release::stage_tree(&d.path, &staged, &bento.root)
                .map_err(|e| e.to_string())
                .and_then(|_| {
                    discover(&nix, &d, &staged).map_err(|e| admin_paths(&e, &staged, &d.dir_name))
                }),
        };
        let names = match (found, state.dirs.get(&d.dir_name)) {
            (Ok(names), _) => names,
            (Err(_), Some(cached)) => cached.clone(),
            (Err(e), None) => {
                list.unlisted.push((d.dir_name.clone(), e));
                continue;
            }
        };
        list.hosts
            .extend(names.into_iter().map(|n| (n, d.dir_name.clone())));
    }
    Ok(list)
}

fn discover(nix: &Nix, d: &HostDir, staged: &Path) -> Result<Vec<String>, String> {
    match d.kind {
        HostKind::NonFlake => Ok(vec![d.dir_name.clone()]),
        HostKind::Flake => {
            let names = nix
                .flake_configurations(staged)
                .map_err(|e| format!("cannot evaluate the flake: {}", e.message()))?;
            if names.is_empty() {
                return Err("the flake has no nixosConfigurations".into());
            }
            Ok(names)
        }
    }
}

fn build_one(
    nix: &Nix,
    job: &Job,
    mode: BuildMode,
    on_event: &(dyn Fn(Event) + Sync),
) -> HostOutcome {
    on_event(Event::Started {
        host: job.host.clone(),
    });
    let start = Instant::now();
    let on_line = |l: &str| {
        on_event(Event::Line {
            host: job.host.clone(),
            line: l.to_owned(),
        })
    };
    let r = match job.kind {
        HostKind::Flake => nix.flake_system(&job.staged, &job.host, mode, on_line),
        HostKind::NonFlake => nix.nonflake_system(&job.staged, mode, on_line),
    };
    let elapsed = start.elapsed();
    let (system, error) = match r {
        Ok(p) => {
            on_event(Event::Built {
                host: job.host.clone(),
                system: p.clone(),
                elapsed,
                evaluated: mode == BuildMode::DryBuild,
            });
            (Some(p), None)
        }
        Err(e) => {
            let msg = admin_paths(&e.message(), &job.staged, &job.dir);
            on_event(Event::Failed {
                host: job.host.clone(),
                error: msg.clone(),
            });
            (None, Some(msg))
        }
    };
    HostOutcome {
        host: job.host.clone(),
        dir: job.dir.clone(),
        kind: Some(job.kind),
        system,
        error,
        published: None,
        elapsed,
    }
}

fn publish_all(
    bento: &BentoDir,
    jobs: &[Job],
    built: &mut [HostOutcome],
    verify: bool,
    export: bool,
    on_event: &(dyn Fn(Event) + Sync),
) {
    let settings = &bento.settings;
    let mut chroot = Chroot::new(&settings.chroot_dir);
    // The fleet key signs every manifest and every exported closure; made on first
    // use. Without it nothing is published: agents that pin the key would refuse.
    let key = if built.iter().any(|o| o.ok()) {
        match crate::signing::ensure_key(
            &bento.signing_key_path(),
            &crate::signing::default_key_name(),
        ) {
            Ok((key, origin)) => {
                if origin == crate::signing::KeyOrigin::Created {
                    on_event(Event::Warning {
                        message: format!(
                            "made the fleet's signing key {} (public key {}): pin it on the agents (trusted_public_keys)",
                            bento.signing_key_path().display(),
                            key.public()
                        ),
                    });
                }
                let key = std::sync::Arc::new(key);
                chroot = chroot.with_signer(key.clone());
                Some(key)
            }
            Err(e) => {
                let msg = format!("signing key: {e}");
                for o in built.iter_mut().filter(|o| o.ok()) {
                    on_event(Event::Failed {
                        host: o.host.clone(),
                        error: msg.clone(),
                    });
                    o.error = Some(msg.clone());
                }
                return;
            }
        }
    } else {
        None
    };
    let root = chroot::is_root();
    let publisher = settings
        .publish_user
        .as_deref()
        .map(|u| chroot::lookup_user(u).ok_or(u));
    let mut states: BTreeMap<HostName, Option<String>> = BTreeMap::new();
    for o in built.iter_mut().filter(|o| o.ok()) {
        let job = jobs
            .iter()
            .find(|j| j.host == o.host)
            .expect("job of outcome");
        let host = HostName::new(&o.host).expect("validated before the build");
        let result = (|| -> Result<Published, String> {
            if settings.sftp.is_some() {
                let publisher = match &publisher {
                    None => None,
                    Some(Ok(ids)) => Some(*ids),
                    Some(Err(u)) => return Err(format!("publish_user {u:?} does not exist")),
                };
                chroot
                    .ensure_host(&host, Chroot::embedded_owners(publisher.filter(|_| root)))
                    .map_err(|e| e.to_string())?;
            } else if root {
                let user = settings.host_user(&host);
                let logs = chroot::lookup_user(&user).ok_or_else(|| {
                    chroot::ChrootError::NoSuchUser {
                        user: user.clone(),
                        host: host.to_string(),
                    }
                    .to_string()
                })?;
                let publisher = match &publisher {
                    None => (0, 0),
                    Some(Ok(ids)) => *ids,
                    Some(Err(u)) => return Err(format!("publish_user {u:?} does not exist")),
                };
                chroot
                    .ensure_host(
                        &host,
                        Owners {
                            dirs: (0, 0),
                            logs,
                            publisher,
                        },
                    )
                    .map_err(|e| e.to_string())?;
            }
            // Each host's own secrets, in its release only.
            let with_secrets = crate::secrets::release_tree(
                &bento.root,
                &host,
                &job.staged,
                settings.sftp.is_some(),
            )
            .map_err(|e| e.to_string())?;
            let tree = with_secrets.as_deref().unwrap_or(&job.staged);
            let listing = TreeListing::read(tree).map_err(|e| e.to_string())?;
            let expected = match job.kind {
                HostKind::Flake => o.system.as_ref().map(|p| p.display().to_string()),
                HostKind::NonFlake => None,
            };
            let mut manifest =
                Manifest::for_tree(&listing, host.as_str(), OffsetDateTime::now_utc(), expected);
            if let (true, Some(key), HostKind::Flake, Some(system)) =
                (export, &key, job.kind, o.system.as_deref())
            {
                let started = Instant::now();
                // Root exports for the publisher, who links and prunes later.
                let owner = match (&publisher, root) {
                    (Some(Ok(ids)), true) => Some(*ids),
                    _ => None,
                };
                let ex = chroot
                    .nar_store()
                    .export(system, key, &[], owner)
                    .map_err(|e| {
                        format!("cannot export the closure of {}: {e}", system.display())
                    })?;
                on_event(Event::Line {
                    host: o.host.clone(),
                    line: format!(
                        "closure: {} paths, {} new in the cache, {} bytes compressed ({:.1} s)",
                        ex.closure.paths.len(),
                        ex.new_paths,
                        ex.closure.file_bytes(),
                        started.elapsed().as_secs_f64()
                    ),
                });
                manifest.closure = Some(ex.closure);
            }
            chroot
                .publish_checked(&host, tree, &manifest, settings.keep_releases, verify)
                .map_err(|e| e.to_string())
        })();
        match result {
            Ok(p) => {
                states.insert(
                    host.clone(),
                    match job.kind {
                        HostKind::Flake => o.system.as_deref().map(store_basename),
                        HostKind::NonFlake => None,
                    },
                );
                on_event(Event::Published {
                    host: o.host.clone(),
                    outcome: p.clone(),
                });
                o.published = Some(p);
            }
            Err(e) => {
                on_event(Event::Failed {
                    host: o.host.clone(),
                    error: e.clone(),
                });
                o.error = Some(e);
            }
        }
    }
    if export {
        if let Err(e) = chroot.collect_nars() {
            on_event(Event::Warning {
                message: format!("cannot prune the shared NAR store: {e}"),
            });
        }
    }
    if !states.is_empty() {
        if let Err(e) = chroot.update_states(&states) {
            on_event(Event::Warning {
                message: format!("cannot update states.txt: {e}"),
            });
        }
    }
}

/// Counts of a run, for the one-line summary the CLI and the panel both show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub total: usize,
    pub published: usize,
    pub unchanged: usize,
    pub failed: usize,
}

impl Summary {
    pub fn of(outcomes: &[HostOutcome]) -> Self {
        let count = |f: &dyn Fn(&HostOutcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
        Summary {
            total: outcomes.len(),
            published: count(&|o| matches!(o.published, Some(Published::New { .. }))),
            unchanged: count(&|o| matches!(o.published, Some(Published::Unchanged { .. }))),
            failed: count(&|o| !o.ok()),
        }
    }

    /// `3 hosts: 1 published, 2 unchanged, 0 failed` for a deploy, else
    /// `3 hosts: 3 built, 0 failed` with `verb` (built, evaluated).
    pub fn line(&self, deploy: bool, verb: &str) -> String {
        let hosts = if self.total == 1 { "host" } else { "hosts" };
        if deploy {
            format!(
                "{} {hosts}: {} published, {} unchanged, {} failed",
                self.total, self.published, self.unchanged, self.failed
            )
        } else {
            format!(
                "{} {hosts}: {} {verb}, {} failed",
                self.total,
                self.total - self.failed,
                self.failed
            )
        }
    }
}
