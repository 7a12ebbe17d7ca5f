//! The test helpers themselves, against the real nix and OpenSSH.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Result};
use bento_tests::endpoint::Endpoint;
use bento_tests::nixenv;
use bento_tests::sshd::{unique_prefix, SshServer};
use bento_tests::toy::{self, ToyFleet};
use bento_tests::{run, wait_until, TestDir};

fn fleet(dir: &TestDir) -> Result<ToyFleet> {
    ToyFleet::new(&dir.join("bento"))
}

/// One flake host `<prefix>-web` in a fresh fleet, and its first system.
struct OneHost {
    dir: TestDir,
    fleet: ToyFleet,
    host: String,
    system: PathBuf,
}

fn one_flake_host() -> Result<OneHost> {
    let dir = TestDir::new("harness")?;
    let mut fleet = fleet(&dir)?;
    let host = format!("{}-web", unique_prefix());
    fleet.flake_host(&host, &[&host])?;
    let system = fleet.build_toplevel(&host)?;
    Ok(OneHost {
        dir,
        fleet,
        host,
        system,
    })
}

fn basename(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn flake_with_two_hosts_builds_two_systems() -> Result<()> {
    let dir = TestDir::new("harness")?;
    let mut fleet = fleet(&dir)?;
    let p = unique_prefix();
    let (web, db) = (format!("{p}-web"), format!("{p}-db"));
    fleet.flake_host(&format!("{p}-fleet"), &[&web, &db])?;

    let web_system = fleet.build_toplevel(&web)?;
    let db_system = fleet.build_toplevel(&db)?;
    assert_ne!(web_system, db_system);
    assert!(basename(&web_system).ends_with(&format!("-nixos-system-{web}-1")));
    assert!(basename(&db_system).ends_with(&format!("-nixos-system-{db}-1")));
    for file in [
        "bin/switch-to-configuration",
        "kernel",
        "initrd",
        "nixos-version",
    ] {
        assert!(web_system.join(file).is_file(), "{file} missing");
    }
    assert!(web_system.join("kernel-modules/lib/modules/6.1.0").is_dir());

    // `nix flake show` works on the host directory itself, symlinks and all.
    let show = run(nixenv::nix_command("nix")
        .args(["flake", "show", "--json"])
        .arg(format!(
            "path:{}",
            fleet.host_dir(&format!("{p}-fleet")).display()
        )))?;
    let show: serde_json::Value = serde_json::from_slice(&show.stdout)?;
    let configs = show["nixosConfigurations"].as_object().unwrap();
    assert_eq!(configs.len(), 2);
    assert_eq!(configs[&web]["type"], "nixos-configuration");

    // One configuration of a multi-host flake can change alone.
    fleet.set_config_system_version(&format!("{p}-fleet"), &db, "2")?;
    assert_eq!(fleet.build_toplevel(&web)?, web_system);
    let db2 = fleet.build_toplevel(&db)?;
    assert!(basename(&db2).ends_with(&format!("-nixos-system-{db}-2")));
    Ok(())
}

#[test]
fn only_system_version_changes_the_store_path() -> Result<()> {
    let OneHost {
        fleet,
        host,
        system: first,
        dir: _dir, // kept: the fleet lives in it
    } = one_flake_host()?;

    fleet.write_file(&host, "notes.txt", "only a note\n")?;
    assert_eq!(fleet.build_toplevel(&host)?, first);

    fleet.set_system_version(&host, "2")?;
    let second = fleet.build_toplevel(&host)?;
    assert_ne!(second, first);
    assert_eq!(fs::read_to_string(second.join("nixos-version"))?, "2\n");
    Ok(())
}

#[test]
fn kernel_version_changes_the_kernel() -> Result<()> {
    let OneHost {
        dir,
        fleet,
        host,
        system: old,
    } = one_flake_host()?;
    fleet.set_kernel(&host, "6.6.1")?;
    let new = fleet.build_toplevel(&host)?;
    assert_ne!(old, new);
    assert_eq!(
        fs::read_to_string(old.join("kernel"))?,
        "toy kernel 6.1.0\n"
    );
    assert_eq!(
        fs::read_to_string(new.join("kernel"))?,
        "toy kernel 6.6.1\n"
    );
    assert_ne!(
        fs::read_to_string(old.join("initrd"))?,
        fs::read_to_string(new.join("initrd"))?
    );
    assert!(new.join("kernel-modules/lib/modules/6.6.1").is_dir());

    // A booted system with the old kernel shares the old system's kernel paths.
    let booted = dir.join("run/booted-system");
    fleet.fake_booted_system(&booted, "6.1.0")?;
    for file in ["kernel", "initrd", "kernel-modules"] {
        assert_eq!(
            booted.join(file).canonicalize()?,
            old.join(file).canonicalize()?
        );
        assert_ne!(
            booted.join(file).canonicalize()?,
            new.join(file).canonicalize()?
        );
    }
    Ok(())
}

#[test]
fn nonflake_host_builds_through_the_toy_nixos() -> Result<()> {
    let dir = TestDir::new("harness")?;
    let mut fleet = fleet(&dir)?;
    let host = format!("{}-legacy", unique_prefix());
    let host_dir = fleet.nonflake_host(&host)?;
    let system = fleet.build_toplevel(&host)?;
    assert!(basename(&system).ends_with(&format!("-nixos-system-{host}-1")));

    // The real agent's and nixos-rebuild's entry points agree.
    let copy = dir.join("release");
    toy::copy_following_symlinks(&host_dir, &copy)?;
    let out = run(nixenv::nix_command("nix-build")
        .env("NIX_PATH", fleet.nix_path())
        .args(["<nixpkgs/nixos>", "-A", "config.system.build.toplevel"])
        .arg("--no-out-link")
        .arg("-I")
        .arg(format!(
            "nixos-config={}",
            copy.join("configuration.nix").display()
        )))?;
    assert_eq!(
        String::from_utf8(out.stdout)?.trim(),
        system.to_str().unwrap()
    );

    // Without networking.hostName, the directory names the host.
    fs::write(copy.join("configuration.nix"), "{ ... }: { }\n")?;
    let unnamed =
        toy::build_nonflake_toplevel(&fleet.nixpkgs_path(), &copy.join("configuration.nix"))?;
    assert!(basename(&unnamed).ends_with("-nixos-system-release-1"));
    Ok(())
}

#[test]
fn broken_hosts_fail_to_evaluate() -> Result<()> {
    let dir = TestDir::new("harness")?;
    let mut fleet = fleet(&dir)?;
    let p = unique_prefix();
    let (flake, legacy) = (format!("{p}-web"), format!("{p}-legacy"));
    fleet.flake_host(&flake, &[&flake])?;
    fleet.nonflake_host(&legacy)?;
    fleet.break_eval(&flake)?;
    fleet.break_eval(&legacy)?;
    for host in [&flake, &legacy] {
        let err = format!("{:#}", fleet.build_toplevel(host).unwrap_err());
        assert!(err.contains(toy::EVAL_FAILURE), "{err}");
    }
    // The flake itself still evaluates: hosts stay discoverable.
    run(nixenv::nix_command("nix")
        .args(["flake", "show", "--json"])
        .arg(format!("path:{}", fleet.host_dir(&flake).display())))?;
    fleet.repair_eval(&flake)?;
    fleet.build_toplevel(&flake)?;
    Ok(())
}

#[test]
fn switch_to_configuration_records_and_can_fail() -> Result<()> {
    let OneHost {
        fleet,
        host,
        system,
        dir: _dir, // kept: the fleet lives in it
    } = one_flake_host()?;
    let switch = system.join("bin/switch-to-configuration");

    assert!(fleet.switch_records(&host)?.is_empty());
    run(Command::new(&switch).arg("switch"))?;
    run(Command::new(&switch).arg("boot"))?;
    let records = fleet.switch_records(&host)?;
    let actions: Vec<&str> = records.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["switch", "boot"]);
    assert!(records[0].unix_time > 1_600_000_000);

    fleet.set_activation_failure(&host, true)?;
    let status = Command::new(&switch).arg("switch").status()?;
    assert_eq!(status.code(), Some(1));
    assert_eq!(fleet.switch_records(&host)?.len(), 2);

    fleet.set_activation_failure(&host, false)?;
    run(Command::new(&switch).arg("test"))?;
    assert_eq!(fleet.switch_records(&host)?.len(), 3);
    Ok(())
}

