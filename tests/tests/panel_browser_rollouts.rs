//! Rollouts in a real browser (headless Chromium through chromedriver): a deploy
//! in waves started from the Jobs page's form, followed on its rollout page,
//! stopped with Abort; a rollout taken back with Rollback. What the page says is
//! checked against the chroot the hosts read. Screenshots of each step go into
//! the folder printed at the start (`$BENTO_SCREENSHOTS`, else
//! `target/screenshots/panel/`), named `rollout-*`.

mod panel_common;

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use bento_core::report::{AgentState, ReportStatus};
use bento_tests::cli::current_release;
use bento_tests::reports::write_heartbeat;
use bento_tests::sshd::unique_prefix;
use fantoccini::{Client, Locator};
use panel_common::{
    click, eventually, screenshots_dir, shot, submit_login, text_of, ChromeDriver, PanelServer,
};

/// A build of the toy hosts, or a wave's publication, on a loaded machine.
const BUILD: Duration = Duration::from_secs(300);
/// A page that reloads itself (the rollout page, every 5 s while it runs) or a
/// live region showing a change.
const PAGE: Duration = Duration::from_secs(60);

/// A panel over two toy flake hosts, `[rollout]` waves: the first host, then the
/// rest.
fn two_hosts(label: &str) -> Result<(PanelServer, String, String)> {
    let prefix = unique_prefix();
    let (first, second) = (format!("{prefix}-a"), format!("{prefix}-b"));
    let mut p = PanelServer::start_with(
        label,
        &format!("[rollout]\nwaves = [\"host:{first}\", \"rest\"]\n"),
    )?;
    for h in [&first, &second] {
        p.fx.fleet.flake_host(h, &[h])?;
    }
    Ok((p, first, second))
}

/// The revision `host`'s chroot currently publishes.
fn rev(p: &PanelServer, host: &str) -> Option<String> {
    current_release(&p.fx.host_chroot(host)).map(|(r, _)| r)
}

/// Runs `steps` in a fresh headless Chromium; on failure, a screenshot of where it
/// stood and the server's log.
async fn in_browser<F>(p: &PanelServer, failure_shot: &str, steps: F) -> Result<()>
where
    F: AsyncFnOnce(&Client, &Path) -> Result<()>,
{
    let shots = screenshots_dir()?;
    eprintln!("panel screenshots: {}", shots.display());
    let driver = ChromeDriver::start()?;
    let c = driver.browser().await?;
    let result = steps(&c, shots.as_path()).await;
    if result.is_err() {
        let _ = shot(&c, &shots, failure_shot).await;
        eprintln!("server log:\n{}", p.server_log());
    }
    let _ = c.close().await;
    result
}

/// Logs in through the login form.
async fn log_in(c: &Client, p: &PanelServer) -> Result<()> {
    c.goto(&p.url("/login")).await?;
    submit_login(c).await?;
    eventually(PAGE, "the fleet page after login", || async {
        Ok(text_of(c, "main h1")
            .await?
            .filter(|t| t == "Fleet")
            .map(|_| ()))
    })
    .await
}

/// Starts a deploy of the whole fleet from the Jobs page's form (`mode`: `waves`
/// or `all`), as a user does; returns the job's id, from the page it lands on.
async fn deploy_from_the_form(c: &Client, p: &PanelServer, mode: &str) -> Result<i64> {
    c.goto(&p.url("/jobs")).await?;
    let form = "form[action='/jobs']";
    c.wait()
        .for_element(Locator::Css(&format!("{form} select[name=kind]")))
        .await?
        .select_by_value("deploy")
        .await?;
    c.find(Locator::Css(&format!("{form} select[name=mode]")))
        .await?
        .select_by_value(mode)
        .await?;
    let host = c
        .find(Locator::Css(&format!("{form} input[name=host]")))
        .await?
        .prop("value")
        .await?;
    ensure!(
        host.as_deref() == Some(""),
        "the host field is not empty: {host:?}"
    );
    click(c, &format!("{form} button[type=submit]")).await?;
    let id = eventually(PAGE, "the new job's page", || async {
        let url = c.current_url().await?;
        Ok(url
            .path()
            .strip_prefix("/jobs/")
            .and_then(|id| id.parse::<i64>().ok()))
    })
    .await?;
    c.wait().for_element(Locator::Css("#job-log")).await?;
    Ok(id)
}

/// On a job's page, waits for its rollout's link (the job-head region updates
/// live once the job has built and recorded the rollout) and follows it; returns
/// the rollout's id.
async fn open_the_jobs_rollout(c: &Client) -> Result<i64> {
    let href = eventually(BUILD, "the job's link to its rollout", || async {
        match c.find(Locator::Css("#job-rollout")).await {
            Ok(a) => Ok(a.attr("href").await.ok().flatten()),
            Err(e) if e.is_no_such_element() => Ok(None),
            Err(e) => Err(e.into()),
        }
    })
    .await?;
    let id: i64 = href
        .strip_prefix("/rollouts/")
        .and_then(|id| id.parse().ok())
        .with_context(|| format!("odd rollout link {href}"))?;
    click(c, "#job-rollout").await?;
    wait_for_rollout_page(c, id).await?;
    Ok(id)
}

