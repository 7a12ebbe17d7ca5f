//! A deploy is a rollout: `bento deploy --wait` publishes wave by wave, follows the
//! hosts' outcomes from their reports (real `bento-agent` runs against `bento sftp`),
//! and halts when a wave fails, so later waves keep their release.

mod agent_common;

use std::collections::BTreeMap;
use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::SystemTime;

use anyhow::{ensure, Context, Result};
use bento_tests::embedded::EmbeddedSftp;
use bento_tests::{bins, nixenv, wait_for};

use agent_common::{Agent, Fleet, AGENT_TIMEOUT};

/// `bento deploy ARGS` in the background, stdout and stderr to files.
fn spawn_deploy(fleet: &Fleet<EmbeddedSftp>, args: &[&str], name: &str) -> Result<Child> {
    let out = fs::File::create(fleet.dir.join(format!("{name}.out")))?;
    let err = fs::File::create(fleet.dir.join(format!("{name}.err")))?;
    Ok(Command::new(bins::bin("bento"))
        .arg("deploy")
        .args(args)
        .env("BENTO_DIR", fleet.bento_dir())
        .env("NIX_PATH", fleet.toy.nix_path())
        .env_remove("NAME")
        .envs(nixenv::nix_env())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()?)
}

fn output(fleet: &Fleet<EmbeddedSftp>, name: &str) -> String {
    let read =
        |ext: &str| fs::read_to_string(fleet.dir.join(format!("{name}.{ext}"))).unwrap_or_default();
    format!(
        "--- stdout ---\n{}--- stderr ---\n{}",
        read("out"),
        read("err")
    )
}

fn publication_time(fleet: &Fleet<EmbeddedSftp>, host: &str) -> Result<SystemTime> {
    Ok(fs::metadata(fleet.host_chroot(host).join("last_change_date"))?.modified()?)
}

/// Per host, the revisions its agent was run on, in order.
type Runs = BTreeMap<String, Vec<String>>;

/// Plays the hosts while `deploy` runs: each agent runs once whenever its chroot
/// publishes a revision it has not run on yet. Returns deploy's exit code and, per
/// host, the revisions it was run on, in order.
fn drive(
    fleet: &Fleet<EmbeddedSftp>,
    agents: &[&Agent],
    deploy: &mut Child,
) -> Result<(Option<i32>, Runs)> {
    let mut seen: BTreeMap<String, String> = agents
        .iter()
        .map(|a| (a.host.clone(), fleet.published(&a.host).unwrap_or_default()))
        .collect();
    let mut ran: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let status = wait_for(AGENT_TIMEOUT, || {
        for a in agents {
            let Ok(rev) = fleet.published(&a.host) else {
                continue;
            };
            if seen.get(&a.host) != Some(&rev) {
                seen.insert(a.host.clone(), rev.clone());
                let run = a.run_once().ok()?;
                eprintln!("{} ran on {rev}: exit {:?}", a.host, run.code);
                ran.entry(a.host.clone()).or_default().push(rev);
            }
        }
        deploy.try_wait().ok().flatten()
    });
    let Some(status) = status else {
        let _ = deploy.kill();
        let _ = deploy.wait();
        anyhow::bail!("bento deploy --wait did not end");
    };
    Ok((status.code(), ran))
}

