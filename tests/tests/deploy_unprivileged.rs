//! Root adds hosts once; every later publication runs as an unprivileged user that
//! builds through a nix-daemon, as on NixOS.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use bento_tests::cli::{current_release, BentoFixture};
use bento_tests::sshd::unique_prefix;
use bento_tests::{nixenv, wait_until};

const NOBODY: u32 = 65534;

/// A nix-daemon on a private socket, so parallel tests do not share one.
struct NixDaemon {
    child: Child,
}

impl NixDaemon {
    fn start(socket: &Path) -> Result<Self> {
        let child = Command::new("nix-daemon")
            .env("NIX_DAEMON_SOCKET_PATH", socket)
            .envs(nixenv::nix_env())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nix-daemon")?;
        let d = NixDaemon { child };
        anyhow::ensure!(
            wait_until(Duration::from_secs(10), || socket.exists()),
            "nix-daemon did not create its socket"
        );
        Ok(d)
    }
}

impl Drop for NixDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chown_r(p: &Path, uid: u32) -> Result<()> {
    std::os::unix::fs::lchown(p, Some(uid), Some(uid))?;
    if fs::symlink_metadata(p)?.is_dir() {
        for e in fs::read_dir(p)? {
            chown_r(&e?.path(), uid)?;
        }
    }
    Ok(())
}

#[test]
fn publication_after_setup_needs_no_root() -> Result<()> {
    let mut f = BentoFixture::new("unprivileged")?;
    let p = unique_prefix();
    let (web, lab, late) = (format!("{p}-web"), format!("{p}-lab"), format!("{p}-late"));
    f.fleet.flake_host(&web, &[&web])?;
    f.fleet.nonflake_host(&lab)?;
    f.write_config("publish_user = \"nobody\"\n")?;
    f.ok(&["deploy"])?;
    let hc = f.host_chroot(&web);
    assert_eq!(fs::metadata(hc.join(".releases"))?.uid(), NOBODY);
    assert_eq!(fs::metadata(hc.join("last_change_date"))?.uid(), NOBODY);
    assert_eq!(
        fs::metadata(&hc)?.uid(),
        0,
        "the chroot itself stays root's"
    );

    // A host added later needs root once, and the unprivileged deploy says so.
    f.fleet.nonflake_host(&late)?;

    // The admin's bento directory belongs to the publishing user.
    fs::set_permissions(f.dir.path(), fs::Permissions::from_mode(0o755))?;
    chown_r(&f.bento_dir(), NOBODY)?;
    let home = f.dir.join("home");
    fs::create_dir_all(&home)?;
    chown_r(&home, NOBODY)?;
    let socket = f.dir.join("nix-daemon.socket");
    let _daemon = NixDaemon::start(&socket)?;
    let as_nobody = |args: &[&str]| -> Result<std::process::Output> {
        let mut c = f.cmd();
        let program = c.get_program().to_owned();
        let mut s = Command::new("setpriv");
        s.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(program)
            .args(args)
            .env("BENTO_DIR", f.bento_dir())
            .env("NIX_PATH", f.fleet.nix_path())
            .env("NIX_REMOTE", "daemon")
            .env("NIX_DAEMON_SOCKET_PATH", &socket)
            .env("HOME", &home)
            .env("TMPDIR", &home)
            .envs(nixenv::nix_env());
        c = s;
        Ok(c.output()?)
    };

    let before = (
        current_release(&hc).unwrap().0,
        current_release(&f.host_chroot(&lab)).unwrap().0,
    );
    f.fleet.set_system_version(&web, "2")?;
    f.fleet
        .write_file(&lab, "notes.txt", "published by nobody\n")?;
    chown_r(&f.bento_dir(), NOBODY)?;
    let out = as_nobody(&["deploy"])?;
    let err = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("3 hosts: 2 published, 0 unchanged, 1 failed"),
        "{err}"
    );
    assert!(
        err.contains(&format!("host {late} is not set up in the chroot"))
            && err.contains("as root"),
        "{err}"
    );
    let after = (
        current_release(&hc).unwrap().0,
        current_release(&f.host_chroot(&lab)).unwrap().0,
    );
    assert_ne!(before.0, after.0);
    assert_ne!(before.1, after.1);
    let states = fs::read_to_string(f.chroot().join("states.txt"))?;
    assert!(
        states.contains(&format!("-nixos-system-{web}-2")),
        "{states}"
    );
    assert_eq!(
        fs::read_to_string(f.host_chroot(&lab).join("config/notes.txt"))?,
        "published by nobody\n"
    );

    Ok(())
}
