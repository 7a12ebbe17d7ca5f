//! `bento deploy` and `bento build` over toy hosts built by the real nix.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::SystemTime;

use anyhow::Result;
use bento_core::release::Manifest;
use bento_tests::cli::{current_release, BentoFixture};
use bento_tests::sshd::unique_prefix;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The result (per-host lines, counts, failures) goes to stdout.
fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn mtime(p: &Path) -> SystemTime {
    fs::metadata(p).unwrap().modified().unwrap()
}

/// A fleet of one flake with two hosts and one non-flake host.
fn three_hosts(label: &str) -> Result<(BentoFixture, [String; 3], String)> {
    let mut f = BentoFixture::new(label)?;
    let p = unique_prefix();
    let (web, db, lab) = (format!("{p}-web"), format!("{p}-db"), format!("{p}-lab"));
    let flake_dir = format!("{p}-office");
    f.fleet.flake_host(&flake_dir, &[&web, &db])?;
    f.fleet.nonflake_host(&lab)?;
    Ok((f, [web, db, lab], flake_dir))
}

#[test]
fn deploy_publishes_every_host_then_nothing_when_unchanged() -> Result<()> {
    let (f, [web, db, lab], _) = three_hosts("deploy-all")?;
    let out = f.ok(&["deploy"])?;
    assert!(
        stdout(&out).contains("3 hosts: 3 published, 0 unchanged, 0 failed"),
        "{}",
        stdout(&out)
    );
    let states = fs::read_to_string(f.chroot().join("states.txt"))?;
    for h in [&web, &db, &lab] {
        let hc = f.host_chroot(h);
        let (rev, dir) = current_release(&hc).expect("current release");
        let m = Manifest::read_from(&dir)?;
        assert_eq!(m.revision, rev);
        assert_eq!(&m.host, h);
        m.verify(&dir)?;
        // Shared utils/ files land in every release (copied following symlinks).
        assert!(hc.join("config/utils/toy.nix").is_file());
        assert_eq!(fs::read_to_string(hc.join("last_change_date"))?.trim(), rev);
        // sshd's ChrootDirectory rule: the host directory belongs to root, 0755.
        use std::os::unix::fs::MetadataExt;
        let md = fs::metadata(&hc)?;
        assert_eq!((md.uid(), md.mode() & 0o777), (0, 0o755));
    }
    // Flake hosts have an expected system; non-flake hosts cannot have one.
    let web_line = states
        .lines()
        .find(|l| l.starts_with(&format!("{web}=")))
        .unwrap();
    assert!(
        web_line.contains(&format!("-nixos-system-{web}-1")),
        "{states}"
    );
    assert!(states.contains(&format!("{db}=")));
    assert!(!states.contains(&format!("{lab}=")));
    let st = f.host_status(&lab)?;
    assert_eq!(st["expected_system"], serde_json::Value::Null);
    assert_eq!(f.host_status(&web)?["state"], "new-machine");

    let before: Vec<_> = [&web, &db, &lab]
        .iter()
        .map(|h| mtime(&f.host_chroot(h).join("last_change_date")))
        .collect();
    let out = f.ok(&["deploy"])?;
    assert!(
        stdout(&out).contains("3 hosts: 0 published, 3 unchanged, 0 failed"),
        "{}",
        stdout(&out)
    );
    let after: Vec<_> = [&web, &db, &lab]
        .iter()
        .map(|h| mtime(&f.host_chroot(h).join("last_change_date")))
        .collect();
    assert_eq!(before, after, "an unchanged host's last_change_date moved");
    Ok(())
}

