//! The one generator of toy NixOS systems, for every test and the demo.
//!
//! There is no nixpkgs on the test machines. A toy system is a plain `derivation` with
//! `builder = "/bin/sh"`, named `nixos-system-<host>-<version>` like NixOS's toplevel,
//! whose output holds:
//!
//! - `bin/switch-to-configuration ACTION`: appends `ACTION <unix time>` to the host's
//!   marker file ([`ToyFleet::marker_path`], an absolute path baked in at build time),
//!   or exits 1 when `<marker>.fail` (any system of the host) or
//!   `<marker>.fail-<system version>` (that system only) exists at run time; every run,
//!   failed ones included, also appends `ACTION <store path> ok|failed` to
//!   `<marker>.systems` ([`ToyFleet::system_switches`]);
//! - `kernel`, `initrd`, `kernel-modules`: symlinks into a `toy-linux-<kernelVersion>`
//!   store path (as NixOS links into its kernel package), so two systems with the same
//!   kernel version share the same kernel paths and contents;
//! - `nixos-version`, `system`, `kernel-params`.
//!
//! A host directory's `system-version` and `kernel-version` files decide the system
//! (`<config>.system-version` / `<config>.kernel-version` override them for one
//! configuration of a multi-host flake). Any other file (`notes.txt`, …) leaves the store
//! path alone, which is how tests get "sync pending".
//!
//! Layout written under the bento directory (the original tool's):
//!
//! ```text
//! utils/toy.nix                 the shared nix code
//! hosts/<dir>/flake.nix         flake host: nixosConfigurations.<name> for each name
//! hosts/<dir>/configuration.nix non-flake host (networking.hostName, else <dir>)
//! hosts/<dir>/utils -> ../../utils
//! hosts/<dir>/system-version, hosts/<dir>/kernel-version
//! ```
//!
//! Beside it, in `<bento_dir>.toy/`: `markers/` (switch-to-configuration records) and
//! `nixpkgs/nixos/` (the toy `<nixpkgs/nixos>` for non-flake hosts; see
//! [`ToyFleet::nix_path`]).
//!
//! Gotcha: a `path:` flake is copied to the store *with* its symlinks, so
//! `hosts/<dir>/utils -> ../../utils` dangles there (`getting status of '/nix/utils'`).
//! Build from a copy that follows symlinks, as bento's releases are
//! ([`copy_following_symlinks`]; [`ToyFleet::build_toplevel`] does it).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use bento_core::hostname::HostName;

use crate::nixenv;

