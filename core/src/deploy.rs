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
    Built {
        host: String,
        system: PathBuf,
        elapsed: Duration,
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
) -> std::io::Result<Vec<HostOutcome>> {
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

    let mut outcomes: Vec<HostOutcome> = Vec::new();
    let mut jobs: Vec<Job> = Vec::new();
    let wanted = |h: &str| opts.only.is_empty() || opts.only.iter().any(|o| o.as_str() == h);
    for d in dirs {
        // Non-flake hosts are known by name before staging: skip unwanted ones early.
        if d.kind == HostKind::NonFlake && !wanted(&d.dir_name) {
            continue;
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
        if let Err(e) = release::stage_tree(&d.path, &staged, &bento.root) {
            outcomes.push(fail(&d.dir_name, e.to_string()));
            continue;
        }
        match discover(&nix, &d, &staged) {
            Ok(names) => {
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
            Err(e) => outcomes.push(fail(&d.dir_name, e)),
        }
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
        publish_all(bento, &jobs, &mut built, on_event);
    }
    outcomes.extend(built);
    Ok(outcomes)
}

fn discover(nix: &Nix, d: &HostDir, staged: &Path) -> Result<Vec<String>, String> {
    match d.kind {
        HostKind::NonFlake => Ok(vec![d.dir_name.clone()]),
        HostKind::Flake => {
            let names = nix
                .flake_configurations(staged)
                .map_err(|e| format!("cannot evaluate the flake: {}", e.summary()))?;
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
            });
            (Some(p), None)
        }
        Err(e) => {
            let msg = e.summary();
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
    on_event: &(dyn Fn(Event) + Sync),
) {
    let settings = &bento.settings;
    let chroot = Chroot::new(&settings.chroot_dir);
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
            let listing = TreeListing::read(&job.staged).map_err(|e| e.to_string())?;
            let expected = match job.kind {
                HostKind::Flake => o.system.as_ref().map(|p| p.display().to_string()),
                HostKind::NonFlake => None,
            };
            let manifest =
                Manifest::for_tree(&listing, host.as_str(), OffsetDateTime::now_utc(), expected);
            chroot
                .publish(&host, &job.staged, &manifest, settings.keep_releases)
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
