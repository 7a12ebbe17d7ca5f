//! Hosts never evaluate: `bento deploy` exports each system's closure as a signed
//! binary cache into the host's own chroot, and the agent fetches only the paths its
//! store lacks, imports them with nix's signature checks and activates exactly the
//! server's toplevel. Real nix, real `bento deploy`, real agents against OpenSSH's
//! chroot and `bento sftp`; the paths are deleted from the store after the export so
//! the agent must import them, and the agent runs with `--max-jobs 0`, so any attempt
//! to build fails.

mod agent_common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use bento_core::closure::store_hash;
use bento_core::report::{Obtained, ReportStatus};
use bento_tests::endpoint::Endpoint;
use bento_tests::nixenv::{self, delete, valid};

use agent_common::{Agent, Fleet};

/// The manifest of the host's current release.
fn fetched(o: &Option<Obtained>) -> Result<(u64, u64)> {
    match o {
        Some(Obtained::Fetched { paths, bytes, .. }) => Ok((*paths, *bytes)),
        other => anyhow::bail!("the system was not fetched: {other:?}"),
    }
}

/// The whole story on one server: a first update imports both paths (the shared
/// kernel package and the host's toplevel) and activates exactly the server's
/// toplevel; the other host's paths are not in this host's cache; a second update
/// where only the toplevel changed downloads one small NAR, not the large package.
fn first_and_second_update<S: Endpoint>(fleet: &Fleet<S>) -> Result<()> {
    let (a, b) = (fleet.host(0).to_owned(), fleet.host(1).to_owned());
    // A kernel version of this test only: its store path is shared by a and b, and
    // by no other test, so deleting it is safe.
    let kernel = format!("6.1.0-{a}");
    for h in [&a, &b] {
        fleet.toy.set_kernel(h, &kernel)?;
    }
    fleet.toy.set_payload(&a, 2 << 20)?;
    fleet.deploy()?;
    let ca = fleet.closure(&a)?;
    let cb = fleet.closure(&b)?;
    ensure!(ca.paths.len() >= 3, "closure of a: {:?}", ca.paths.keys());
    let shared: Vec<&String> = ca
        .paths
        .keys()
        .filter(|p| cb.paths.contains_key(*p))
        .collect();
    ensure!(shared.len() == 1, "shared paths: {shared:?}");
    // Host isolation on disk: a's cache holds its closure and nothing of b's own.
    let cache_a = fleet.host_chroot(&a).join("cache");
    let cache_b = fleet.host_chroot(&b).join("cache");
    for p in cb.paths.keys().filter(|p| !ca.paths.contains_key(*p)) {
        let ni = format!("{}.narinfo", store_hash(p).unwrap());
        ensure!(!cache_a.join(&ni).exists(), "{a}'s cache holds {p} of {b}");
        ensure!(cache_b.join(&ni).exists(), "{b}'s cache lacks {p}");
    }
    // Over the wire, as a's own SFTP login: its own narinfo is there, b's is not,
    // by name in a's cache nor by any path out of a's chroot.
    let b_only = cb
        .paths
        .keys()
        .find(|p| !ca.paths.contains_key(*p))
        .and_then(|p| store_hash(p))
        .context("b has no path of its own")?;
    let a_own = store_hash(&ca.toplevel).context("a's toplevel")?;
    let scratch = fleet.dir.join("sftp-get");
    fs::create_dir_all(&scratch)?;
    let key_a = fleet.server.key_path(&a);
    let (ok, said) = fleet.server.sftp_outcome(
        &a,
        &key_a,
        &format!(
            "get cache/{a_own}.narinfo {}\n",
            scratch.join("own").display()
        ),
    )?;
    ensure!(ok, "a cannot read its own narinfo:\n{said}");
    for path in [
        format!("cache/{b_only}.narinfo"),
        format!("../{b}/cache/{b_only}.narinfo"),
        format!("/{b}/cache/{b_only}.narinfo"),
        format!("../.nar-store/{b_only}.narinfo"),
    ] {
        let (ok, said) = fleet.server.sftp_outcome(
            &a,
            &key_a,
            &format!("get {path} {}\n", scratch.join("stolen").display()),
        )?;
        ensure!(
            !ok && !scratch.join("stolen").exists(),
            "a read {path} of b:\n{said}"
        );
    }
    // The shared NAR is stored once: one inode linked into both caches.
    let url = &ca.paths[shared[0]].url;
    let (ia, ib) = (
        fs::metadata(cache_a.join(url))?,
        fs::metadata(cache_b.join(url))?,
    );
    ensure!(ia.ino() == ib.ino(), "the shared NAR is copied, not linked");

    let top_a = ca.toplevel.clone();
    let mut paths: Vec<&str> = ca.paths.keys().map(String::as_str).collect();
    paths.extend(cb.paths.keys().map(String::as_str));
    paths.sort();
    paths.dedup();
    // Toplevels first: nix deletes a path only once nothing valid refers to it.
    delete(&paths)?;

    let agent = fleet.agent(&a)?;
    agent.pin(&fleet.public_key()?)?;
    let (_, run) = fleet.run_via_relay(&agent, None)?;
    ensure!(run.ok(), "first update failed:\n{}", run.stderr);
    ensure!(
        agent.active_system().as_deref() == Some(Path::new(&top_a)),
        "the host runs {:?}, not the server's {top_a}",
        agent.active_system()
    );
    for p in ca.paths.keys() {
        ensure!(valid(p), "{p} was not imported");
    }
    let (_, meta) = fleet.report_for(&a, &fleet.published(&a)?)?;
    ensure!(meta.status == ReportStatus::Success, "{meta:?}");
    ensure!(meta.exact == Some(true), "exact: {:?}", meta.exact);
    let (n, _) = fetched(&meta.obtained)?;
    ensure!(
        n as usize == ca.paths.len(),
        "fetched {n} paths of {}",
        ca.paths.len()
    );
    // Nothing was built: the only nix calls are the store queries and the import.
    let calls = agent.nix_calls();
    ensure!(
        !calls
            .iter()
            .any(|c| c.starts_with("nix build") || c.starts_with("nix-build")),
        "the agent built: {calls:?}"
    );
    let st = fleet.status(&a)?;
    ensure!(
        st.state == bento_core::status::State::UpToDate,
        "bento status says {:?}",
        st.state
    );

    // Second update: only the toplevel changes.
    fleet.toy.set_system_version(&a, "2")?;
    fleet.deploy()?;
    let ca2 = fleet.closure(&a)?;
    let new: Vec<&String> = ca2
        .paths
        .keys()
        .filter(|p| !ca.paths.contains_key(*p))
        .collect();
    ensure!(
        new.len() == 1 && *new[0] == ca2.toplevel,
        "new paths: {new:?}"
    );
    delete(&[&ca2.toplevel])?;
    let payload = ca
        .paths
        .iter()
        .find(|(p, _)| p.contains("toy-payload"))
        .map(|(_, n)| n.file_size)
        .context("no payload")?;
    let (relayed, run) = fleet.run_via_relay(&agent, None)?;
    ensure!(run.ok(), "second update failed:\n{}", run.stderr);
    let (_, meta) = fleet.report_for(&a, &fleet.published(&a)?)?;
    let (n, bytes) = fetched(&meta.obtained)?;
    let top_nar = ca2.paths[&ca2.toplevel].file_size;
    ensure!(n == 1, "fetched {n} paths");
    ensure!(
        bytes <= top_nar + 4096,
        "fetched {bytes} bytes for a NAR of {top_nar}"
    );
    // On the wire (the relay counted), far less than the unchanged 2 MiB package.
    ensure!(
        relayed < payload / 4,
        "{relayed} bytes crossed the link, the package alone is {payload}"
    );
    eprintln!(
        "second update: {relayed} bytes on the wire, NAR {top_nar} bytes, payload NAR {payload}"
    );
    Ok(())
}