/// The shared nix code: `utils/toy.nix` of the bento directory, and a copy beside the toy
/// `<nixpkgs/nixos>`.
pub const TOY_NIX: &str = r#"# Toy NixOS system, written by bento-tests (tests/src/toy.rs). There is no nixpkgs
# on the test machines: this plain derivation mimics a NixOS toplevel closely enough for
# profiles, generations, rollbacks, switch-to-configuration and kernel checks.
#
# hostDir's `system-version` and `kernel-version` (or `<hostName>.system-version`,
# `<hostName>.kernel-version`) decide the system; its other files do not.
{ hostName, hostDir, system, markerDir }:
let
  clean = f: builtins.replaceStrings [ "\n" ] [ "" ] (builtins.readFile f);
  setting = name: default:
    let
      own = hostDir + "/${hostName}.${name}";
      shared = hostDir + "/${name}";
    in
    if builtins.pathExists own then clean own
    else if builtins.pathExists shared then clean shared
    else default;
  version = setting "system-version" "1";
  kernelVersion = setting "kernel-version" "6.1.0";
  # Bytes of incompressible data in a package of its own (0: none), for downloads.
  payloadSize = setting "payload-size" "0";
  # Small packages of their own (4 KiB of random bytes each), for closures of
  # many paths.
  packageCount = builtins.fromJSON (setting "package-count" "0");
  packages = builtins.genList (i: derivation {
    name = "toy-pkg-${hostName}-${toString i}";
    inherit system PATH;
    builder = "/bin/sh";
    args = [ "-c" "head -c 4096 /dev/urandom > $out" ];
  }) packageCount;
  # Builders get no PATH without a sandbox's stdenv.
  PATH = "/usr/bin:/bin";
  marker = "${markerDir}/${hostName}.switch";

  linux = derivation {
    name = "toy-linux-${kernelVersion}";
    inherit system kernelVersion PATH;
    builder = "/bin/sh";
    args = [ "-c" ''
      set -e
      mkdir -p "$out/lib/modules/$kernelVersion"
      echo "toy kernel $kernelVersion" > "$out/bzImage"
      echo "toy initrd $kernelVersion" > "$out/initrd"
      echo "$kernelVersion" > "$out/lib/modules/$kernelVersion/modules.dep"
    '' ];
  };

  payload = derivation {
    name = "toy-payload-${hostName}-${payloadSize}";
    inherit system payloadSize PATH;
    builder = "/bin/sh";
    args = [ "-c" "head -c $payloadSize /dev/urandom > $out" ];
  };

  switchScript = ''
    #!/bin/sh
    PATH=/usr/bin:/bin:$PATH
    case "$1" in
      switch|boot|test|dry-activate) ;;
      *) echo "usage: switch-to-configuration [switch|boot|test|dry-activate]" >&2; exit 1 ;;
    esac
    self=$(cd "$(dirname "$0")/.." && pwd -P)
    for f in "${marker}.fail" "${marker}.fail-${version}"; do
      if [ -e "$f" ]; then
        echo "$1 $self failed" >> "${marker}.systems"
        echo "toy switch-to-configuration: failing because $f exists" >&2
        exit 1
      fi
    done
    echo "$1 $self ok" >> "${marker}.systems"
    echo "$1 $(date +%s)" >> "${marker}"
  '';
in
derivation ({
  name = "nixos-system-${hostName}-${version}";
  inherit system version kernelVersion PATH switchScript linux;
  builder = "/bin/sh";
  args = [ "-c" ''
    set -e
    mkdir -p "$out/bin"
    printf '%s' "$switchScript" > "$out/bin/switch-to-configuration"
    chmod 0555 "$out/bin/switch-to-configuration"
    ln -s "$linux/bzImage" "$out/kernel"
    ln -s "$linux/initrd" "$out/initrd"
    ln -s "$linux" "$out/kernel-modules"
    echo "$version" > "$out/nixos-version"
    echo "$system" > "$out/system"
    echo "loglevel=4" > "$out/kernel-params"
    ${if payloadSize == "0" then "" else "ln -s ${payload} $out/payload"}
    ${if packageCount == 0 then "" else ''mkdir "$out/pkgs"; for p in $packages; do ln -s "$p" "$out/pkgs/"; done''}
  '' ];
} // (if packageCount == 0 then { } else { inherit packages; }))
"#;

/// The message of a host made to fail evaluation ([`ToyFleet::break_eval`]).
pub const EVAL_FAILURE: &str = "toy eval failure";

#[derive(Debug, Clone)]
enum Kind {
    Flake(Vec<String>),
    NonFlake(String),
}

#[derive(Debug, Clone)]
struct HostDir {
    kind: Kind,
    broken: bool,
}

/// One recorded `switch-to-configuration` run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchRecord {
    pub action: String,
    pub unix_time: u64,
}

/// One `switch-to-configuration` run of a toy system, failed runs included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemSwitch {
    pub action: String,
    /// The store path whose script ran.
    pub system: PathBuf,
    pub ok: bool,
}

/// A bento directory of toy hosts. Host directory names and configuration names must be
/// valid host names; test hosts should carry a unique prefix
/// ([`crate::sshd::unique_prefix`]) so parallel tests never share a user or a marker.
#[derive(Debug)]
pub struct ToyFleet {
    bento_dir: PathBuf,
    state_dir: PathBuf,
    hosts: BTreeMap<String, HostDir>,
}