async fn wait_for_rollout_page(c: &Client, id: i64) -> Result<()> {
    let want = format!("Rollout {id}");
    eventually(PAGE, &format!("the page of rollout {id}"), || async {
        Ok(text_of(c, "main h1")
            .await?
            .filter(|t| *t == want)
            .map(|_| ()))
    })
    .await
}

/// Waits until the rollout page (which reloads itself while the rollout runs)
/// shows `host`'s outcome as `phase`.
async fn wait_for_phase(c: &Client, host: &str, phase: &str) -> Result<()> {
    let css = format!("#rollout-hosts tr[data-host='{host}'] td[data-label=Outcome]");
    let last = std::sync::Mutex::new(None);
    eventually(
        PAGE,
        &format!("{host} {phase} on the rollout page"),
        || async {
            let t = text_of(c, &css).await?;
            let done = t.as_deref() == Some(phase);
            *last.lock().unwrap() = t;
            Ok(done.then_some(()))
        },
    )
    .await
    .with_context(|| format!("{host}'s outcome on the page: {:?}", last.lock().unwrap()))
}

/// Waits until the rollout page's badge says `status`.
async fn wait_for_status(c: &Client, status: &str) -> Result<()> {
    eventually(BUILD, &format!("the rollout {status}"), || async {
        Ok(text_of(c, "#rollout-status")
            .await?
            .filter(|t| t == status)
            .map(|_| ()))
    })
    .await
}

/// Waits until a job's page says it ended `status`; its log then.
async fn wait_for_job(c: &Client, status: &str) -> Result<String> {
    eventually(BUILD, &format!("the job {status}"), || async {
        let badge = text_of(c, "#job-head .badge").await?.unwrap_or_default();
        let log = text_of(c, "#job-log").await?.unwrap_or_default();
        if matches!(badge.as_str(), "succeeded" | "failed" | "cancelled") && badge != status {
            bail!("the job ended {badge}, not {status}:\n{log}");
        }
        Ok((badge == status).then_some(log))
    })
    .await
}

