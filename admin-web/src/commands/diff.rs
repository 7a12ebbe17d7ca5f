//! `bento diff`: closure differences between what hosts run and what they should.

use std::path::PathBuf;
use std::process::ExitCode;

use bento_core::bentodir::BentoDir;
use bento_core::nix::Nix;
use bento_core::text::display_safe;

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
        // The running system is what the host claims: shown escaped, and never
        // a path that leaves the store.
        println!(
            "Changes in {} between {} and {}",
            h.host,
            display_safe(running),
            display_safe(expected)
        );
        if running.contains('/') || running.starts_with('.') {
            println!("  the host reports a system that is not a store path name: cannot compare");
            println!("-------------");
            continue;
        }
        let from = PathBuf::from("/nix/store").join(running);
        let to = PathBuf::from("/nix/store").join(expected);
        if !from.exists() {
            println!(
                "  {} is not in this machine's store: cannot compute the difference",
                display_safe(&from.display().to_string())
            );
        } else {
            match nix.diff_closures(&from, &to) {
                Ok(d) if d.trim().is_empty() => println!("  (no package differences)"),
                Ok(d) => {
                    for l in d.lines() {
                        println!("{}", display_safe(l));
                    }
                }
                Err(e) => {
                    failed = true;
                    let summary = e.summary();
                    let mut lines = summary.lines();
                    eprintln!(
                        "  cannot compare: {}",
                        display_safe(lines.next().unwrap_or_default())
                    );
                    for l in lines {
                        eprintln!("  {}", display_safe(l));
                    }
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