impl ToyFleet {
    /// Creates (or reuses) `bento_dir` with `hosts/` and `utils/toy.nix`, and the toy
    /// state beside it in `<bento_dir>.toy/` (markers, toy nixpkgs).
    pub fn new(bento_dir: &Path) -> Result<ToyFleet> {
        fs::create_dir_all(bento_dir.join("hosts"))
            .with_context(|| format!("creating {}", bento_dir.display()))?;
        // The marker path is baked into store paths: it must be absolute and stable.
        let bento_dir = bento_dir
            .canonicalize()
            .with_context(|| format!("resolving {}", bento_dir.display()))?;
        let mut state_name = bento_dir
            .file_name()
            .context("the bento directory has no name")?
            .to_owned();
        state_name.push(".toy");
        let state_dir = bento_dir.with_file_name(state_name);
        let fleet = ToyFleet {
            bento_dir,
            state_dir,
            hosts: BTreeMap::new(),
        };
        write(&fleet.bento_dir.join("utils/toy.nix"), TOY_NIX)?;
        fs::create_dir_all(fleet.markers_dir())?;
        write(&fleet.nixpkgs_path().join("nixos/toy.nix"), TOY_NIX)?;
        write(
            &fleet.nixpkgs_path().join("nixos/default.nix"),
            &fleet.nixos_stand_in(),
        )?;
        Ok(fleet)
    }

    pub fn bento_dir(&self) -> &Path {
        &self.bento_dir
    }

    /// `<bento_dir>/hosts/<dir>`.
    pub fn host_dir(&self, dir: &str) -> PathBuf {
        self.bento_dir.join("hosts").join(dir)
    }

    /// Writes a flake host `hosts/<dir>/` with one `nixosConfigurations.<name>` per name
    /// (system version 1, kernel 6.1.0 unless already set). Returns the host directory.
    pub fn flake_host(&mut self, dir: &str, names: &[&str]) -> Result<PathBuf> {
        check_name(dir)?;
        ensure!(!names.is_empty(), "flake host {dir} needs a configuration");
        for name in names {
            check_name(name)?;
        }
        let spec = HostDir {
            kind: Kind::Flake(names.iter().map(|n| n.to_string()).collect()),
            broken: false,
        };
        self.add_host_dir(dir, spec)
    }

    /// Writes a non-flake host `hosts/<name>/configuration.nix` with
    /// `networking.hostName = "<name>"`. Returns the host directory.
    pub fn nonflake_host(&mut self, name: &str) -> Result<PathBuf> {
        check_name(name)?;
        let spec = HostDir {
            kind: Kind::NonFlake(name.to_owned()),
            broken: false,
        };
        self.add_host_dir(name, spec)
    }

