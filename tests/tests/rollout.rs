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
use bento_tests::endpoint::Endpoint;
use bento_tests::{bins, nixenv, wait_for};

use agent_common::{Agent, Fleet, AGENT_TIMEOUT};

/// `bento deploy ARGS` in the background, stdout and stderr to files.
fn spawn_deploy(fleet: &Fleet<EmbeddedSftp>, args: &[&str], name: &str) -> Result<Child> {
    let mut all = vec!["deploy"];
    all.extend_from_slice(args);
    spawn_bento(fleet, &all, name)
}

/// `bento ARGS` in the background, stdout and stderr to files.
fn spawn_bento(fleet: &Fleet<EmbeddedSftp>, args: &[&str], name: &str) -> Result<Child> {
    let out = fs::File::create(fleet.dir.join(format!("{name}.out")))?;
    let err = fs::File::create(fleet.dir.join(format!("{name}.err")))?;
    Ok(Command::new(bins::bin("bento"))
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

/// `bento ARGS` to its end: (exit code, stdout and stderr).
fn bento(fleet: &Fleet<EmbeddedSftp>, args: &[&str]) -> Result<(Option<i32>, String)> {
    let out = Command::new(bins::bin("bento"))
        .args(args)
        .env("BENTO_DIR", fleet.bento_dir())
        .env("NIX_PATH", fleet.toy.nix_path())
        .env_remove("NAME")
        .envs(nixenv::nix_env())
        .output()
        .with_context(|| format!("bento {args:?}"))?;
    Ok((
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// Tags `host` in bento.toml (`[hosts.<host>] tags`).
fn tag(fleet: &Fleet<EmbeddedSftp>, host: &str, tag: &str) -> Result<()> {
    let toml = fleet.bento_dir().join("bento.toml");
    let text = fs::read_to_string(&toml)?;
    let header = format!("[hosts.{host}]\n");
    ensure!(text.contains(&header), "{text}");
    fs::write(
        &toml,
        text.replace(&header, &format!("{header}tags = [\"{tag}\"]\n")),
    )?;
    Ok(())
}

fn publication_time<S: Endpoint>(fleet: &Fleet<S>, host: &str) -> Result<SystemTime> {
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
        anyhow::bail!("bento (deploy --wait or rollout resume) did not end");
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

/// The pick-up bound the watch promises, with `bento sftp`: its held watch
/// answers the moment the release is published, so a daemon that would read
/// the published revision only every 10 minutes (`watch_interval = 600`, and an
/// hour between polls) starts the update within 2 s of the publication.
#[test]
fn a_daemon_watching_bento_sftp_starts_the_update_within_two_seconds_of_publication() -> Result<()>
{
    let fleet = Fleet::embedded("rollout-watch", &["quick"], "", "")?;
    started_within_two_seconds(&fleet, "watch_interval = 600", &[])
}

/// The watch is opened by the agent's own ssh, like the poll, so a host that
/// reaches the server only through a `ProxyCommand` (a jump host, Tor's
/// `nc -X 5`) is told just as fast. The configured port has nothing behind it:
/// a session that did not go through the relay could not open at all.
#[test]
fn a_daemon_watching_through_a_proxy_command_starts_the_update_within_two_seconds() -> Result<()> {
    let fleet = Fleet::embedded("rollout-watch-proxy", &["quick"], "", "")?;
    let agent_root = fleet.agent(fleet.host(0))?.root;
    let relay = format!(
        "ProxyCommand={} 127.0.0.1 {} {}",
        bins::bin("bento-relay").display(),
        fleet.server.port(),
        agent_root.join("relay.count").display()
    );
    let alias = format!("HostKeyAlias=[127.0.0.1]:{}", fleet.server.port());
    let known = format!(
        "UserKnownHostsFile={}",
        fleet.server.known_hosts_path().display()
    );
    let args = [
        "--port",
        "1",
        "--ssh-option",
        &relay,
        "--ssh-option",
        &alias,
        "--ssh-option",
        &known,
        "--ssh-option",
        "StrictHostKeyChecking=yes",
        "--ssh-option",
        "IdentitiesOnly=yes",
    ];
    started_within_two_seconds(&fleet, "watch_interval = 600", &args)?;
    let relayed = fs::read_dir(&agent_root)?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("relay.count."))
        .count();
    // The first poll, the watch, the poll of the new release at least.
    assert!(
        relayed >= 3,
        "{relayed} connection(s) went through the relay"
    );
    Ok(())
}

/// The same bound with OpenSSH's server, which has no held watch: the daemon
/// reads the published revision every `watch_interval = 1` instead.
#[test]
fn a_daemon_watching_openssh_every_second_starts_the_update_within_two_seconds() -> Result<()> {
    let fleet = Fleet::new("rollout-watch-ssh", &["quick"], "")?;
    started_within_two_seconds(&fleet, "watch_interval = 1", &[])
}

/// `extra`: more arguments of the daemon.
fn started_within_two_seconds<S: Endpoint>(
    fleet: &Fleet<S>,
    config: &str,
    extra: &[&str],
) -> Result<()> {
    let host = fleet.host(0).to_owned();
    fleet.toy.set_system_version(&host, "1")?;
    fleet.deploy()?;
    let rev1 = fleet.published(&host)?;
    let agent = fleet.agent(&host)?;
    agent.set_config(config)?;
    let mut args = vec!["daemon"];
    args.extend_from_slice(extra);
    let mut daemon = agent.spawn(&args, "daemon")?;
    let result = (|| -> Result<f64> {
        agent.wait_daemon(&mut daemon, "daemon", |s| {
            s.revision.as_deref() == Some(rev1.as_str())
                && s.activity == bento_core::agent_proto::Activity::Idle
        })?;
        fleet.toy.set_system_version(&host, "2")?;
        fleet.deploy()?;
        let rev2 = fleet.published(&host)?;
        let published = time::OffsetDateTime::from(publication_time(fleet, &host)?);
        let (_, meta) = wait_for(AGENT_TIMEOUT, || fleet.report_for(&host, &rev2).ok())
            .with_context(|| format!("no report of {rev2}:\n{}", agent.spawned_log("daemon")))?;
        Ok((meta.started - published).as_seconds_f64())
    })();
    let _ = daemon.kill();
    let _ = daemon.wait();
    let latency = result?;
    eprintln!("publication -> update started: {latency:.3}s ({config})");
    assert!(
        latency < 2.0,
        "the update started {latency:.3}s after publication ({config}):\n{}",
        agent.spawned_log("daemon")
    );
    Ok(())
}

/// The id in "Rollout N of ..." (the first line `deploy --wait` prints).
fn rollout_id(out: &str) -> Option<i64> {
    out.lines()
        .find_map(|l| l.strip_prefix("Rollout ")?.split(' ').next()?.parse().ok())
}

/// Every deploy is a rollout in the panel's database: a plain deploy concludes
/// from the hosts' reports, a halted one resumes with the systems it built (the
/// canary's failure still counted), and an abort from another terminal stops a
/// rollout before its next wave.
#[test]
fn rollouts_are_recorded_a_halted_one_resumes_and_an_abort_stops_the_next_wave() -> Result<()> {
    let fleet = Fleet::embedded("rollout-record", &["canary", "web"], "", "")?;
    let (canary, web) = (fleet.host(0).to_owned(), fleet.host(1).to_owned());
    for h in [&canary, &web] {
        fleet.toy.set_system_version(h, "1")?;
    }
    // 1. A plain deploy, followed by nobody: concluded from the reports.
    fleet.deploy()?;
    let (a_canary, a_web) = (fleet.agent(&canary)?, fleet.agent(&web)?);
    let (code, list) = bento(&fleet, &["rollout", "list"])?;
    assert_eq!(code, Some(0), "{list}");
    assert!(list.contains("running"), "{list}");
    for a in [&a_canary, &a_web] {
        let run = a.run_once()?;
        ensure!(run.ok(), "{}", run.stderr);
    }
    let (_, list) = bento(&fleet, &["rollout", "list"])?;
    let first = list
        .lines()
        .find(|l| l.trim_start().starts_with("1 "))
        .with_context(|| format!("rollout 1 is not listed:\n{list}"))?;
    assert!(
        first.contains("succeeded") && first.contains("2 succeeded, 0 failed"),
        "{list}"
    );

    // 2. Waves, and a canary that fails: halted.
    fleet.write_config("[rollout]\nwaves = [\"tag:canary\", \"rest\"]\n")?;
    tag(&fleet, &canary, "canary")?;
    fleet
        .toy
        .set_version_activation_failure(&canary, "2", true)?;
    for h in [&canary, &web] {
        fleet.toy.set_system_version(h, "2")?;
    }
    let rev1_web = fleet.published(&web)?;
    let mut deploy = spawn_deploy(&fleet, &["--wait", "--timeout", "300"], "deploy2")?;
    let (code, _) = drive(&fleet, &[&a_canary, &a_web], &mut deploy)?;
    let out = output(&fleet, "deploy2");
    assert_eq!(code, Some(1), "{out}");
    let id = rollout_id(&out).with_context(|| format!("no rollout id:\n{out}"))?;
    let (_, show) = bento(&fleet, &["rollout", "show", &id.to_string()])?;
    assert!(show.contains(&format!("Rollout {id}: halted")), "{show}");
    let line = |show: &str, host: &str| {
        show.lines()
            .find(|l| l.trim_start().starts_with(host))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(line(&show, &web).contains("pending"), "{show}");
    assert!(
        line(&show, &canary).contains("rolled-back") || line(&show, &canary).contains("failed"),
        "{show}"
    );
    assert_eq!(fleet.published(&web)?, rev1_web);

    // 3. Resumed: the rest wave gets the system this rollout built.
    let mut resume = spawn_bento(&fleet, &["rollout", "resume", &id.to_string()], "resume")?;
    let (code, ran) = drive(&fleet, &[&a_canary, &a_web], &mut resume)?;
    let out = output(&fleet, "resume");
    assert_eq!(code, Some(1), "the canary's failure still counts:\n{out}");
    assert!(
        out.contains(&format!("Rollout {id} resumes at wave 2 of 2")),
        "{out}"
    );
    assert!(out.contains(&format!("{web}: success")), "{out}");
    assert!(out.contains("1 succeeded"), "{out}");
    assert_ne!(fleet.published(&web)?, rev1_web);
    assert_eq!(ran.get(&web).map(Vec::len), Some(1), "{ran:?}");
    assert!(!ran.contains_key(&canary), "{ran:?}");
    let (_, show) = bento(&fleet, &["rollout", "show", &id.to_string()])?;
    assert!(show.contains(&format!("Rollout {id}: failed")), "{show}");
    assert!(line(&show, &web).contains("success"), "{show}");
    // Resuming again: nothing is left to resume.
    let (code, again) = bento(&fleet, &["rollout", "resume", &id.to_string()])?;
    assert_eq!(code, Some(2), "an error: {again}");
    assert!(
        again.contains("only a halted, aborted or interrupted rollout resumes"),
        "{again}"
    );

    // 4. Aborted while its canary wave is under way: the next wave is never published.
    for h in [&canary, &web] {
        fleet.toy.set_system_version(h, "3")?;
    }
    let rev2_web = fleet.published(&web)?;
    let rev2_canary = fleet.published(&canary)?;
    let mut deploy = spawn_deploy(&fleet, &["--wait", "--timeout", "300"], "deploy3")?;
    let id3 = wait_for(AGENT_TIMEOUT, || {
        let out = output(&fleet, "deploy3");
        (fleet.published(&canary).ok()? != rev2_canary)
            .then(|| rollout_id(&out))
            .flatten()
    })
    .with_context(|| {
        format!(
            "the canary wave was not published:\n{}",
            output(&fleet, "deploy3")
        )
    })?;
    let (code, said) = bento(&fleet, &["rollout", "abort", &id3.to_string()])?;
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("abort asked"), "{said}");
    let status = wait_for(AGENT_TIMEOUT, || deploy.try_wait().ok().flatten());
    let out = output(&fleet, "deploy3");
    let Some(status) = status else {
        let _ = deploy.kill();
        anyhow::bail!("deploy --wait did not stop on abort:\n{out}");
    };
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("Rollout aborted in wave 1"), "{out}");
    assert!(
        out.contains(&format!(
            "Not published (they keep their current release): {web}"
        )),
        "{out}"
    );
    assert_eq!(fleet.published(&web)?, rev2_web);
    let (_, show) = bento(&fleet, &["rollout", "show", &id3.to_string()])?;
    assert!(show.contains(&format!("Rollout {id3}: aborted")), "{show}");
    // The abort is in the audit log, as the deploys are.
    let (_, list) = bento(&fleet, &["rollout", "list"])?;
    assert!(list.lines().count() >= 4, "{list}");
    Ok(())
}

/// `bento rollout rollback` puts each host of a rollout back on the release it had
/// before, republished from the releases the chroot keeps (nothing is built): the
/// agents switch back to the older system, signed and verified as any release. A
/// host deployed again since is left alone, a rollout is rolled back once, and a
/// kept release that was altered is refused, with nothing published.
#[test]
fn a_rollback_puts_each_host_back_on_its_previous_release() -> Result<()> {
    let fleet = Fleet::embedded("rollout-rollback", &["front", "back"], "", "")?;
    let (front, back) = (fleet.host(0).to_owned(), fleet.host(1).to_owned());
    let agents = (fleet.agent(&front)?, fleet.agent(&back)?);
    let run_all = || -> Result<()> {
        for a in [&agents.0, &agents.1] {
            let run = a.run_once()?;
            ensure!(run.ok(), "{}", run.stderr);
        }
        Ok(())
    };
    // Rollout 1: version 1 everywhere; rollout 2: version 2.
    for h in [&front, &back] {
        fleet.toy.set_system_version(h, "1")?;
    }
    fleet.deploy()?;
    run_all()?;
    let rev1 = fleet.published(&front)?;
    let sys1 = agents.0.active_system().context("front runs a system")?;
    for h in [&front, &back] {
        fleet.toy.set_system_version(h, "2")?;
    }
    fleet.deploy()?;
    run_all()?;
    let rev2 = fleet.published(&front)?;
    let sys2 = agents.0.active_system().context("front runs a system")?;
    assert_ne!(rev1, rev2);
    assert_ne!(sys1, sys2);
    // `back` is deployed again (version 3) since rollout 2: a later deploy.
    fleet.toy.set_system_version(&back, "3")?;
    let (code, out) = bento(&fleet, &["deploy", "--host", &back])?;
    assert_eq!(code, Some(0), "{out}");
    let rev3_back = fleet.published(&back)?;

    let mut rollback = spawn_bento(&fleet, &["rollout", "rollback", "2"], "rollback")?;
    let (code, ran) = drive(&fleet, &[&agents.0, &agents.1], &mut rollback)?;
    let out = output(&fleet, "rollback");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("rolls back rollout 2: 1 host(s)"), "{out}");
    assert!(
        out.contains(&format!("{back}: not rolled back: it has"))
            && out.contains("(a later deploy)"),
        "{out}"
    );
    assert!(out.contains(&format!("{front}: success")), "{out}");
    assert_eq!(fleet.published(&front)?, rev1);
    assert_eq!(agents.0.active_system(), Some(sys1.clone()));
    assert_eq!(fleet.published(&back)?, rev3_back);
    assert_eq!(ran.get(&front).map(Vec::len), Some(1), "{ran:?}");
    assert!(!ran.contains_key(&back), "{ran:?}");
    // The status agrees: front is up to date on the release it went back to.
    assert_eq!(
        fleet.status(&front)?.state,
        bento_core::status::State::UpToDate
    );
    let rollback_id = rollout_id(&out).with_context(|| format!("no rollout id:\n{out}"))?;
    let (_, show) = bento(&fleet, &["rollout", "show", &rollback_id.to_string()])?;
    assert!(show.contains("Rolls back: rollout 2"), "{show}");
    assert!(show.contains(": succeeded"), "{show}");
    let (_, show) = bento(&fleet, &["rollout", "show", "2"])?;
    assert!(
        show.contains(&format!("Rolled back by: rollout {rollback_id}")),
        "{show}"
    );
    // Once only, and a rolled-back rollout does not resume.
    let (code, again) = bento(&fleet, &["rollout", "rollback", "2"])?;
    assert_eq!(code, Some(2), "an error: {again}");
    assert!(
        again.contains(&format!("was rolled back by rollout {rollback_id}")),
        "{again}"
    );

    // Rolling the rollback back would republish rev2: a file of that kept
    // release altered in the chroot is refused, and nothing changes.
    let kept = first_file(&fleet.host_chroot(&front).join(".releases").join(&rev2))?;
    let mut text = fs::read(&kept)?;
    text.extend_from_slice(b"\n# altered\n");
    fs::write(&kept, text)?;
    let (code, said) = bento(&fleet, &["rollout", "rollback", &rollback_id.to_string()])?;
    assert_ne!(code, Some(0), "{said}");
    assert!(
        said.contains("cannot be published again") && said.contains("does not match"),
        "{said}"
    );
    assert_eq!(fleet.published(&front)?, rev1);
    Ok(())
}

/// A release file (not the manifest nor its signature), for altering it.
fn first_file(dir: &std::path::Path) -> Result<std::path::PathBuf> {
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let name = e.file_name();
            if name.to_string_lossy().starts_with(".bento-release") {
                continue;
            }
            let t = e.file_type()?;
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                return Ok(e.path());
            }
        }
    }
    anyhow::bail!("no file in {}", dir.display())
}
