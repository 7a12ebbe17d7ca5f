//! Running `nix`: host discovery in flakes, building systems, closure diffs,
//! flake updates. Always through [`Cmd`]: argument lists, never a shell.

use std::path::{Path, PathBuf};

use crate::cmd::{Cmd, CmdError};

#[derive(Debug, thiserror::Error)]
pub enum NixError {
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error("unexpected output from `{cmd}`: {message}")]
    Output { cmd: String, message: String },
}

impl NixError {
    /// One line for tables and reports: the first line of nix's `error:` block.
    pub fn summary(&self) -> String {
        match self {
            NixError::Cmd(c) => c.summary(),
            other => other.to_string(),
        }
    }

    /// Nix's whole `error:` block: the message, its position and source lines.
    pub fn message(&self) -> String {
        match self {
            NixError::Cmd(c) => c.message(),
            other => other.to_string(),
        }
    }
}

/// What to do with a built system (the `nixos-rebuild` verbs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildMode {
    /// Evaluate only: the output path is known, nothing is built.
    DryBuild,
    Build,
}

/// How nix is called: extra arguments from the settings (`--fallback`, `--max-jobs`...).
#[derive(Debug, Clone, Default)]
pub struct Nix {
    pub extra_args: Vec<String>,
    /// Extra `NIX_PATH` entries (`-I`), for non-flake builds.
    pub include: Vec<String>,
}

/// A reference to a flake in a local directory that need not be a git repository.
pub fn flake_ref(dir: &Path) -> String {
    format!("path:{}", dir.display())
}

/// The attribute of a flake host's system.
pub fn toplevel_attr(name: &str) -> String {
    format!("nixosConfigurations.\"{name}\".config.system.build.toplevel")
}

impl Nix {
    fn nix(&self, sub: &[&str]) -> Cmd {
        Cmd::new("nix")
            .args(["--extra-experimental-features", "nix-command flakes"])
            .args(sub)
    }

    /// Opens the store once (`nix store ping`). Nix creates its state (database,
    /// gcroots, profiles) on its first use, and two first uses at once race for it
    /// (`creating symlink ... gcroots/profiles ...: File exists`): call this before
    /// starting nix commands in parallel. A store that cannot be opened is left to
    /// those commands to report, in nix's own words.
    pub fn open_store(&self) {
        if let Err(e) = self.nix(&["store", "ping"]).args(&self.extra_args).run() {
            tracing::debug!("nix store ping: {}", e.summary());
        }
    }

    /// `nix flake <sub> --json` of the flake in `dir`, parsed.
    fn flake_json(&self, sub: &str, dir: &Path) -> Result<serde_json::Value, NixError> {
        let cmd = self
            .nix(&["flake", sub, "--json"])
            .args(&self.extra_args)
            .arg(flake_ref(dir));
        let out = cmd.run()?;
        serde_json::from_str(&out.stdout).map_err(|e| NixError::Output {
            cmd: cmd.display(),
            message: e.to_string(),
        })
    }

    /// The names of `nixosConfigurations` in a flake (`nix flake show --json`).
    pub fn flake_configurations(&self, dir: &Path) -> Result<Vec<String>, NixError> {
        let v = self.flake_json("show", dir)?;
        Ok(v.get("nixosConfigurations")
            .and_then(|c| c.as_object())
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default())
    }

    /// Builds (or only evaluates) a flake host's system; returns its store path.
    pub fn flake_system(
        &self,
        dir: &Path,
        name: &str,
        mode: BuildMode,
        on_line: impl FnMut(&str),
    ) -> Result<PathBuf, NixError> {
        let installable = format!("{}#{}", flake_ref(dir), toplevel_attr(name));
        match mode {
            BuildMode::Build => {
                let cmd = self
                    .nix(&["build", "--json", "--no-link", "-L"])
                    .args(&self.extra_args)
                    .arg(&installable);
                let out = cmd.run_streaming(on_line)?;
                parse_build_json(&cmd, &out.stdout)
            }
            BuildMode::DryBuild => {
                let cmd = self
                    .nix(&["eval", "--raw"])
                    .args(&self.extra_args)
                    .arg(format!("{installable}.outPath"));
                let out = cmd.run_streaming(on_line)?;
                Ok(PathBuf::from(out.stdout.trim()))
            }
        }
    }