#[test]
fn a_failing_canary_halts_the_rollout_and_a_fix_reaches_every_host_canary_first() -> Result<()> {
    let rollout = "[rollout]\nwaves = [\"tag:canary\", \"rest\"]\n";
    let fleet = Fleet::embedded("rollout-canary", &["canary", "web"], "", "")?;
    let (canary, web) = (fleet.host(0).to_owned(), fleet.host(1).to_owned());
    for h in [&canary, &web] {
        fleet.toy.set_system_version(h, "1")?;
    }
    // Release 1 everywhere, all at once (no [rollout] yet).
    fleet.deploy()?;
    let rev1_web = fleet.published(&web)?;
    let (a_canary, a_web) = (fleet.agent(&canary)?, fleet.agent(&web)?);
    for a in [&a_canary, &a_web] {
        let run = a.run_once()?;
        ensure!(run.ok(), "{}", run.stderr);
    }

    // Waves, with the canary tagged.
    fleet.write_config(rollout)?;
    let toml = fleet.bento_dir().join("bento.toml");
    let text = fs::read_to_string(&toml)?;
    let header = format!("[hosts.{canary}]\n");
    ensure!(text.contains(&header), "{text}");
    fs::write(
        &toml,
        text.replace(&header, &format!("{header}tags = [\"canary\"]\n")),
    )?;

    // Release 2: the canary's activation fails (the agent rolls back).
    fleet
        .toy
        .set_version_activation_failure(&canary, "2", true)?;
    for h in [&canary, &web] {
        fleet.toy.set_system_version(h, "2")?;
    }
    let mut deploy = spawn_deploy(&fleet, &["--wait", "--timeout", "300"], "deploy2")?;
    let (code, ran) = drive(&fleet, &[&a_canary, &a_web], &mut deploy)?;
    let out = output(&fleet, "deploy2");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("Rollout halted in wave 1"), "{out}");
    assert!(
        out.contains(&format!("{canary}: rolled-back"))
            || out.contains(&format!("{canary}: failed")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "Not published (they keep their current release): {web}"
        )),
        "{out}"
    );
    // The other host was never offered release 2.
    assert_eq!(fleet.published(&web)?, rev1_web);
    assert!(!ran.contains_key(&web), "{ran:?}");
    assert_eq!(ran.get(&canary).map(Vec::len), Some(1), "{ran:?}");
    let run = a_web.run_once()?;
    ensure!(run.ok(), "{}", run.stderr);
    assert_eq!(
        fleet.status(&web)?.running_revision.as_deref(),
        Some(rev1_web.as_str())
    );

    // The fix: release 3 works; the rollout reaches every host, the canary first.
    for h in [&canary, &web] {
        fleet.toy.set_system_version(h, "3")?;
    }
    let mut deploy = spawn_deploy(&fleet, &["--wait", "--timeout", "300"], "deploy3")?;
    let (code, ran) = drive(&fleet, &[&a_canary, &a_web], &mut deploy)?;
    let out = output(&fleet, "deploy3");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("2 succeeded, 0 failed"), "{out}");
    let rev3_canary = fleet.published(&canary)?;
    let rev3_web = fleet.published(&web)?;
    assert_eq!(
        ran.get(&canary),
        Some(&vec![rev3_canary.clone()]),
        "{ran:?}"
    );
    assert_eq!(ran.get(&web), Some(&vec![rev3_web.clone()]), "{ran:?}");
    // The web host was published only after the canary's success report came.
    let (report, _) = fleet.report_for(&canary, &rev3_canary)?;
    let reported =
        fs::metadata(fleet.host_chroot(&canary).join("logs").join(&report))?.modified()?;
    let web_published = publication_time(&fleet, &web)?;
    assert!(publication_time(&fleet, &canary)? < web_published);
    assert!(
        reported <= web_published,
        "web published before the canary reported"
    );
    for (h, rev) in [(&canary, &rev3_canary), (&web, &rev3_web)] {
        let st = fleet.status(h)?;
        assert_eq!(st.state, bento_core::status::State::UpToDate, "{st:#?}");
        assert_eq!(st.running_revision.as_deref(), Some(rev.as_str()));
    }
    Ok(())
}

#[test]
fn deploy_wait_gives_up_on_a_silent_host_at_the_timeout() -> Result<()> {
    let fleet = Fleet::embedded("rollout-timeout", &["quiet"], "", "")?;
    let host = fleet.host(0).to_owned();
    fleet.toy.set_system_version(&host, "1")?;
    // No agent ever runs: the host gives no answer.
    let out = Command::new(bins::bin("bento"))
        .args(["deploy", "--wait", "--timeout", "2"])
        .env("BENTO_DIR", fleet.bento_dir())
        .env("NIX_PATH", fleet.toy.nix_path())
        .env_remove("NAME")
        .envs(nixenv::nix_env())
        .output()
        .context("bento deploy")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "{host}: no-answer: still published at the timeout"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("0 succeeded, 0 failed, 0 rolled back, 1 no answer"),
        "{stdout}"
    );
    Ok(())
}

/// The pick-up bound the watch promises: a daemon with `watch_interval = 1` (and
/// an hour between polls) starts the update within 2 s of the publication.
#[test]
fn a_watching_daemon_starts_the_update_within_two_seconds_of_publication() -> Result<()> {
    let fleet = Fleet::embedded("rollout-watch", &["quick"], "", "")?;
    let host = fleet.host(0).to_owned();
    fleet.toy.set_system_version(&host, "1")?;
    fleet.deploy()?;
    let rev1 = fleet.published(&host)?;
    let agent = fleet.agent(&host)?;
    agent.set_config("watch_interval = 1")?;
    let mut daemon = agent.spawn(&["daemon"], "daemon")?;
    let result = (|| -> Result<f64> {
        agent.wait_daemon(&mut daemon, "daemon", |s| {
            s.revision.as_deref() == Some(rev1.as_str())
                && s.activity == bento_core::agent_proto::Activity::Idle
        })?;
        fleet.toy.set_system_version(&host, "2")?;
        fleet.deploy()?;
        let rev2 = fleet.published(&host)?;
        let published = time::OffsetDateTime::from(publication_time(&fleet, &host)?);
        let (_, meta) = wait_for(AGENT_TIMEOUT, || fleet.report_for(&host, &rev2).ok())
            .with_context(|| format!("no report of {rev2}:\n{}", agent.spawned_log("daemon")))?;
        Ok((meta.started - published).as_seconds_f64())
    })();
    let _ = daemon.kill();
    let _ = daemon.wait();
    let latency = result?;
    eprintln!("publication -> update started: {latency:.3}s");
    assert!(
        latency < 2.0,
        "the update started {latency:.3}s after publication:\n{}",
        agent.spawned_log("daemon")
    );
    Ok(())
}