#[test]
fn openssh_hosts_fetch_exactly_the_servers_closure() -> Result<()> {
    let fleet = Fleet::new("closure-sshd", &["a", "b"], "")?;
    first_and_second_update(&fleet)
}

#[test]
fn embedded_sftp_hosts_fetch_exactly_the_servers_closure() -> Result<()> {
    let fleet = Fleet::embedded("closure-embedded", &["a", "b"], "", "")?;
    first_and_second_update(&fleet)
}

/// The link drops in the middle of a large NAR; the next poll resumes from the
/// offset: the bytes of both polls together stay well under twice the NAR.
fn resumes<S: Endpoint>(fleet: &Fleet<S>) -> Result<()> {
    let a = fleet.host(0).to_owned();
    fleet.toy.set_kernel(&a, &format!("6.1.0-{a}"))?;
    fleet.toy.set_payload(&a, 8 << 20)?;
    fleet.deploy()?;
    let c = fleet.closure(&a)?;
    let paths: Vec<&str> = c.paths.keys().map(String::as_str).collect();
    delete(&paths)?;
    let nar = c
        .paths
        .iter()
        .find(|(p, _)| p.contains("toy-payload"))
        .map(|(_, n)| n.clone())
        .context("no payload")?;
    let agent = fleet.agent(&a)?;
    agent.pin(&fleet.public_key()?)?;
    let (first, run) = fleet.run_via_relay(&agent, Some(nar.file_size / 2))?;
    ensure!(
        !run.ok(),
        "the cut link did not fail the poll:\n{}",
        run.stderr
    );
    ensure!(
        run.stderr.contains("kept to resume"),
        "no resumable interruption:\n{}",
        run.stderr
    );
    let part = agent
        .state_dir()
        .join("nar-cache")
        .join(format!("{}.part", nar.url));
    let kept = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    ensure!(
        kept > 0,
        "nothing of the NAR was kept at {}",
        part.display()
    );
    ensure!(!valid(&c.toplevel), "the toplevel is in the store already");
    let (second, run) = fleet.run_via_relay(&agent, None)?;
    ensure!(run.ok(), "the resumed update failed:\n{}", run.stderr);
    ensure!(
        run.stderr.contains("resuming"),
        "not resumed:\n{}",
        run.stderr
    );
    ensure!(
        agent.active_system().as_deref() == Some(Path::new(&c.toplevel)),
        "not activated"
    );
    ensure!(
        second < nar.file_size * 3 / 4,
        "the second poll downloaded {second} bytes of a {} byte NAR: not resumed",
        nar.file_size
    );
    let total = first + second;
    ensure!(
        total < nar.file_size * 3 / 2,
        "{first} + {second} bytes for a NAR of {}",
        nar.file_size
    );
    // Finished: the local NAR cache is gone.
    ensure!(
        !agent.state_dir().join("nar-cache").exists(),
        "nar-cache left behind"
    );
    eprintln!(
        "resume: {first} + {second} = {total} bytes for a NAR of {} bytes",
        nar.file_size
    );
    Ok(())
}

