//! The panel's SQLite database: opened with the embedded migrations run.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

/// The migrations of `admin-web/migrations/`, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The file of a `sqlite://path` URL (or of a plain path).
pub fn sqlite_path(url: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = url.strip_prefix("sqlite://") {
        let p = p.split('?').next().unwrap_or(p);
        return Ok(PathBuf::from(p));
    }
    if let Some(p) = url.strip_prefix("sqlite:") {
        return Ok(PathBuf::from(p.split('?').next().unwrap_or(p)));
    }
    if url.contains("://") {
        bail!("unsupported database URL {url:?}: the panel supports SQLite (sqlite://PATH)");
    }
    Ok(PathBuf::from(url))
}

/// Opens (creating if needed) the database and runs the migrations. The file holds
/// password hashes and sessions: it is made readable by its owner only.
pub async fn open(url: &str) -> anyhow::Result<SqlitePool> {
    let path = sqlite_path(url)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let opts = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(opts)
        .await
        .with_context(|| format!("cannot open the database {}", path.display()))?;
    restrict(&path);
    MIGRATOR
        .run(&pool)
        .await
        .with_context(|| format!("cannot migrate the database {}", path.display()))?;
    Ok(pool)
}

fn restrict(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
    }
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    to_ms(SystemTime::now())
}

pub fn to_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

pub fn from_ms(ms: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}
