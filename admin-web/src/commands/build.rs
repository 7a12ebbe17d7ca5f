//! `bento build` and `bento deploy`.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context};
use bento_core::activate::{self, SwitchAction};
use bento_core::bentodir::BentoDir;
use bento_core::chroot::Published;
use bento_core::deploy::{self, Event, HostOutcome, RunOptions};

use crate::cli::{BuildAction, HostFilter};

pub fn build(
    bento: &BentoDir,
    action: BuildAction,
    filter: &HostFilter,
    yes: bool,
    profile: &Path,
) -> anyhow::Result<ExitCode> {
    let activating = matches!(action, BuildAction::Test | BuildAction::Switch);
    if activating && filter.hosts.len() != 1 {
        bail!("`bento build test|switch` activates one host on this machine: name it with --host NAME");
    }
    let opts = RunOptions {
        only: filter.hosts.clone(),
        dry: action == BuildAction::DryBuild,
        publish: false,
    };
    let outcomes = run_with_progress(bento, &opts)?;
    let failed = summarize(&outcomes, false);
    if failed > 0 || !activating {
        return Ok(exit(failed));
    }
    let Some(system) = outcomes.first().and_then(|o| o.system.clone()) else {
        bail!("no system was built for {}", filter.hosts[0]);
    };
    let verb = if action == BuildAction::Switch {
        SwitchAction::Switch
    } else {
        SwitchAction::Test
    };
    if !yes
        && !confirm(&format!(
            "Activate {} on THIS machine with switch-to-configuration {}?",
            system.display(),
            verb.as_str()
        ))?
    {
        eprintln!("Not activated.");
        return Ok(ExitCode::from(1));
    }
    activate::activate(profile, &system, verb, |l| eprintln!("{l}"))
        .with_context(|| format!("activation of {} failed", system.display()))?;
    eprintln!("Activated {} ({}).", system.display(), verb.as_str());
    Ok(ExitCode::SUCCESS)
}

pub fn deploy(bento: &BentoDir, filter: &HostFilter) -> anyhow::Result<ExitCode> {
    let _lock = bento.try_lock()?;
    let opts = RunOptions {
        only: filter.hosts.clone(),
        dry: false,
        publish: true,
    };
    let outcomes = run_with_progress(bento, &opts)?;
    Ok(exit(summarize(&outcomes, true)))
}

fn exit(failed: usize) -> ExitCode {
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn confirm(question: &str) -> anyhow::Result<bool> {
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

/// One line per host, redrawn in place in a terminal; plain lines otherwise.
struct Progress {
    tty: bool,
    rows: Vec<(String, String)>,
    drawn: usize,
}

impl Progress {
    fn set(&mut self, host: &str, text: String) {
        match self.rows.iter_mut().find(|(h, _)| h == host) {
            Some(r) => r.1 = text,
            None => self.rows.push((host.to_owned(), text)),
        }
    }

    fn draw(&mut self) {
        let mut err = std::io::stderr().lock();
        if self.drawn > 0 {
            let _ = write!(err, "\x1b[{}A", self.drawn);
        }
        let width = self.rows.iter().map(|(h, _)| h.len()).max().unwrap_or(0);
        for (h, t) in &self.rows {
            let t: String = t.chars().take(100).collect();
            let _ = writeln!(err, "\x1b[2K{h:>width$}  {t}");
        }
        self.drawn = self.rows.len();
    }
}

fn run_with_progress(bento: &BentoDir, opts: &RunOptions) -> anyhow::Result<Vec<HostOutcome>> {
    let tty = std::io::stderr().is_terminal();
    let progress = Mutex::new(Progress {
        tty,
        rows: Vec::new(),
        drawn: 0,
    });
    let on_event = |e: Event| {
        let mut p = progress.lock().expect("progress");
        let line = match &e {
            Event::Planned { hosts } => {
                for h in hosts {
                    p.set(h, "queued".into());
                }
                None
            }
            Event::Started { host } => {
                p.set(host, "building…".into());
                Some(format!("{host}: building"))
            }
            Event::Line { host, line } => {
                p.set(host, format!("building… {line}"));
                None
            }
            Event::Built {
                host,
                system,
                elapsed,
            } => {
                let t = format!("built {} ({})", system.display(), secs(*elapsed));
                p.set(host, t.clone());
                Some(format!("{host}: {t}"))
            }
            Event::Failed { host, error } => {
                p.set(host, format!("FAILED: {error}"));
                Some(format!("{host}: FAILED: {error}"))
            }
            Event::Published { host, outcome } => {
                let t = match outcome {
                    Published::New { revision, .. } => format!("published {revision}"),
                    Published::Unchanged { .. } => "unchanged, not republished".into(),
                };
                p.set(host, t.clone());
                Some(format!("{host}: {t}"))
            }
            Event::Warning { message } => Some(format!("warning: {message}")),
        };
        if p.tty {
            if let Event::Warning { message } = &e {
                eprintln!("warning: {message}");
                p.drawn = 0;
            }
            p.draw();
        } else if let Some(l) = line {
            eprintln!("{l}");
        }
    };
    deploy::run(bento, opts, &on_event).context("cannot read the bento directory")
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// Prints the per-host summary; returns how many failed.
fn summarize(outcomes: &[HostOutcome], deploying: bool) -> usize {
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.ok()).collect();
    if outcomes.is_empty() {
        eprintln!("No host matched.");
    } else {
        eprintln!("{}", deploy::Summary::of(outcomes).line(deploying, "built"));
    }
    for o in &failed {
        eprintln!(
            "  failed: {} ({})",
            o.host,
            o.error.as_deref().unwrap_or("unknown error")
        );
    }
    failed.len()
}