    fn add_host_dir(&mut self, dir: &str, spec: HostDir) -> Result<PathBuf> {
        let path = self.host_dir(dir);
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        let link = path.join("utils");
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink("../../utils", &link)
                .with_context(|| format!("linking {}", link.display()))?;
        }
        for (file, default) in [("system-version", "1"), ("kernel-version", "6.1.0")] {
            if !path.join(file).exists() {
                write(&path.join(file), &format!("{default}\n"))?;
            }
        }
        self.hosts.insert(dir.to_owned(), spec);
        self.render(dir)?;
        Ok(path)
    }

    fn render(&self, dir: &str) -> Result<()> {
        let spec = self
            .hosts
            .get(dir)
            .with_context(|| format!("no toy host directory {dir}"))?;
        let path = self.host_dir(dir);
        match &spec.kind {
            Kind::Flake(names) => {
                write(&path.join("flake.nix"), &self.flake_nix(names, spec.broken))
            }
            Kind::NonFlake(name) => write(
                &path.join("configuration.nix"),
                &configuration_nix(name, spec.broken),
            ),
        }
    }

    fn flake_nix(&self, names: &[String], broken: bool) -> String {
        let toplevel = |name: &str| {
            if broken {
                format!("throw {}", nix_str(EVAL_FAILURE))
            } else {
                format!("toy {}", nix_str(name))
            }
        };
        let configurations: String = names
            .iter()
            .map(|name| {
                format!(
                    "        {} = host {} ({});\n",
                    nix_str(name),
                    nix_str(name),
                    toplevel(name)
                )
            })
            .collect();
        format!(
            r#"# Toy flake host, written by bento-tests (tests/src/toy.rs).
{{
  description = "toy NixOS hosts";
  outputs = {{ self }}:
    let
      toy = hostName: import ./utils/toy.nix {{
        inherit hostName;
        hostDir = ./.;
        system = {system};
        markerDir = {markers};
      }};
      host = hostName: toplevel: {{
        config = {{
          networking.hostName = hostName;
          system.build.toplevel = toplevel;
        }};
      }};
    in
    {{
      nixosConfigurations = {{
{configurations}      }};
    }};
}}
"#,
            system = nix_str(&nix_system()),
            markers = nix_str(&self.markers_dir().to_string_lossy()),
        )
    }

    /// The toy `<nixpkgs/nixos>`: the same entry points as the real one (`-A system`,
    /// `-A config.system.build.toplevel`, `<nixos-config>` or `$NIXOS_CONFIG`).
    fn nixos_stand_in(&self) -> String {
        format!(
            r#"# Toy <nixpkgs/nixos>, written by bento-tests (tests/src/toy.rs).
{{ configuration ?
    let fromEnv = builtins.getEnv "NIXOS_CONFIG"; in
    if fromEnv != "" then /. + fromEnv else <nixos-config>
, system ? builtins.currentSystem
}}:
let
  raw = import configuration;
  config =
    if builtins.isFunction raw
    then raw {{ inherit config; pkgs = {{ }}; lib = {{ }}; modulesPath = toString ./.; }}
    else raw;
  hostDir = dirOf configuration;
  hostName = config.networking.hostName or (baseNameOf hostDir);
  toplevel = import ./toy.nix {{
    inherit hostName hostDir system;
    markerDir = {markers};
  }};
in
{{
  config = config // {{
    networking.hostName = hostName;
    system.build.toplevel = toplevel;
  }};
  system = toplevel;
}}
"#,
            markers = nix_str(&self.markers_dir().to_string_lossy()),
        )
    }

    /// Gives every system of a host directory a package of `bytes` random bytes
    /// (0: none): a large, incompressible NAR to download.
    pub fn set_payload(&self, dir: &str, bytes: u64) -> Result<()> {
        write(
            &self.host_dir(dir).join("payload-size"),
            &format!("{bytes}\n"),
        )
    }

    /// Gives every system of a host directory `count` small packages of its own
    /// (0: none): a closure of many paths.
    pub fn set_package_count(&self, dir: &str, count: u64) -> Result<()> {
        write(
            &self.host_dir(dir).join("package-count"),
            &format!("{count}\n"),
        )
    }

    /// Sets `system-version` of a host directory: every configuration in it gets a new
    /// store path.
    pub fn set_system_version(&self, dir: &str, version: &str) -> Result<()> {
        self.set_setting(dir, "system-version", version)
    }

    /// Sets the system version of one configuration of a (multi-host) flake only.
    pub fn set_config_system_version(&self, dir: &str, name: &str, version: &str) -> Result<()> {
        check_name(name)?;
        self.set_setting(dir, &format!("{name}.system-version"), version)
    }

    /// Sets `kernel-version` of a host directory (changes `kernel`, `initrd`,
    /// `kernel-modules` and so the store path).
    pub fn set_kernel(&self, dir: &str, version: &str) -> Result<()> {
        self.set_setting(dir, "kernel-version", version)
    }

    /// Sets the kernel version of one configuration of a (multi-host) flake only.
    pub fn set_config_kernel(&self, dir: &str, name: &str, version: &str) -> Result<()> {
        check_name(name)?;
        self.set_setting(dir, &format!("{name}.kernel-version"), version)
    }

    fn set_setting(&self, dir: &str, file: &str, version: &str) -> Result<()> {
        check_version(version)?;
        ensure!(self.hosts.contains_key(dir), "no toy host directory {dir}");
        write(&self.host_dir(dir).join(file), &format!("{version}\n"))
    }

    /// Writes any other file of a host directory (`notes.txt`, …): no system change.
    pub fn write_file(&self, dir: &str, rel: &str, contents: &str) -> Result<()> {
        ensure!(self.hosts.contains_key(dir), "no toy host directory {dir}");
        write(&self.host_dir(dir).join(rel), contents)
    }

    /// Makes every configuration of a host directory fail evaluation with
    /// [`EVAL_FAILURE`]. The toplevel throws, not the flake: `nix flake show` still lists
    /// the configurations, building them fails.
    pub fn break_eval(&mut self, dir: &str) -> Result<()> {
        self.set_broken(dir, true)
    }

    /// Undoes [`ToyFleet::break_eval`].
    pub fn repair_eval(&mut self, dir: &str) -> Result<()> {
        self.set_broken(dir, false)
    }

    fn set_broken(&mut self, dir: &str, broken: bool) -> Result<()> {
        self.hosts
            .get_mut(dir)
            .with_context(|| format!("no toy host directory {dir}"))?
            .broken = broken;
        self.render(dir)
    }

    /// The toy nixpkgs directory: `NIX_PATH=nixpkgs=<this>` makes `<nixpkgs/nixos>` the
    /// toy stand-in.
    pub fn nixpkgs_path(&self) -> PathBuf {
        self.state_dir.join("nixpkgs")
    }

    /// `nixpkgs=<nixpkgs_path>`, the `NIX_PATH` value for non-flake builds.
    pub fn nix_path(&self) -> String {
        format!("nixpkgs={}", self.nixpkgs_path().display())
    }

    pub fn markers_dir(&self) -> PathBuf {
        self.state_dir.join("markers")
    }

    /// Where `switch-to-configuration` of host (configuration name) `host` records.
    pub fn marker_path(&self, host: &str) -> PathBuf {
        self.markers_dir().join(format!("{host}.switch"))
    }

    /// The recorded `switch-to-configuration` runs of `host`, oldest first.
    pub fn switch_records(&self, host: &str) -> Result<Vec<SwitchRecord>> {
        let path = self.marker_path(host);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        text.lines()
            .map(|line| {
                let (action, time) = line
                    .split_once(' ')
                    .with_context(|| format!("bad marker line {line:?}"))?;
                Ok(SwitchRecord {
                    action: action.to_owned(),
                    unix_time: time
                        .parse()
                        .with_context(|| format!("bad marker line {line:?}"))?,
                })
            })
            .collect()
    }

    /// Makes `switch-to-configuration` of `host` fail (exit 1) from now on, or work again.
    pub fn set_activation_failure(&self, host: &str, fail: bool) -> Result<()> {
        let mut path = self.marker_path(host).into_os_string();
        path.push(".fail");
        let path = PathBuf::from(path);
        if fail {
            write(&path, "")
        } else {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("removing {}", path.display()))
                }
                _ => Ok(()),
            }
        }
    }

    /// Every `switch-to-configuration` run of `host`'s systems, oldest first, with the
    /// system that ran and whether it failed.
    pub fn system_switches(&self, host: &str) -> Result<Vec<SystemSwitch>> {
        let mut path = self.marker_path(host).into_os_string();
        path.push(".systems");
        let path = PathBuf::from(path);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        text.lines()
            .map(|line| {
                let mut words = line.split(' ');
                let (Some(action), Some(system), Some(result), None) =
                    (words.next(), words.next(), words.next(), words.next())
                else {
                    bail!("bad line {line:?} in {}", path.display());
                };
                ensure!(
                    result == "ok" || result == "failed",
                    "bad line {line:?} in {}",
                    path.display()
                );
                Ok(SystemSwitch {
                    action: action.to_owned(),
                    system: PathBuf::from(system),
                    ok: result == "ok",
                })
            })
            .collect()
    }

    /// Makes `switch-to-configuration` fail (exit 1) for the system of `host` with system
    /// version `version` only (see [`ToyFleet::set_system_version`]), or work again.
    pub fn set_version_activation_failure(
        &self,
        host: &str,
        version: &str,
        fail: bool,
    ) -> Result<()> {
        check_version(version)?;
        let mut path = self.marker_path(host).into_os_string();
        path.push(format!(".fail-{version}"));
        let path = PathBuf::from(path);
        if fail {
            write(&path, "")
        } else {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("removing {}", path.display()))
                }
                _ => Ok(()),
            }
        }
    }

    /// Builds host `host` (a flake configuration name or a non-flake host name) with real
    /// nix, from a copy of its directory that follows symlinks, as a release would be.
    pub fn build_toplevel(&self, host: &str) -> Result<PathBuf> {
        let (dir, spec) = self
            .hosts
            .iter()
            .find(|(_, spec)| match &spec.kind {
                Kind::Flake(names) => names.iter().any(|n| n == host),
                Kind::NonFlake(name) => name == host,
            })
            .with_context(|| format!("no toy host {host}"))?;
        fs::create_dir_all(&self.state_dir)?;
        let copy = tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(&self.state_dir)
            .context("creating a build directory")?;
        let copy_dir = copy.path().join(dir);
        copy_following_symlinks(&self.host_dir(dir), &copy_dir)?;
        match &spec.kind {
            Kind::Flake(_) => build_flake_toplevel(&copy_dir, host),
            Kind::NonFlake(_) => {
                build_nonflake_toplevel(&self.nixpkgs_path(), &copy_dir.join("configuration.nix"))
            }
        }
    }

    /// Builds a toy system with kernel `kernel_version` and points `link` at it (replacing
    /// `link`): a "booted system" (`/run/booted-system`) for reboot detection. Its
    /// `kernel`, `initrd` and `kernel-modules` resolve to the very same store paths as
    /// those of any toy host with that kernel version. Returns the store path.
    pub fn fake_booted_system(&self, link: &Path, kernel_version: &str) -> Result<PathBuf> {
        check_version(kernel_version)?;
        let dir = self.state_dir.join(format!("booted-{kernel_version}"));
        write(&dir.join("kernel-version"), kernel_version)?;
        let system = nixenv::build_single(
            nixenv::nix_command("nix")
                .args(["build", "--json", "--no-link", "-f"])
                .arg(self.nixpkgs_path().join("nixos/toy.nix"))
                .args(["--argstr", "hostName", "booted", "--argstr", "hostDir"])
                .arg(&dir)
                .args(["--argstr", "system", &nix_system(), "--argstr", "markerDir"])
                .arg(self.markers_dir()),
        )?;
        replace_symlink(&system, link)?;
        Ok(system)
    }
}

