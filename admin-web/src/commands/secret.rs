//! `bento secret set|rm|list|rekey`: secrets encrypted with age to each host's
//! SSH keys, stored under `secrets/<host>/` and published with the host's release.
//! A value is read from stdin or `--file` into memory only.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use bento_core::bentodir::BentoDir;
use bento_core::secrets::{Identities, Mode, SetOptions, Store, MAX_SECRET_BYTES};
use bento_core::HostName;

#[derive(Debug, clap::Subcommand)]
pub enum SecretAction {
    /// Encrypt a value (stdin, or --file) to HOST's keys and store it as NAME.
    Set {
        host: HostName,
        name: String,
        /// Where the agent installs it (default /run/bento/secrets/NAME).
        #[arg(long)]
        path: Option<String>,
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        group: Option<String>,
        /// Octal file mode (default 0400).
        #[arg(long, value_parser = Mode::parse)]
        mode: Option<Mode>,
        /// Unit restarted on the host after the secret changed (repeatable).
        #[arg(long = "restart")]
        restart: Vec<String>,
        /// Read the value from this file instead of stdin.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Remove a secret: the next deploy removes it from the host.
    Rm { host: HostName, name: String },
    /// List secrets (names, metadata, when set; never values).
    List { host: Option<HostName> },
    /// Encrypt the host's (or every host's) secrets again to the current keys.
    Rekey {
        host: Option<HostName>,
        /// An admin identity that can decrypt them (age identity file or SSH
        /// private key matching a `[secrets] recipients` entry).
        #[arg(long)]
        identity: Option<PathBuf>,
    },
}

/// Every key a host's secrets are encrypted to: its SSH keys, then the admins'.
/// In OpenSSH mode a host with no `keys` in bento.toml has the keys sshd
/// authorizes for its user (`[secrets] authorized_keys_file`).
fn recipients(bento: &BentoDir, h: &HostName) -> anyhow::Result<Vec<String>> {
    let mut keys = bento
        .settings
        .hosts
        .get(h)
        .map(|s| s.keys.clone())
        .unwrap_or_default();
    let hint = format!(
        "add `[hosts.{h}] keys = [\"ssh-ed25519 AAAA…\"]` (the key its agent logs in with, or its /etc/ssh/ssh_host_ed25519_key.pub)"
    );
    if keys.is_empty() && bento.settings.sftp.is_none() {
        let user = bento.settings.host_user(h);
        let path = bento_core::secrets::authorized_keys_path(
            &bento.settings.secrets.authorized_keys_file,
            &user,
        )
        .map_err(|e| anyhow::anyhow!("host {h} has no SSH public key in bento.toml, and its user's authorized keys cannot be found: {e}; {hint}"))?;
        match std::fs::read_to_string(&path) {
            Ok(text) => keys = bento_core::secrets::authorized_key_lines(&text),
            Err(e) => bail!(
                "host {h} has no SSH public key in bento.toml, and the keys sshd authorizes for its user {user} cannot be read ({}: {e}); {hint}, or set [secrets] authorized_keys_file",
                path.display()
            ),
        }
        if keys.is_empty() {
            bail!(
                "host {h} has no SSH public key in bento.toml, and {} (the keys sshd authorizes for its user {user}) holds none; {hint}",
                path.display()
            );
        }
    }
    if keys.is_empty() {
        bail!("host {h} has no SSH public key in bento.toml: {hint}");
    }
    Ok(keys
        .into_iter()
        .chain(bento.settings.secrets.recipients.iter().cloned())
        .collect())
}

pub fn run(bento: &BentoDir, action: SecretAction) -> anyhow::Result<ExitCode> {
    let store = Store::new(&bento.root);
    match action {
        SecretAction::Set {
            host,
            name,
            path,
            owner,
            group,
            mode,
            restart,
            file,
        } => {
            let r = recipients(bento, &host)?;
            let mut value = Vec::new();
            let limit = MAX_SECRET_BYTES as u64 + 1;
            match &file {
                Some(f) => std::fs::File::open(f)
                    .and_then(|fh| fh.take(limit).read_to_end(&mut value))
                    .with_context(|| format!("cannot read {}", f.display()))?,
                None => std::io::stdin()
                    .take(limit)
                    .read_to_end(&mut value)
                    .context("cannot read the value from stdin")?,
            };
            let opts = SetOptions {
                path,
                owner,
                group,
                mode,
                restart,
            };
            let (stored, skipped) = store.set(&host, &name, &value, &opts, &r)?;
            value.fill(0);
            for s in skipped {
                eprintln!("bento: warning: {s}");
            }
            println!(
                "secret {name} of {host} set ({} recipients, sha256 {}); run `bento deploy` to publish it",
                stored.recipients.len(),
                &stored.meta.sha256[..16]
            );
            Ok(ExitCode::SUCCESS)
        }
        SecretAction::Rm { host, name } => {
            if store.remove(&host, &name)? {
                println!("secret {name} of {host} removed; the next `bento deploy` removes it from the host");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("bento: host {host} has no secret {name}");
                Ok(ExitCode::from(1))
            }
        }
        SecretAction::List { host } => {
            let hosts = match host {
                Some(h) => vec![h],
                None => store.hosts(),
            };
            let mut rows = Vec::new();
            for h in hosts {
                for (name, s) in store.list(&h)? {
                    rows.push(vec![
                        h.to_string(),
                        name,
                        s.meta.path.unwrap_or_else(|| "(secrets dir)".into()),
                        format!("{}:{}", s.meta.owner, s.meta.group),
                        s.meta.mode.to_string(),
                        s.meta.restart.join(","),
                        s.set
                            .format(&time::format_description::well_known::Rfc3339)
                            .unwrap_or_default(),
                    ]);
                }
            }
            if rows.is_empty() {
                println!("no secrets");
                return Ok(ExitCode::SUCCESS);
            }
            let head = ["HOST", "NAME", "PATH", "OWNER", "MODE", "RESTART", "SET"];
            let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
            for r in &rows {
                for (i, c) in r.iter().enumerate() {
                    widths[i] = widths[i].max(c.chars().count());
                }
            }
            let line = |cells: Vec<String>| {
                cells
                    .iter()
                    .enumerate()
                    .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_owned()
            };
            println!("{}", line(head.iter().map(|s| s.to_string()).collect()));
            for r in rows {
                println!("{}", line(r));
            }
            Ok(ExitCode::SUCCESS)
        }
        SecretAction::Rekey { host, identity } => {
            let Some(identity) = identity else {
                bail!(
                    "rekeying needs an identity that can decrypt the secrets: pass --identity FILE (an age identity or SSH private key whose public half is in [secrets] recipients of bento.toml; secrets set before that recipient was added cannot be rekeyed, set them again)"
                );
            };
            let ids = Identities::load(&identity).map_err(anyhow::Error::msg)?;
            let hosts = match host {
                Some(h) => vec![h],
                None => store.hosts(),
            };
            for h in hosts {
                let r = recipients(bento, &h)?;
                let names = store.rekey(&h, &ids, &r)?;
                println!("{h}: {} secret(s) rekeyed", names.len());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
