//! Secrets end to end: `bento secret` encrypts with real age to the hosts' real
//! ssh-ed25519 keys (made by ssh-keygen), `bento deploy` publishes them into the
//! host's own release, and the real agent installs them over `bento sftp`
//! before activation.

mod agent_common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use agent_common::{Agent, Fleet};
use anyhow::{ensure, Context, Result};
use bento_core::release::{Manifest, TreeListing};
use bento_tests::embedded::{generate_key, EmbeddedSftp};
use bento_tests::endpoint::Endpoint;
use bento_tests::{bins, nixenv};

fn bento<S: Endpoint>(fleet: &Fleet<S>, args: &[&str], stdin: Option<&[u8]>) -> Result<String> {
    let mut c = Command::new(bins::bin("bento"));
    c.env("BENTO_DIR", fleet.bento_dir())
        .env("NIX_PATH", fleet.toy.nix_path())
        .envs(nixenv::nix_env())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn()?;
    {
        let mut i = child.stdin.take().expect("piped");
        if let Some(v) = stdin {
            // A bento that fails before it reads its input closes the pipe: its
            // message, not the broken pipe, is the outcome.
            match i.write_all(v) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                r => r?,
            }
        }
    }
    let out = child.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "bento {args:?} failed: {text}");
    Ok(text)
}

/// Every file under `dir` (or `dir` itself, a file; not following symlinks)
/// whose bytes hold `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    if fs::symlink_metadata(dir).is_ok_and(|m| m.is_file()) {
        if fs::read(dir).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)) {
            hits.push(dir.to_owned());
        }
        return hits;
    }
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                if let Ok(b) = fs::read(e.path()) {
                    if b.windows(needle.len()).any(|w| w == needle) {
                        hits.push(e.path());
                    }
                }
            }
        }
    }
    hits
}

/// Every store path of the closure of `system`.
fn closure_of(system: &Path) -> Result<Vec<PathBuf>> {
    let out = nixenv::nix_store([std::ffi::OsStr::new("-qR"), system.as_os_str()])?;
    Ok(out.lines().map(PathBuf::from).collect())
}

/// `bento serve` started on the fleet's bento directory until it answers: it has
/// read every report into its database (bento.sqlite in the bento directory) by
/// then. Stopped on drop.
struct Panel(std::process::Child);