    /// Builds (or evaluates) a non-flake host: `<nixpkgs/nixos>` with `nixos-config`.
    pub fn nonflake_system(
        &self,
        config_dir: &Path,
        mode: BuildMode,
        on_line: impl FnMut(&str),
    ) -> Result<PathBuf, NixError> {
        let mut cmd = match mode {
            BuildMode::Build => Cmd::new("nix-build").arg("--no-out-link"),
            BuildMode::DryBuild => Cmd::new("nix-instantiate"),
        };
        cmd = cmd
            .arg("<nixpkgs/nixos>")
            .args(["-A", "config.system.build.toplevel"])
            .arg("-I")
            .arg(format!(
                "nixos-config={}",
                config_dir.join("configuration.nix").display()
            ));
        for i in &self.include {
            cmd = cmd.args(["-I", i]);
        }
        let cmd = cmd.args(&self.extra_args);
        let out = cmd.run_streaming(on_line)?;
        let path = out
            .stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('/'))
            .ok_or_else(|| NixError::Output {
                cmd: cmd.display(),
                message: "no store path printed".into(),
            })?;
        if mode == BuildMode::DryBuild {
            // nix-instantiate prints the .drv; its output path is what a build gives.
            let q = Cmd::new("nix-store").args(["-q", "--outputs", path]);
            let out = q.run()?;
            return Ok(PathBuf::from(
                out.stdout.lines().next().unwrap_or("").trim(),
            ));
        }
        Ok(PathBuf::from(path.trim()))
    }

    /// The names of a flake's direct inputs (`nix flake metadata --json`).
    pub fn flake_inputs(&self, dir: &Path) -> Result<Vec<String>, NixError> {
        let v = self.flake_json("metadata", dir)?;
        let root = v["locks"]["root"].as_str().unwrap_or("root");
        Ok(v["locks"]["nodes"][root]["inputs"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default())
    }

    /// `nix flake update` (every input, or one) in a flake directory.
    pub fn flake_update(&self, dir: &Path, input: Option<&str>) -> Result<String, NixError> {
        let cmd = match input {
            Some(i) => self
                .nix(&["flake", "lock", "--update-input", i])
                .arg(flake_ref(dir)),
            None => self.nix(&["flake", "update"]).arg(flake_ref(dir)),
        };
        let out = cmd.args(&self.extra_args).run()?;
        Ok(out.stderr)
    }

    /// The closure difference between two systems: `nvd diff` when it is on PATH,
    /// else `nix store diff-closures`.
    pub fn diff_closures(&self, from: &Path, to: &Path) -> Result<String, NixError> {
        if which("nvd").is_some() {
            let out = Cmd::new("nvd").arg("diff").arg(from).arg(to).run()?;
            return Ok(out.stdout);
        }
        let out = self
            .nix(&["store", "diff-closures"])
            .arg(from)
            .arg(to)
            .run()?;
        Ok(out.stdout)
    }
}

fn parse_build_json(cmd: &Cmd, stdout: &str) -> Result<PathBuf, NixError> {
    let v: serde_json::Value = serde_json::from_str(stdout).map_err(|e| NixError::Output {
        cmd: cmd.display(),
        message: e.to_string(),
    })?;
    v.get(0)
        .and_then(|o| o.get("outputs"))
        .and_then(|o| o.get("out"))
        .and_then(|o| o.as_str())
        .map(PathBuf::from)
        .ok_or_else(|| NixError::Output {
            cmd: cmd.display(),
            message: "no output path in the build result".into(),
        })
}

/// Finds a program on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The basename of a store path (`<hash>-nixos-system-...`).
pub fn store_basename(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
