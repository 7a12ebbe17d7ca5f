//! `bento diff` and `bento flake-update` with the real nix.

use std::fs;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use bento_core::report::ReportStatus;
use bento_tests::cli::BentoFixture;
use bento_tests::reports::{set_mtime, Report};
use bento_tests::sshd::unique_prefix;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn diff_shows_the_closure_change_between_running_and_expected() -> Result<()> {
    let mut f = BentoFixture::new("diff")?;
    let host = format!("{}-web", unique_prefix());
    f.fleet.flake_host(&host, &[&host])?;
    let v1 = f.fleet.build_toplevel(&host)?;
    f.fleet.set_system_version(&host, "2")?;
    f.ok(&["deploy"])?;
    set_mtime(
        &f.host_chroot(&host).join("last_change_date"),
        SystemTime::now() - Duration::from_secs(60),
    )?;
    // The host still runs version 1.
    let running = v1.file_name().unwrap().to_string_lossy().into_owned();
    let logs = f.host_chroot(&host).join("logs");
    let first = Report::legacy(&host, &running, ReportStatus::Success).write(&logs)?;
    // Received half a minute after the publication: the next report, written
    // now, is the newer one whatever the clock's resolution.
    set_mtime(
        &logs.join(first),
        SystemTime::now() - Duration::from_secs(30),
    )?;

    let out = f.ok(&["diff"])?;
    let text = stdout(&out);
    assert!(
        text.contains(&format!("Changes in {host} between {running} and ")),
        "{text}"
    );
    assert!(
        text.contains(&format!("nixos-system-{host}: 1 → 2")),
        "{text}"
    );

    // Once it runs what it should, there is nothing to show.
    let states = fs::read_to_string(f.chroot().join("states.txt"))?;
    let expected = states
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{host}=")))
        .unwrap();
    Report::legacy(&host, expected, ReportStatus::Success)
        .write(&f.host_chroot(&host).join("logs"))?;
    let text = stdout(&f.ok(&["diff"])?);
    assert!(
        text.contains(&format!("{host} is running the latest version")),
        "{text}"
    );
    Ok(())
}

#[test]
fn flake_update_locks_and_updates_inputs() -> Result<()> {
    let f = BentoFixture::new("flake-update")?;
    let dep = f.dir.join("dep");
    fs::create_dir_all(&dep)?;
    fs::write(
        dep.join("flake.nix"),
        "{ outputs = { self }: { value = 1; }; }\n",
    )?;
    let host_dir = f.bento_dir().join("hosts/withinput");
    fs::create_dir_all(&host_dir)?;
    fs::write(
        host_dir.join("flake.nix"),
        format!(
            "{{ inputs.dep.url = \"path:{}\";\n  outputs = {{ self, dep }}: {{ nixosConfigurations = {{ }}; }}; }}\n",
            dep.display()
        ),
    )?;
    let out = f.ok(&["flake-update"])?;
    assert!(stdout(&out).contains("hosts/withinput"), "{}", stdout(&out));
    let lock1 = fs::read_to_string(host_dir.join("flake.lock"))?;
    assert!(lock1.contains("\"dep\""), "{lock1}");

    fs::write(
        dep.join("flake.nix"),
        "{ outputs = { self }: { value = 2; }; }\n",
    )?;
    let out = f.ok(&["flake-update", "dep"])?;
    let lock2 = fs::read_to_string(host_dir.join("flake.lock"))?;
    assert_ne!(lock1, lock2, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout(&out).contains("hosts/withinput: updated"),
        "{}",
        stdout(&out)
    );

    let out = f.run(&["flake-update", "nosuchinput"])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no flake has an input named \"nosuchinput\""),
        "{err}"
    );
    Ok(())
}
