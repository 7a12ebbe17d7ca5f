//! `bento deploy` refuses a host tree the agent would refuse (too many entries,
//! too deep, a path too long), naming the host and the bound, and still
//! publishes the other hosts.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Result;
use bento_core::limits::{MAX_RELEASE_DEPTH, MAX_RELEASE_PATH, MAX_TREE_ENTRIES};
use bento_tests::cli::{current_release, BentoFixture};
use bento_tests::sshd::unique_prefix;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `levels` nested directories under `dir`, each named by `name(i)`, with a
/// file in the deepest; returns the deepest directory.
fn nest(dir: &Path, levels: usize, name: impl Fn(usize) -> String) -> Result<PathBuf> {
    let mut p = dir.to_owned();
    for i in 0..levels {
        p.push(name(i));
    }
    fs::create_dir_all(&p)?;
    fs::write(p.join("leaf"), "x")?;
    Ok(p)
}

#[test]
fn trees_the_agent_would_refuse_fail_their_host_only() -> Result<()> {
    let mut f = BentoFixture::new("deploy-bounds")?;
    let p = unique_prefix();
    let [deep, wide, long, edge, fine] =
        ["deep", "wide", "long", "edge", "fine"].map(|n| format!("{p}-{n}"));
    for h in [&deep, &wide, &long, &edge, &fine] {
        f.fleet.nonflake_host(h)?;
    }
    // One level more than the agent takes.
    nest(
        &f.fleet.host_dir(&deep).join("data"),
        MAX_RELEASE_DEPTH,
        |i| format!("d{i}"),
    )?;
    // One entry more than the agent takes, with the host's own few files.
    let many = f.fleet.host_dir(&wide).join("data");
    fs::create_dir(&many)?;
    for i in 0..MAX_TREE_ENTRIES {
        fs::File::create(many.join(i.to_string()))?;
    }
    // A relative path past the bound, each name within NAME_MAX.
    let name = "n".repeat(200);
    nest(
        &f.fleet.host_dir(&long).join("data"),
        MAX_RELEASE_PATH / 200 + 1,
        |_| name.clone(),
    )?;
    // Exactly as deep as the agent takes, with a path just within the bound.
    let edge_leaf = nest(&f.fleet.host_dir(&edge), MAX_RELEASE_DEPTH, |i| {
        format!("e{i}")
    })?;
    let rel_len = edge_leaf
        .strip_prefix(f.fleet.host_dir(&edge))?
        .as_os_str()
        .len();
    let pad = MAX_RELEASE_PATH - rel_len - 1;
    fs::write(edge_leaf.join("l".repeat(pad.min(255))), "edge")?;

    let out = f.run(&["deploy"])?;
    let (res, err) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{res}\n{err}");
    assert!(
        res.contains("5 hosts: 2 published, 0 unchanged, 3 failed"),
        "{res}\n{err}"
    );
    let line = |h: &str| {
        res.lines()
            .find(|l| l.starts_with(&format!("{h}  ")))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        line(&deep).contains(&format!(
            "nested more than {MAX_RELEASE_DEPTH} directories deep"
        )) && line(&deep).contains("MAX_RELEASE_DEPTH"),
        "{res}"
    );
    assert!(
        line(&wide).contains(&format!(
            "more than {MAX_TREE_ENTRIES} files and directories"
        )) && line(&wide).contains("MAX_RELEASE_ENTRIES"),
        "{res}"
    );
    assert!(
        line(&long).contains(&format!("more than {MAX_RELEASE_PATH} bytes"))
            && line(&long).contains("MAX_RELEASE_PATH"),
        "{res}"
    );
    for h in [&deep, &wide, &long] {
        assert!(line(h).contains("FAILED"), "{h}: {res}");
        assert!(err.contains(&format!("{h}: FAILED: ")), "{h}: {err}");
        assert!(
            current_release(&f.host_chroot(h)).is_none(),
            "{h} published"
        );
    }
    for h in [&edge, &fine] {
        let (_, dir) = current_release(&f.host_chroot(h)).expect("published");
        bento_core::release::Manifest::read_from(&dir)?.verify(&dir)?;
    }
    Ok(())
}
