//! A bento directory of toy hosts with its chroot, and the real `bento` binary run
//! against it — the fixture of the CLI tests.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{ensure, Context, Result};

use crate::toy::ToyFleet;
use crate::{bins, nixenv, TestDir};

pub struct BentoFixture {
    pub dir: TestDir,
    pub fleet: ToyFleet,
}

impl BentoFixture {
    /// A bento directory with a `bento.toml` whose chroot lives in the test dir and
    /// whose hosts' logs belong to root (no system user per host needed).
    pub fn new(label: &str) -> Result<Self> {
        let dir = TestDir::new(label)?;
        let fleet = ToyFleet::new(&dir.join("bento"))?;
        let f = BentoFixture { dir, fleet };
        f.write_config("")?;
        Ok(f)
    }

    pub fn bento_dir(&self) -> PathBuf {
        self.dir.join("bento")
    }

    pub fn chroot(&self) -> PathBuf {
        self.dir.join("chroot")
    }

    pub fn host_chroot(&self, host: &str) -> PathBuf {
        self.chroot().join(host)
    }

    /// Rewrites `bento.toml` with the fixture's chroot and `extra` TOML appended.
    pub fn write_config(&self, extra: &str) -> Result<()> {
        fs::write(
            self.bento_dir().join("bento.toml"),
            format!(
                "chroot_dir = {:?}\ndefault_user = \"root\"\nremote = \"127.0.0.1\"\n{extra}",
                self.chroot().display().to_string()
            ),
        )?;
        Ok(())
    }

    /// The real `bento` binary, in the bento directory, with offline nix.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(bins::bin("bento"));
        c.env("BENTO_DIR", self.bento_dir())
            .env("NIX_PATH", self.fleet.nix_path())
            .env_remove("NAME")
            .envs(nixenv::nix_env());
        c
    }

    /// Runs `bento ARGS` and returns its output whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Result<Output> {
        self.cmd()
            .args(args)
            .output()
            .with_context(|| format!("running bento {args:?}"))
    }

    /// Runs `bento ARGS` and fails unless it succeeds.
    pub fn ok(&self, args: &[&str]) -> Result<Output> {
        let out = self.run(args)?;
        ensure!(
            out.status.success(),
            "bento {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out)
    }

    /// `bento status --json`, parsed.
    pub fn status(&self) -> Result<Vec<serde_json::Value>> {
        let out = self.ok(&["status", "--json"])?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// One host's object from `bento status --json`.
    pub fn host_status(&self, host: &str) -> Result<serde_json::Value> {
        self.status()?
            .into_iter()
            .find(|h| h["host"] == host)
            .with_context(|| format!("{host} missing from bento status"))
    }
}

/// The revision a host's `config` link resolves to, and that release's directory.
pub fn current_release(host_chroot: &Path) -> Option<(String, PathBuf)> {
    let target = fs::read_link(host_chroot.join(".releases/current")).ok()?;
    let rev = target.to_str()?.to_owned();
    Some((rev.clone(), host_chroot.join(".releases").join(rev)))
}