#[test]
fn profiles_take_toy_systems_and_roll_back() -> Result<()> {
    let OneHost {
        dir,
        fleet,
        host,
        system: first,
    } = one_flake_host()?;
    fleet.set_system_version(&host, "2")?;
    let second = fleet.build_toplevel(&host)?;

    let profile = dir.join("profiles/system");
    toy::set_profile(&profile, &first)?;
    toy::set_profile(&profile, &second)?;
    assert_eq!(profile.canonicalize()?, second);
    assert!(dir.join("profiles/system-1-link").exists());
    toy::rollback_profile(&profile)?;
    assert_eq!(profile.canonicalize()?, first);
    Ok(())
}

fn sftp_ok(server: &SshServer, user: &str, key_of: &str, batch: &str) -> Result<String> {
    let out = server.sftp_batch(user, &server.key_path(key_of), batch)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "sftp {batch:?} as {user} failed:\n{text}"
    );
    Ok(text)
}

fn sftp_fails(server: &SshServer, user: &str, key_of: &str, batch: &str) -> Result<String> {
    let out = server.sftp_batch(user, &server.key_path(key_of), batch)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        !out.status.success(),
        "sftp {batch:?} as {user} worked:\n{text}"
    );
    Ok(text)
}

#[test]
fn sftp_chroot_confines_each_host() -> Result<()> {
    let dir = TestDir::new("harness")?;
    let p = unique_prefix();
    let (a, b) = (format!("{p}-a"), format!("{p}-b"));
    let server = SshServer::start(&[&a, &b])?;
    for host in [&a, &b] {
        server.make_host_dir(host)?;
        server.write_host_file(host, "config/file.txt", format!("for {host}\n").as_bytes())?;
    }
    let got = dir.join("got.txt");

    sftp_ok(
        &server,
        &a,
        &a,
        &format!("get config/file.txt {}\n", got.display()),
    )?;
    assert_eq!(fs::read_to_string(&got)?, format!("for {a}\n"));

    // Confined to its chroot: no /etc, no other host, writes only in logs/.
    sftp_fails(&server, &a, &a, "ls /etc\n")?;
    sftp_fails(
        &server,
        &a,
        &a,
        &format!("get ../{b}/config/file.txt {}\n", got.display()),
    )?;
    sftp_fails(
        &server,
        &a,
        &a,
        &format!("put {} /intruder.txt\n", got.display()),
    )?;
    sftp_ok(
        &server,
        &a,
        &a,
        &format!("put {} logs/report.txt\n", got.display()),
    )?;
    let report = server.host_chroot(&a).join("logs/report.txt");
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&fs::metadata(&report)?),
        server.uid(&a)?
    );

    // Another host's key does not open this host's chroot.
    sftp_fails(
        &server,
        &a,
        &b,
        &format!("get config/file.txt {}\n", got.display()),
    )?;
    sftp_ok(&server, &b, &b, "ls config\n")?;
    assert!(server
        .log()
        .contains(&format!("Accepted publickey for {a}")));
    Ok(())
}

#[test]
fn sshd_stops_and_comes_back_on_the_same_port() -> Result<()> {
    let host = format!("{}-web", unique_prefix());
    let mut server = SshServer::start(&[&host])?;
    server.make_host_dir(&host)?;
    let port = server.port();
    sftp_ok(&server, &host, &host, "ls\n")?;

    server.stop()?;
    assert!(!server.is_running());
    sftp_fails(&server, &host, &host, "ls\n")?;

    server.restart()?;
    assert_eq!(server.port(), port);
    sftp_ok(&server, &host, &host, "ls\n")?;
    Ok(())
}

#[test]
fn dropping_the_server_removes_its_users_and_directory() -> Result<()> {
    let host = format!("{}-web", unique_prefix());
    let server = SshServer::start(&[&host])?;
    let (root, group, port) = (
        server.root().to_owned(),
        server.group().to_owned(),
        server.port(),
    );
    let exists = |db: &str, name: &str| {
        Command::new("getent")
            .args([db, name])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    assert!(exists("passwd", &host) && exists("group", &group));
    drop(server);
    assert!(!root.exists());
    assert!(!exists("passwd", &host));
    assert!(!exists("group", &group));
    assert!(wait_until(Duration::from_secs(5), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
    }));
    Ok(())
}
