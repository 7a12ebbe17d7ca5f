//! `bento check-config`: the settings, the hosts they name, and the SFTP keys;
//! with `--chroot`, every host's live release too.

use std::process::ExitCode;

use anyhow::Context;
use bento_core::bentodir::BentoDir;
use bento_core::chroot::Chroot;
use bento_core::text::display_safe;

pub fn run(b: &BentoDir, chroot: bool) -> anyhow::Result<ExitCode> {
    let (dirs, unusable) = b.host_dirs()?;
    for u in &unusable {
        eprintln!("warning: hosts/{u}: neither flake.nix nor configuration.nix");
    }
    let mut errors = crate::sftp::check_keys(&b.settings);
    let findings = bento_core::check::check(b)?;
    for w in &findings.warnings {
        eprintln!("warning: {w}");
    }
    errors.extend(findings.errors);
    errors.extend(
        b.settings
            .rollout
            .problems(&crate::commands::rollout::tagged_hosts(b)),
    );
    errors.extend(b.settings.alerts.problems());
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("error: {e}");
        }
        let file = if b.legacy { "config.sh" } else { "bento.toml" };
        anyhow::bail!(
            "{} problem(s) in {} ({file})",
            errors.len(),
            b.root.display()
        );
    }
    println!(
        "{}: ok ({} host directories, {} hosts, settings from {})",
        b.root.display(),
        dirs.len(),
        findings.hosts,
        if b.legacy { "config.sh" } else { "bento.toml" }
    );
    let key = b.signing_key_path();
    if key.exists() {
        match bento_core::signing::SigningKey::read(&key) {
            Ok(k) => println!(
                "signing key: {} (agents pin it: trusted_public_keys)",
                k.public()
            ),
            Err(e) => anyhow::bail!("signing key: {e}"),
        }
    } else {
        println!(
            "signing key: none yet ({} is made by `bento init` or the first deploy)",
            key.display()
        );
    }
    if chroot {
        return check_releases(&Chroot::new(&b.settings.chroot_dir));
    }
    Ok(ExitCode::SUCCESS)
}

/// `bento signing-key`: the public key, the pair made first when missing.
pub fn signing_key(b: &BentoDir) -> anyhow::Result<ExitCode> {
    let path = b.signing_key_path();
    let (key, origin) =
        bento_core::signing::ensure_key(&path, &bento_core::signing::default_key_name())?;
    if origin == bento_core::signing::KeyOrigin::Created {
        eprintln!("made the signing key {}", path.display());
    }
    println!("{}", key.public());
    Ok(ExitCode::SUCCESS)
}

/// Hashes every host's live release against its manifest; changes nothing.
fn check_releases(chroot: &Chroot) -> anyhow::Result<ExitCode> {
    let hosts = chroot
        .hosts()
        .with_context(|| format!("cannot read the chroot {}", chroot.root().display()))?;
    let (mut checked, mut damaged) = (0, 0);
    for h in &hosts {
        let Some(result) = chroot.check_current(h, true) else {
            continue;
        };
        checked += 1;
        if let Err(d) = result {
            damaged += 1;
            eprintln!(
                "error: hosts/{h}: current release damaged ({}); `bento deploy` republishes it",
                display_safe(&d.to_string())
            );
        }
    }
    println!(
        "{}: {checked} live releases checked, {damaged} damaged",
        chroot.root().display()
    );
    Ok(if damaged > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