/// `nix build --json --no-link path:<flake_dir>#nixosConfigurations.<name>.config.system.build.toplevel`.
/// `flake_dir` must not hold symlinks that leave it (see the module docs).
pub fn build_flake_toplevel(flake_dir: &Path, name: &str) -> Result<PathBuf> {
    check_name(name)?;
    let flake_dir = flake_dir
        .canonicalize()
        .with_context(|| format!("resolving {}", flake_dir.display()))?;
    nixenv::build_single(
        nixenv::nix_command("nix")
            .args(["build", "--json", "--no-link"])
            .arg(format!(
                "path:{}#nixosConfigurations.{name}.config.system.build.toplevel",
                flake_dir.display()
            )),
    )
}

/// `nix-build '<nixpkgs/nixos>' -A system -I nixos-config=<configuration>` with
/// `NIX_PATH=nixpkgs=<nixpkgs>`.
pub fn build_nonflake_toplevel(nixpkgs: &Path, configuration: &Path) -> Result<PathBuf> {
    let mut config_arg = std::ffi::OsString::from("nixos-config=");
    config_arg.push(configuration);
    let mut nix_path = std::ffi::OsString::from("nixpkgs=");
    nix_path.push(nixpkgs);
    let output = crate::run(
        nixenv::nix_command("nix-build")
            .env("NIX_PATH", nix_path)
            .args(["<nixpkgs/nixos>", "-A", "system", "--no-out-link", "-I"])
            .arg(config_arg),
    )?;
    let stdout = String::from_utf8(output.stdout).context("nix-build printed non-UTF-8")?;
    match stdout.lines().collect::<Vec<_>>().as_slice() {
        [path] if path.starts_with("/nix/store/") => Ok(PathBuf::from(path)),
        _ => bail!("nix-build printed {stdout:?}, expected one store path"),
    }
}

