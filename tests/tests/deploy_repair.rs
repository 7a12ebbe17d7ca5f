//! A host's live release damaged in the chroot (a file edited, removed, added or
//! chmod'ed) fails its own manifest, and agents refuse it: `bento check-config
//! --chroot` reports it, and `bento deploy` publishes it again.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::Result;
use bento_core::release::Manifest;
use bento_tests::cli::{current_release, BentoFixture};
use bento_tests::sshd::unique_prefix;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The host's current release, checked the way an agent checks a download.
fn assert_live_release_verifies(f: &BentoFixture, host: &str) -> Result<()> {
    let hc = f.host_chroot(host);
    let (rev, dir) = current_release(&hc).expect("current release");
    let m = Manifest::read_from(&dir)?;
    assert_eq!(m.revision, rev);
    m.verify(&dir)?;
    // What the agent reads: `config` → .releases/current → <revision>.
    assert_eq!(
        fs::canonicalize(hc.join("config"))?,
        fs::canonicalize(&dir)?
    );
    m.verify(&hc.join("config"))?;
    Ok(())
}

/// `check-config --chroot`: exit status and what it said.
fn check_chroot(f: &BentoFixture) -> Result<(bool, String)> {
    let out = f.run(&["check-config", "--chroot"])?;
    Ok((
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    ))
}

fn one_host(label: &str) -> Result<(BentoFixture, String)> {
    let mut f = BentoFixture::new(label)?;
    let host = format!("{}-web", unique_prefix());
    f.fleet.nonflake_host(&host)?;
    f.fleet.write_file(&host, "motd.txt", "hello, world\n")?;
    f.ok(&["deploy"])?;
    assert_live_release_verifies(&f, &host)?;
    Ok((f, host))
}

/// Damages the live release with `damage`, then expects check-config to report
/// `what` and deploy to republish it, and everything clean afterwards.
fn repaired(label: &str, what: &str, damage: impl FnOnce(&Path)) -> Result<()> {
    let (f, host) = one_host(label)?;
    let (ok, said) = check_chroot(&f)?;
    assert!(ok, "an intact chroot was reported: {said}");
    assert!(
        said.contains("1 live releases checked, 0 damaged"),
        "{said}"
    );

    let (rev, dir) = current_release(&f.host_chroot(&host)).unwrap();
    let inode = fs::metadata(&dir)?.ino();
    damage(&dir);
    assert!(
        Manifest::read_from(&dir)?.verify(&dir).is_err(),
        "the damage did not break the release"
    );

    let (ok, said) = check_chroot(&f)?;
    assert!(
        !ok,
        "check-config --chroot passed a damaged release: {said}"
    );
    let want = format!("hosts/{host}: current release damaged ({what})");
    assert!(said.contains(&want), "wanted {want:?} in:\n{said}");
    // Reporting changes nothing.
    assert!(Manifest::read_from(&dir)?.verify(&dir).is_err());

    let out = f.ok(&["deploy"])?;
    let said = text(&out.stdout);
    let want = format!("current release damaged ({what}): republished");
    assert!(said.contains(&want), "wanted {want:?} in:\n{said}");
    assert!(said.contains("1 published, 0 unchanged"), "{said}");
    let (rev2, dir2) = current_release(&f.host_chroot(&host)).unwrap();
    assert_eq!(rev2, rev, "same content, same revision");
    assert_ne!(
        fs::metadata(&dir2)?.ino(),
        inode,
        "the damaged directory was patched in place instead of replaced"
    );
    assert_live_release_verifies(&f, &host)?;

    let (ok, said) = check_chroot(&f)?;
    assert!(ok, "still damaged after the repair: {said}");
    let out = f.ok(&["deploy"])?;
    assert!(
        text(&out.stdout).contains("0 published, 1 unchanged"),
        "{}",
        text(&out.stdout)
    );
    Ok(())
}

#[test]
fn an_edit_of_the_same_size_is_repaired() -> Result<()> {
    repaired("repair-edit", "file motd.txt changed", |d| {
        fs::write(d.join("motd.txt"), "HELLO, WORLD\n").unwrap();
    })
}

#[test]
fn an_edit_with_its_mtime_put_back_is_repaired() -> Result<()> {
    repaired("repair-touch", "file motd.txt changed", |d| {
        let p = d.join("motd.txt");
        let mtime = fs::metadata(&p).unwrap().modified().unwrap();
        fs::write(&p, "hello, WORLD\n").unwrap();
        fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    })
}

#[test]
fn a_deleted_file_is_repaired() -> Result<()> {
    repaired("repair-delete", "file motd.txt missing", |d| {
        fs::remove_file(d.join("motd.txt")).unwrap();
    })
}

#[test]
fn an_added_file_is_repaired() -> Result<()> {
    repaired("repair-add", "file evil.nix added", |d| {
        fs::write(d.join("evil.nix"), "{ }").unwrap();
    })
}

#[test]
fn a_chmod_is_repaired() -> Result<()> {
    repaired("repair-chmod", "file motd.txt mode changed", |d| {
        fs::set_permissions(d.join("motd.txt"), fs::Permissions::from_mode(0o755)).unwrap();
    })
}

/// A release published before manifests recorded file times has only sizes to
/// go by: the cheap check cannot see a same-size edit, `--verify` can.
#[test]
fn deploy_verify_hashes_a_release_without_stamps() -> Result<()> {
    let (f, host) = one_host("repair-verify")?;
    let (_, dir) = current_release(&f.host_chroot(&host)).unwrap();
    let mut m = Manifest::read_from(&dir)?;
    assert!(
        m.stamps.contains_key("motd.txt"),
        "publication records stamps"
    );
    m.stamps.clear();
    m.write_to(&dir)?;
    // Signed as such a release was by the fleet key (an edited manifest is damage).
    let key = bento_core::signing::SigningKey::read(
        &f.bento_dir().join(bento_core::signing::DEFAULT_SECRET_FILE),
    )?;
    fs::write(
        dir.join(bento_core::signing::SIGNATURE_FILE),
        key.sign_manifest(&fs::read(dir.join(bento_core::release::MANIFEST_FILE))?),
    )?;
    fs::write(dir.join("motd.txt"), "HELLO, WORLD\n")?;

    let out = f.ok(&["deploy"])?;
    assert!(
        text(&out.stdout).contains("unchanged, not republished"),
        "{}",
        text(&out.stdout)
    );
    let (ok, said) = check_chroot(&f)?;
    assert!(!ok && said.contains("file motd.txt changed"), "{said}");
    let out = f.ok(&["deploy", "--verify"])?;
    let said = text(&out.stdout);
    assert!(
        said.contains("current release damaged (file motd.txt changed): republished"),
        "{said}"
    );
    assert_live_release_verifies(&f, &host)?;
    let (ok, said) = check_chroot(&f)?;
    assert!(ok, "{said}");
    Ok(())
}
