//! `bento deploy` killed with SIGKILL at random moments never leaves a host whose
//! `config` mixes two releases, and the next deploy finishes the job.

use std::fs;
use std::time::{Duration, Instant};

use anyhow::Result;
use bento_core::release::Manifest;
use bento_tests::cli::{current_release, BentoFixture};
use bento_tests::sshd::unique_prefix;

#[test]
fn killed_deploys_never_leave_a_mixed_release() -> Result<()> {
    let mut f = BentoFixture::new("deploy-killed")?;
    let p = unique_prefix();
    let hosts: Vec<String> = (0..4).map(|i| format!("{p}-h{i}")).collect();
    for h in &hosts {
        f.fleet.nonflake_host(h)?;
    }
    f.ok(&["deploy"])?;

    // Pseudo-random kill delays spread over a whole deploy (no RNG dependency).
    let full = {
        for h in &hosts {
            f.fleet.write_file(h, "payload.txt", "warm-up\n")?;
        }
        let t = Instant::now();
        f.ok(&["deploy"])?;
        t.elapsed()
    };
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
    let mut killed_mid_publication = 0;
    for round in 0..25 {
        for (i, h) in hosts.iter().enumerate() {
            // Many files per release so a kill can land in the middle of a copy.
            for n in 0..40 {
                f.fleet.write_file(
                    h,
                    &format!("data/{n}.txt"),
                    &format!("round {round} host {i} file {n}\n"),
                )?;
            }
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_micros(seed % (full.as_micros() as u64 + 1));
        let mut child = f
            .cmd()
            .arg("deploy")
            .stderr(std::process::Stdio::null())
            .spawn()?;
        std::thread::sleep(delay);
        let finished = child.try_wait()?.is_some();
        let _ = child.kill();
        child.wait()?;
        for h in &hosts {
            let hc = f.host_chroot(h);
            let (rev, dir) = current_release(&hc).expect("a host keeps a current release");
            let m = Manifest::read_from(&dir).unwrap_or_else(|e| panic!("round {round}, {h}: {e}"));
            assert_eq!(m.revision, rev, "round {round}, {h}");
            m.verify(&dir)
                .unwrap_or_else(|e| panic!("round {round}, {h}: mixed release: {e}"));
            // Every file of the release is from one round only.
            let rounds: std::collections::BTreeSet<String> = fs::read_dir(dir.join("data"))
                .map(|rd| {
                    rd.map(|e| {
                        fs::read_to_string(e.unwrap().path())
                            .unwrap()
                            .split(" host")
                            .next()
                            .unwrap()
                            .to_owned()
                    })
                    .collect()
                })
                .unwrap_or_default();
            assert!(rounds.len() <= 1, "round {round}, {h}: files of {rounds:?}");
        }
        if !finished {
            killed_mid_publication += 1;
        }
    }
    assert!(
        killed_mid_publication > 5,
        "the kills never interrupted a deploy"
    );

    // The next deploy completes: every host on the last content, no leftovers.
    f.ok(&["deploy"])?;
    for h in &hosts {
        let hc = f.host_chroot(h);
        let (_, dir) = current_release(&hc).unwrap();
        assert!(fs::read_to_string(dir.join("data/0.txt"))?.starts_with("round 24 "));
        let leftovers: Vec<_> = fs::read_dir(hc.join(".releases"))?
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tmp-") || n.starts_with(".current-"))
            .collect();
        assert!(leftovers.is_empty(), "{h}: {leftovers:?}");
    }
    Ok(())
}
