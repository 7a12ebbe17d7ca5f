//! A small release published with the core library, no nix needed: for tests and
//! benchmarks that exercise the chroot and its servers rather than the builds.

use std::fs;
use std::path::Path;

use anyhow::Result;
use bento_core::chroot::{Chroot, Owners};
use bento_core::release::{Manifest, TreeListing};
use bento_core::HostName;

/// Stages a one-file release for `host` in `stage`, sets the host up with
/// `owners` and publishes it. Returns the revision.
pub fn publish_plain(chroot: &Chroot, host: &str, stage: &Path, owners: Owners) -> Result<String> {
    let h = HostName::new(host)?;
    fs::create_dir_all(stage)?;
    fs::write(
        stage.join("configuration.nix"),
        format!("# {host}\n{{ }}\n"),
    )?;
    chroot.ensure_host(&h, owners)?;
    let listing = TreeListing::read(stage)?;
    let m = Manifest::for_tree(&listing, host, time::OffsetDateTime::now_utc(), None);
    chroot.publish(&h, stage, &m, 2)?;
    Ok(m.revision)
}
