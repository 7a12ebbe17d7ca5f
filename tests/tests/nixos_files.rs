//! The NixOS side (`flake.nix`, `nixos/`) as far as a machine without NixOS and
//! without nixpkgs can check it: every `.nix` file parses; the server module's sshd
//! `Match` block is the one the OpenSSH-mode tests use (one file, `nixos/sshd-match.conf`);
//! its host users and chroot rules fit that block and give a chroot the real sshd
//! serves; the flake lists its outputs. The three modules, evaluated by our own test
//! double of the module system (`tests/nixos/modules-lite.nix`: nixpkgs is not on this
//! machine) over a stand-in for the NixOS options they set (`tests/nixos/eval.nix`),
//! generate settings their real build-time checks accept, in the README's and the VM
//! test's configurations among others; Cargo.lock builds with the rustc the docs promise.
//! The VM test (`nixos/tests/vm.nix`) needs NixOS and runs with `nix flake check`
//! elsewhere.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{ensure, Context, Result};
use bento_core::chroot::{
    CONFIG_LINK, CURRENT_LINK, LAST_CHANGE_FILE, LOGS_DIR, RELEASES_DIR, STATES_FILE,
};
use bento_tests::endpoint::Endpoint;
use bento_tests::nixenv::nix_command;
use bento_tests::sshd::{match_block, unique_prefix, SshServer, MATCH_BLOCK_TEMPLATE};
use bento_tests::{run, TestDir};
use serde_json::{json, Value};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// Every `.nix` file of the repository, build output and VCS data left out.
fn nix_files(dir: &Path, found: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if name.starts_with('.') || name == "target" || name == "node_modules" {
                continue;
            }
            nix_files(&path, found)?;
        } else if kind.is_file() && name.ends_with(".nix") {
            found.push(path);
        }
    }
    Ok(())
}

/// Calls `function` of `nixos/lib.nix` (builtins only: no nixpkgs needed) with `args`.
fn eval_module_lib(function: &str, args: &Value) -> Result<Value> {
    let lib = repo().join("nixos/lib.nix");
    let args_file = tempfile::NamedTempFile::new()?;
    fs::write(args_file.path(), args.to_string())?;
    let out = run(nix_command("nix-instantiate")
        .args(["--eval", "--strict", "--json", "--expr"])
        .arg(format!(
            "(import {:?}).{function} (builtins.fromJSON (builtins.readFile {:?}))",
            lib.display(),
            args_file.path().display()
        )))?;
    serde_json::from_slice(&out.stdout).context("nix-instantiate printed no JSON")
}

