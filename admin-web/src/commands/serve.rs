//! `bento serve`: the web panel.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::web::{Panel, PanelConfig};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (default: `[web] listen` of bento.toml, 127.0.0.1:8080).
    /// Port 0 picks a free port; the address is printed.
    #[arg(long)]
    pub listen: Option<String>,
    /// Database URL or path (default: `[web] database_url`, a SQLite file beside the settings).
    #[arg(long)]
    pub database: Option<String>,
    /// Behind a reverse proxy on this machine: take client addresses from X-Forwarded-For.
    #[arg(long)]
    pub behind_proxy: bool,
    /// Seconds between full rescans of the chroot (new reports are seen at once anyway).
    #[arg(long, default_value_t = 60)]
    pub rescan_secs: u64,
    /// Also run the embedded SFTP server (as `[sftp] enable = true`).
    #[arg(long)]
    pub sftp: bool,
    /// Address of the SFTP server (default: `[sftp] listen`, 0.0.0.0:2222).
    #[arg(long)]
    pub sftp_listen: Option<String>,
}

pub fn run(dir: Option<PathBuf>, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let bento = super::open(dir)?;
    let listen = args
        .listen
        .unwrap_or_else(|| bento.settings.web.listen.clone());
    let addr: SocketAddr = listen.parse().with_context(|| {
        format!("{listen:?} is not an address to listen on (like 127.0.0.1:8080)")
    })?;
    let mut config = PanelConfig::new(
        bento.root.clone(),
        args.database.unwrap_or_else(|| bento.database_url()),
    );
    config.secure_cookies = bento.settings.web.secure_cookies;
    config.behind_proxy = args.behind_proxy;
    config.rescan_interval = Duration::from_secs(args.rescan_secs.max(1));
    let with_sftp = args.sftp || bento.settings.sftp.as_ref().is_some_and(|s| s.enable);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = rt.block_on(async move {
        let sftp = if with_sftp {
            let p = crate::sftp::prepare(&bento, args.sftp_listen.as_deref()).await?;
            eprintln!(
                "bento serve: SFTP on {} (host key {})",
                p.listener.local_addr()?,
                p.fingerprint()
            );
            Some(tokio::spawn(crate::sftp::serve(
                p.listener,
                p.shared,
                p.host_key,
                shutdown_signal(),
            )))
        } else {
            None
        };
        let panel = Panel::start(config).await?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        if !local.ip().is_loopback() {
            eprintln!("bento serve: warning: listening on {local}, not only on this machine; serve it over TLS (a reverse proxy) and set [web] secure_cookies = true");
        }
        eprintln!("bento serve: listening on http://{local}");
        panel.serve(listener, shutdown_signal()).await?;
        if let Some(s) = sftp {
            s.abort();
        }
        eprintln!("bento serve: stopped");
        anyhow::Ok(())
    });
    // A job still running in its thread is marked failed at the next start.
    rt.shutdown_timeout(Duration::from_secs(1));
    result.map(|()| ExitCode::SUCCESS)
}

pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The database of `--database`, else the bento directory's (for `user` and `token`).
pub fn database_url(dir: Option<PathBuf>, database: Option<String>) -> anyhow::Result<String> {
    match database {
        Some(d) => Ok(d),
        None => Ok(super::open(dir)?.database_url()),
    }
}

/// A runtime for the short database commands.
pub fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(f)
}

/// The invoking Unix user, for the audit log of command-line changes.
pub fn cli_actor() -> String {
    use std::os::unix::fs::MetadataExt;
    let name = ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .or_else(|| {
            std::fs::metadata("/proc/self")
                .ok()
                .map(|m| format!("uid {}", m.uid()))
        })
        .unwrap_or_else(|| "unknown".into());
    format!("cli:{name}")
}
