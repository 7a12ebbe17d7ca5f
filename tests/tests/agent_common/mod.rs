//! The agent tests' fixture: a real sshd with one chroot SFTP user per host, a bento
//! directory of toy hosts published with the real `bento deploy`, and the real
//! `bento-agent` run against temporary profile, booted-system, state and runtime
//! paths, with a reboot command that only records.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bento_core::agent_proto::AgentStatus;
use bento_core::report::ReportMeta;
use bento_core::status::HostStatus;
use bento_tests::embedded::EmbeddedSftp;
use bento_tests::endpoint::Endpoint;
use bento_tests::sshd::{unique_prefix, SshServer};
use bento_tests::toy::ToyFleet;
use bento_tests::{bins, nixenv, wait_for, TestDir};

pub const AGENT_TIMEOUT: Duration = Duration::from_secs(180);

/// A server with its chroot, and a bento directory whose hosts live there: OpenSSH's
/// sshd with a user per host, or bento's own SFTP server ([`Fleet::embedded`]).
pub struct Fleet<S = SshServer> {
    pub dir: TestDir,
    pub server: S,
    pub toy: ToyFleet,
    pub hosts: Vec<String>,
}

impl Fleet {
    /// One flake host per name in `names` (made unique with a fresh prefix), each with
    /// its own system user on a fresh sshd. `bento.toml` gets `extra` appended.
    pub fn new(label: &str, names: &[&str], extra: &str) -> Result<Fleet> {
        Self::with_kind(label, names, extra, true)
    }

    /// Like [`Fleet::new`] with non-flake hosts (`configuration.nix`).
    pub fn nonflake(label: &str, names: &[&str], extra: &str) -> Result<Fleet> {
        Self::with_kind(label, names, extra, false)
    }

    fn with_kind(label: &str, names: &[&str], extra: &str, flake: bool) -> Result<Fleet> {
        let dir = TestDir::new(label)?;
        // The agent's runtime dir lives here and unprivileged clients must reach it.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        let p = unique_prefix();
        let hosts: Vec<String> = names.iter().map(|n| format!("{p}-{n}")).collect();
        let refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
        let server = SshServer::start(&refs)?;
        let mut toy = ToyFleet::new(&dir.join("bento"))?;
        for h in &hosts {
            if flake {
                toy.flake_host(h, &[h])?;
            } else {
                toy.nonflake_host(h)?;
            }
        }
        let f = Fleet {
            dir,
            server,
            toy,
            hosts,
        };
        f.write_config(extra)?;
        Ok(f)
    }
}

impl Fleet<EmbeddedSftp> {
    /// Flake hosts served by `bento sftp` (one key each in bento.toml, no system
    /// users); `sftp_settings` go into `[sftp]`.
    pub fn embedded(label: &str, names: &[&str], extra: &str, sftp_settings: &str) -> Result<Self> {
        Ok(Self::embedded_on(label, names, extra, sftp_settings, |_| Ok(()))?.0)
    }

    /// [`Fleet::embedded`], with `prepare` run on the chroot's path before anything
    /// is put there (a test mounts its own file system on it).
    pub fn embedded_on<T>(
        label: &str,
        names: &[&str],
        extra: &str,
        sftp_settings: &str,
        prepare: impl FnOnce(&Path) -> Result<T>,
    ) -> Result<(Self, T)> {
        let dir = TestDir::new(label)?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        let prepared = prepare(&dir.join("chroot"))?;
        let p = unique_prefix();
        let hosts: Vec<String> = names.iter().map(|n| format!("{p}-{n}")).collect();
        let refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
        let mut toy = ToyFleet::new(&dir.join("bento"))?;
        for h in &hosts {
            toy.flake_host(h, &[h])?;
        }
        let server = EmbeddedSftp::new(
            &dir.join("sftp"),
            toy.bento_dir(),
            &dir.join("chroot"),
            &refs,
        )?
        .with_settings(sftp_settings);
        let mut f = Fleet {
            dir,
            server,
            toy,
            hosts,
        };
        f.write_config(extra)?;
        f.server.start()?;
        // The agents' port, for a human reading bento.toml.
        f.write_config(extra)?;
        Ok((f, prepared))
    }
}

impl<S: Endpoint> Fleet<S> {
    pub fn host(&self, i: usize) -> &str {
        &self.hosts[i]
    }

    pub fn bento_dir(&self) -> PathBuf {
        self.toy.bento_dir().to_owned()
    }

