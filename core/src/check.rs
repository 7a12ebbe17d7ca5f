//! What `bento check-config` checks beyond parsing the settings: that every
//! `[hosts.<name>]` table names a host of the fleet, and that with `[sftp]` every
//! host has a key to log in with. The NixOS module runs the check at build time
//! with an empty `hosts/`, so the checks that need host names only run when the
//! bento directory has host directories.

use crate::bentodir::BentoDir;
use crate::deploy::{did_you_mean, host_names};

/// The findings, worst first: errors fail the check, warnings do not.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Findings {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    /// Hosts found in `hosts/`.
    pub hosts: usize,
}

/// `bento.toml:LINE: ` of the `[hosts.<name>]` table, when it can be found.
fn table_line(bento: &BentoDir, name: &str) -> String {
    if bento.legacy {
        return String::new();
    }
    let file = crate::config::CONFIG_FILE;
    let Ok(text) = std::fs::read_to_string(bento.root.join(file)) else {
        return String::new();
    };
    let heads = [format!("[hosts.{name}]"), format!("[hosts.\"{name}\"]")];
    let line = text.lines().position(|l| {
        let l: String = l.chars().filter(|c| !c.is_whitespace()).collect();
        heads.iter().any(|h| l.starts_with(h.as_str()))
    });
    match line {
        Some(i) => format!("{file}:{}: ", i + 1),
        None => format!("{file}: "),
    }
}

pub fn check(bento: &BentoDir) -> std::io::Result<Findings> {
    let s = &bento.settings;
    let mut f = Findings::default();
    if s.sftp.is_some() {
        for (name, h) in &s.hosts {
            if h.keys.is_empty() {
                f.errors.push(format!(
                    "{}[hosts.{name}] has no keys: with [sftp], a host logs in only with one of \
                     its SSH keys; add keys = [\"ssh-ed25519 AAAA…\"] (the host's \
                     /etc/ssh/ssh_host_ed25519_key.pub, or the agent's identity_file .pub)",
                    table_line(bento, name.as_str())
                ));
            }
        }
    }
    let listed = host_names(bento)?;
    for (dir, error) in &listed.unlisted {
        f.warnings.push(format!(
            "hosts/{dir}: cannot list its hosts, so their settings are not checked: {error}"
        ));
    }
    f.hosts = listed.hosts.len();
    if listed.hosts.is_empty() && listed.unlisted.is_empty() {
        return Ok(f);
    }
    if listed.unlisted.is_empty() {
        for name in s.hosts.keys() {
            if !listed.hosts.iter().any(|(h, _)| h == name.as_str()) {
                let near =
                    did_you_mean(name.as_str(), listed.hosts.iter().map(|(h, _)| h.as_str()));
                f.errors.push(match near {
                    Some(n) => format!(
                        "{}[hosts.{name}]: there is no host {name} in hosts/ \
                         (did you mean {n}?); rename the table or remove it",
                        table_line(bento, name.as_str())
                    ),
                    None => format!(
                        "{}[hosts.{name}]: there is no host {name} in hosts/; \
                         add its directory under hosts/ or remove the table",
                        table_line(bento, name.as_str())
                    ),
                });
            }
        }
    }
    if s.sftp.is_some() {
        for (host, dir) in &listed.hosts {
            let has_table = s.hosts.keys().any(|n| n.as_str() == host);
            if !has_table {
                f.errors.push(format!(
                    "host {host} (hosts/{dir}) has no keys: with [sftp] it cannot log in; \
                     add [hosts.{host}] keys = [\"ssh-ed25519 AAAA…\"] to bento.toml"
                ));
            }
        }
    }
    Ok(f)
}