#[test]
fn openssh_a_cut_download_resumes_from_its_offset() -> Result<()> {
    let fleet = Fleet::new("closure-resume-sshd", &["a"], "")?;
    resumes(&fleet)
}

#[test]
fn embedded_a_cut_download_resumes_from_its_offset() -> Result<()> {
    let fleet = Fleet::embedded("closure-resume-embedded", &["a"], "", "")?;
    resumes(&fleet)
}

/// A well-formed signature that no key made for these narinfos.
const FORGED: &str =
    "ZAiS6eQ3AIZYLJKGyzisr2HJ9uxYMj8Ere2/+jTeJhLy5oYAqGHUgIDDzOT0ksgFFkNZvvKSipKdQaOQGLX9Cw==";

/// Replaces the narinfo's `Sig:` lines by `sig` (none: removes them).
fn set_sig(ni: &Path, sig: Option<&str>) -> Result<()> {
    replace(ni, |d| {
        let t = String::from_utf8(d).unwrap();
        let mut lines: Vec<String> = t
            .lines()
            .filter(|l| !l.starts_with("Sig: "))
            .map(str::to_owned)
            .collect();
        if let Some(s) = sig {
            lines.push(format!("Sig: {s}"));
        }
        (lines.join("\n") + "\n").into_bytes()
    })
}

