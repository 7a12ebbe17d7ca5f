//! `bento sftp`: the embedded SFTP server alone (`bento serve` runs it beside the
//! panel when `[sftp] enable = true` or with `--sftp`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::sftp;

#[derive(Debug, clap::Args)]
pub struct SftpArgs {
    /// Address to listen on (default: `[sftp] listen` of bento.toml, 0.0.0.0:2222).
    /// Port 0 picks a free port; the address is printed.
    #[arg(long)]
    pub listen: Option<String>,
}

pub fn run(dir: Option<PathBuf>, args: SftpArgs) -> anyhow::Result<ExitCode> {
    let bento = super::open(dir)?;
    if bento.settings.sftp.is_none() {
        eprintln!("bento sftp: note: bento.toml has no [sftp] section, so `bento deploy` still prepares chroots for OpenSSH (root-owned); add [sftp] to serve them from here");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let p = sftp::prepare(&bento, args.listen.as_deref()).await?;
        let local = p.listener.local_addr()?;
        eprintln!("bento sftp: listening on {local}");
        eprintln!("bento sftp: host key {}", p.fingerprint());
        sftp::serve(
            p.listener,
            p.shared,
            p.host_key,
            super::serve::shutdown_signal(),
        )
        .await?;
        eprintln!("bento sftp: stopped");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
