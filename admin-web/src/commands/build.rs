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
    let outcomes = run_with_progress(bento, &opts, false)?;
    let failed = summarize(&outcomes, false, opts.dry);
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

pub fn deploy(
    bento: &BentoDir,
    filter: &HostFilter,
    verify: bool,
    database: &str,
) -> anyhow::Result<ExitCode> {
    let _lock = bento.try_lock()?;
    let opts = RunOptions {
        only: filter.hosts.clone(),
        dry: false,
        publish: true,
    };
    let outcomes = run_with_progress(bento, &opts, verify)?;
    let failed = summarize(&outcomes, true, false);
    super::rollout::record_plain(bento, &outcomes, database);
    Ok(exit(failed))
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

pub(crate) fn run_with_progress(
    bento: &BentoDir,
    opts: &RunOptions,
    verify: bool,
) -> anyhow::Result<Vec<HostOutcome>> {
    let tty = std::io::stderr().is_terminal();
    let doing = if opts.dry || !bento.settings.local_build {
        "evaluating"
    } else {
        "building"
    };
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
                p.set(host, format!("{doing}…"));
                Some(format!("{host}: {doing}"))
            }
            Event::Line { host, line } => {
                p.set(host, format!("{doing}… {line}"));
                None
            }
            Event::Built {
                host,
                system,
                elapsed,
                evaluated,
            } => {
                let verb = if *evaluated { "evaluated" } else { "built" };
                let t = format!("{verb} {} ({})", system.display(), secs(*elapsed));
                p.set(host, t.clone());
                Some(format!("{host}: {t}"))
            }
            // The whole message comes once, in the summary; progress shows its
            // first line.
            Event::Failed { host, error } => {
                let first = error.lines().next().unwrap_or_default();
                p.set(host, format!("FAILED: {first}"));
                Some(format!("{host}: FAILED: {first}"))
            }
            Event::Published { host, outcome } => {
                let t = publication(outcome);
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
    match deploy::run_verifying(bento, opts, verify, &on_event) {
        Ok(o) => Ok(o),
        Err(e) => bail!("{e}"),
    }
}

fn publication(p: &Published) -> String {
    match p {
        Published::New {
            repaired: Some(damage),
            ..
        } => format!("current release damaged ({damage}): republished"),
        Published::New { revision, .. } => format!("published {revision}"),
        Published::Unchanged { .. } => "unchanged, not republished".into(),
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// Prints the result on stdout (progress went to stderr): a line per host, the
/// counts, then each failure's whole message. Returns how many failed.
pub(crate) fn summarize(outcomes: &[HostOutcome], deploying: bool, dry: bool) -> usize {
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{}", summary_text(outcomes, deploying, dry));
    let _ = out.flush();
    outcomes.iter().filter(|o| !o.ok()).count()
}

fn summary_text(outcomes: &[HostOutcome], deploying: bool, dry: bool) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    if outcomes.is_empty() {
        let _ = writeln!(s, "No host in hosts/: nothing to do.");
        return s;
    }
    let width = outcomes.iter().map(|o| o.host.len()).max().unwrap_or(0);
    let verb = if dry { "evaluated" } else { "built" };
    for o in outcomes {
        let what = match (&o.error, &o.published, &o.system) {
            (Some(e), _, _) => format!("FAILED: {}", e.lines().next().unwrap_or_default()),
            (None, Some(p), _) => publication(p),
            (None, None, Some(sys)) => format!("{verb} {}", sys.display()),
            (None, None, None) => verb.to_owned(),
        };
        let _ = writeln!(s, "{:<width$}  {what}", o.host);
    }
    let _ = writeln!(s, "{}", deploy::Summary::of(outcomes).line(deploying, verb));
    // Hosts of one flake that failed to evaluate share the message: print it once.
    let mut shown: Vec<&str> = Vec::new();
    for o in outcomes {
        let Some(e) = o.error.as_deref() else {
            continue;
        };
        if shown.contains(&e) {
            continue;
        }
        shown.push(e);
        let names: Vec<&str> = outcomes
            .iter()
            .filter(|p| p.error.as_deref() == Some(e))
            .map(|p| p.host.as_str())
            .collect();
        let _ = writeln!(s, "\n{} failed:", names.join(", "));
        for l in e.lines() {
            let _ = writeln!(s, "  {l}");
        }
    }
    s
}
