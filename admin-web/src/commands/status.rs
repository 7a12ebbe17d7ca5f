//! `bento status`: the fleet table (or JSON); in a terminal it redraws on changes.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use bento_core::bentodir::BentoDir;
use bento_core::chroot::Chroot;
use bento_core::status::{fleet_status_of, HostStatus, StatusOptions};
use bento_core::text::display_safe;
use notify::{RecursiveMode, Watcher};

use crate::cli::HostFilter;

/// The fleet's status, filtered by host.
pub fn collect(bento: &BentoDir, filter: &HostFilter) -> anyhow::Result<Vec<HostStatus>> {
    let chroot = Chroot::new(&bento.settings.chroot_dir);
    let mut hosts = chroot
        .hosts()
        .with_context(|| format!("cannot read the chroot {}", chroot.root().display()))?;
    if !filter.hosts.is_empty() {
        let missing: Vec<(String, Option<String>)> = filter
            .hosts
            .iter()
            .filter(|n| !hosts.contains(n))
            .map(|n| {
                let near =
                    bento_core::deploy::did_you_mean(n.as_str(), hosts.iter().map(|h| h.as_str()));
                (n.to_string(), near)
            })
            .collect();
        if !missing.is_empty() {
            return Err(bento_core::deploy::DeployError::NoSuchHost(missing).into());
        }
        hosts.retain(|h| filter.hosts.contains(h));
    }
    let opts = StatusOptions {
        now: SystemTime::now(),
        poll_interval: Duration::from_secs(bento.settings.poll_interval),
        offline_after_polls: bento.settings.offline_after_polls,
    };
    Ok(fleet_status_of(
        &chroot,
        &hosts,
        &chroot.read_states(),
        &opts,
    ))
}

pub fn run(
    bento: &BentoDir,
    json: bool,
    once: bool,
    filter: &HostFilter,
) -> anyhow::Result<ExitCode> {
    let rows = collect(bento, filter)?;
    for h in &rows {
        for w in &h.warnings {
            eprintln!("warning: {}: {}", h.host, display_safe(w));
        }
    }
    if json {
        // Stdout is line-buffered: one write per JSON line would dominate at 10k hosts.
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let text = serde_json::to_string_pretty(&rows)?;
        writeln!(out, "{}", bento_core::text::json_safe(&text))?;
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    let interactive = std::io::stdout().is_terminal() && !once;
    if !interactive {
        print!("{}", crate::table::render(&rows, SystemTime::now()));
        return Ok(ExitCode::SUCCESS);
    }
    watch(bento, filter, rows)
}

/// Redraws whenever the chroot changes, and every 30 s for the elapsed times.
fn watch(
    bento: &BentoDir,
    filter: &HostFilter,
    mut rows: Vec<HostStatus>,
) -> anyhow::Result<ExitCode> {
    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |_| {
        let _ = tx.send(());
    })?;
    watcher.watch(&bento.settings.chroot_dir, RecursiveMode::Recursive)?;
    loop {
        let mut out = std::io::stdout().lock();
        write!(
            out,
            "\x1b[2J\x1b[H{}",
            crate::table::render(&rows, SystemTime::now())
        )?;
        writeln!(
            out,
            "\n(watching {} — Ctrl-C to quit)",
            bento.settings.chroot_dir.display()
        )?;
        out.flush()?;
        drop(out);
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(()) => {
                // Let a burst of changes (an upload and its rename) settle.
                std::thread::sleep(Duration::from_millis(150));
                while rx.try_recv().is_ok() {}
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(ExitCode::SUCCESS),
        }
        rows = collect(bento, filter)?;
    }
}
