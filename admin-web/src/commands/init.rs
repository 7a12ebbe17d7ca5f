//! `bento init`: a new bento directory.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};

const BENTO_TOML: &str = r#"# bento settings; every key is described in the README's reference.

# Where each host's chroot lives on this server (sshd ChrootDirectory parent).
chroot_dir = "/home/chroot"
# Host name or address the agents connect to, and its SSH port.
remote = "bento.example.org"
remote_port = 22
# Agents' connection timeout in seconds.
timeout = 20
# false: only evaluate on this server instead of building.
local_build = true
# Extra arguments for nix on this server, and for the agents.
build_args = []
agent_nix_args = []

# [hosts.example]
# tags = ["office"]
# keys = ["ssh-ed25519 AAAA... root@example"]
# reboot = { mode = "window", window = "02:00-05:00" }
# self_update = false

[web]
listen = "127.0.0.1:8080"
database_url = "sqlite://bento.sqlite"
"#;

const EXAMPLE_CONFIGURATION: &str = r#"{ config, pkgs, ... }:
{
  imports = [ ./utils/bento.nix ];
  networking.hostName = "example";
}
"#;

const UTILS_BENTO: &str = r#"# Shared by every host (hosts/<name>/utils links here).
{ ... }:
{
  # services.bento.agent = { enable = true; server = "bento.example.org"; };
}
"#;

/// What the server writes into the bento directory and git should not keep.
const GITIGNORE: &str = r#"# Written by bento on the server: state, locks, the panel's database, keys.
/.bento/
/.bento.lock
/bento.sqlite*
/sftp_host_ed25519_key*
/signing-key.sec
"#;

pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
    if path.join("bento.toml").exists() || path.join("config.sh").exists() {
        bail!(
            "{} is already a bento directory (it has bento.toml or config.sh)",
            path.display()
        );
    }
    fs::create_dir_all(path.join("utils"))?;
    fs::create_dir_all(path.join("hosts/example"))?;
    fs::write(path.join("bento.toml"), BENTO_TOML)?;
    if !path.join(".gitignore").exists() {
        fs::write(path.join(".gitignore"), GITIGNORE)?;
    }
    fs::write(path.join("utils/bento.nix"), UTILS_BENTO)?;
    fs::write(
        path.join("hosts/example/configuration.nix"),
        EXAMPLE_CONFIGURATION,
    )?;
    let link = path.join("hosts/example/utils");
    if !link.exists() {
        symlink("../../utils", &link)?;
    }
    let key = path.join(bento_core::signing::DEFAULT_SECRET_FILE);
    let public =
        match bento_core::signing::ensure_key(&key, &bento_core::signing::default_key_name()) {
            Ok((k, _)) => Some(k.public()),
            // Made at the first deploy instead: init works without nix.
            Err(e) => {
                eprintln!("warning: no signing key yet ({e}); the first `bento deploy` makes it");
                None
            }
        };
    println!(
        "Created a bento directory in {}: edit bento.toml, then add hosts under hosts/.",
        path.display()
    );
    if let Some(p) = public {
        println!("Fleet signing key: {p} (pin it on the agents: trusted_public_keys)");
    }
    Ok(ExitCode::SUCCESS)
}