#[test]
fn every_nix_file_parses() -> Result<()> {
    let mut files = Vec::new();
    nix_files(&repo(), &mut files)?;
    files.sort();
    for expected in [
        "flake.nix",
        "nixos/server.nix",
        "nixos/agent.nix",
        "nixos/tray.nix",
        "nixos/package.nix",
        "nixos/lib.nix",
        "nixos/tests/vm.nix",
    ] {
        ensure!(
            files.contains(&repo().join(expected)),
            "{expected} is missing (found {files:?})"
        );
    }
    let mut failures = Vec::new();
    for file in &files {
        // --parse also resolves every variable: a typo in a name fails here.
        let out = nix_command("nix-instantiate")
            .arg("--parse")
            .arg(file)
            .output()
            .context("running nix-instantiate")?;
        if !out.status.success() {
            failures.push(format!(
                "{}:\n{}",
                file.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    ensure!(
        failures.is_empty(),
        "{} of {} .nix files do not parse:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
    println!("{} .nix files parse", files.len());
    Ok(())
}

#[test]
fn the_module_writes_the_match_block_the_tests_use() -> Result<()> {
    // The module reaches the file through lib.nix; the harness includes it at compile
    // time (tests/src/sshd.rs). Both read the same bytes.
    let server = fs::read_to_string(repo().join("nixos/server.nix"))?;
    let lib = fs::read_to_string(repo().join("nixos/lib.nix"))?;
    let file = fs::read_to_string(repo().join("nixos/sshd-match.conf"))?;
    ensure!(
        server.contains("import ./lib.nix"),
        "server.nix does not use lib.nix"
    );
    for used in ["sshdMatchBlock", "hostUsers", "chrootRules"] {
        ensure!(
            server.contains(&format!("bentoLib.{used}")),
            "server.nix does not use lib.nix's {used}"
        );
    }
    ensure!(
        lib.contains("builtins.readFile ./sshd-match.conf"),
        "lib.nix does not read sshd-match.conf"
    );
    assert_eq!(MATCH_BLOCK_TEMPLATE, file);

    let (group, chroot) = ("sftp_users", Path::new("/srv/bento"));
    let from_nix = eval_module_lib(
        "sshdMatchBlock",
        &json!({ "group": group, "chrootDir": chroot }),
    )?;
    let from_harness = match_block(group, chroot);
    assert_eq!(from_nix.as_str(), Some(from_harness.as_str()));

    // What the block must say, whoever edits the file.
    let lines: Vec<&str> = from_harness
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(lines.first(), Some(&"Match Group sftp_users"), "{lines:?}");
    for required in [
        "ChrootDirectory /srv/bento/%u",
        "ForceCommand internal-sftp",
        "AllowTcpForwarding no",
        "X11Forwarding no",
    ] {
        assert!(lines.contains(&required), "{required:?} missing: {lines:?}");
    }
    assert!(
        !from_harness.contains('@'),
        "a placeholder is left: {from_harness}"
    );
    Ok(())
}

fn rule(kind: &str, path: &str, mode: &str, user: &str, group: &str, arg: &str) -> String {
    format!("{kind} {path} {mode} {user} {group} - {arg}")
}

/// The rules `chrootRules` must give: the layout of `Chroot::ensure_host` (core),
/// for OpenSSH (root-owned directories, logs/ the host user's).
fn expected_rules(chroot: &str, hosts: &[&str], group: &str, publisher: &str) -> Vec<String> {
    expected_rules_owned(chroot, hosts, ("root", "root"), publisher, |h| {
        (h.to_owned(), group.to_owned())
    })
}

fn expected_rules_owned(
    chroot: &str,
    hosts: &[&str],
    dirs: (&str, &str),
    publisher: &str,
    logs: impl Fn(&str) -> (String, String),
) -> Vec<String> {
    let mut rules = vec![
        rule("d", chroot, "0755", dirs.0, dirs.1, "-"),
        rule(
            "f",
            &format!("{chroot}/{STATES_FILE}"),
            "0644",
            publisher,
            publisher,
            "-",
        ),
    ];
    for host in hosts {
        let dir = format!("{chroot}/{host}");
        let (lu, lg) = logs(host);
        rules.extend([
            rule("d", &dir, "0755", dirs.0, dirs.1, "-"),
            rule(
                "d",
                &format!("{dir}/{RELEASES_DIR}"),
                "0755",
                publisher,
                publisher,
                "-",
            ),
            rule("d", &format!("{dir}/{LOGS_DIR}"), "0755", &lu, &lg, "-"),
            rule(
                "f",
                &format!("{dir}/{LAST_CHANGE_FILE}"),
                "0644",
                publisher,
                publisher,
                "-",
            ),
            format!("L+ {dir}/{CONFIG_LINK} - - - - {RELEASES_DIR}/{CURRENT_LINK}"),
        ]);
    }
    rules
}

#[test]
fn module_users_and_chroots_fit_the_match_block() -> Result<()> {
    let hosts = json!({
        "web": { "keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIweb root@web"] },
        "db-1": { "keys": [] },
    });
    let users = eval_module_lib(
        "hostUsers",
        &json!({ "hosts": hosts, "group": "sftp_users" }),
    )?;
    let users = users
        .as_object()
        .context("hostUsers gives an attribute set")?;
    assert_eq!(users.len(), 2);
    for (name, user) in users {
        // `Match Group` selects the group, `ChrootDirectory <chroot>/%u` needs the
        // user named like its host directory; as the harness's users (home "/").
        assert_eq!(user["group"], "sftp_users", "{name}: {user}");
        assert_eq!(user["isSystemUser"], true, "{name}: {user}");
        assert_eq!(user["home"], "/", "{name}: {user}");
        assert_eq!(
            user["openssh"]["authorizedKeys"]["keys"], hosts[name]["keys"],
            "{name}: {user}"
        );
    }

    let rules = eval_module_lib(
        "chrootRules",
        &json!({
            "chrootDir": "/srv/bento", "hosts": hosts, "group": "sftp_users",
            "publishUser": "bento", "publishGroup": "bento",
        }),
    )?;
    let rules: Vec<String> = serde_json::from_value(rules)?;
    // attrNames sorts: db-1 before web.
    assert_eq!(
        rules,
        expected_rules("/srv/bento", &["db-1", "web"], "sftp_users", "bento")
    );

    // The embedded SFTP server: no host users, everything the publisher's, as
    // `Chroot::embedded_owners` makes it.
    let rules = eval_module_lib(
        "chrootRules",
        &json!({
            "chrootDir": "/srv/bento", "hosts": hosts, "group": "sftp_users",
            "publishUser": "bento", "publishGroup": "bento", "embedded": true,
        }),
    )?;
    let rules: Vec<String> = serde_json::from_value(rules)?;
    assert_eq!(
        rules,
        expected_rules_owned(
            "/srv/bento",
            &["db-1", "web"],
            ("bento", "bento"),
            "bento",
            |_| { ("bento".into(), "bento".into()) }
        )
    );
    let owners = bento_core::chroot::Chroot::embedded_owners(Some((7, 8)));
    assert!(owners.dirs == (7, 8) && owners.logs == (7, 8) && owners.publisher == (7, 8));

    // NixOS refuses user names of 32 characters or more.
    let (longest, too_long) = ("a".repeat(31), "a".repeat(32));
    for (name, valid) in [
        ("web", true),
        ("db-1", true),
        ("_x", true),
        ("Web", false),
        ("1web", false),
        ("-web", false),
        (longest.as_str(), true),
        (too_long.as_str(), false),
    ] {
        let got = run(nix_command("nix-instantiate")
            .args(["--eval", "--json", "--expr"])
            .arg(format!(
                "(import {:?}).validHostUser {name:?}",
                repo().join("nixos/lib.nix")
            )))?;
        assert_eq!(
            String::from_utf8_lossy(&got.stdout).trim(),
            valid.to_string(),
            "{name}"
        );
    }
    Ok(())
}

/// The module's tmpfiles rules, applied by the real systemd-tmpfiles to a chroot of the
/// real sshd (configured with the shared Match block), give each host what it needs.
#[test]
fn module_chroot_rules_give_a_working_sftp_chroot() -> Result<()> {
    if Command::new("systemd-tmpfiles")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped: systemd-tmpfiles is not installed");
        return Ok(());
    }
    let dir = TestDir::new("nixos-files")?;
    let host = format!("{}-web", unique_prefix());
    let server = SshServer::start(&[&host])?;
    let chroot = server.chroot_dir();
    let mut hosts = serde_json::Map::new();
    hosts.insert(host.clone(), json!({ "keys": [] }));
    let rules = eval_module_lib(
        "chrootRules",
        &json!({
            "chrootDir": chroot, "hosts": hosts, "group": server.group(),
            "publishUser": "nobody", "publishGroup": "nogroup",
        }),
    )?;
    let rules: Vec<String> = serde_json::from_value(rules)?;
    let conf = dir.join("bento.conf");
    fs::write(&conf, rules.join("\n") + "\n")?;
    run(Command::new("systemd-tmpfiles").arg("--create").arg(&conf))?;

    let hd = server.host_chroot(&host);
    let meta = |p: &Path| fs::symlink_metadata(p).with_context(|| format!("{}", p.display()));
    let m = meta(&hd)?;
    assert_eq!(
        (m.uid(), m.gid(), m.permissions().mode() & 0o7777),
        (0, 0, 0o755)
    );
    let m = meta(&hd.join(LOGS_DIR))?;
    assert_eq!((m.uid(), m.gid()), (server.uid(&host)?, server.gid()?));
    let nobody = bento_core::chroot::lookup_user("nobody").context("no user nobody")?;
    assert_eq!(meta(&hd.join(RELEASES_DIR))?.uid(), nobody.0);
    assert_eq!(meta(&hd.join(LAST_CHANGE_FILE))?.uid(), nobody.0);
    assert_eq!(
        fs::read_link(hd.join(CONFIG_LINK))?,
        Path::new(RELEASES_DIR).join(CURRENT_LINK)
    );

    // A release in place, as a publication leaves it.
    let release = hd.join(RELEASES_DIR).join("r1");
    fs::create_dir_all(&release)?;
    fs::write(release.join("configuration.nix"), "{ }\n")?;
    std::os::unix::fs::symlink("r1", hd.join(RELEASES_DIR).join(CURRENT_LINK))?;

    let key = server.key_path(&host);
    let got = dir.join("got.nix");
    let sftp = |batch: String| server.sftp_batch(&host, &key, &batch);
    let out = sftp(format!(
        "get config/configuration.nix {}\nput {} logs/report.txt\n",
        got.display(),
        conf.display()
    ))?;
    ensure!(
        out.status.success(),
        "sftp in the module's chroot failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read_to_string(&got)?, "{ }\n");
    assert_eq!(
        meta(&hd.join(LOGS_DIR).join("report.txt"))?.uid(),
        server.uid(&host)?
    );
    // Writes go to logs/ only.
    let out = sftp(format!("put {} last_change_date\n", conf.display()))?;
    assert!(
        !out.status.success(),
        "the host could overwrite last_change_date"
    );
    Ok(())
}

/// A copy of the flake's own files: `path:` of the work tree would copy target/ too.
fn flake_copy(dir: &TestDir) -> Result<PathBuf> {
    let copy = dir.join("flake");
    fs::create_dir_all(&copy)?;
    for file in ["flake.nix", "flake.lock"] {
        if repo().join(file).exists() {
            fs::copy(repo().join(file), copy.join(file))?;
        }
    }
    run(Command::new("cp")
        .arg("-r")
        .arg(repo().join("nixos"))
        .arg(&copy))?;
    Ok(copy)
}

#[test]
fn flake_metadata_where_the_network_allows() -> Result<()> {
    let dir = TestDir::new("nixos-files")?;
    let copy = flake_copy(&dir)?;
    let out = nix_command("nix")
        .args(["flake", "metadata", "--json"])
        // Offline, fail at once instead of retrying.
        .args(["--option", "download-attempts", "1"])
        .args(["--option", "connect-timeout", "5"])
        .arg(format!("path:{}", copy.display()))
        .output()
        .context("running nix flake metadata")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        let meta: Value = serde_json::from_slice(&out.stdout)?;
        ensure!(
            meta["locks"]["nodes"]["nixpkgs"].is_object(),
            "no nixpkgs input: {meta}"
        );
        println!("nix flake metadata: ok");
        return Ok(());
    }
    let offline = [
        "unable to download",
        "Could not resolve",
        "Couldn't resolve",
        "resolve host",
        "network",
        "offline",
    ]
    .iter()
    .any(|s| stderr.contains(s));
    ensure!(offline, "nix flake metadata failed:\n{stderr}");
    println!(
        "skipped: `nix flake metadata` needs the network to lock the nixpkgs input \
         (github:NixOS/nixpkgs) and this machine has none:\n  {}",
        stderr
            .lines()
            .find(|l| l.contains("error"))
            .unwrap_or("")
            .trim()
    );
    Ok(())
}

/// A stand-in for nixpkgs with just what flake.nix touches at the top: enough for
/// `nix flake show` to list the outputs without the network. It proves the flake's
/// shape, not that its packages build.
const STUB_NIXPKGS: &str = r#"{
  outputs = { self }:
    let
      genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
      drv = system: name: {
        type = "derivation";
        inherit name system;
        outPath = "/nix/store/00000000000000000000000000000000-${name}";
        drvPath = "/nix/store/00000000000000000000000000000000-${name}.drv";
        meta.description = "stand-in";
      };
      pkgsFor = system: {
        callPackage = _path: args: drv system (args.component or "bento");
        mkShell = _: drv system "shell";
        testers.runNixOSTest = _: drv system "vm-test";
        stdenv.hostPlatform.system = system;
      };
    in {
      lib = { inherit genAttrs; optionalAttrs = c: a: if c then a else { }; };
      legacyPackages = genAttrs [ "x86_64-linux" "aarch64-linux" ] pkgsFor;
    };
}
"#;

#[test]
fn flake_lists_its_outputs() -> Result<()> {
    let dir = TestDir::new("nixos-files")?;
    let copy = flake_copy(&dir)?;
    let stub = dir.join("nixpkgs-stub");
    fs::create_dir_all(&stub)?;
    fs::write(stub.join("flake.nix"), STUB_NIXPKGS)?;
    let out = run(nix_command("nix")
        .args(["flake", "show", "--json", "--no-write-lock-file"])
        .arg("--override-input")
        .arg("nixpkgs")
        .arg(format!("path:{}", stub.display()))
        .arg(format!("path:{}", copy.display())))?;
    let show: Value = serde_json::from_slice(&out.stdout).context("nix flake show --json")?;
    let names = |v: &Value| -> Vec<String> {
        let mut n: Vec<String> = v
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        n.sort();
        n
    };
    // (Newer nix versions leave other systems than the current one unevaluated.)
    let system = "x86_64-linux";
    assert_eq!(
        names(&show["packages"][system]),
        ["bento", "bento-agent", "bento-tray", "default"],
        "{show}"
    );
    assert_eq!(names(&show["devShells"][system]), ["default"], "{show}");
    assert_eq!(
        names(&show["nixosModules"]),
        ["agent", "default", "server", "tray"],
        "{show}"
    );
    assert_eq!(names(&show["overlays"]), ["default"], "{show}");
    assert!(
        show["checks"]["x86_64-linux"]["vm"].is_object()
            && show["checks"]["x86_64-linux"]["vm-embedded"].is_object(),
        "no checks.x86_64-linux.vm and vm-embedded: {show}"
    );
    println!(
        "nix flake show (nixpkgs stubbed): {}",
        names(&show).join(", ")
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// The modules under our module-system double (tests/nixos/eval.nix over
// tests/nixos/modules-lite.nix), and what
// their builds run (`bento check-config`, `bento-agent check-config`) run for real
// on what they generate.

/// An ed25519 public key whose private half was destroyed (the README's placeholder).
const PLACEHOLDER_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAKccBH2buNYUtAMEBmq3eC/IFdVgbl9419aETombyX2";

/// A real key pair made here; the public line is returned.
fn fresh_key(dir: &TestDir, name: &str) -> Result<String> {
    let path = dir.join(name);
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&path))?;
    Ok(fs::read_to_string(path.with_extension("pub"))?
        .trim()
        .to_owned())
}

/// Evaluates `tests/nixos/eval.nix` with `modules` (a Nix list; `REPO` stands for the
/// repository's path) and `args` (`--argstr NAME VALUE`). Ok: its JSON; Err: what
/// nix printed.
fn eval_nixos(
    dir: &TestDir,
    modules: &str,
    args: &[(&str, &str)],
) -> Result<std::result::Result<Value, String>> {
    let repo = repo();
    let repo_str = repo.display().to_string();
    ensure!(
        !repo_str.contains([' ', '"', '$']),
        "the repository path {repo_str:?} cannot be a Nix path literal"
    );
    let file = dir.join(format!("modules-{}.nix", unique_prefix()));
    fs::write(&file, modules.replace("REPO", &repo_str))?;
    let mut cmd = nix_command("nix-instantiate");
    // toFile (the stand-in of formats.toml) writes to the store.
    cmd.args(["--read-write-mode", "--eval", "--strict", "--json"])
        .arg(repo.join("tests/nixos/eval.nix"))
        .arg("--arg")
        .arg("modules")
        .arg(format!("import {}", file.display()));
    for (name, value) in args {
        cmd.arg("--argstr").arg(name).arg(value);
    }
    let out = cmd.output().context("running nix-instantiate")?;
    if !out.status.success() {
        return Ok(Err(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    Ok(Ok(serde_json::from_slice(&out.stdout).with_context(
        || {
            format!(
                "eval.nix printed no JSON:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        },
    )?))
}

fn eval_ok(dir: &TestDir, modules: &str, args: &[(&str, &str)]) -> Result<Value> {
    match eval_nixos(dir, modules, args)? {
        Ok(v) => Ok(v),
        Err(e) => anyhow::bail!("the modules do not evaluate:\n{e}"),
    }
}

/// Runs what the module's build runs on its generated settings (`generated`: the
/// `bentoToml` or `agentToml` of eval.nix), with the real binary `bin` in place of
/// the package: the JSON the stand-in wrote becomes the TOML nixpkgs would write.
fn run_build_check(dir: &TestDir, generated: &Value, package: &Value, bin: &str) -> Result<Output> {
    let script = generated["script"].as_str().context("no build script")?;
    let json_file = generated["file"].as_str().context("no generated file")?;
    let package = package.as_str().context("no package path")?;
    let toml_value: toml::Value = serde_json::from_value(generated["value"].clone())
        .context("the generated settings are no TOML table")?;
    let work = dir.join(format!("build-{}", unique_prefix()));
    fs::create_dir_all(&work)?;
    let toml_file = work.join("generated.toml");
    fs::write(&toml_file, toml::to_string(&toml_value)?)?;
    let real = bento_tests::bins::bin(bin);
    let fake = format!("{package}/bin/{bin} ");
    ensure!(script.contains(&fake), "the check runs no {fake}: {script}");
    let script = script
        .replace(json_file, &toml_file.display().to_string())
        .replace(&fake, &format!("{} ", real.display()));
    let out = Command::new("sh")
        .args(["-ec", &script])
        .current_dir(&work)
        .env("out", work.join("out"))
        .output()
        .context("running the module's build check")?;
    if out.status.success() {
        // The file installed is the file checked.
        assert_eq!(fs::read(work.join("out"))?, fs::read(&toml_file)?);
    }
    Ok(out)
}

fn assert_passes(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: the build-time check fails:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `nix` block of README.md's NixOS section.
fn readme_snippet() -> Result<String> {
    let readme = fs::read_to_string(repo().join("README.md"))?;
    let section = readme
        .split("\n## NixOS\n")
        .nth(1)
        .context("README.md has no NixOS section")?;
    let block = section
        .split("```nix\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .context("the NixOS section has no nix block")?;
    Ok(block.to_owned())
}

#[test]
fn readme_snippet_passes_the_build_time_checks() -> Result<()> {
    let dir = TestDir::new("nixos-eval")?;
    let snippet = readme_snippet()?;
    let v = eval_ok(
        &dir,
        &format!(
            "[ REPO/nixos/server.nix REPO/nixos/agent.nix REPO/nixos/tray.nix\n\
             ({{ ... }}: {{\n{snippet}\n}}) ]"
        ),
        &[],
    )?;
    assert_eq!(v["failedAssertions"], json!([]), "{v}");
    assert_eq!(v["warnings"], json!([]), "{v}");
    assert_passes(
        &run_build_check(&dir, &v["bentoToml"], &v["packages"]["server"], "bento")?,
        "README server",
    );
    assert_passes(
        &run_build_check(
            &dir,
            &v["agentToml"],
            &v["packages"]["agent"],
            "bento-agent",
        )?,
        "README agent",
    );
    Ok(())
}

/// The settings the VM test's server node generates, in both SFTP modes, pass the
/// check its build runs (`nix flake check` builds them on NixOS).
#[test]
fn vm_test_server_settings_pass_check_config() -> Result<()> {
    let dir = TestDir::new("nixos-eval")?;
    // nixpkgs' snake-oil keys, made here: one RSA key (both hosts' in OpenSSH
    // mode) and one ed25519 key (beta's in embedded mode).
    let keys = dir.join("nixpkgs");
    fs::create_dir_all(keys.join("nixos/tests"))?;
    let rsa = keys.join("rsa");
    run(Command::new("ssh-keygen")
        .args([
            "-q", "-t", "rsa", "-b", "2048", "-N", "", "-C", "snakeoil", "-f",
        ])
        .arg(&rsa))?;
    let ed = fresh_key(&dir, "ed25519")?;
    let rsa_pub = fs::read_to_string(rsa.with_extension("pub"))?;
    fs::write(
        keys.join("nixos/tests/ssh-keys.nix"),
        format!(
            "pkgs: {{\n  snakeOilPrivateKey = \"unused\";\n  snakeOilPublicKey = {:?};\n  \
             snakeOilEd25519PrivateKey = \"unused\";\n  snakeOilEd25519PublicKey = {:?};\n}}\n",
            rsa_pub.trim(),
            ed
        ),
    )?;
    let keys_dir = keys.display().to_string();
    for mode in ["openssh", "embedded"] {
        let v = eval_ok(
            &dir,
            "[ ]",
            &[("vmServer", mode), ("sshKeys", keys_dir.as_str())],
        )?;
        assert_eq!(v["failedAssertions"], json!([]), "{mode}: {v}");
        let hosts = &v["bentoToml"]["value"]["hosts"];
        assert!(
            hosts["alpha"].is_object() && hosts["beta"].is_object(),
            "{mode}: {v}"
        );
        let shared = hosts["alpha"]["keys"] == hosts["beta"]["keys"];
        assert_eq!(shared, mode == "openssh", "{mode}: {hosts}");
        assert_passes(
            &run_build_check(&dir, &v["bentoToml"], &v["packages"]["server"], "bento")?,
            mode,
        );
    }
    Ok(())
}

/// Two hosts with one key: fine for sshd (each logs in as its own user), refused
/// when `bento sftp` serves them (the key is what tells the host).
#[test]
fn a_shared_key_is_refused_in_embedded_mode_only() -> Result<()> {
    let dir = TestDir::new("nixos-eval")?;
    let key = fresh_key(&dir, "shared")?;
    for mode in ["openssh", "embedded"] {
        let v = eval_ok(
            &dir,
            &format!(
                "[ REPO/nixos/server.nix {{ services.bento.server = {{ enable = true;\n\
                 sftp.mode = {mode:?}; hosts.a.keys = [ {key:?} ]; hosts.b.keys = [ {key:?} ]; }}; }} ]"
            ),
            &[],
        )?;
        let out = run_build_check(&dir, &v["bentoToml"], &v["packages"]["server"], "bento")?;
        let err = String::from_utf8_lossy(&out.stderr);
        if mode == "openssh" {
            assert_passes(&out, mode);
        } else {
            assert!(!out.status.success(), "embedded mode accepted a shared key");
            assert!(err.contains("also a key of host a"), "{err}");
        }
    }
    Ok(())
}

#[test]
fn the_match_block_comes_after_other_modules_global_lines() -> Result<()> {
    let dir = TestDir::new("nixos-eval")?;
    // A module listed after bento's, as a user's configuration.nix is.
    let v = eval_ok(
        &dir,
        &format!(
            "[ REPO/nixos/server.nix\n\
             {{ services.bento.server = {{ enable = true; hosts.web.keys = [ {PLACEHOLDER_KEY:?} ]; }}; }}\n\
             ({{ lib, ... }}: {{ services.openssh.extraConfig = lib.mkMerge [\n\
               (lib.mkAfter \"PermitTunnel yes\") \"ClientAliveInterval 30\" (lib.mkOrder 2000 \"MaxStartups 20\") ]; }}) ]"
        ),
        &[],
    )?;
    let conf = v["sshdExtraConfig"].as_str().context("no extraConfig")?;
    let lines: Vec<&str> = conf
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let first_match = lines
        .iter()
        .position(|l| l.starts_with("Match "))
        .context("no Match block")?;
    for global in [
        "PermitTunnel yes",
        "ClientAliveInterval 30",
        "MaxStartups 20",
    ] {
        let at = lines
            .iter()
            .position(|l| *l == global)
            .with_context(|| format!("{global} missing: {lines:?}"))?;
        assert!(
            at < first_match,
            "{global} is inside bento's Match block: {lines:?}"
        );
    }

    // And the real sshd reads it so: the global line holds for a user outside the
    // group, bento's block for the group's users.
    let sshd = Path::new("/usr/sbin/sshd");
    if !sshd.exists() {
        println!("sshd -T skipped: no /usr/sbin/sshd");
        return Ok(());
    }
    let hostkey = dir.join("hostkey");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&hostkey))?;
    let file = dir.join("sshd_config");
    fs::write(
        &file,
        format!(
            "HostKey {}\nUsePAM no\nSubsystem sftp internal-sftp\n{conf}",
            hostkey.display()
        ),
    )?;
    let effective = |user: &str| -> Result<String> {
        let out = run(Command::new(sshd)
            .arg("-T")
            .arg("-f")
            .arg(&file)
            .arg("-C")
            .arg(format!("user={user},host=h,addr=127.0.0.1")))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let nobody = effective("nobody")?;
    assert!(
        nobody.lines().any(|l| l == "permittunnel yes"),
        "a global PermitTunnel does not hold outside the Match block:\n{nobody}"
    );
    assert!(
        nobody.lines().any(|l| l == "clientaliveinterval 30"),
        "{nobody}"
    );
    Ok(())
}

#[test]
fn binary_cache_uses_the_harmonia_options_of_each_nixpkgs_without_warnings() -> Result<()> {
    let dir = TestDir::new("nixos-eval")?;
    let modules = "[ REPO/nixos/server.nix { services.bento.server = { enable = true;\n\
                   binaryCache = { enable = true; port = 5001; secretKeyFile = \"/var/lib/secrets/cache.sec\"; }; }; } ]";
    for layout in ["cache", "signKeyPaths", "signKeyPath"] {
        let v = eval_ok(&dir, modules, &[("harmonia", layout)])?;
        assert_eq!(v["warnings"], json!([]), "{layout}: {v}");
        let h = &v["harmonia"];
        let (cache, key) = match layout {
            "cache" => (&h["cache"], &h["cache"]["signKeyPaths"]),
            "signKeyPaths" => (h, &h["signKeyPaths"]),
            _ => (h, &h["signKeyPath"]),
        };
        assert_eq!(cache["enable"], true, "{layout}: {h}");
        assert_eq!(cache["settings"]["bind"], "[::]:5001", "{layout}: {h}");
        let want = if layout == "signKeyPath" {
            json!("/var/lib/secrets/cache.sec")
        } else {
            json!(["/var/lib/secrets/cache.sec"])
        };
        assert_eq!(key, &want, "{layout}: {h}");
    }
    Ok(())
}

#[test]
fn host_names_that_cannot_be_users_are_asserted() -> Result<()> {
    let dir = TestDir::new("nixos-eval")?;
    let host = |name: &str| format!("hosts.{name:?}.keys = [ {PLACEHOLDER_KEY:?} ];");
    // NixOS refuses user names of 32 characters.
    let long = "a".repeat(32);
    let v = eval_ok(
        &dir,
        &format!(
            "[ REPO/nixos/server.nix {{ services.bento.server = {{ enable = true; {} {} }}; }} ]",
            host(&long),
            host(&long[..31])
        ),
        &[],
    )?;
    let failed: Vec<String> = serde_json::from_value(v["failedAssertions"].clone())?;
    let named: Vec<&str> = failed.iter().flat_map(|m| m.lines()).collect();
    assert!(named.contains(&long.as_str()), "{failed:?}");
    assert!(!named.contains(&&long[..31]), "{failed:?}");

    // Users other modules define: an assertion names them, and their accounts are
    // left as those modules made them.
    let v = eval_ok(
        &dir,
        &format!(
            "[ REPO/nixos/server.nix {{ services.bento.server = {{ enable = true; {} {} {} }}; }} ]",
            host("sshd"),
            host("nobody"),
            host("web")
        ),
        &[],
    )?;
    let failed: Vec<String> = serde_json::from_value(v["failedAssertions"].clone())?;
    let taken = failed
        .iter()
        .find(|m| m.contains("users of other modules"))
        .with_context(|| format!("no assertion about taken names: {failed:?}"))?;
    assert!(
        taken.contains("sshd (defined in") && taken.contains("nobody (defined in"),
        "{taken}"
    );
    assert!(!taken.contains("web "), "{taken}");
    assert_eq!(v["users"]["sshd"]["group"], "sshd", "{v}");
    assert_eq!(v["users"]["nobody"]["group"], "nogroup", "{v}");
    assert_eq!(v["users"]["web"]["group"], "sftp_users", "{v}");

    // Embedded mode makes no users: any host name goes.
    let v = eval_ok(
        &dir,
        &format!(
            "[ REPO/nixos/server.nix {{ services.bento.server = {{ enable = true; sftp.mode = \"embedded\"; {} }}; }} ]",
            host("sshd")
        ),
        &[],
    )?;
    assert_eq!(v["failedAssertions"], json!([]), "{v}");
    Ok(())
}

/// `bento-sftp` reads host keys again by itself: adding a host must not restart it
/// (and cut the other hosts' transfers); a new port must.
#[test]
fn bento_sftp_restarts_only_for_what_it_reads_at_start() -> Result<()> {
    let dir = TestDir::new("nixos-eval")?;
    let key = fresh_key(&dir, "b")?;
    let triggers = |extra: &str| -> Result<Value> {
        let v = eval_ok(
            &dir,
            &format!(
                "[ REPO/nixos/server.nix {{ services.bento.server = {{ enable = true;\n\
                 sftp.mode = \"embedded\"; hosts.a.keys = [ {PLACEHOLDER_KEY:?} ]; {extra} }}; }} ]"
            ),
            &[],
        )?;
        Ok(v["services"]["bento-sftp"]["restartTriggers"].clone())
    };
    let base = triggers("")?;
    assert_ne!(base, json!([]), "no restart triggers at all");
    assert_eq!(
        triggers(&format!(
            "hosts.b.keys = [ {key:?} ]; hosts.a.tags = [ \"x\" ];"
        ))?,
        base,
        "a new host restarts bento-sftp"
    );
    assert_ne!(triggers("sftp.port = 2200;")?, base, "a new port does not");
    assert_ne!(
        triggers("settings.sftp.max_connections = 10;")?,
        base,
        "a new [sftp] limit does not"
    );
    Ok(())
}

#[test]
fn exec_start_is_escaped_for_systemd() -> Result<()> {
    let dir = TestDir::new("nixos-eval")?;
    // systemd expands % specifiers and $VARIABLES in ExecStart.
    let v = eval_ok(
        &dir,
        &format!(
            "[ REPO/nixos/server.nix REPO/nixos/agent.nix {{\n\
             services.bento.server = {{ enable = true; sftp.mode = \"embedded\"; directory = \"/srv/fleet%h$HOME\";\n\
               hosts.a.keys = [ {PLACEHOLDER_KEY:?} ]; panel.extraArgs = [ \"--note\" \"100%\" ]; }};\n\
             services.bento.agent = {{ enable = true; server = \"hub\"; }}; }} ]"
        ),
        &[],
    )?;
    for unit in ["bento-panel", "bento-sftp", "bento-agent"] {
        let exec = v["services"][unit]["ExecStart"]
            .as_str()
            .with_context(|| format!("{unit}: no ExecStart: {v}"))?;
        // Every word double-quoted, as systemd unquotes it.
        assert!(
            exec.starts_with('"') && exec.ends_with('"'),
            "{unit}: {exec}"
        );
        if unit != "bento-agent" {
            assert!(
                exec.contains("\"/srv/fleet%%h$$HOME\""),
                "{unit}: % or $ left for systemd to expand: {exec}"
            );
        }
    }
    assert!(
        v["services"]["bento-panel"]["ExecStart"]
            .as_str()
            .unwrap_or("")
            .ends_with("\"--note\" \"100%%\""),
        "{v}"
    );
    // Whatever clients do, the SFTP server and the panel have a memory bound.
    assert_eq!(v["services"]["bento-sftp"]["MemoryMax"], "1G", "{v}");
    assert_eq!(v["services"]["bento-panel"]["MemoryMax"], "4G", "{v}");
    Ok(())
}

#[test]
fn settings_options_take_attribute_sets_only() -> Result<()> {
    let dir = TestDir::new("nixos-eval")?;
    for (what, module) in [
        (
            "services.bento.server.hosts.web.settings",
            "services.bento.server = { enable = true; hosts.web.settings = \"user = x\"; };",
        ),
        (
            "services.bento.agent.settings",
            "services.bento.agent = { enable = true; server = \"hub\"; settings = [ 1 ]; };",
        ),
    ] {
        let out = eval_nixos(
            &dir,
            &format!("[ REPO/nixos/server.nix REPO/nixos/agent.nix {{ {module} }} ]"),
            &[],
        )?;
        let err = out
            .err()
            .with_context(|| format!("{what}: a non-table was accepted"))?;
        assert!(
            err.contains(what) && err.contains("is not of type"),
            "{what}: not a type error:\n{err}"
        );
    }
    // Tables go through, and reach the generated files.
    let v = eval_ok(
        &dir,
        &format!(
            "[ REPO/nixos/server.nix REPO/nixos/agent.nix {{\n\
             services.bento.server = {{ enable = true; hosts.web = {{ keys = [ {PLACEHOLDER_KEY:?} ]; settings.user = \"web\"; }}; }};\n\
             services.bento.agent = {{ enable = true; server = \"hub\"; settings.timeout = 60;\n\
               reboot = {{ mode = \"window\"; window = \"02:00-04:00\"; }}; }}; }} ]"
        ),
        &[],
    )?;
    assert_eq!(v["bentoToml"]["value"]["hosts"]["web"]["user"], "web");
    assert_eq!(v["agentToml"]["value"]["timeout"], 60);
    assert_passes(
        &run_build_check(&dir, &v["bentoToml"], &v["packages"]["server"], "bento")?,
        "server",
    );
    assert_passes(
        &run_build_check(
            &dir,
            &v["agentToml"],
            &v["packages"]["agent"],
            "bento-agent",
        )?,
        "agent (reboot table in snake_case)",
    );
    Ok(())
}

#[test]
fn panel_open_firewall_on_loopback_warns() -> Result<()> {
    let dir = TestDir::new("nixos-eval")?;
    let eval = |listen: &str| {
        eval_ok(
            &dir,
            &format!(
                "[ REPO/nixos/server.nix {{ services.bento.server = {{ enable = true;\n\
                 panel.openFirewall = true; {listen} }}; }} ]"
            ),
            &[],
        )
    };
    let v = eval("")?;
    assert_eq!(v["openFirewall"], json!([8080]), "{v}");
    let warnings = v["warnings"].to_string();
    assert!(
        warnings.contains("panel.openFirewall") && warnings.contains("127.0.0.1:8080"),
        "{warnings}"
    );
    let v = eval("settings.web.listen = \"[::]:8443\";")?;
    assert_eq!(v["openFirewall"], json!([8443]), "{v}");
    assert_eq!(v["warnings"], json!([]), "{v}");
    Ok(())
}

#[test]
fn agent_and_tray_modules_in_both_agent_modes() -> Result<()> {
    let dir = TestDir::new("nixos-eval")?;
    for mode in ["daemon", "timer"] {
        let v = eval_ok(
            &dir,
            &format!(
                "[ REPO/nixos/agent.nix REPO/nixos/tray.nix {{\n\
                 services.bento.agent = {{ enable = true; server = \"hub.example.org\"; mode = {mode:?};\n\
                   keyFile = \"/etc/bento/id_ed25519\"; socketGroup = \"users\"; healthChecks = [ [ \"true\" ] ]; }};\n\
                 services.bento.tray.enable = true; }} ]"
            ),
            &[],
        )?;
        assert_eq!(v["failedAssertions"], json!([]), "{mode}: {v}");
        // The tray warns in timer mode (no socket), and only then.
        assert_eq!(
            v["warnings"].as_array().map(Vec::len),
            Some(usize::from(mode == "timer")),
            "{mode}: {v}"
        );
        assert_eq!(v["services"]["bento-agent"]["restartIfChanged"], false);
        assert!(v["userServices"]["bento-tray"]["ExecStart"].is_string());
        assert_passes(
            &run_build_check(
                &dir,
                &v["agentToml"],
                &v["packages"]["agent"],
                "bento-agent",
            )?,
            mode,
        );
    }
    Ok(())
}

/// The version of `rust-version = "X"` in a Cargo.toml.
fn cargo_rust_version(manifest: &str) -> Option<String> {
    let v: toml::Value = manifest.parse().ok()?;
    Some(
        v.get("workspace")?
            .get("package")?
            .get("rust-version")?
            .as_str()?
            .to_owned(),
    )
}

fn version_tuple(v: &str) -> Vec<u64> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

/// The modules build their packages with the system's nixpkgs: every crate of
/// Cargo.lock must build with the rustc the docs and package.nix promise, and that
/// promise is Cargo.toml's rust-version.
#[test]
fn cargo_lock_builds_with_the_promised_rustc() -> Result<()> {
    let manifest = fs::read_to_string(repo().join("Cargo.toml"))?;
    let promised = cargo_rust_version(&manifest).context("Cargo.toml has no rust-version")?;

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = run(Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(repo()))?;
    let meta: Value = serde_json::from_slice(&out.stdout)?;
    let resolved: std::collections::HashSet<&str> = meta["resolve"]["nodes"]
        .as_array()
        .context("no resolve graph")?
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    let mut too_new = Vec::new();
    let mut strictest = (vec![0], String::new());
    for p in meta["packages"].as_array().context("no packages")? {
        let (Some(id), Some(rv)) = (p["id"].as_str(), p["rust_version"].as_str()) else {
            continue;
        };
        if !resolved.contains(id) {
            continue;
        }
        let t = version_tuple(rv);
        if t > version_tuple(&promised) {
            too_new.push(format!("{} {} needs {rv}", p["name"], p["version"]));
        }
        if t > strictest.0 && !p["source"].is_null() {
            strictest = (t, format!("{} {} ({rv})", p["name"], p["version"]));
        }
    }
    ensure!(
        too_new.is_empty(),
        "Cargo.lock needs a newer rustc than rust-version {promised}: {too_new:?}"
    );
    // Our own crates say it too (cargo then checks it).
    for member in ["bento-core", "bento", "bento-agent", "bento-tray"] {
        let p = meta["packages"]
            .as_array()
            .and_then(|ps| {
                ps.iter()
                    .find(|p| p["name"] == member && p["source"].is_null())
            })
            .with_context(|| format!("{member} missing"))?;
        assert_eq!(p["rust_version"], promised.as_str(), "{member}");
    }

    let readme = fs::read_to_string(repo().join("README.md"))?;
    let nixos = readme.split("\n## NixOS\n").nth(1).unwrap_or_default();
    ensure!(
        nixos.contains(&format!("rustc {promised} or newer")),
        "README's NixOS section does not promise rustc {promised}"
    );

    // package.nix reads the same version, refuses an older rustc, takes this one.
    let package = |rustc: &str| -> Result<Output> {
        nix_command("nix-instantiate")
            .args(["--eval", "--strict", "--json", "--expr"])
            .arg(format!(
                "let lib = import {lib:?}; f = import {pkg:?};\n\
                 stubs = {{ inherit lib; rustPlatform = {{ rust.rustc.version = {rustc:?};\n\
                   buildRustPackage = a: {{ inherit (a) pname buildFeatures; inputs = map (p: p.pname) a.buildInputs; }}; }};\n\
                   component = \"bento-tray\"; }};\n\
                 pkgs = lib.genAttrs (builtins.attrNames (builtins.functionArgs f)) (n: {{ pname = n; }});\n\
                 in f (builtins.intersectAttrs (builtins.functionArgs f) (pkgs // stubs))",
                lib = repo().join("tests/nixos/modules-lite.nix").display().to_string(),
                pkg = repo().join("nixos/package.nix").display().to_string(),
            ))
            .output()
            .context("running nix-instantiate")
    };
    let older = format!("1.{}.0", version_tuple(&promised)[1] - 1);
    let out = package(&older)?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "package.nix accepted rustc {older}");
    assert!(err.contains(&format!("rustc {promised} or newer")), "{err}");
    let out = package(&format!("{promised}.0"))?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The tray: built as `tauri build` builds it, and without OpenSSL, which
    // nothing in Cargo.lock links.
    let tray: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        tray["buildFeatures"],
        json!(["tauri/custom-protocol"]),
        "{tray}"
    );
    assert!(!tray["inputs"].to_string().contains("openssl"), "{tray}");
    ensure!(
        !fs::read_to_string(repo().join("Cargo.lock"))?.contains("name = \"openssl-sys\""),
        "Cargo.lock has openssl-sys: package.nix must give the tray openssl"
    );
    println!("strictest rust-version in Cargo.lock: {}", strictest.1);
    Ok(())
}
