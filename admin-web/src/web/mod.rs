//! The web panel behind `bento serve`: axum + askama, server-rendered, usable
//! without JavaScript, live by Server-Sent Events.
//!
//! [`Panel::start`] opens the database (running the migrations), reads the chroot,
//! then follows it ([`ingest`]) and runs the job queue ([`jobs`]). [`router`] is the
//! HTTP side; [`serve`] runs it on a listener the caller bound (tests bind port 0).
//! Every route but `/login`, `/healthz` and `/static/*` needs a session: handlers
//! take [`auth::SessionUser`] (pages), [`auth::ApiUser`] (API, metrics: session or
//! bearer token) or [`auth::CsrfForm`] (every POST) — a handler without one of
//! them does not get the user, and the route table below is checked by tests.

pub mod alerts;
pub mod api;
pub mod audit;
pub mod auth;
pub mod builds;
pub mod db;
pub mod error;
pub mod fleet;
pub mod host;
pub mod ingest;
pub mod job_rollout;
pub mod jobs;
pub mod metrics;
pub mod rollouts;
pub mod security;
pub mod sse;
pub mod static_files;
pub mod views;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use axum::routing::{get, post};
use axum::Router;
use bento_core::bentodir::BentoDir;
use bento_core::config::Settings;
use sqlx::SqlitePool;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

/// How the panel runs.
#[derive(Debug, Clone)]
pub struct PanelConfig {
    /// The bento directory (settings, hosts; the chroot comes from its settings).
    pub bento_dir: PathBuf,
    /// `sqlite://path` or a plain path.
    pub database_url: String,
    /// Cookies get `Secure` (and responses HSTS): the panel is served over TLS.
    pub secure_cookies: bool,
    /// Take the client address from the last `X-Forwarded-For` entry (behind a
    /// reverse proxy on this machine); otherwise the socket's peer address.
    pub behind_proxy: bool,
    /// Full rescan of the chroot (offline flags age, missed events are caught up).
    pub rescan_interval: Duration,
    /// Follow the chroot with inotify; without it only the rescans see changes.
    pub watch: bool,
    /// Run queued jobs (off in benchmarks).
    pub run_jobs: bool,
    /// The embedded SFTP server run beside the panel (`bento serve --sftp`):
    /// `/healthz` and `/metrics` say whether it is up.
    pub sftp: Option<crate::sftp::Health>,
}

impl PanelConfig {
    pub fn new(bento_dir: PathBuf, database_url: String) -> Self {
        PanelConfig {
            bento_dir,
            database_url,
            secure_cookies: false,
            behind_proxy: false,
            rescan_interval: Duration::from_secs(60),
            watch: true,
            run_jobs: true,
            sftp: None,
        }
    }
}

/// What changed, pushed to open pages (`/events`) so they refresh the parts they show.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Change {
    /// Hosts whose status changed (empty with `all`).
    pub hosts: Vec<String>,
    /// Too many to list: every page showing hosts should refresh.
    pub all: bool,
    /// Jobs whose state changed.
    pub jobs: Vec<i64>,
}

/// Shared by every handler and background task; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub db: SqlitePool,
    pub config: PanelConfig,
    /// The bento directory's settings, re-read on every rescan and job.
    pub settings: RwLock<Arc<Settings>>,
    pub fleet: ingest::Fleet,
    /// Which host configurations build (`.bento/builds.json`).
    pub builds: builds::Builds,
    pub jobs: jobs::Jobs,
    pub changes: broadcast::Sender<Change>,
    pub limiter: auth::RateLimiter,
    /// Becomes true when the server stops: long-lived streams end.
    pub shutdown: watch::Receiver<bool>,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// The build state as it is now (re-read when the file changed).
    pub fn builds(&self) -> Arc<bento_core::buildstate::BuildState> {
        self.builds.get(&self.config.bento_dir)
    }

    pub fn settings(&self) -> Arc<Settings> {
        self.settings.read().expect("settings lock").clone()
    }

    /// Re-reads the bento directory's settings; keeps the old ones when they are invalid.
    pub fn reload_settings(&self) -> Option<BentoDir> {
        match BentoDir::open(&self.config.bento_dir) {
            Ok(b) => {
                *self.settings.write().expect("settings lock") = Arc::new(b.settings.clone());
                Some(b)
            }
            Err(e) => {
                tracing::warn!("keeping the previous settings: {e}");
                None
            }
        }
    }

    /// Tells open pages that something changed.
    pub fn notify(&self, change: Change) {
        if !change.hosts.is_empty() || change.all || !change.jobs.is_empty() {
            let _ = self.changes.send(change);
        }
    }
}