async fn is_shown(c: &Client, css: &str) -> Result<bool> {
    match c.find(Locator::Css(css)).await {
        Ok(_) => Ok(true),
        Err(e) if e.is_no_such_element() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A deploy in waves from the form: the job links its rollout, whose page shows
/// the first wave published and then its host's progress, the second host
/// pending; Abort stops the rollout there, and the second host never gets the
/// release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_in_the_browser_stops_a_rollout_before_its_next_wave() -> Result<()> {
    let (p, first, second) = two_hosts("panel-browser-abort")?;
    in_browser(
        &p,
        "rollout-abort-failure",
        async |c: &Client, shots: &Path| {
            log_in(c, &p).await?;
            let job = deploy_from_the_form(c, &p, "waves").await?;
            let id = open_the_jobs_rollout(c).await?;

            // The first wave is out; the page follows its host.
            wait_for_phase(c, &first, "published").await?;
            wait_for_phase(c, &second, "pending").await?;
            assert_eq!(
                text_of(c, "#rollout-status").await?.as_deref(),
                Some("running")
            );
            let published = rev(&p, &first).context("the first wave is not in the chroot")?;
            assert_eq!(rev(&p, &second), None, "the second wave went out at once");
            shot(c, shots, "rollout-wave-1-published").await?;
            // The host's agent starts on it (its heartbeat): the page shows it
            // without being told to reload.
            write_heartbeat(
                &p.logs(&first),
                &first,
                None,
                Some(&published),
                AgentState::Updating,
                false,
            )?;
            wait_for_phase(c, &first, "downloading").await?;
            shot(c, shots, "rollout-running").await?;

            // Abort. The page has no dialog to confirm: the button says what it does.
            click(c, "#rollout-abort").await?;
            wait_for_status(c, "aborted").await?;
            wait_for_rollout_page(c, id).await?;
            assert!(
                !is_shown(c, "#rollout-abort").await?,
                "Abort is still offered"
            );
            assert_eq!(
                text_of(
                    c,
                    &format!("#rollout-hosts tr[data-host='{second}'] td[data-label=Outcome]")
                )
                .await?
                .as_deref(),
                Some("pending")
            );
            shot(c, shots, "rollout-aborted").await?;

            // The job that drove it ended there.
            click(c, &format!("a[href='/jobs/{job}']")).await?;
            let log = wait_for_job(c, "failed").await?;
            assert!(
                log.contains(&format!("rollout {id}: aborted in wave 1")),
                "{log}"
            );
            assert!(!log.contains(&format!("publishing to {second}")), "{log}");
            assert_eq!(
                rev(&p, &second),
                None,
                "the second wave was published after the abort"
            );
            assert_eq!(rev(&p, &first), Some(published));
            Ok(())
        },
    )
    .await
}

/// A rollout in waves followed to its end in the browser, then taken back with
/// Rollback on its page: each host is published its previous release again, and
/// the page says by which rollout, with a link to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_in_the_browser_puts_each_host_back_on_its_previous_release() -> Result<()> {
    let (p, first, second) = two_hosts("panel-browser-rollback")?;
    // Rollout 1, every host at once, both up to date: the previous release.
    let s = p.login().await?;
    s.post(
        "/jobs",
        &[("kind", "deploy"), ("host", ""), ("mode", "all")],
    )
    .await?;
    let before = eventually(BUILD, "rollout 1 published", || async {
        Ok(rev(&p, &first).zip(rev(&p, &second)))
    })
    .await?;
    for h in [&first, &second] {
        p.report_release(h, ReportStatus::Success, None)?;
    }
    for h in [&first, &second] {
        p.fx.fleet.set_system_version(h, "2")?;
    }

    in_browser(
        &p,
        "rollout-rollback-failure",
        async |c: &Client, shots: &Path| {
            log_in(c, &p).await?;
            // Rollout 2, in waves, from the form: it waits for rollout 1's end (the
            // deploy lock), then publishes wave by wave as the hosts report.
            deploy_from_the_form(c, &p, "waves").await?;
            let id = open_the_jobs_rollout(c).await?;
            assert_eq!(id, 2);
            wait_for_phase(c, &first, "published").await?;
            let new_first = rev(&p, &first).context("no release")?;
            assert_ne!(new_first, before.0, "rollout 2 did not change the host");
            assert_eq!(rev(&p, &second).as_ref(), Some(&before.1));
            p.report_release(&first, ReportStatus::Success, None)?;
            wait_for_phase(c, &first, "success").await?;
            wait_for_phase(c, &second, "published").await?;
            shot(c, shots, "rollout-second-wave").await?;
            assert_ne!(rev(&p, &second).as_ref(), Some(&before.1));
            p.report_release(&second, ReportStatus::Success, None)?;
            wait_for_status(c, "succeeded").await?;
            shot(c, shots, "rollout-succeeded").await?;

            // Rollback asks first, host by host: nothing changes until confirmed.
            click(c, "#rollout-rollback").await?;
            c.wait()
                .for_element(Locator::Css("#rollback-confirm"))
                .await?;
            for (h, was) in [(&first, &before.0), (&second, &before.1)] {
                let row = text_of(c, &format!("#rollback-back tr[data-host='{h}']"))
                    .await?
                    .with_context(|| format!("{h} is not on the confirmation page"))?;
                ensure!(row.contains(&was[..12]), "{h}: {row}");
            }
            shot(c, shots, "rollout-rollback-confirm").await?;
            assert_ne!(
                rev(&p, &first).as_ref(),
                Some(&before.0),
                "changed unconfirmed"
            );
            // Rollback: a job of its own, a rollout of its own.
            click(c, "#rollback-confirm").await?;
            c.wait().for_element(Locator::Css("#job-log")).await?;
            eventually(BUILD, "the previous releases in the chroot", || async {
                Ok((rev(&p, &first).as_ref() == Some(&before.0)
                    && rev(&p, &second).as_ref() == Some(&before.1))
                .then_some(()))
            })
            .await?;
            let back = open_the_jobs_rollout(c).await?;
            assert_eq!(back, 3);
            assert_eq!(
                text_of(c, "#rolls-back").await?.as_deref(),
                Some("Rollout 2")
            );
            for h in [&first, &second] {
                wait_for_phase(c, h, "published").await?;
                p.report_release(h, ReportStatus::Success, None)?;
            }
            wait_for_status(c, "succeeded").await?;
            shot(c, shots, "rollout-rollback").await?;

            // Rollout 2's page says it was rolled back, and links the rollback.
            click(c, "#rolls-back a[href='/rollouts/2']").await?;
            wait_for_rollout_page(c, 2).await?;
            assert_eq!(
                text_of(c, "#rolled-back-by").await?.as_deref(),
                Some("Rollout 3")
            );
            assert!(
                is_shown(c, "#rolled-back-by a[href='/rollouts/3']").await?,
                "no link to the rollback"
            );
            assert!(
                !is_shown(c, "#rollout-rollback").await?,
                "Rollback is offered twice"
            );
            shot(c, shots, "rollout-rolled-back").await?;
            assert_eq!(rev(&p, &first).as_ref(), Some(&before.0));
            assert_eq!(rev(&p, &second).as_ref(), Some(&before.1));
            Ok(())
        },
    )
    .await
}