/// `nix-env -p <profile> --set <system>`: a new generation of `profile`.
pub fn set_profile(profile: &Path, system: &Path) -> Result<()> {
    if let Some(parent) = profile.parent() {
        fs::create_dir_all(parent)?;
    }
    crate::run(
        nixenv::nix_command("nix-env")
            .arg("-p")
            .arg(profile)
            .arg("--set")
            .arg(system),
    )?;
    Ok(())
}

/// `nix-env -p <profile> --rollback`.
pub fn rollback_profile(profile: &Path) -> Result<()> {
    crate::run(
        nixenv::nix_command("nix-env")
            .arg("-p")
            .arg(profile)
            .arg("--rollback"),
    )?;
    Ok(())
}

/// Copies `src` to `dst` recursively, following symlinks (as bento and the original
/// tool's `rsync -L` do) and keeping permissions.
pub fn copy_following_symlinks(src: &Path, dst: &Path) -> Result<()> {
    let meta = fs::metadata(src).with_context(|| format!("reading {}", src.display()))?;
    if meta.is_dir() {
        fs::create_dir_all(dst).with_context(|| format!("creating {}", dst.display()))?;
        for entry in fs::read_dir(src).with_context(|| format!("listing {}", src.display()))? {
            let entry = entry?;
            copy_following_symlinks(&entry.path(), &dst.join(entry.file_name()))?;
        }
    } else {
        fs::copy(src, dst)
            .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    }
    Ok(())
}