/// A running panel: its state and background tasks (chroot follower, job runner).
pub struct Panel {
    state: AppState,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Panel {
    /// Opens (and migrates) the database, marks jobs interrupted by a previous stop as
    /// failed, reads the chroot once, then starts following it and running jobs.
    pub async fn start(config: PanelConfig) -> anyhow::Result<Panel> {
        let bento = BentoDir::open(&config.bento_dir).with_context(|| {
            format!(
                "cannot open the bento directory {}",
                config.bento_dir.display()
            )
        })?;
        let db = db::open(&config.database_url).await?;
        let interrupted = jobs::fail_interrupted(&db).await?;
        if interrupted > 0 {
            tracing::warn!(
                "{interrupted} job(s) were running when the panel stopped: marked failed"
            );
        }
        let (stop, shutdown) = watch::channel(false);
        let (changes, _) = broadcast::channel(256);
        let state = AppState(Arc::new(Inner {
            db,
            settings: RwLock::new(Arc::new(bento.settings.clone())),
            fleet: ingest::Fleet::default(),
            builds: builds::Builds::default(),
            jobs: jobs::Jobs::default(),
            changes,
            limiter: auth::RateLimiter::default(),
            shutdown,
            config,
        }));
        let follower = ingest::watch(&state);
        ingest::full_scan(&state).await?;
        if state.config.run_jobs {
            if let Err(e) = rollouts::resume_interrupted(&state).await {
                tracing::warn!("cannot take up the interrupted rollouts: {e:#}");
            }
        }
        let mut tasks = vec![tokio::spawn(ingest::follow(state.clone(), follower))];
        if state.config.run_jobs {
            tasks.push(tokio::spawn(jobs::runner(state.clone())));
        }
        tasks.push(tokio::spawn(auth::expire_sessions(state.clone())));
        tasks.push(tokio::spawn(alerts::run(state.clone())));
        Ok(Panel { state, stop, tasks })
    }

    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Serves the panel on `listener` until `shutdown` resolves, then stops the
    /// background tasks. A job running at that moment is marked failed at next start.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let stop = self.stop.clone();
        let result = serve(listener, self.state.clone(), async move {
            shutdown.await;
            let _ = stop.send(true);
        })
        .await;
        self.stop();
        result
    }

    /// Stops the background tasks.
    pub fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Every route of the panel.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(fleet::page))
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/hosts/{name}", get(host::page))
        .route("/hosts/{name}/logs/{file}", get(host::log))
        .route("/hosts/{name}/diff", get(host::diff))
        .route("/jobs", get(jobs::list).post(jobs::create))
        .route("/jobs/{id}", get(jobs::page))
        .route("/jobs/{id}/log", get(jobs::log_stream))
        .route("/jobs/{id}/cancel", post(jobs::cancel))
        .route("/rollouts", get(rollouts::list))
        .route("/rollouts/{id}", get(rollouts::page))
        .route("/rollouts/{id}/abort", post(rollouts::abort))
        .route("/rollouts/{id}/resume", post(rollouts::resume))
        .route(
            "/rollouts/{id}/rollback",
            get(rollouts::rollback_page).post(rollouts::rollback),
        )
        .route("/alerts", get(alerts::page))
        .route("/audit", get(audit::page))
        .route("/events", get(sse::events))
        .route("/api/v1/hosts", get(api::hosts))
        .route("/api/v1/hosts/{name}", get(api::host))
        .route("/api/v1/hosts/{name}/reports", get(api::reports))
        .route("/api/v1/jobs", get(api::jobs).post(api::create_job))
        .route("/api/v1/jobs/{id}", get(api::job))
        .route("/metrics", get(metrics::metrics))
        .route("/healthz", get(metrics::healthz))
        .route("/static/{file}", get(static_files::serve))
        .fallback(error::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            error::with_nav,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            security::headers,
        ))
        .with_state(state)
}

/// Serves [`router`] on `listener` until `shutdown` resolves. Long-lived streams
/// (SSE) end when the panel's shutdown signal fires, so this returns promptly.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