#[test]
fn changing_one_file_republishes_only_that_host() -> Result<()> {
    let (f, [web, db, lab], flake_dir) = three_hosts("deploy-one")?;
    f.ok(&["deploy"])?;
    let rev = |h: &str| current_release(&f.host_chroot(h)).unwrap().0;
    let (web1, db1, lab1) = (rev(&web), rev(&db), rev(&lab));

    f.fleet.write_file(&lab, "notes.txt", "a note\n")?;
    let out = f.ok(&["deploy"])?;
    assert!(
        stdout(&out).contains("1 published, 2 unchanged"),
        "{}",
        stdout(&out)
    );
    assert_eq!((rev(&web), rev(&db)), (web1.clone(), db1.clone()));
    assert_ne!(rev(&lab), lab1);
    assert_eq!(
        fs::read_to_string(f.host_chroot(&lab).join("config/notes.txt"))?,
        "a note\n"
    );

    // A change in the shared flake directory republishes both of its hosts.
    f.fleet.set_config_system_version(&flake_dir, &db, "2")?;
    let out = f.ok(&["deploy"])?;
    assert!(
        stdout(&out).contains("2 published, 1 unchanged"),
        "{}",
        stdout(&out)
    );
    let states = fs::read_to_string(f.chroot().join("states.txt"))?;
    assert!(
        states.contains(&format!("-nixos-system-{db}-2")),
        "{states}"
    );
    assert!(
        states.contains(&format!("-nixos-system-{web}-1")),
        "{states}"
    );
    Ok(())
}

#[test]
fn a_failing_host_does_not_stop_the_others() -> Result<()> {
    let (mut f, [web, db, lab], flake_dir) = three_hosts("deploy-fail")?;
    f.fleet.break_eval(&flake_dir)?;
    let out = f.run(&["deploy"])?;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let res = stdout(&out);
    assert!(res.contains("1 published, 0 unchanged, 2 failed"), "{res}");
    assert!(res.contains(&format!("{web}  FAILED: ")), "{res}");
    // The message of the two hosts of one flake is printed once.
    assert_eq!(res.matches("toy eval failure").count(), 3, "{res}");
    assert!(stderr(&out).contains(&format!("{web}: FAILED: ")));
    assert!(current_release(&f.host_chroot(&lab)).is_some());
    assert!(current_release(&f.host_chroot(&db)).is_none());
    Ok(())
}

#[test]
fn host_filter_and_name_variable_restrict_the_run() -> Result<()> {
    let (f, [web, db, lab], _) = three_hosts("deploy-filter")?;
    let out = f.cmd().arg("deploy").env("NAME", &db).output()?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(current_release(&f.host_chroot(&db)).is_some());
    assert!(current_release(&f.host_chroot(&web)).is_none());
    f.ok(&["deploy", "--host", &lab])?;
    assert!(current_release(&f.host_chroot(&lab)).is_some());
    assert!(current_release(&f.host_chroot(&web)).is_none());
    Ok(())
}

#[test]
fn build_and_dry_build_publish_nothing() -> Result<()> {
    let (f, [web, _, _], _) = three_hosts("build")?;
    // A dry build only evaluates: it never says "built".
    let out = f.ok(&["build", "dry-build"])?;
    assert!(
        stdout(&out).contains("3 hosts: 3 evaluated, 0 failed"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains(&format!("{web}: evaluated /nix/store/")),
        "{}",
        stderr(&out)
    );
    assert!(!stdout(&out).contains("built") && !stderr(&out).contains("built"));
    let out = f.ok(&["build"])?;
    assert!(
        stderr(&out).contains(&format!("{web}: built /nix/store/")),
        "{}",
        stderr(&out)
    );
    assert!(!f.chroot().join(&web).exists());
    // Activation is for one host only, and never without a host.
    let out = f.run(&["build", "switch"])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--host NAME"), "{}", stderr(&out));
    Ok(())
}

#[test]
fn build_switch_activates_one_host_through_its_profile() -> Result<()> {
    let (f, [web, _, _], _) = three_hosts("build-switch")?;
    let profile = f.dir.join("profiles/system");
    let out = f.ok(&[
        "build",
        "switch",
        "--host",
        &web,
        "--yes",
        "--profile",
        profile.to_str().unwrap(),
    ])?;
    assert!(stderr(&out).contains("Activated"), "{}", stderr(&out));
    let records = f.fleet.switch_records(&web)?;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].action, "switch");
    let target = fs::canonicalize(&profile)?;
    assert!(target
        .to_string_lossy()
        .contains(&format!("-nixos-system-{web}-1")));
    Ok(())
}

