//! The NixOS side (`flake.nix`, `nixos/`) as far as a machine without NixOS and
//! without nixpkgs can check it: every `.nix` file parses; the server module's sshd
//! `Match` block is the one the OpenSSH-mode tests use (one file, `nixos/sshd-match.conf`);
//! its host users and chroot rules fit that block and give a chroot the real sshd
//! serves; the flake lists its outputs. The VM test (`nixos/tests/vm.nix`) needs NixOS
//! and runs with `nix flake check` elsewhere.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

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

    let too_long = "a".repeat(33);
    for (name, valid) in [
        ("web", true),
        ("db-1", true),
        ("_x", true),
        ("Web", false),
        ("1web", false),
        ("-web", false),
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