/// Rewrites the file at `p` in place of its hard link, so the shared store (and
/// the other hosts) keep the good copy.
fn replace(p: &Path, f: impl FnOnce(Vec<u8>) -> Vec<u8>) -> Result<()> {
    let data = f(fs::read(p)?);
    let tmp = p.with_extension("tampered");
    fs::write(&tmp, data)?;
    fs::rename(&tmp, p)?;
    Ok(())
}

/// A new revision for `a` (a file changes, the system too), deployed; returns the
/// toplevel, deleted from the store, and the narinfo path of it in a's cache.
fn next_release<S: Endpoint>(fleet: &Fleet<S>, a: &str, v: &str) -> Result<(String, PathBuf)> {
    fleet.toy.set_system_version(a, v)?;
    fleet.deploy()?;
    let c = fleet.closure(a)?;
    delete(&[&c.toplevel])?;
    let ni = fleet
        .host_chroot(a)
        .join("cache")
        .join(format!("{}.narinfo", store_hash(&c.toplevel).unwrap()));
    Ok((c.toplevel, ni))
}

fn assert_refused<S: Endpoint>(
    fleet: &Fleet<S>,
    agent: &Agent,
    a: &str,
    top: &str,
    before: &Option<PathBuf>,
    want: &str,
) -> Result<()> {
    let run = agent.run_once()?;
    ensure!(!run.ok(), "a bad closure was accepted:\n{}", run.stderr);
    let (_, meta) = fleet.report_for(a, &fleet.published(a)?)?;
    ensure!(meta.status == ReportStatus::Failure, "{meta:?}");
    let err = meta.error.unwrap_or_default();
    ensure!(err.contains(want), "the failure says {err:?}, not {want:?}");
    ensure!(!valid(top), "{top} entered the store");
    ensure!(&agent.active_system() == before, "the host left its system");
    Ok(())
}

/// A flipped byte in a NAR, a narinfo signed by another key, a forged signature
/// and a missing one: each refused with a failure report naming the path, nothing
/// enters the store, the host stays on its system.
fn tampered<S: Endpoint>(fleet: &Fleet<S>) -> Result<()> {
    let a = fleet.host(0).to_owned();
    fleet.toy.set_kernel(&a, &format!("6.1.0-{a}"))?;
    fleet.deploy()?;
    let agent = fleet.agent(&a)?;
    agent.pin(&fleet.public_key()?)?;
    // A first good update: the host has a system to stay on.
    let c = fleet.closure(&a)?;
    let paths: Vec<&str> = c.paths.keys().map(String::as_str).collect();
    delete(&paths)?;
    let run = agent.run_once()?;
    ensure!(run.ok(), "{}", run.stderr);
    let before = agent.active_system();

    // 1. A flipped byte in the NAR (its narinfo untouched, so the sizes match).
    let (top, ni) = next_release(fleet, &a, "2")?;
    let text = fs::read_to_string(&ni)?;
    let url = text
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .context("no URL")?;
    let nar = fleet.host_chroot(&a).join("cache").join(url);
    replace(&nar, |mut d| {
        let i = d.len() / 2;
        d[i] ^= 0x55;
        d
    })?;
    assert_refused(
        fleet,
        &agent,
        &a,
        &top,
        &before,
        "nix copy refused the closure",
    )?;

    // 2. Signed by a key this host does not trust.
    let (top, ni) = next_release(fleet, &a, "3")?;
    set_sig(&ni, Some(&format!("intruder-1:{FORGED}")))?;
    assert_refused(fleet, &agent, &a, &top, &before, "intruder-1")?;

    // 3. The fleet key's name, a signature it never made.
    let key_name = fleet.public_key()?.split(':').next().unwrap().to_owned();
    let (top, ni) = next_release(fleet, &a, "4")?;
    set_sig(&ni, Some(&format!("{key_name}:{FORGED}")))?;
    assert_refused(fleet, &agent, &a, &top, &before, "does not match")?;

    // 4. No signature at all.
    let (top, ni) = next_release(fleet, &a, "5")?;
    set_sig(&ni, None)?;
    assert_refused(fleet, &agent, &a, &top, &before, "no signature")?;
    Ok(())
}

