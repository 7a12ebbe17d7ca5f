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
    let sftp_health = with_sftp.then(crate::sftp::Health::default);
    config.sftp = sftp_health.clone();
    if let Some(h) = &sftp_health {
        h.publish();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = rt.block_on(async move {
        let sftp = match sftp_health {
            Some(health) => {
                // Bad settings stop here; a server that cannot start or stops
                // later is restarted by the supervisor.
                crate::sftp::listen_address(&bento, args.sftp_listen.as_deref())?;
                let problems = bento.settings.sftp.clone().unwrap_or_default().problems();
                anyhow::ensure!(problems.is_empty(), "{}", problems.join("; "));
                Some(tokio::spawn(supervise_sftp(
                    bento.clone(),
                    args.sftp_listen.clone(),
                    health,
                )))
            }
            None => None,
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

/// Runs the SFTP server beside the panel and starts it again, with a growing
/// pause, whenever it cannot start or stops; `health` tells the panel meanwhile.
async fn supervise_sftp(
    bento: bento_core::bentodir::BentoDir,
    listen: Option<String>,
    health: crate::sftp::Health,
) {
    const FIRST: Duration = Duration::from_secs(1);
    const LONGEST: Duration = Duration::from_secs(60);
    let mut pause = FIRST;
    loop {
        let started = std::time::Instant::now();
        let why = match crate::sftp::prepare(&bento, listen.as_deref()).await {
            Ok(p) => {
                let addr = p
                    .listener
                    .local_addr()
                    .map_or_else(|_| "?".into(), |a| a.to_string());
                health.set_up();
                eprintln!("bento serve: SFTP on {addr} (host key {})", p.fingerprint());
                // Its own task: a panic in the server is seen here too.
                let task = tokio::spawn(crate::sftp::serve(
                    p.listener,
                    p.shared,
                    p.host_key,
                    std::future::pending(),
                ));
                match task.await {
                    Ok(Ok(())) => "it stopped".to_owned(),
                    Ok(Err(e)) => format!("{e:#}"),
                    Err(e) => format!("it crashed: {e}"),
                }
            }
            Err(e) => format!("{e:#}"),
        };
        if started.elapsed() > LONGEST {
            pause = FIRST;
        }
        tracing::error!(
            target: "bento::sftp",
            "SFTP server down: {why}; starting it again in {} s",
            pause.as_secs()
        );
        health.set_down(why);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(LONGEST);
        health.restarted();
    }
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