    pub fn write_config(&self, extra: &str) -> Result<()> {
        fs::write(
            self.bento_dir().join("bento.toml"),
            format!(
                "chroot_dir = {:?}\nremote = \"127.0.0.1\"\nremote_port = {}\npoll_interval = 3600\n{extra}{}",
                self.server.chroot_dir().display().to_string(),
                self.server.port(),
                self.server.bento_toml()
            ),
        )?;
        Ok(())
    }

    fn bento(&self) -> Command {
        let mut c = Command::new(bins::bin("bento"));
        c.env("BENTO_DIR", self.bento_dir())
            .env("NIX_PATH", self.toy.nix_path())
            .env_remove("NAME")
            .envs(nixenv::nix_env());
        c
    }

    /// The real `bento deploy`; fails unless it succeeds.
    pub fn deploy(&self) -> Result<()> {
        let out = self.bento().arg("deploy").output()?;
        ensure!(
            out.status.success(),
            "bento deploy failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// `bento status --json` for one host.
    pub fn status(&self, host: &str) -> Result<HostStatus> {
        let out = self.bento().args(["status", "--json"]).output()?;
        ensure!(
            out.status.success(),
            "bento status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let all: Vec<HostStatus> = serde_json::from_slice(&out.stdout)?;
        all.into_iter()
            .find(|h| h.host == host)
            .with_context(|| format!("{host} missing from bento status"))
    }

    pub fn host_chroot(&self, host: &str) -> PathBuf {
        self.server.host_chroot(host)
    }

    /// The revision `.releases/current` points to.
    pub fn published(&self, host: &str) -> Result<String> {
        let t = fs::read_link(self.host_chroot(host).join(".releases/current"))?;
        Ok(t.to_string_lossy().into_owned())
    }

    /// Report logs in the host's `logs/` (sorted by name).
    pub fn reports(&self, host: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.host_chroot(host).join("logs"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".log.gz") && !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The sidecar of a report log.
    pub fn sidecar(&self, host: &str, log_name: &str) -> Result<ReportMeta> {
        let stem = log_name.trim_end_matches(".log.gz");
        let p = self
            .host_chroot(host)
            .join("logs")
            .join(format!("{stem}.json"));
        Ok(serde_json::from_slice(
            &fs::read(&p).with_context(|| format!("reading {}", p.display()))?,
        )?)
    }

    /// The report (log name and sidecar) that applied revision `rev`.
    pub fn report_for(&self, host: &str, rev: &str) -> Result<(String, ReportMeta)> {
        for r in self.reports(host) {
            let m = self.sidecar(host, &r)?;
            if m.revision.as_deref() == Some(rev) {
                return Ok((r, m));
            }
        }
        anyhow::bail!("no report of {rev} in {:?}", self.reports(host))
    }

    /// The manifest of the host's current release.
    pub fn manifest(&self, host: &str) -> Result<bento_core::release::Manifest> {
        let dir = self
            .host_chroot(host)
            .join(".releases")
            .join(self.published(host)?);
        Ok(serde_json::from_slice(&fs::read(
            dir.join(".bento-release.json"),
        )?)?)
    }

    /// The closure the host's current release names.
    pub fn closure(&self, host: &str) -> Result<bento_core::closure::Closure> {
        self.manifest(host)?
            .closure
            .context("the release names no closure")
    }

    /// The fleet's public key, as `bento check-config` prints it.
    pub fn public_key(&self) -> Result<String> {
        Ok(
            fs::read_to_string(self.bento_dir().join("signing-key.pub"))?
                .trim()
                .to_owned(),
        )
    }

    /// `run-once` through the counting relay: the bytes the server sent, and the run.
    pub fn run_via_relay(&self, agent: &Agent, cut_after: Option<u64>) -> Result<(u64, Run)> {
        let count = agent.root.join("relay.count");
        let counted = || -> u64 {
            fs::read_dir(&agent.root)
                .map(|rd| {
                    rd.flatten()
                        .filter(|e| e.file_name().to_string_lossy().starts_with("relay.count."))
                        .filter_map(|e| fs::read_to_string(e.path()).ok())
                        .filter_map(|t| t.trim().parse::<u64>().ok())
                        .sum()
                })
                .unwrap_or(0)
        };
        for e in fs::read_dir(&agent.root)?.flatten() {
            if e.file_name().to_string_lossy().starts_with("relay.count.") {
                fs::remove_file(e.path())?;
            }
        }
        let mut proxy = format!(
            "ProxyCommand={} 127.0.0.1 {} {}",
            bins::bin("bento-relay").display(),
            self.server.port(),
            count.display()
        );
        if let Some(c) = cut_after {
            proxy.push_str(&format!(" {c}"));
        }
        let s = &self.server;
        let kh = format!("UserKnownHostsFile={}", s.known_hosts_path().display());
        let out = agent
            .cmd(&[
                "run-once",
                "--ssh-option",
                &kh,
                "--ssh-option",
                "StrictHostKeyChecking=accept-new",
                "--ssh-option",
                "IdentitiesOnly=yes",
                "--ssh-option",
                &proxy,
            ])
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("--- bento-agent run-once via relay ---\n{stderr}--- end ---");
        let bytes = counted();
        eprintln!("relay: {bytes} bytes from the server");
        Ok((
            bytes,
            Run {
                code: out.status.code(),
                stderr,
            },
        ))
    }

    /// An agent for `host`, its files under `<test dir>/agent-<host>/`.
    /// A new system version deployed for `host` and pulled by its agent: the host
    /// is up to date on the new revision, which is returned.
    pub fn deploy_version(&self, agent: &Agent, host: &str, version: &str) -> Result<String> {
        let before = self.published(host)?;
        self.toy.set_system_version(host, version)?;
        self.deploy()?;
        let after = self.published(host)?;
        ensure!(
            before != after,
            "version {version} published no new revision"
        );
        let run = agent.run_once()?;
        ensure!(run.ok(), "{}", run.stderr);
        let st = self.status(host)?;
        ensure!(
            st.state == bento_core::status::State::UpToDate
                && st.running_revision.as_deref() == Some(after.as_str()),
            "{host} is not up to date on {after}: {st:#?}"
        );
        Ok(after)
    }

    pub fn agent(&self, host: &str) -> Result<Agent> {
        Agent::new(self, host)
    }
}

/// One `bento-agent` and its files.
pub struct Agent {
    pub host: String,
    pub root: PathBuf,
    pub config: PathBuf,
    base_config: String,
    nix_path: String,
}

/// What a run printed and how it ended.
pub struct Run {
    pub code: Option<i32>,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

impl Agent {
    fn new<S: Endpoint>(fleet: &Fleet<S>, host: &str) -> Result<Agent> {
        let root = fleet.dir.join(format!("agent-{host}"));
        fs::create_dir_all(root.join("shim"))?;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755))?;
        // Every nix call the agent makes is recorded, to prove a poll built nothing.
        for prog in [
            "nix",
            "nix-build",
            "nix-env",
            "nix-instantiate",
            "nix-store",
        ] {
            let real = which(prog).with_context(|| format!("{prog} is not installed"))?;
            let shim = root.join("shim").join(prog);
            fs::write(
                &shim,
                format!(
                    "#!/bin/sh\necho \"{prog} $*\" >> '{}'\nexec '{}' \"$@\"\n",
                    root.join("nix-calls.log").display(),
                    real.display()
                ),
            )?;
            fs::set_permissions(&shim, fs::Permissions::from_mode(0o755))?;
        }
        let s = &fleet.server;
        let base_config = format!(
            r#"server = "127.0.0.1"
port = {port}
user = "{host}"
host = "{host}"
identity_file = "{key}"
ssh_options = ["UserKnownHostsFile={kh}", "StrictHostKeyChecking=accept-new", "IdentitiesOnly=yes"]
timeout = 10
interval = 3600
jitter = 0
state_dir = "{root}/state"
runtime_dir = "{root}/run"
system_profile = "{root}/profiles/system"
booted_system = "{root}/booted-system"
reboot_command = ["/bin/sh", "-c", "echo reboot >> '{root}/reboots'"]
"#,
            port = s.port(),
            key = s.key_path(host).display(),
            kh = s.known_hosts_path().display(),
            root = root.display(),
        );
        let a = Agent {
            host: host.to_owned(),
            config: root.join("agent.toml"),
            root,
            base_config,
            nix_path: fleet.toy.nix_path(),
        };
        a.set_config("")?;
        Ok(a)
    }

    /// Rewrites the settings file: the fixture's settings plus `extra` (top-level
    /// keys first, then tables).
    pub fn set_config(&self, extra: &str) -> Result<()> {
        fs::write(&self.config, format!("{}{extra}\n", self.base_config))?;
        Ok(())
    }

    pub fn profile(&self) -> PathBuf {
        self.root.join("profiles/system")
    }
    pub fn booted(&self) -> PathBuf {
        self.root.join("booted-system")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }
    pub fn runtime_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    /// The system the profile points to.
    pub fn active_system(&self) -> Option<PathBuf> {
        fs::canonicalize(self.profile()).ok()
    }

    /// The lines the reboot command recorded.
    pub fn reboots(&self) -> usize {
        fs::read_to_string(self.root.join("reboots"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    /// The nix commands the agent ran so far.
    pub fn nix_calls(&self) -> Vec<String> {
        fs::read_to_string(self.root.join("nix-calls.log"))
            .map(|s| s.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// Reports waiting in the agent's outbox.
    pub fn outbox(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.state_dir().join("outbox"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".log.gz"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Agent settings: `key` pinned, never build (`--max-jobs 0`).
    pub fn pin(&self, key: &str) -> Result<()> {
        self.set_config(&format!(
            "trusted_public_keys = [\"{key}\"]\nbuild = \"never\"\nnix_args = [\"--max-jobs\", \"0\"]\n"
        ))
    }

    /// `status.json` as the agent last wrote it.
    pub fn local_status(&self) -> Option<AgentStatus> {
        let bytes = fs::read(self.runtime_dir().join("status.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// `bento-agent --config <ours> ARGS`, with offline nix and the recording shims.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bins::bin("bento-agent"));
        let path = format!(
            "{}:{}",
            self.root.join("shim").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        c.arg("--config")
            .arg(&self.config)
            .args(args)
            .env("PATH", path)
            .env("NIX_PATH", &self.nix_path)
            .env("BENTO_AGENT_LOG", "debug")
            .envs(nixenv::nix_env())
            .stdin(Stdio::null());
        c
    }

    /// Starts `bento-agent ARGS` with stderr going to `<root>/<name>.log`.
    pub fn spawn(&self, args: &[&str], name: &str) -> Result<Child> {
        let log = fs::File::create(self.root.join(format!("{name}.log")))?;
        Ok(self.cmd(args).stdout(Stdio::null()).stderr(log).spawn()?)
    }

    pub fn spawned_log(&self, name: &str) -> String {
        fs::read_to_string(self.root.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// `bento-agent run-once`, to completion.
    pub fn run_once(&self) -> Result<Run> {
        let out: Output = self.cmd(&["run-once"]).output()?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!(
            "--- bento-agent run-once ({}) ---\n{stderr}--- end ---",
            out.status
        );
        Ok(Run {
            code: out.status.code(),
            stderr,
        })
    }

    /// Waits for `status.json` to satisfy `ready` while `child` (a daemon) runs.
    pub fn wait_daemon(
        &self,
        child: &mut Child,
        log: &str,
        ready: impl Fn(&AgentStatus) -> bool,
    ) -> Result<AgentStatus> {
        let mut exited = None;
        let st = wait_for(AGENT_TIMEOUT, || {
            if let Ok(Some(s)) = child.try_wait() {
                exited = Some(s);
                return Some(None);
            }
            self.local_status().filter(|s| ready(s)).map(Some)
        });
        match (st, exited) {
            (_, Some(s)) => anyhow::bail!("the daemon exited ({s}):\n{}", self.spawned_log(log)),
            (Some(Some(st)), _) => Ok(st),
            _ => anyhow::bail!("timed out; daemon log:\n{}", self.spawned_log(log)),
        }
    }

    /// Waits for the agent's `status.json` to satisfy `ready`.
    pub fn wait_status(
        &self,
        timeout: Duration,
        ready: impl Fn(&AgentStatus) -> bool,
    ) -> Option<AgentStatus> {
        wait_for(timeout, || self.local_status().filter(|s| ready(s)))
    }
}

pub fn which(prog: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// Store path basename.
pub fn base(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// Pids of live processes whose parent is `parent` and whose name is `comm`.
pub fn children_named(parent: u32, comm: &str) -> Vec<u32> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some((head, tail)) = stat.rsplit_once(')') else {
                return false;
            };
            let name = head.split_once('(').map(|x| x.1).unwrap_or("");
            let ppid: u32 = tail
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            ppid == parent && name == comm
        })
        .collect()
}

/// Pids of live processes running as `uid`.
pub fn processes_of(uid: u32) -> Vec<u32> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("Uid:"))
                        .and_then(|ids| ids.split_whitespace().next())
                        .and_then(|u| u.parse::<u32>().ok())
                })
                == Some(uid)
        })
        .collect()
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}