#[test]
fn openssh_tampered_closures_are_refused_and_nothing_enters_the_store() -> Result<()> {
    tampered(&Fleet::new("closure-tamper-sshd", &["a"], "")?)
}

#[test]
fn embedded_tampered_closures_are_refused_and_nothing_enters_the_store() -> Result<()> {
    tampered(&Fleet::embedded("closure-tamper-embedded", &["a"], "", "")?)
}

/// A compromised chroot host swaps the manifest (another expected system, signed by
/// nobody, or an older release put back): the agent refuses each, and applies the
/// admin's next real release.
fn manifests<S: Endpoint>(fleet: &Fleet<S>) -> Result<()> {
    let a = fleet.host(0).to_owned();
    fleet.deploy()?;
    let agent = fleet.agent(&a)?;
    agent.pin(&fleet.public_key()?)?;
    let run = agent.run_once()?;
    ensure!(run.ok(), "{}", run.stderr);
    let rev1 = fleet.published(&a)?;
    let before = agent.active_system();
    let releases = fleet.host_chroot(&a).join(".releases");

    // A newer release whose manifest is edited after signing.
    fleet.toy.write_file(&a, "motd.txt", "two\n")?;
    fleet.deploy()?;
    let rev2 = fleet.published(&a)?;
    let m = releases.join(&rev2).join(".bento-release.json");
    let text = fs::read_to_string(&m)?;
    fs::write(&m, text.replacen("\"format\": 1", "\"format\":  1", 1))?;
    let run = agent.run_once()?;
    ensure!(
        !run.ok() && run.stderr.contains("does not match its content"),
        "{}",
        run.stderr
    );
    ensure!(agent.active_system() == before, "moved");

    // The same release with its signature removed.
    fleet.toy.write_file(&a, "motd.txt", "three\n")?;
    fleet.deploy()?;
    let rev3 = fleet.published(&a)?;
    fs::remove_file(releases.join(&rev3).join(".bento-release.sig"))?;
    let run = agent.run_once()?;
    ensure!(
        !run.ok() && run.stderr.contains("not signed"),
        "{}",
        run.stderr
    );

    // A good release, applied; then the old release 1 put back as current (a
    // downgrade by whoever holds the chroot).
    fleet.toy.write_file(&a, "motd.txt", "four\n")?;
    fleet.deploy()?;
    let run = agent.run_once()?;
    ensure!(run.ok(), "{}", run.stderr);
    ensure!(releases.join(&rev1).is_dir(), "release 1 was pruned");
    let link = releases.join(".current-swap");
    std::os::unix::fs::symlink(&rev1, &link)?;
    fs::rename(&link, releases.join("current"))?;
    fs::write(
        fleet.host_chroot(&a).join("last_change_date"),
        format!("{rev1}\n"),
    )?;
    let run = agent.run_once()?;
    ensure!(
        !run.ok() && run.stderr.contains("downgrade"),
        "{}",
        run.stderr
    );
    Ok(())
}

#[test]
fn openssh_swapped_unsigned_and_older_manifests_are_refused() -> Result<()> {
    manifests(&Fleet::new("closure-manifest-sshd", &["a"], "")?)
}

#[test]
fn embedded_swapped_unsigned_and_older_manifests_are_refused() -> Result<()> {
    manifests(&Fleet::embedded(
        "closure-manifest-embedded",
        &["a"],
        "",
        "",
    )?)
}

