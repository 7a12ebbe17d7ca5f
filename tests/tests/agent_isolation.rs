//! Each host's key opens only its own chroot, read-only but for its `logs/`.

mod agent_common;

use std::fs;

use anyhow::Result;
use bento_core::status::State;
use bento_tests::endpoint::{writes_outside_logs, Endpoint};

use agent_common::Fleet;

#[test]
fn a_host_reads_only_its_chroot_and_writes_only_its_logs() -> Result<()> {
    let fleet = Fleet::new("agent-isolation", &["a", "b"], "")?;
    let (a, b) = (fleet.host(0).to_owned(), fleet.host(1).to_owned());
    fleet.deploy()?;
    let rev_b = fleet.published(&b)?;
    let server = &fleet.server;
    let key_a = server.key_path(&a);
    let scratch = fleet.dir.join("scratch.txt");
    fs::write(&scratch, "x\n")?;
    let got = fleet.dir.join("got");

    let sftp = |user: &str, batch: &str| server.sftp_outcome(user, &key_a, batch);
    // Its own release is readable.
    let (ok, out) = sftp(&a, &format!("get config/flake.nix {}\n", got.display()))?;
    assert!(ok, "{out}");
    // Nothing of b: not through paths, not by logging in as b with a's key.
    for batch in [
        format!("get ../{b}/.releases/{rev_b}/flake.nix {}\n", got.display()),
        format!("ls /{b}\n"),
        format!("ls /../{b}/logs\n"),
    ] {
        let (ok, out) = sftp(&a, &batch)?;
        assert!(!ok, "{batch:?} worked:\n{out}");
    }
    let (ok, out) = sftp(&b, "ls\n")?;
    assert!(!ok, "a's key logged in as b:\n{out}");
    // Writes outside logs/ are refused.
    let rev_a = fleet.published(&a)?;
    for batch in writes_outside_logs(&scratch, &rev_a) {
        let (ok, out) = sftp(&a, &batch)?;
        assert!(!ok, "{batch:?} worked:\n{out}");
    }
    let (ok, out) = sftp(&a, &format!("put {} logs/note.txt\n", scratch.display()))?;
    assert!(ok, "{out}");

    // The agent of b configured with a's key cannot poll, and b's files stay as they were.
    let agent_b = fleet.agent(&b)?;
    let text = fs::read_to_string(&agent_b.config)?.replace(
        &server.key_path(&b).display().to_string(),
        &key_a.display().to_string(),
    );
    fs::write(&agent_b.config, text)?;
    let run = agent_b.run_once()?;
    assert_eq!(run.code, Some(3), "{}", run.stderr);
    assert!(run.stderr.contains("Permission denied"), "{}", run.stderr);
    assert!(fleet.reports(&b).is_empty());
    assert_eq!(fleet.status(&b)?.state, State::NewMachine);

    // a's own agent works.
    let agent_a = fleet.agent(&a)?;
    assert!(agent_a.run_once()?.ok());
    assert_eq!(fleet.status(&a)?.state, State::UpToDate);
    Ok(())
}
