//! `bento diff`: closure differences between what hosts run and what they should.

use std::path::PathBuf;
use std::process::ExitCode;

use bento_core::bentodir::BentoDir;
use bento_core::nix::Nix;

use crate::cli::HostFilter;

pub fn run(bento: &BentoDir, filter: &HostFilter) -> anyhow::Result<ExitCode> {
    let nix = Nix::default();
    let mut failed = false;
    for h in super::status::collect(bento, filter)? {
        let (Some(expected), Some(running)) = (&h.expected_system, &h.running_system) else {
            if h.expected_system.is_none() {
                println!("{}: non-flake host, nothing to compare", h.host);
            } else {
                println!("{}: has not reported yet", h.host);
            }
            continue;
        };
        if expected == running {
            println!("{} is running the latest version", h.host);
            println!("-------------");
            continue;
        }
        println!("Changes in {} between {running} and {expected}", h.host);
        let from = PathBuf::from("/nix/store").join(running);
        let to = PathBuf::from("/nix/store").join(expected);
        if !from.exists() {
            println!(
                "  {} is not in this machine's store: cannot compute the difference",
                from.display()
            );
        } else {
            match nix.diff_closures(&from, &to) {
                Ok(d) if d.trim().is_empty() => println!("  (no package differences)"),
                Ok(d) => print!("{d}"),
                Err(e) => {
                    failed = true;
                    eprintln!("  cannot compare: {}", e.summary());
                }
            }
        }
        println!("-------------");
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