/// Without a closure (the server only evaluates: `local_build = false`), a host
/// with `build = "never"` refuses clearly, and one with the default builds.
fn no_closure<S: Endpoint>(fleet: &Fleet<S>) -> Result<()> {
    let a = fleet.host(0).to_owned();
    fleet.deploy()?;
    ensure!(
        fleet.manifest(&a)?.closure.is_none(),
        "a dry build exported a closure"
    );
    let agent = fleet.agent(&a)?;
    let key = fleet.public_key()?;
    agent.pin(&key)?;
    let run = agent.run_once()?;
    ensure!(!run.ok(), "build = never built:\n{}", run.stderr);
    ensure!(run.stderr.contains("never builds"), "{}", run.stderr);
    // Another revision, with the default policy: built here.
    fleet.toy.write_file(&a, "motd.txt", "built\n")?;
    fleet.deploy()?;
    agent.set_config(&format!("trusted_public_keys = [\"{key}\"]\n"))?;
    let run = agent.run_once()?;
    ensure!(run.ok(), "{}", run.stderr);
    let (_, meta) = fleet.report_for(&a, &fleet.published(&a)?)?;
    ensure!(
        matches!(meta.obtained, Some(Obtained::Built { .. })),
        "{:?}",
        meta.obtained
    );
    Ok(())
}

#[test]
fn openssh_without_a_closure_never_refuses_and_fallback_builds() -> Result<()> {
    no_closure(&Fleet::new(
        "closure-none-sshd",
        &["a"],
        "local_build = false\n",
    )?)
}

#[test]
fn embedded_without_a_closure_never_refuses_and_fallback_builds() -> Result<()> {
    no_closure(&Fleet::embedded(
        "closure-none-embedded",
        &["a"],
        "local_build = false\n",
        "",
    )?)
}

/// Pruning: a NAR leaves a host's cache with the last kept release that names it,
/// and the shared store once no host links to it; a NAR another release or host
/// still names stays.
#[test]
fn nars_are_pruned_with_the_releases_that_name_them() -> Result<()> {
    let fleet = Fleet::embedded("closure-prune", &["a", "b"], "keep_releases = 1\n", "")?;
    let (a, b) = (fleet.host(0).to_owned(), fleet.host(1).to_owned());
    let kernel = format!("6.1.0-{a}");
    for h in [&a, &b] {
        fleet.toy.set_kernel(h, &kernel)?;
    }
    fleet.deploy()?;
    let old = fleet.closure(&a)?;
    let old_top = &old.paths[&old.toplevel].url;
    let store = fleet.server.chroot_dir().join(".nar-store");
    ensure!(store.join(old_top).is_file(), "{old_top} not exported");
    fleet.toy.set_system_version(&a, "2")?;
    fleet.deploy()?;
    let new = fleet.closure(&a)?;
    let cache_a = fleet.host_chroot(&a).join("cache");
    ensure!(!cache_a.join(old_top).exists(), "a's cache keeps {old_top}");
    ensure!(!store.join(old_top).exists(), "the store keeps {old_top}");
    ensure!(
        !cache_a
            .join(format!("{}.narinfo", store_hash(&old.toplevel).unwrap()))
            .exists(),
        "a's cache keeps the old narinfo"
    );
    for n in new.paths.values() {
        ensure!(cache_a.join(&n.url).is_file(), "a's cache lacks {}", n.url);
        ensure!(store.join(&n.url).is_file(), "the store lacks {}", n.url);
    }
    // b's closure is untouched.
    for n in fleet.closure(&b)?.paths.values() {
        ensure!(
            fleet.host_chroot(&b).join("cache").join(&n.url).is_file(),
            "b's cache lost {}",
            n.url
        );
    }
    Ok(())
}

