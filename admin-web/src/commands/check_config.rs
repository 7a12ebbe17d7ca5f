//! `bento check-config`: the settings, the hosts they name, and the SFTP keys.

use std::process::ExitCode;

use bento_core::bentodir::BentoDir;

pub fn run(b: &BentoDir) -> anyhow::Result<ExitCode> {
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
    Ok(ExitCode::SUCCESS)
}