#[test]
fn invalid_host_names_and_symlink_loops_are_clear_errors() -> Result<()> {
    let (f, [web, _, lab], flake_dir) = three_hosts("deploy-invalid")?;
    // A configuration name NixOS would refuse, in a flake beside good ones.
    let bad_dir = f.bento_dir().join("hosts/badnames");
    fs::create_dir_all(&bad_dir)?;
    fs::write(
        bad_dir.join("flake.nix"),
        "{ outputs = { self }: { nixosConfigurations.\"bad name;rm\" = { }; }; }\n",
    )?;
    symlink("..", f.fleet.host_dir(&lab).join("loop"))?;
    let out = f.run(&["deploy"])?;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("invalid host name \"bad name;rm\""), "{err}");
    assert!(err.contains("symlink loop"), "{err}");
    assert!(current_release(&f.host_chroot(&web)).is_some(), "{err}");
    assert!(!f.chroot().join("bad name;rm").exists());
    let _ = flake_dir;

    // --host refuses a bad name before anything runs.
    let out = f.run(&["deploy", "--host", "../etc"])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid host name"),
        "{}",
        stderr(&out)
    );
    Ok(())
}

#[test]
fn a_second_deploy_refuses_while_one_runs() -> Result<()> {
    let (f, _, _) = three_hosts("deploy-lock")?;
    let lock = fs::File::create(f.bento_dir().join(".bento.lock"))?;
    lock.lock()?;
    let out = f.run(&["deploy"])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("another bento deploy is running"),
        "{}",
        stderr(&out)
    );
    drop(lock);
    f.ok(&["deploy"])?;
    Ok(())
}

#[test]
fn broken_settings_are_clear_errors() -> Result<()> {
    let f = BentoFixture::new("deploy-config")?;
    fs::write(
        f.bento_dir().join("bento.toml"),
        "chroot_dir = \"/c\"\nremote_prot = 2\n",
    )?;
    let out = f.run(&["status"])?;
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("bento.toml") && err.contains("unknown field `remote_prot`"),
        "{err}"
    );
    let out = f
        .cmd()
        .env("BENTO_DIR", f.dir.path())
        .arg("status")
        .output()?;
    assert!(
        stderr(&out).contains("is not a bento directory"),
        "{}",
        stderr(&out)
    );
    Ok(())
}

#[test]
fn a_directory_of_the_original_tool_works_unchanged() -> Result<()> {
    let (f, [web, _, lab], _) = three_hosts("legacy")?;
    fs::remove_file(f.bento_dir().join("bento.toml"))?;
    fs::write(
        f.bento_dir().join("config.sh"),
        format!(
            "CHROOT_DIR=\"{}\"\nREMOTE_IP=127.0.0.1\nREMOTE_PORT=22\nTIMEOUT=20\n",
            f.chroot().display()
        ),
    )?;
    // The original tool needs a system user per host; root stands in for them here.
    let out = f.run(&["deploy", "--host", &web])?;
    assert!(
        stderr(&out).contains(&format!("user \"{web}\" does not exist")),
        "{}",
        stderr(&out)
    );
    let out = f.ok(&["check-config"])?;
    assert!(String::from_utf8_lossy(&out.stdout).contains("config.sh"));
    let _ = lab;
    Ok(())
}

#[test]
fn init_makes_a_directory_bento_accepts() -> Result<()> {
    let f = BentoFixture::new("init")?;
    let new = f.dir.join("fresh");
    let out = f.cmd().arg("init").arg(&new).output()?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(new.join("hosts/example/configuration.nix").is_file());
    assert!(new.join("hosts/example/utils/bento.nix").is_file());
    // The server's own state (.bento/builds.json, the lock, the database) stays out of git.
    assert!(fs::read_to_string(new.join(".gitignore"))?.contains("/.bento/"));
    let out = f
        .cmd()
        .env("BENTO_DIR", &new)
        .arg("check-config")
        .output()?;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = f.cmd().arg("init").arg(&new).output()?;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already a bento directory"));
    Ok(())
}
