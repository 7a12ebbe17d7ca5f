//! Jobs started from the panel run the real pipeline (`deploy::run`, real nix on
//! toy hosts), stream their log, share the deploy lock with the command line and
//! survive — as failed — a server killed in the middle.

mod panel_common;

use std::fs;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use bento_core::bentodir::BentoDir;
use bento_core::report::ReportStatus;
use bento_tests::cli::current_release;
use bento_tests::sshd::unique_prefix;
use panel_common::{eventually, read_job_log, PanelServer};
use reqwest::StatusCode;

const BUILD: Duration = Duration::from_secs(300);

fn toy_host(p: &mut PanelServer) -> Result<String> {
    let host = format!("{}-web", unique_prefix());
    p.fx.fleet.flake_host(&host, &[&host])?;
    Ok(host)
}

/// A panel whose `[rollout]` has `waves`, and a toy host for each of `hosts`.
fn panel_with_waves(waves: &str, hosts: &[&String]) -> Result<PanelServer> {
    let mut p = PanelServer::start_with("panel-jobs", &format!("[rollout]\nwaves = {waves}\n"))?;
    for h in hosts {
        p.fx.fleet.flake_host(h, &[h])?;
    }
    Ok(p)
}

/// Two hosts, `-a` a wave of its own before the rest.
fn two_waves() -> Result<(PanelServer, String, String)> {
    let prefix = unique_prefix();
    let (first, second) = (format!("{prefix}-a"), format!("{prefix}-b"));
    let p = panel_with_waves(&format!("[\"host:{first}\", \"rest\"]"), &[&first, &second])?;
    Ok((p, first, second))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_job_publishes_and_streams_its_log() -> Result<()> {
    let mut p = PanelServer::start("panel-jobs")?;
    let host = toy_host(&mut p)?;
    let s = p.login().await?;

    let id = s.start_job("deploy", &host).await?;
    let (lines, status) = read_job_log(&s, id, BUILD).await?;
    assert_eq!(status, "succeeded", "{lines:#?}\n{}", p.server_log());
    let text = lines.join("\n");
    assert!(
        text.starts_with(&format!("deploy of {host}, started by admin")),
        "{text}"
    );
    assert!(text.contains(&format!("\n1 host: {host}\n")), "{text}");
    assert!(text.contains(&format!("{host}: building")));
    assert!(
        text.contains(&format!("{host}: built /nix/store/")),
        "{text}"
    );
    assert!(text.contains(&format!("{host}: published ")), "{text}");
    assert!(
        text.ends_with("1 host: 1 published, 0 unchanged, 0 failed"),
        "{text}"
    );

    // Published for real, as `bento deploy` does.
    let (revision, _) = current_release(&p.fx.host_chroot(&host)).expect("a release in the chroot");
    let job = s.json(&format!("/api/v1/jobs/{id}")).await?;
    assert_eq!(job["created_by"], "admin");
    assert_eq!(job["host"], host.as_str());
    assert!(job["finished_at"].as_i64() >= job["started_at"].as_i64());
    let page = s.page(&format!("/jobs/{id}")).await?;
    assert!(
        page.contains(&format!("published revision {revision}")),
        "job page lacks the host's result"
    );
    assert!(
        page.contains(&format!("{host}: built /nix/store/")),
        "the log did not survive the page reload"
    );
    let st = eventually(
        Duration::from_secs(10),
        "the new release in the fleet",
        || async {
            let h = s.json(&format!("/api/v1/hosts/{host}")).await;
            Ok(h.ok().filter(|h| h["revision"] == revision.as_str()))
        },
    )
    .await?;
    assert_eq!(st["state"], "new-machine", "published, never reported");

    // Deploying again changes nothing; a fleet dry-build and a flake update work too.
    let again = s.start_job("deploy", &host).await?;
    let (lines, status) = read_job_log(&s, again, BUILD).await?;
    assert_eq!(status, "succeeded");
    assert!(
        lines.last().unwrap().contains("0 published, 1 unchanged"),
        "{lines:#?}"
    );
    let dry = s.start_job("dry-build", "").await?;
    let (lines, status) = read_job_log(&s, dry, BUILD).await?;
    assert_eq!(status, "succeeded", "{lines:#?}");
    assert!(lines.last().unwrap().contains("1 evaluated, 0 failed"));
    let upd = s.start_job("flake-update", "").await?;
    let (lines, status) = read_job_log(&s, upd, BUILD).await?;
    assert_eq!(status, "succeeded", "{lines:#?}");

    // History: who, when, how long, the result; metrics; audit.
    let jobs = s.page("/jobs").await?;
    for j in [id, again, dry, upd] {
        assert!(
            jobs.contains(&format!("href=\"/jobs/{j}\"")),
            "job {j} missing"
        );
    }
    assert!(jobs.contains("1 host: 1 published, 0 unchanged, 0 failed"));
    let m = s.get("/metrics").await?.text().await?;
    assert!(
        m.contains("bento_job_duration_seconds_count{kind=\"deploy\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("bento_jobs{kind=\"deploy\",status=\"succeeded\"} 2"),
        "{m}"
    );
    let audit = s.page("/audit?q=job-start").await?;
    assert!(audit.contains(&format!("deploy {host}")));
    let host_page = s.page(&format!("/hosts/{host}")).await?;
    assert!(
        host_page.contains(&format!("href=\"/jobs/{id}\"")),
        "the host page lists its jobs"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_waits_while_the_command_line_holds_the_lock() -> Result<()> {
    let mut p = PanelServer::start("panel-jobs")?;
    let host = toy_host(&mut p)?;
    let s = p.login().await?;
    let bento = BentoDir::open(&p.fx.bento_dir())?;
    let lock = bento.try_lock()?;

    let id = s.start_job("deploy", &host).await?;
    let mut res = s.get(&format!("/jobs/{id}/log")).await?;
    let mut buf = String::new();
    loop {
        let (_, line) = tokio::time::timeout(
            Duration::from_secs(30),
            panel_common::next_event(&mut res, &mut buf),
        )
        .await??;
        if line.contains("waiting: another bento deploy is running") {
            break;
        }
    }
    // Waiting counts as running.
    assert_eq!(
        s.json(&format!("/api/v1/jobs/{id}")).await?["status"],
        "running"
    );
    drop(lock);
    let (lines, status) = read_job_log(&s, id, BUILD).await?;
    assert_eq!(status, "succeeded", "{lines:#?}");
    assert!(lines
        .iter()
        .any(|l| l.contains("the other deploy finished")));
    assert!(current_release(&p.fx.host_chroot(&host)).is_some());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_running_when_the_server_dies_is_marked_failed() -> Result<()> {
    let mut p = PanelServer::start("panel-jobs")?;
    let host = toy_host(&mut p)?;
    let s = p.login().await?;
    let lock = BentoDir::open(&p.fx.bento_dir())?.try_lock()?;
    let running = s.start_job("deploy", &host).await?;
    eventually(Duration::from_secs(30), "the deploy to run", || async {
        let j = s.json(&format!("/api/v1/jobs/{running}")).await?;
        Ok((j["status"] == "running").then_some(()))
    })
    .await?;
    let queued = s.start_job("dry-build", &host).await?;
    // The same request twice does not queue twice.
    assert_eq!(s.start_job("dry-build", &host).await?, queued);
    // A queued job can be cancelled, a running one cannot.
    let extra = s.start_job("build", &host).await?;
    assert_eq!(
        s.post(&format!("/jobs/{extra}/cancel"), &[])
            .await?
            .status(),
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        s.post(&format!("/jobs/{running}/cancel"), &[])
            .await?
            .status(),
        StatusCode::BAD_REQUEST
    );

    p.restart()?;
    let s = p.login().await?;
    let j = s.json(&format!("/api/v1/jobs/{running}")).await?;
    assert_eq!(j["status"], "failed", "{j}");
    assert!(
        j["summary"].as_str().unwrap().contains("interrupted"),
        "{j}"
    );
    assert!(j["finished_at"].is_i64());
    assert_eq!(
        s.json(&format!("/api/v1/jobs/{extra}")).await?["status"],
        "cancelled"
    );
    let page = s.page(&format!("/jobs/{running}")).await?;
    assert!(page.contains("interrupted: the panel stopped while this job ran"));

    // The queue survived the restart: the dry-build runs now.
    drop(lock);
    let done = s.wait_job(queued, BUILD).await?;
    assert_eq!(done["status"], "succeeded", "{done}");
    Ok(())
}

/// A deploy from the command line is a rollout in the panel's database: the
/// panel lists its job (by the Unix user who ran it) and the audit log names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_line_deploy_shows_in_the_panels_jobs_and_audit() -> Result<()> {
    let mut p = PanelServer::start("panel-jobs")?;
    let host = toy_host(&mut p)?;
    let s = p.login().await?;
    p.bento_stdin(&["deploy"], "")?;
    let jobs = s.json("/api/v1/jobs").await?;
    let job = jobs
        .as_array()
        .and_then(|a| a.iter().find(|j| j["kind"] == "deploy"))
        .cloned()
        .unwrap_or_else(|| panic!("no deploy job: {jobs}"));
    assert!(
        job["created_by"]
            .as_str()
            .is_some_and(|c| c.starts_with("cli:")),
        "{job}"
    );
    assert_eq!(job["host"], host.as_str());
    let id = job["id"].as_i64().expect("a job id");
    let page = s.page(&format!("/jobs/{id}")).await?;
    assert!(page.contains(&host), "the job page lacks the host");
    assert!(
        page.contains("href=\"/rollouts/1\""),
        "the job page lacks its rollout"
    );
    let list = s.page("/rollouts").await?;
    assert!(list.contains("href=\"/rollouts/1\""), "{list}");
    let rollout = s.page("/rollouts/1").await?;
    assert!(
        rollout.contains(&format!("href=\"/hosts/{host}\"")),
        "{rollout}"
    );
    assert!(rollout.contains(">published<"), "{rollout}");
    let m = s.get("/metrics").await?.text().await?;
    for line in [
        "bento_rollout_status{rollout=\"1\",status=\"running\"} 1",
        "bento_rollout_wave{rollout=\"1\"} 1",
        "bento_rollout_hosts{rollout=\"1\",phase=\"published\"} 1",
    ] {
        assert!(m.contains(line), "{line} missing:\n{m}");
    }
    // Abort from the panel: nobody drives this rollout, so it ends at once.
    assert!(rollout.contains("/rollouts/1/abort"), "{rollout}");
    let res = s.post("/rollouts/1/abort", &[]).await?;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let rollout = s.page("/rollouts/1").await?;
    assert!(rollout.contains(">aborted<"), "{rollout}");
    assert!(!rollout.contains("/rollouts/1/abort"), "{rollout}");
    let audit = s.page("/audit").await?;
    assert!(audit.contains("rollout-abort"), "{audit}");
    assert!(audit.contains("rollout 1"), "{audit}");
    assert!(
        audit.contains(&format!("job {id}: 1 host(s) in 1 wave(s)")),
        "{audit}"
    );
    // The panel's restart does not take the command line's job for its own.
    p.restart()?;
    let s = p.login().await?;
    let job = s.json(&format!("/api/v1/jobs/{id}")).await?;
    assert_ne!(
        job["summary"], "interrupted: the panel stopped while this job ran",
        "{job}"
    );
    Ok(())
}

/// A panel deploy with `[rollout]` waves is a rollout the panel drives: only
/// the first wave is published, and Abort on its page stops it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panel_deploy_in_waves_publishes_the_first_and_stops_on_abort() -> Result<()> {
    let (p, first, second) = two_waves()?;
    let s = p.login().await?;
    let job = s.deploy_in_waves().await?;
    eventually(BUILD, "the first wave", || async {
        Ok(current_release(&p.fx.host_chroot(&first)).map(|_| ()))
    })
    .await?;
    // The first wave is out, the job still runs: it waits for the host.
    assert!(current_release(&p.fx.host_chroot(&second)).is_none());
    let page = s.page("/rollouts/1").await?;
    assert!(page.contains(">running<"), "{page}");
    assert_eq!(
        s.json(&format!("/api/v1/jobs/{job}")).await?["status"],
        "running"
    );
    let res = s.post("/rollouts/1/abort", &[]).await?;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let (lines, status) = read_job_log(&s, job, BUILD).await?;
    assert_eq!(status, "failed", "{lines:#?}");
    let text = lines.join("\n");
    assert!(
        text.contains(&format!("wave 1 (host:{first}): publishing to {first}")),
        "{text}"
    );
    assert!(text.contains("rollout 1: aborted in wave 1"), "{text}");
    assert!(
        current_release(&p.fx.host_chroot(&second)).is_none(),
        "the second wave was published after the abort"
    );
    let page = s.page("/rollouts/1").await?;
    assert!(page.contains(">aborted<"), "{page}");
    Ok(())
}

/// A panel killed in the middle of the rollout it drives takes it up again when
/// it starts: the next wave is published once the first one succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_driven_by_the_panel_survives_its_restart() -> Result<()> {
    let (mut p, first, second) = two_waves()?;
    let s = p.login().await?;
    s.post("/jobs", &[("kind", "deploy"), ("host", "")]).await?;
    eventually(BUILD, "the first wave", || async {
        Ok(current_release(&p.fx.host_chroot(&first)).map(|_| ()))
    })
    .await?;
    let page = s.page("/rollouts/1").await?;
    assert!(page.contains(">running<"), "{page}");

    // Killed mid-rollout (SIGKILL), started again on the same database.
    p.restart()?;
    let s = p.login().await?;
    p.report_release(&first, ReportStatus::Success, None)?;
    eventually(BUILD, "the second wave after the restart", || async {
        Ok(current_release(&p.fx.host_chroot(&second)).map(|_| ()))
    })
    .await?;
    p.report_release(&second, ReportStatus::Success, None)?;
    let page = eventually(BUILD, "the rollout's end", || async {
        let page = s.page("/rollouts/1").await?;
        Ok(page.contains(">succeeded<").then_some(page))
    })
    .await?;
    assert!(page.contains("2 succeeded, 0 failed"), "{page}");
    // The job that took it up is linked both ways.
    let resumed = page
        .split("id=\"resumed-by\"><a href=\"/jobs/")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .and_then(|n| n.parse::<i64>().ok())
        .with_context(|| format!("no resume job on the rollout's page: {page}"))?;
    assert_ne!(resumed, 1, "the resume job is the deploy job");
    let job = s.page(&format!("/jobs/{resumed}")).await?;
    assert!(
        job.contains("href=\"/rollouts/1\" id=\"job-rollout\""),
        "{job}"
    );
    let audit = s.page("/audit").await?;
    assert!(audit.contains("rollout-resume"), "{audit}");
    Ok(())
}

/// Rollback on a rollout's page, while the rollout is under way: the panel
/// aborts it (its next wave is never published), then a rollback job puts the
/// hosts it published back on their previous release, followed as a rollout of
/// its own and named on both pages and in the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_on_the_panel_aborts_the_rollout_and_republishes_the_previous_release(
) -> Result<()> {
    let (p, first, second) = two_waves()?;
    let s = p.login().await?;
    let rev = |h: &str| current_release(&p.fx.host_chroot(h)).map(|(r, _)| r);
    // Rollout 1, every host at once; both succeed.
    s.post(
        "/jobs",
        &[("kind", "deploy"), ("host", ""), ("mode", "all")],
    )
    .await?;
    eventually(BUILD, "rollout 1 published", || async {
        Ok((rev(&first).is_some() && rev(&second).is_some()).then_some(()))
    })
    .await?;
    let (rev1_first, rev1_second) = (rev(&first).unwrap(), rev(&second).unwrap());
    for h in [&first, &second] {
        p.report_release(h, ReportStatus::Success, None)?;
    }
    // Rollout 2, in waves: its first wave is out.
    for h in [&first, &second] {
        p.fx.fleet.set_system_version(h, "2")?;
    }
    s.deploy_in_waves().await?;
    eventually(BUILD, "rollout 2's first wave", || async {
        Ok(rev(&first).filter(|r| *r != rev1_first).map(|_| ()))
    })
    .await?;
    // The first wave recorded as published (after the chroot's swap): Rollback
    // is offered.
    eventually(BUILD, "Rollback on rollout 2's page", || async {
        let page = s.page("/rollouts/2").await?;
        Ok(page.contains("/rollouts/2/rollback").then_some(()))
    })
    .await?;

    // Rollback shows what it would do first, and does nothing yet.
    let confirm = s.page("/rollouts/2/rollback").await?;
    let row = |host: &str| {
        let at = confirm.find(&format!("<tr data-host=\"{host}\">"))?;
        let end = confirm[at..].find("</tr>")? + at;
        Some(confirm[at..end].to_owned())
    };
    let back = row(&first).unwrap_or_default();
    assert!(back.contains(&rev1_first[..12]), "{confirm}");
    let stay = row(&second).unwrap_or_default();
    assert!(stay.contains("its wave was never published"), "{confirm}");
    assert!(
        confirm.contains("This rollout is aborted first"),
        "{confirm}"
    );
    assert!(confirm.contains("id=\"rollback-confirm\""), "{confirm}");
    assert_ne!(rev(&first).as_deref(), Some(rev1_first.as_str()));
    assert!(s.page("/rollouts/2").await?.contains(">running<"));

    let res = s.post("/rollouts/2/rollback", &[]).await?;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let job: i64 = res
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok()?.strip_prefix("/jobs/")?.parse().ok())
        .expect("a redirect to the rollback job");
    eventually(BUILD, "the previous release again", || async {
        Ok((rev(&first).as_deref() == Some(rev1_first.as_str())).then_some(()))
    })
    .await?;
    p.report_release(&first, ReportStatus::Success, None)?;
    let (lines, status) = read_job_log(&s, job, BUILD).await?;
    let text = lines.join("\n");
    assert_eq!(status, "succeeded", "{text}");
    assert!(text.contains("Rollout 3 rolls back rollout 2"), "{text}");
    assert!(
        text.contains(&format!(
            "{second}: not rolled back: its wave was never published"
        )),
        "{text}"
    );
    assert_eq!(rev(&second), Some(rev1_second), "the second wave went out");
    let two = s.page("/rollouts/2").await?;
    assert!(two.contains(">aborted<"), "{two}");
    assert!(two.contains("Rolled back by"), "{two}");
    assert!(!two.contains("/rollouts/2/rollback"), "{two}");
    // Asked again, the confirmation says no and offers nothing to confirm.
    let again = s.page("/rollouts/2/rollback").await?;
    assert!(again.contains("id=\"rollback-refused\""), "{again}");
    assert!(!again.contains("id=\"rollback-confirm\""), "{again}");
    assert!(!two.contains("/rollouts/2/resume"), "{two}");
    let three = s.page("/rollouts/3").await?;
    assert!(three.contains("href=\"/rollouts/2\""), "{three}");
    assert!(three.contains(">succeeded<"), "{three}");
    let audit = s.page("/audit").await?;
    assert!(audit.contains("rollout-rollback"), "{audit}");
    assert!(audit.contains("rollout-abort"), "{audit}");
    Ok(())
}