impl Panel {
    fn start<S: Endpoint>(fleet: &Fleet<S>) -> Result<Panel> {
        let log = fleet.dir.join("panel.log");
        let child = Command::new(bins::bin("bento"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("BENTO_DIR", fleet.bento_dir())
            .envs(nixenv::nix_env())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .spawn()?;
        let panel = Panel(child);
        bento_tests::wait_for(std::time::Duration::from_secs(60), || {
            fs::read_to_string(&log)
                .ok()
                .filter(|t| t.contains("listening on http://"))
        })
        .with_context(|| {
            format!(
                "bento serve did not answer: {}",
                fs::read_to_string(&log).unwrap_or_default()
            )
        })?;
        Ok(panel)
    }
}

impl Drop for Panel {
    fn drop(&mut self) {
        agent_common::signal(self.0.id(), "TERM");
        let _ = self.0.wait();
    }
}

fn agent_with_secrets(fleet: &Fleet<EmbeddedSftp>, host: &str, extra: &str) -> Result<Agent> {
    let a = fleet.agent(host)?;
    let root = a.root.display().to_string();
    a.set_config(&format!(
        "secrets_dir = \"{root}/secrets\"\nrestart_command = [\"/bin/sh\", \"-c\", \"echo \\\"$0\\\" >> '{root}/restarts'\"]\n{extra}"
    ))?;
    Ok(a)
}

/// The generations of secrets the agent keeps (`<secrets_dir>.d/`).
fn generations(a: &Agent) -> Result<usize> {
    Ok(fs::read_dir(a.root.join("secrets.d"))?
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .count())
}

fn restarts(a: &Agent) -> Vec<String> {
    fs::read_to_string(a.root.join("restarts"))
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

#[test]
fn secrets_reach_their_host_only_and_rotate_and_go() -> Result<()> {
    let fleet = Fleet::embedded("secrets", &["a", "b"], "", "")?;
    let (a, b) = (fleet.host(0).to_owned(), fleet.host(1).to_owned());
    let plain1 = format!("pw-one-{}", std::process::id());
    let env_plain = format!("TOKEN=env-plain-{}", std::process::id());
    let agent_a = agent_with_secrets(&fleet, &a, "")?;
    let env_path = agent_a.root.join("etc/app/app.env");
    bento(
        &fleet,
        &[
            "secret",
            "set",
            &a,
            "db",
            "--owner",
            "nobody",
            "--group",
            "nogroup",
            "--mode",
            "0440",
            "--restart",
            "app.service",
        ],
        Some(plain1.as_bytes()),
    )?;
    let envf = fleet.dir.join("value.env");
    fs::write(&envf, &env_plain)?;
    bento(
        &fleet,
        &[
            "secret",
            "set",
            &a,
            "app.env",
            "--path",
            &env_path.display().to_string(),
            "--file",
            &envf.display().to_string(),
        ],
        None,
    )?;
    fs::remove_file(&envf)?;
    let list = bento(&fleet, &["secret", "list"], None)?;
    assert!(
        list.contains("db") && list.contains("nobody:nogroup") && list.contains("0440"),
        "{list}"
    );
    assert!(!list.contains(&plain1), "{list}");
    fleet.deploy()?;

    // Published in a's release only, private to the publisher (embedded SFTP).
    let rel = fleet
        .host_chroot(&a)
        .join(".releases")
        .join(fleet.published(&a)?);
    let ct = rel.join(".bento-secrets/db.age");
    assert_eq!(fs::metadata(&ct)?.permissions().mode() & 0o777, 0o600);
    assert!(files_holding(&fleet.host_chroot(&b), b"db.age").is_empty());
    assert!(!fleet.host_chroot(&b).join("config/.bento-secrets").exists());

    // The private modes are as published: a second deploy changes nothing.
    let rev = fleet.published(&a)?;
    fleet.deploy()?;
    assert_eq!(fleet.published(&a)?, rev);
    assert_eq!(
        fs::read_dir(fleet.host_chroot(&a).join(".releases"))?.count(),
        2
    );

    let run = agent_a.run_once()?;
    assert!(run.ok(), "{}", run.stderr);
    let installed = agent_a.root.join("secrets/db");
    assert_eq!(fs::read_to_string(&installed)?, plain1);
    let md = fs::metadata(&installed)?;
    assert_eq!(md.permissions().mode() & 0o7777, 0o440);
    let nobody = bento_core::chroot::lookup_user("nobody").context("nobody")?;
    assert_eq!(md.uid(), nobody.0);
    assert_eq!(fs::read_to_string(&env_path)?, env_plain);
    assert_eq!(restarts(&agent_a), ["app.service"]);
    assert_eq!(fleet.toy.switch_records(&a)?.len(), 1);

    // The report names the secrets and their ciphertext hashes, nothing more.
    let (_, meta) = fleet.report_for(&a, &rev)?;
    let reported = meta.secrets.context("the report names no secrets")?;
    let names: Vec<&str> = reported.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["app.env", "db"]);
    assert_eq!(
        reported[1].sha256,
        bento_core::secrets::sha256_hex(&fs::read(&ct)?)
    );

    // No plaintext anywhere but at the secrets' destinations: not in the bento
    // directory with the panel's database (which has read the reports), the
    // chroots, the agent's files and logs, nor the host's closure.
    let panel = Panel::start(&fleet)?;
    drop(panel);
    ensure!(
        fleet.bento_dir().join("bento.sqlite").exists(),
        "the panel made no database"
    );
    let closure = closure_of(&agent_a.active_system().context("no active system")?)?;
    ensure!(!closure.is_empty());
    for p in [&plain1, &env_plain] {
        for path in &closure {
            let hits = files_holding(path, p.as_bytes());
            assert!(hits.is_empty(), "plaintext in the closure: {hits:?}");
        }
        for dir in [
            fleet.bento_dir(),
            fleet.server.chroot_dir(),
            agent_a.state_dir(),
            agent_a.runtime_dir(),
        ] {
            let hits = files_holding(&dir, p.as_bytes());
            assert!(hits.is_empty(), "plaintext in {hits:?}");
        }
        assert!(!run.stderr.contains(p.as_str()));
        assert!(!fleet.server.log().contains(p.as_str()));
    }

    // Rotation: same system, new value; the unit restarts.
    let plain2 = format!("pw-two-{}", std::process::id());
    bento(
        &fleet,
        &["secret", "set", &a, "db"],
        Some(plain2.as_bytes()),
    )?;
    fleet.deploy()?;
    let run = agent_a.run_once()?;
    assert!(run.ok(), "{}", run.stderr);
    assert_eq!(fs::read_to_string(&installed)?, plain2);
    assert_eq!(
        fs::metadata(&installed)?.permissions().mode() & 0o7777,
        0o440
    );
    assert_eq!(restarts(&agent_a), ["app.service", "app.service"]);
    assert!(files_holding(&fleet.bento_dir(), plain2.as_bytes()).is_empty());

    // rm: gone from the host, its link too.
    bento(&fleet, &["secret", "rm", &a, "app.env"], None)?;
    fleet.deploy()?;
    let run = agent_a.run_once()?;
    assert!(run.ok(), "{}", run.stderr);
    assert!(fs::symlink_metadata(&env_path).is_err());
    assert_eq!(fs::read_to_string(&installed)?, plain2);
    Ok(())
}

/// With OpenSSH's chroot the host's user reads the release: the ciphertexts are
/// published readable like the rest of it, and arrive the same way.
#[test]
fn secrets_arrive_through_the_openssh_chroot() -> Result<()> {
    let fleet = Fleet::new("secrets-openssh", &["a"], "")?;
    let a = fleet.host(0).to_owned();
    // No keys in bento.toml: the secrets go to the key sshd authorizes for the
    // host's user, found where sshd's AuthorizedKeysFile says.
    let authorized = format!("{}/keys/%u", fleet.server.root().display());
    let agent = fleet.agent(&a)?;
    let root = agent.root.display().to_string();
    agent.set_config(&format!("secrets_dir = \"{root}/secrets\"\n"))?;
    let err = bento(&fleet, &["secret", "set", &a, "key"], Some(b"x")).unwrap_err();
    assert!(
        format!("{err:#}").contains(".ssh/authorized_keys"),
        "{err:#}"
    );
    fleet.write_config(&format!(
        "[secrets]\nauthorized_keys_file = {authorized:?}\n"
    ))?;
    let value = format!("openssh-plain-{}", std::process::id());
    bento(
        &fleet,
        &["secret", "set", &a, "key"],
        Some(value.as_bytes()),
    )?;
    fleet.deploy()?;
    let rel = fleet
        .host_chroot(&a)
        .join(".releases")
        .join(fleet.published(&a)?);
    let mode = fs::metadata(rel.join(".bento-secrets/key.age"))?
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
    let run = agent.run_once()?;
    assert!(run.ok(), "{}", run.stderr);
    let installed = agent.root.join("secrets/key");
    assert_eq!(fs::read_to_string(&installed)?, value);
    assert_eq!(
        fs::metadata(&installed)?.permissions().mode() & 0o7777,
        0o400
    );
    assert!(files_holding(&fleet.server.chroot_dir(), value.as_bytes()).is_empty());
    assert!(files_holding(&agent.state_dir(), value.as_bytes()).is_empty());
    Ok(())
}

/// An agent killed after the swap, while restarting units: the new set is
/// complete, and the next run finishes the restarts it did not do.
#[test]
fn an_agent_killed_while_restarting_leaves_the_new_set_and_resumes() -> Result<()> {
    let fleet = Fleet::embedded("secrets-killed", &["a"], "", "")?;
    let a = fleet.host(0).to_owned();
    let agent = agent_with_secrets(&fleet, &a, "")?;
    let set = |v: &str| {
        bento(
            &fleet,
            &["secret", "set", &a, "db", "--restart", "app.service"],
            Some(v.as_bytes()),
        )
    };
    set("value-one")?;
    bento(&fleet, &["secret", "set", &a, "other"], Some(b"other-one"))?;
    fleet.deploy()?;
    assert!(agent.run_once()?.ok());
    set("value-two")?;
    fleet.deploy()?;
    let root = agent.root.display().to_string();
    // The restart hangs (until the test kills it) so the agent is killed in it.
    agent.set_config(&format!(
        "secrets_dir = \"{root}/secrets\"\nrestart_command = [\"/bin/sh\", \"-c\", \"echo $$ > '{root}/hang.pid'; exec sleep 600\"]\n"
    ))?;
    let mut child = agent.spawn(&["run-once"], "killed")?;
    let pid = bento_tests::wait_for(agent_common::AGENT_TIMEOUT, || {
        fs::read_to_string(agent.root.join("hang.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
    });
    child.kill()?;
    child.wait()?;
    if let Some(p) = pid {
        agent_common::signal(p, "KILL");
    }
    ensure!(
        pid.is_some(),
        "no restart started: {}",
        agent.spawned_log("killed")
    );
    assert_eq!(
        fs::read_to_string(agent.root.join("secrets/db"))?,
        "value-two"
    );
    assert_eq!(
        fs::read_to_string(agent.root.join("secrets/other"))?,
        "other-one"
    );
    // The new set and the last good one (kept for a rollback) are all there is.
    assert_eq!(generations(&agent)?, 2);

    let agent = agent_with_secrets(&fleet, &a, "")?;
    let run = agent.run_once()?;
    assert!(run.ok(), "{}", run.stderr);
    assert_eq!(generations(&agent)?, 1);
    assert_eq!(restarts(&agent), ["app.service", "app.service"]);
    assert_eq!(
        fs::read_to_string(agent.root.join("secrets/db"))?,
        "value-two"
    );
    Ok(())
}

#[test]
fn a_host_directory_cannot_bring_its_own_secrets() -> Result<()> {
    let fleet = Fleet::embedded("secrets-inject", &["a"], "", "")?;
    let a = fleet.host(0).to_owned();
    fleet
        .toy
        .write_file(&a, ".bento-secrets/secrets.json", "{}")?;
    let e = fleet.deploy().unwrap_err().to_string();
    assert!(e.contains("reserves for its secrets"), "{e}");
    assert!(fleet.published(&a).is_err(), "published anyway");
    Ok(())
}

#[test]
fn a_secret_for_another_key_fails_before_activation() -> Result<()> {
    let fleet = Fleet::embedded("secrets-wrongkey", &["a"], "", "")?;
    let a = fleet.host(0).to_owned();
    let other = fleet.dir.join("other_key");
    generate_key(&other, "other")?;
    let agent = agent_with_secrets(
        &fleet,
        &a,
        &format!("secret_identity = \"{}\"\n", other.display()),
    )?;
    bento(
        &fleet,
        &["secret", "set", &a, "api-key"],
        Some(b"value-wrong-key"),
    )?;
    fleet.deploy()?;
    let run = agent.run_once()?;
    assert!(!run.ok());
    assert!(
        run.stderr.contains("secret api-key cannot be decrypted"),
        "{}",
        run.stderr
    );
    assert!(fleet.toy.switch_records(&a)?.is_empty(), "activated");
    assert!(agent.active_system().is_none());
    assert!(!agent.root.join("secrets").exists());
    Ok(())
}

#[test]
fn a_malformed_ciphertext_from_the_server_is_refused() -> Result<()> {
    let fleet = Fleet::embedded("secrets-malformed", &["a"], "", "")?;
    let a = fleet.host(0).to_owned();
    let agent = agent_with_secrets(&fleet, &a, "")?;
    bento(
        &fleet,
        &["secret", "set", &a, "tok"],
        Some(b"first-value-xyz"),
    )?;
    fleet.deploy()?;
    assert!(agent.run_once()?.ok());
    let installed = agent.root.join("secrets/tok");
    assert_eq!(fs::read_to_string(&installed)?, "first-value-xyz");

    // A compromised server swaps the ciphertext and makes the manifest agree.
    let rels = fleet.host_chroot(&a).join(".releases");
    let old = rels.join(fleet.published(&a)?);
    let forged = rels.join("forged");
    agent_common_copy(&old, &forged)?;
    let bad = b"age-encryption.org/v1\n-> X25519 garbage\n--- xx\n\x00\x01";
    fs::write(forged.join(".bento-secrets/tok.age"), bad)?;
    let index = forged.join(".bento-secrets/secrets.json");
    let text = fs::read_to_string(&index)?;
    let old_sha = bento_core::secrets::Index::read(&forged.join(".bento-secrets"))?.secrets["tok"]
        .sha256
        .clone();
    fs::write(
        &index,
        text.replace(&old_sha, &bento_core::secrets::sha256_hex(bad)),
    )?;
    let mut m = Manifest::read_from(&old)?;
    let l = TreeListing::read(&forged)?;
    m.files = l.files.clone();
    m.revision = l.revision();
    let _ = fs::remove_file(forged.join(".bento-release.sig"));
    m.write_to(&forged)?;
    let rev = m.revision.clone();
    fs::rename(&forged, rels.join(&rev))?;
    let _ = fs::remove_file(rels.join("current.tmp"));
    std::os::unix::fs::symlink(&rev, rels.join("current.tmp"))?;
    fs::rename(rels.join("current.tmp"), rels.join("current"))?;

    let before = fs::read_dir(&agent.root)?.count();
    let run = agent.run_once()?;
    assert!(!run.ok(), "{}", run.stderr);
    assert!(
        run.stderr.contains("secret tok") || run.stderr.contains("signature"),
        "{}",
        run.stderr
    );
    assert_eq!(fs::read_to_string(&installed)?, "first-value-xyz");
    assert_eq!(fs::read_dir(&agent.root)?.count(), before);
    assert_eq!(fleet.toy.switch_records(&a)?.len(), 1);
    Ok(())
}

fn agent_common_copy(src: &Path, dst: &Path) -> Result<()> {
    bento_core::chroot::copy_tree(src, dst)?;
    Ok(())
}

mod panel_common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_page_lists_secrets_without_values() -> Result<()> {
    let keys = bento_tests::TestDir::new("secrets-panel-key")?;
    generate_key(&keys.join("web1"), "web1")?;
    let pubkey = fs::read_to_string(keys.join("web1.pub"))?;
    let p = panel_common::PanelServer::start_with(
        "secrets-panel",
        &format!("[hosts.web1]\nkeys = [{:?}]\n", pubkey.trim()),
    )?;
    p.add_host("web1", None, std::time::Duration::from_secs(60))?;
    let value = format!("panel-plain-{}", std::process::id());
    let mut c = p.fx.cmd();
    c.args([
        "secret",
        "set",
        "web1",
        "smtp-pass",
        "--owner",
        "nobody",
        "--mode",
        "0440",
        "--restart",
        "postfix.service",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn()?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(value.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = p.login().await?;
    // The panel sees the new host when its watch tells it, not at once.
    s.wait_for_host("web1").await?;
    let page = s.page("/hosts/web1").await?;
    assert!(page.contains("smtp-pass"), "{page}");
    assert!(page.contains("nobody:root") && page.contains("0440"));
    assert!(page.contains("postfix.service"));
    assert!(!page.contains(&value));
    let db = p.fx.dir.join("panel.sqlite");
    for f in [db.clone(), db.with_extension("sqlite-wal")] {
        if let Ok(b) = fs::read(&f) {
            assert!(!b.windows(value.len()).any(|w| w == value.as_bytes()));
        }
    }
    assert!(files_holding(&p.fx.bento_dir(), value.as_bytes()).is_empty());
    Ok(())
}

/// An update whose activation fails rolls the host back to its last good
/// system, and the secrets go back with it: the old system runs with its own.
#[test]
fn secrets_follow_the_system_back_when_activation_fails() -> Result<()> {
    let fleet = Fleet::embedded("secrets-rollback", &["a"], "", "")?;
    let a = fleet.host(0).to_owned();
    let agent = agent_with_secrets(&fleet, &a, "")?;
    let set = |name: &str, value: &str| -> Result<String> {
        bento(
            &fleet,
            &["secret", "set", &a, name, "--restart", "app.service"],
            Some(value.as_bytes()),
        )
    };
    set("db", "value-one")?;
    fleet.toy.set_system_version(&a, "1")?;
    fleet.deploy()?;
    let run = agent.run_once()?;
    ensure!(run.ok(), "{}", run.stderr);
    let installed = agent.root.join("secrets/db");
    assert_eq!(fs::read_to_string(&installed)?, "value-one");
    let good = agent.active_system().context("no system")?;

    // Release 2: a new value and a new secret, and a system that fails to start.
    set("db", "value-two")?;
    set("extra", "value-extra")?;
    fleet.toy.set_version_activation_failure(&a, "2", true)?;
    fleet.toy.set_system_version(&a, "2")?;
    fleet.deploy()?;
    let rev2 = fleet.published(&a)?;
    let run = agent.run_once()?;
    ensure!(
        !run.ok(),
        "the failing activation succeeded: {}",
        run.stderr
    );
    assert_eq!(agent.active_system().as_ref(), Some(&good));
    let (_, meta) = fleet.report_for(&a, &rev2)?;
    assert_eq!(
        meta.status,
        bento_core::report::ReportStatus::Rollback,
        "{meta:?}"
    );
    assert_eq!(fs::read_to_string(&installed)?, "value-one");
    assert!(!agent.root.join("secrets/extra").exists());
    assert!(
        run.stderr
            .contains("secrets restored to the set of the last good update"),
        "{}",
        run.stderr
    );
    // Installed, then restored: the unit restarted with each value.
    assert_eq!(restarts(&agent), ["app.service"; 3]);
    // One generation is left, the good one.
    assert_eq!(generations(&agent)?, 1);

    // The fix reaches the host with the new values.
    fleet.toy.set_system_version(&a, "3")?;
    fleet.deploy()?;
    let run = agent.run_once()?;
    ensure!(run.ok(), "{}", run.stderr);
    assert_eq!(fs::read_to_string(&installed)?, "value-two");
    assert_eq!(
        fs::read_to_string(agent.root.join("secrets/extra"))?,
        "value-extra"
    );
    Ok(())
}