/// The agent is killed (with its `nix copy`) while it imports the closure: no
/// path is half in the store, nothing was activated, and the next poll imports
/// from the NARs it kept and activates the server's toplevel.
fn killed_import<S: Endpoint>(fleet: &Fleet<S>) -> Result<()> {
    let a = fleet.host(0).to_owned();
    fleet.toy.set_kernel(&a, &format!("6.1.0-{a}"))?;
    fleet.toy.set_payload(&a, 4 << 20)?;
    fleet.deploy()?;
    let c = fleet.closure(&a)?;
    let paths: Vec<&str> = c.paths.keys().map(String::as_str).collect();
    delete(&paths)?;
    let agent = fleet.agent(&a)?;
    agent.pin(&fleet.public_key()?)?;

    // The import stops at its start while `stop-copy` exists: the agent is
    // killed there, every time, not by luck of timing.
    let real = agent_common::which("nix").context("nix")?;
    let (stop, pidfile) = (agent.root.join("stop-copy"), agent.root.join("copy.pid"));
    let shim = agent.root.join("shim/nix");
    fs::write(
        &shim,
        format!(
            "#!/bin/sh\necho \"nix $*\" >> '{calls}'\ncase \" $* \" in *' copy '*) if [ -e '{stop}' ]; then echo $$ > '{pid}'; kill -STOP $$; fi;; esac\nexec '{real}' \"$@\"\n",
            calls = agent.root.join("nix-calls.log").display(),
            stop = stop.display(),
            pid = pidfile.display(),
            real = real.display()
        ),
    )?;
    fs::write(&stop, "")?;
    let mut child = agent.spawn(&["run-once"], "killed")?;
    let copy = bento_tests::wait_for(agent_common::AGENT_TIMEOUT, || {
        fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
    });
    let _ = child.kill();
    child.wait()?;
    if let Some(pid) = copy {
        agent_common::signal(pid, "KILL");
    }
    let log = agent.spawned_log("killed");
    let copy = copy.with_context(|| format!("the agent never imported:\n{log}"))?;
    ensure!(
        log.contains("importing"),
        "killed elsewhere than in the import:\n{log}"
    );
    // The stopped nix is gone before the checks (a zombie is reaped by init).
    bento_tests::wait_for(std::time::Duration::from_secs(10), || {
        (!Path::new(&format!("/proc/{copy}")).exists()
            || fs::read_to_string(format!("/proc/{copy}/stat")).is_ok_and(|s| s.contains(") Z ")))
        .then_some(())
    })
    .context("the killed nix copy still runs")?;
    ensure!(!valid(&c.toplevel), "the toplevel entered the store");
    ensure!(
        agent.active_system().as_deref() != Some(Path::new(&c.toplevel)),
        "the killed agent activated the system"
    );
    let kept = fs::read_dir(agent.state_dir().join("nar-cache"))
        .map(|rd| rd.count())
        .unwrap_or(0);
    ensure!(kept > 0, "the downloaded NARs were not kept");

    fs::remove_file(&stop)?;
    let run = agent.run_once()?;
    ensure!(
        run.ok(),
        "the update after the kill failed:\n{}",
        run.stderr
    );
    ensure!(
        agent.active_system().as_deref() == Some(Path::new(&c.toplevel)),
        "not activated after the kill"
    );
    // The NARs downloaded before the kill were used, not fetched again.
    let (_, meta) = fleet.report_for(&a, &fleet.published(&a)?)?;
    let (_, bytes) = fetched(&meta.obtained)?;
    ensure!(
        bytes < 1 << 20,
        "{bytes} bytes fetched again after the kill"
    );
    for p in &paths {
        ensure!(valid(p), "{p} is not in the store after the import");
    }
    nixenv::nix_store(std::iter::once("--verify-path").chain(paths.iter().copied()))
        .context("an imported path does not match its hash")?;
    Ok(())
}

#[test]
fn openssh_an_agent_killed_during_the_import_recovers() -> Result<()> {
    killed_import(&Fleet::new("closure-killed-sshd", &["a"], "")?)
}

#[test]
fn embedded_an_agent_killed_during_the_import_recovers() -> Result<()> {
    killed_import(&Fleet::embedded("closure-killed-embedded", &["a"], "", "")?)
}