/// `host`'s outcome on a rollout's page (`<tr data-host=HOST>`'s badge).
fn phase_on_page(page: &str, host: &str) -> Option<String> {
    let row = &page[page.find(&format!("<tr data-host=\"{host}\">"))?..];
    let badge = &row[row.find("data-label=\"Outcome\"><span class=\"badge ")?..];
    let text = &badge[badge.find('>')? + 1..];
    let text = &text[text.find('>')? + 1..];
    Some(text[..text.find('<')?].to_owned())
}

/// When the chroot published `host`'s current release: the swap of
/// `.releases/current` (a new link renamed in place) and `last_change_date`,
/// written right after it.
fn publication_times(p: &PanelServer, host: &str) -> Result<[SystemTime; 2]> {
    let hd = p.fx.host_chroot(host);
    Ok([
        fs::symlink_metadata(hd.join(".releases/current"))?.modified()?,
        fs::metadata(hd.join("last_change_date"))?.modified()?,
    ])
}

/// A panel deploy with `25%` waves goes wave by wave. Four hosts make waves of 1
/// (25% of 4), 1 (25% of the 3 left, rounded up) and 2 (the rest): each wave is
/// all the chroot publishes until its hosts report success, and the chroot's own
/// times show every host published after the success of every host of the
/// waves before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panel_rollout_in_percent_waves_publishes_each_wave_after_the_last_succeeded(
) -> Result<()> {
    let prefix = unique_prefix();
    let hosts: Vec<String> = ["a", "b", "c", "d"]
        .iter()
        .map(|s| format!("{prefix}-{s}"))
        .collect();
    let p = panel_with_waves(
        "[\"25%\", \"25%\", \"rest\"]",
        &hosts.iter().collect::<Vec<_>>(),
    )?;
    let s = p.login().await?;
    let job = s.deploy_in_waves().await?;
    let published = || -> Vec<String> {
        hosts
            .iter()
            .filter(|h| current_release(&p.fx.host_chroot(h)).is_some())
            .cloned()
            .collect()
    };

    let mut waves: Vec<Vec<String>> = Vec::new();
    // Every success report so far: (host, the report's mtime).
    let mut reports: Vec<(String, SystemTime)> = Vec::new();
    for (i, size) in [1, 1, 2].into_iter().enumerate() {
        let n = i + 1;
        let before: Vec<String> = waves.concat();
        let want = before.len() + size;
        let out = eventually(BUILD, &format!("wave {n} in the chroot"), || async {
            let out = published();
            Ok((out.len() >= want).then_some(out))
        })
        .await?;
        let wave: Vec<String> = out.into_iter().filter(|h| !before.contains(h)).collect();
        // Recorded as published (after the chroot's swap) and followed: the
        // rollout now waits for the wave's reports, and nothing else goes out.
        eventually(
            BUILD,
            &format!("wave {n} on the rollout's page"),
            || async {
                let page = s.page("/rollouts/1").await?;
                Ok(wave
                    .iter()
                    .all(|h| phase_on_page(&page, h).as_deref() == Some("published"))
                    .then_some(()))
            },
        )
        .await?;
        let now = published();
        assert_eq!(
            now.len(),
            want,
            "wave {n} should have made {want} host(s) published in all, not {now:?}"
        );
        let page = s.page("/rollouts/1").await?;
        for h in hosts.iter().filter(|h| !now.contains(h)) {
            assert_eq!(
                phase_on_page(&page, h).as_deref(),
                Some("pending"),
                "{h} in wave {n}:\n{page}"
            );
        }
        for h in &wave {
            for at in publication_times(&p, h)? {
                for (r, t) in &reports {
                    assert!(
                        at > *t,
                        "{h} (wave {n}) was published at {at:?}, before {r}'s success at {t:?}"
                    );
                }
            }
        }
        for h in &wave {
            let file = p.report_release(h, ReportStatus::Success, None)?;
            let t = fs::metadata(p.logs(h).join(file))?.modified()?;
            reports.push((h.clone(), t));
        }
        waves.push(wave);
    }

    let (lines, status) = read_job_log(&s, job, BUILD).await?;
    let text = lines.join("\n");
    assert_eq!(status, "succeeded", "{text}");
    for (i, (entry, wave)) in ["25%", "25%", "rest"].iter().zip(&waves).enumerate() {
        let line = lines
            .iter()
            .find(|l| l.starts_with(&format!("wave {} ({entry}): publishing to ", i + 1)))
            .unwrap_or_else(|| panic!("no wave {} in the log:\n{text}", i + 1));
        let mut named: Vec<&str> = line
            .rsplit(": publishing to ")
            .next()
            .unwrap()
            .split(", ")
            .collect();
        named.sort();
        let mut wave: Vec<&str> = wave.iter().map(String::as_str).collect();
        wave.sort();
        assert_eq!(named, wave, "{text}");
    }
    let page = eventually(BUILD, "the rollout's end", || async {
        let page = s.page("/rollouts/1").await?;
        Ok(page.contains(">succeeded<").then_some(page))
    })
    .await?;
    assert!(page.contains("4 succeeded, 0 failed"), "{page}");
    Ok(())
}
