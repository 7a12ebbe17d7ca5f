//! `bento flake-update [input]`: update every flake's lock file, or one input.

use std::process::ExitCode;

use anyhow::bail;
use bento_core::bentodir::{BentoDir, HostKind};
use bento_core::nix::Nix;

pub fn run(bento: &BentoDir, input: Option<&str>) -> anyhow::Result<ExitCode> {
    let nix = Nix::default();
    let (dirs, _) = bento.host_dirs()?;
    let mut failed = 0;
    let mut updated_any = false;
    let mut flakes = 0;
    for d in dirs.iter().filter(|d| d.kind == HostKind::Flake) {
        flakes += 1;
        if let Some(i) = input {
            match nix.flake_inputs(&d.path) {
                Ok(inputs) if !inputs.iter().any(|x| x == i) => {
                    println!("hosts/{}: no input named {i:?}, skipped", d.dir_name);
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    failed += 1;
                    eprintln!("hosts/{}: FAILED: {}", d.dir_name, e.summary());
                    continue;
                }
            }
        }
        updated_any = true;
        match nix.flake_update(&d.path, input) {
            Ok(log) => {
                let changes: Vec<&str> = log
                    .lines()
                    .filter(|l| l.contains("Updated") || l.starts_with("  ") || l.contains("Added"))
                    .collect();
                if changes.is_empty() {
                    println!("hosts/{}: up to date", d.dir_name);
                } else {
                    println!("hosts/{}: updated", d.dir_name);
                    for c in changes {
                        println!("  {}", c.trim());
                    }
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("hosts/{}: FAILED: {}", d.dir_name, e.summary());
            }
        }
    }
    if flakes == 0 {
        println!("No flake host to update.");
    } else if let (Some(i), false) = (input, updated_any) {
        eprintln!("FAILED: no flake has an input named {i:?}");
        bail!("no flake has an input named {i:?}");
    }
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