/// The nix system of this machine, e.g. `x86_64-linux`. Flakes evaluate purely, without
/// `builtins.currentSystem`, so the generated flakes carry it literally.
pub fn nix_system() -> String {
    format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS)
}

fn configuration_nix(name: &str, broken: bool) -> String {
    let host_name = if broken {
        format!("throw {}", nix_str(EVAL_FAILURE))
    } else {
        nix_str(name)
    };
    format!(
        "# Toy NixOS configuration, written by bento-tests (tests/src/toy.rs);\n\
         # built by the toy <nixpkgs/nixos> of the tests.\n\
         {{ config, pkgs, ... }}:\n\
         {{\n  networking.hostName = {host_name};\n}}\n"
    )
}

fn replace_symlink(target: &Path, link: &Path) -> Result<()> {
    if let Some(parent) = link.parent() {
        fs::create_dir_all(parent)?;
    }
    let mut tmp = link.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)
        .with_context(|| format!("linking {}", tmp.display()))?;
    fs::rename(&tmp, link).with_context(|| format!("replacing {}", link.display()))
}

fn write(path: &Path, contents: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

fn check_name(name: &str) -> Result<()> {
    HostName::new(name)?;
    Ok(())
}

/// Versions end up in store path names.
fn check_version(version: &str) -> Result<()> {
    ensure!(
        !version.is_empty()
            && !version.starts_with('.')
            && version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b)),
        "invalid toy version {version:?}: letters, digits, '.', '_', '+', '-' only"
    );
    Ok(())
}

/// A nix string literal for `s`.
fn nix_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '$' if chars.peek() == Some(&'{') => out.push_str("\\$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nix_strings_are_escaped() {
        assert_eq!(nix_str(r#"a"b\c${d}$e"#), r#""a\"b\\c\${d}$e""#);
    }

    #[test]
    fn versions_are_checked() {
        assert!(check_version("1.2-rc+3").is_ok());
        assert!(check_version("").is_err());
        assert!(check_version("a b").is_err());
        assert!(check_version("../x").is_err());
    }
}
