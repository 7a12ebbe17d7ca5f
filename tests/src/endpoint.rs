//! What the tests need of an SFTP server, whichever it is: OpenSSH's sshd with
//! chroot users ([`crate::sshd::SshServer`]) or bento's own
//! ([`crate::embedded::EmbeddedSftp`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result};

pub trait Endpoint {
    /// The loopback port it listens on.
    fn port(&self) -> u16;
    /// bento's `chroot_dir`.
    fn chroot_dir(&self) -> PathBuf;
    /// The host's private key.
    fn key_path(&self, host: &str) -> PathBuf;
    /// The known_hosts file clients use.
    fn known_hosts_path(&self) -> PathBuf;
    /// What `bento.toml` needs for this server (tables, so it goes last).
    fn bento_toml(&self) -> String {
        String::new()
    }

    /// `127.0.0.1`.
    fn address(&self) -> &'static str {
        "127.0.0.1"
    }

    /// `<chroot>/<host>`.
    fn host_chroot(&self, host: &str) -> PathBuf {
        self.chroot_dir().join(host)
    }

    /// `ssh`/`sftp` options for connecting as `host` with its own key: port, user,
    /// key, known_hosts with `accept-new`, batch mode. Use as `ssh <opts> 127.0.0.1`.
    fn client_options(&self, host: &str) -> Vec<String> {
        self.client_options_with_key(host, &self.key_path(host))
    }

    /// [`Endpoint::client_options`] with another private key (e.g. another host's).
    fn client_options_with_key(&self, user: &str, key: &Path) -> Vec<String> {
        [
            format!("Port={}", self.port()),
            format!("User={user}"),
            format!("IdentityFile={}", key.display()),
            "IdentitiesOnly=yes".to_owned(),
            format!("UserKnownHostsFile={}", self.known_hosts_path().display()),
            "StrictHostKeyChecking=accept-new".to_owned(),
            "BatchMode=yes".to_owned(),
            "ConnectTimeout=60".to_owned(),
        ]
        .into_iter()
        .flat_map(|opt| ["-o".to_owned(), opt])
        .collect()
    }

    /// Runs the real `sftp -b -` as `user` with the private key `key`, feeding it
    /// `batch`. Returns the output whatever the exit status (tests assert on failures).
    fn sftp_batch(&self, user: &str, key: &Path, batch: &str) -> Result<Output> {
        let mut cmd = Command::new("sftp");
        cmd.arg("-b")
            .arg("-")
            .args(self.client_options_with_key(user, key))
            .arg(self.address());
        run_batch(cmd, batch)
    }

    /// [`Endpoint::sftp_batch`]: whether it succeeded, and everything it printed.
    fn sftp_outcome(&self, user: &str, key: &Path, batch: &str) -> Result<(bool, String)> {
        let out = self.sftp_batch(user, key, batch)?;
        Ok((
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    }
}

/// Runs `cmd` (an `sftp -b -`) with `batch` on its stdin. Returns the output
/// whatever the exit status (tests assert on failures).
pub fn run_batch(mut cmd: Command, batch: &str) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting sftp")?;
    let written = child
        .stdin
        .take()
        .expect("piped")
        .write_all(batch.as_bytes());
    // sftp may quit before reading its batch (refused login): its status tells.
    match written {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(e).context("writing the sftp batch")
        }
        _ => {}
    }
    child.wait_with_output().context("running sftp")
}

/// `sftp` batches that write outside `logs/`, which every server must refuse to a
/// host: `scratch` is a local file to upload, `revision` the host's current release.
/// (Inside its `logs/`, sshd lets the host's user do what a directory's owner may;
/// bento's server allows less: see its own test.)
pub fn writes_outside_logs(scratch: &Path, revision: &str) -> Vec<String> {
    let put = |dst: &str| format!("put {} {dst}\n", scratch.display());
    vec![
        put("intruder.txt"),
        put("last_change_date"),
        put("config/flake.nix"),
        put(".releases/evil"),
        put(&format!(".releases/{revision}/x")),
        "rm config/flake.nix\n".to_owned(),
        "rm config\n".to_owned(),
        "rm last_change_date\n".to_owned(),
        "rename last_change_date logs/stolen\n".to_owned(),
        "rename logs config2\n".to_owned(),
        "mkdir .releases/x\n".to_owned(),
        "rmdir logs\n".to_owned(),
    ]
}
