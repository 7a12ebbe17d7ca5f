//! A host's page (status, report history, jobs, actions), its log viewer and the
//! closure diff between what it runs and what it should run.
//!
//! Everything shown comes from the host, which may be compromised: askama escapes
//! it, logs are decompressed up to [`LOG_CAP`] and opened only as regular files
//! (never through a symlink), and a report that cannot be read is shown as such.

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse, Response};
use bento_core::buildstate::HostBuild;
use bento_core::chroot::Chroot;
use bento_core::nix::Nix;
use bento_core::report::{short_hash, ReportName};
use bento_core::status::HostStatus;
use bento_core::HostName;
use serde::Deserialize;

use super::auth::SessionUser;
use super::builds::Failure;
use super::db::now_ms;
use super::error::{WebError, WebResult};
use super::ingest::open_host_file;
use super::jobs::{Job, JobView};
use super::views::{self, Nav};
use super::AppState;

/// Decompressed bytes of a log read at most: a gzip bomb costs no more memory or
/// time than this (past it, the raw download has the rest).
pub const LOG_CAP: usize = 16 * 1024 * 1024;
/// Lines of a log on one page.
pub const LOG_PAGE_LINES: usize = 5000;
/// Bytes of log text on one page at most (fewer lines when they are long).
pub const LOG_PAGE_BYTES: usize = 1024 * 1024;
/// A longer line is shown cut to this.
const LOG_LINE_BYTES: usize = 16 * 1024;
/// Closure diff output kept at most.
const DIFF_CAP: usize = 256 * 1024;
const REPORTS_PER_PAGE: i64 = 50;

fn host_name(name: &str) -> WebResult<HostName> {
    HostName::new(name).map_err(|e| WebError::BadRequest(format!("{e}.")))
}

fn cached_status(state: &AppState, h: &HostName) -> WebResult<std::sync::Arc<HostStatus>> {
    state.fleet.get(h.as_str()).ok_or_else(|| {
        WebError::NotFound(format!(
            "There is no host {h} in the chroot. A host appears here once it has been deployed."
        ))
    })
}

/// A stored report, as the history shows it.
#[derive(sqlx::FromRow)]
struct ReportRow {
    file: String,
    client_time: String,
    status: String,
    system: String,
    received: i64,
    has_sidecar: bool,
    sidecar_error: Option<String>,
    revision: Option<String>,
    started: Option<i64>,
    finished: Option<i64>,
    error: Option<String>,
    agent_version: Option<String>,
    reboot_required: bool,
}

struct ReportView {
    file: String,
    url: String,
    time: String,
    received_ago: String,
    received_title: String,
    status: String,
    class: &'static str,
    revision: String,
    system: String,
    duration: String,
    error: String,
    sidecar: String,
    sidecar_bad: bool,
    deciding: bool,
}

impl ReportView {
    fn new(host: &str, r: &ReportRow, deciding: Option<&str>, now: SystemTime) -> Self {
        let received = Some(super::db::from_ms(r.received));
        ReportView {
            url: format!("/hosts/{host}/logs/{}", views::segment(&r.file)),
            time: r.client_time.clone(),
            received_ago: views::ago(received, now),
            received_title: views::full_time(received),
            class: views::status_class(&r.status),
            status: r.status.clone(),
            revision: r
                .revision
                .as_deref()
                .map(|s| views::clip(s, 12))
                .unwrap_or_default(),
            system: short_hash(&r.system).to_owned(),
            duration: match (r.started, r.finished) {
                (Some(s), Some(f)) if f >= s => views::duration_ms(f - s),
                _ => String::new(),
            },
            error: r
                .error
                .as_deref()
                .map(|e| views::clip(e, 200))
                .unwrap_or_default(),
            sidecar: match (&r.sidecar_error, r.has_sidecar) {
                (Some(e), _) => views::clip(e, 200),
                (None, false) => "legacy client (no sidecar)".into(),
                (None, true) => String::new(),
            },
            sidecar_bad: r.sidecar_error.is_some(),
            deciding: deciding == Some(r.file.as_str()),
            file: r.file.clone(),
        }
    }
}

struct Fact {
    label: &'static str,
    value: String,
    title: String,
    mono: bool,
}

fn fact(label: &'static str, value: impl Into<String>) -> Fact {
    Fact {
        label,
        value: value.into(),
        title: String::new(),
        mono: false,
    }
}

#[derive(Template)]
#[template(path = "host.html")]
struct HostPage {
    nav: Nav,
    host: String,
    emoji: &'static str,
    label: &'static str,
    class: &'static str,
    reboot: bool,
    offline: bool,
    matches: &'static str,
    facts: Vec<Fact>,
    tags: Vec<String>,
    warnings: Vec<String>,
    reports: Vec<ReportView>,
    total_reports: i64,
    older: String,
    newer: String,
    jobs: Vec<JobView>,
    can_diff: bool,
    diff_note: String,
    /// Set while the host's configuration does not build.
    build_failure: Option<Failure>,
    /// The host's secrets (names and metadata from the bento directory; never values).
    secrets: Vec<SecretView>,
}

/// One row of the host's secrets.
struct SecretView {
    name: String,
    path: String,
    owner: String,
    mode: String,
    restart: String,
    set: String,
    set_title: String,
}

fn secret_views(
    bento_dir: &std::path::Path,
    h: &bento_core::HostName,
    now: SystemTime,
) -> Vec<SecretView> {
    let list = match bento_core::secrets::Store::new(bento_dir).list(h) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("cannot list the secrets of {h}: {e}");
            return Vec::new();
        }
    };
    list.into_iter()
        .map(|(name, s)| {
            let set = Some(s.set);
            SecretView {
                path: s
                    .meta
                    .path
                    .clone()
                    .unwrap_or_else(|| format!("<secrets_dir>/{name}")),
                name,
                owner: format!("{}:{}", s.meta.owner, s.meta.group),
                mode: s.meta.mode.to_string(),
                restart: s.meta.restart.join(", "),
                set: views::ago(set, now),
                set_title: views::full_time(set),
            }
        })
        .collect()
}

#[derive(Deserialize, Default)]
pub struct HostQuery {
    #[serde(default)]
    page: String,
}

pub async fn page(
    State(state): State<AppState>,
    user: SessionUser,
    Path(name): Path<String>,
    Query(q): Query<HostQuery>,
) -> WebResult<Html<String>> {
    let h = host_name(&name)?;
    let st = cached_status(&state, &h)?;
    let now = SystemTime::now();
    let page = q.page.parse::<i64>().unwrap_or(1).max(1);
    let rows: Vec<ReportRow> = sqlx::query_as(
        "SELECT file, client_time, status, system, received, has_sidecar, sidecar_error, revision, \
                started, finished, error, agent_version, reboot_required \
         FROM reports WHERE host = ? ORDER BY client_time DESC, ctime DESC, id DESC LIMIT ? OFFSET ?",
    )
    .bind(h.as_str())
    .bind(REPORTS_PER_PAGE)
    .bind((page - 1) * REPORTS_PER_PAGE)
    .fetch_all(&state.db)
    .await?;
    let total_reports: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM reports WHERE host = ?")
        .bind(h.as_str())
        .fetch_one(&state.db)
        .await?;
    let newest: Option<ReportRow> = if page == 1 {
        None
    } else {
        sqlx::query_as(
            "SELECT file, client_time, status, system, received, has_sidecar, sidecar_error, revision, \
                    started, finished, error, agent_version, reboot_required \
             FROM reports WHERE host = ? ORDER BY client_time DESC, ctime DESC, id DESC LIMIT 1",
        )
        .bind(h.as_str())
        .fetch_optional(&state.db)
        .await?
    };
    let latest = if page == 1 {
        rows.first()
    } else {
        newest.as_ref()
    };
    let jobs = sqlx::query_as::<_, Job>(
        "SELECT * FROM jobs WHERE host = ? OR id IN (SELECT job_id FROM job_hosts WHERE host = ?) \
         ORDER BY id DESC LIMIT 10",
    )
    .bind(h.as_str())
    .bind(h.as_str())
    .fetch_all(&state.db)
    .await?;

    let deciding = st.last_report.as_ref().map(|r| r.file.as_str());
    let builds = state.builds();
    let build = builds.host(h.as_str());
    // A non-flake host evaluates its configuration itself (with its own nixpkgs), so
    // no publication pins its system; the server still builds it, as a check.
    let non_flake = st.expected_system.is_none()
        && state
            .config
            .bento_dir
            .join("hosts")
            .join(h.as_str())
            .join("configuration.nix")
            .is_file();
    let server_built: Option<ServerBuilt> = if non_flake {
        sqlx::query_as(
            "SELECT jh.job_id AS job, jh.system AS system, COALESCE(j.finished_at, 0) AS at, \
                    j.kind AS kind FROM job_hosts jh \
             JOIN jobs j ON j.id = jh.job_id \
             WHERE jh.host = ? AND jh.ok AND jh.system IS NOT NULL ORDER BY jh.job_id DESC LIMIT 1",
        )
        .bind(h.as_str())
        .fetch_optional(&state.db)
        .await?
    } else {
        None
    };
    let expected = match (&st.expected_system, non_flake) {
        (Some(e), _) => Fact {
            title: e.clone(),
            mono: true,
            ..fact("Expected system", e.clone())
        },
        (None, true) => fact(
            "Expected system",
            "built on the host (non-flake): the host builds this configuration with its own \
             nixpkgs, so no system is pinned for it",
        ),
        (None, false) => fact(
            "Expected system",
            "not recorded (no publication named one in states.txt)",
        ),
    };
    let mut facts = vec![
        expected,
        Fact {
            mono: true,
            ..fact(
                "Running system",
                st.running_system
                    .clone()
                    .unwrap_or_else(|| "not reported yet".into()),
            )
        },
        Fact {
            mono: true,
            ..fact(
                "Published revision",
                st.revision.clone().unwrap_or_else(|| "—".into()),
            )
        },
        Fact {
            mono: true,
            ..fact(
                "Running revision",
                st.running_revision.clone().unwrap_or_else(|| "—".into()),
            )
        },
        Fact {
            title: views::full_time(st.published_at),
            ..fact("New config", views::ago(st.published_at, now))
        },
        Fact {
            title: views::full_time(st.last_seen),
            ..fact("Last seen", views::ago(st.last_seen, now))
        },
        fact(
            "Reboot",
            if st.reboot_pending {
                "pending: the running kernel is not the built one"
            } else {
                "not needed"
            },
        ),
        fact(
            "Reports",
            format!(
                "{} in total, {} since the last publication",
                st.total_reports, st.reports_since_publication
            ),
        ),
    ];
    if non_flake || build.is_some() {
        facts.push(server_build_fact(build, server_built.as_ref(), now));
    }
    if let Some(v) = latest.and_then(|r| r.agent_version.clone()) {
        facts.push(fact("Agent version", v));
    }
    if let Some(r) = &st.last_report {
        if let Some(o) = &r.obtained {
            let exact = match r.exact {
                Some(true) => "; runs exactly the system the server built",
                Some(false) => "; runs another system than the server built",
                None => "",
            };
            facts.push(fact("System obtained", format!("{}{exact}", o.summary())));
        }
    }
    if let Some(r) = latest.filter(|r| r.reboot_required && !st.reboot_pending) {
        facts.push(fact(
            "Last report",
            format!("{}: asked for a reboot", r.client_time),
        ));
    }
    let (can_diff, diff_note) = match (&st.running_system, &st.expected_system) {
        (Some(r), Some(e)) if r != e => (true, String::new()),
        (Some(_), Some(_)) => (
            false,
            "The host runs the expected system: nothing to compare.".into(),
        ),
        (None, _) => (false, "The host has not reported what it runs yet.".into()),
        (_, None) if non_flake => (
            false,
            "A non-flake host builds its own system: there is no pinned system to compare with."
                .into(),
        ),
        (_, None) => (
            false,
            "No expected system is recorded for this host: nothing to compare with.".into(),
        ),
    };
    let tags = state
        .fleet
        .read()
        .tags
        .get(h.as_str())
        .cloned()
        .unwrap_or_default();
    let last_page = (total_reports + REPORTS_PER_PAGE - 1) / REPORTS_PER_PAGE;
    let secrets = secret_views(&state.config.bento_dir, &h, now);
    let p = HostPage {
        secrets,
        nav: Nav::new(&user, "fleet"),
        host: h.to_string(),
        emoji: st.state.emoji(),
        label: st.state.label(),
        class: views::state_class(st.state),
        reboot: st.reboot_pending,
        offline: st.offline,
        matches: match st.matches_expected() {
            Some(true) => "running the expected system",
            Some(false) => "not running the expected system",
            None => "",
        },
        facts,
        tags,
        warnings: st
            .warnings
            .iter()
            .take(50)
            .map(|w| views::clip(w, 300))
            .collect(),
        reports: rows
            .iter()
            .map(|r| ReportView::new(h.as_str(), r, deciding, now))
            .collect(),
        total_reports,
        older: if page < last_page {
            format!("/hosts/{h}?page={}", page + 1)
        } else {
            String::new()
        },
        newer: if page > 1 {
            format!("/hosts/{h}?page={}", page - 1)
        } else {
            String::new()
        },
        jobs: jobs.iter().map(JobView::new).collect(),
        can_diff,
        diff_note,
        build_failure: build.and_then(|b| Failure::of(b, now)),
    };
    Ok(Html(p.render().map_err(WebError::internal)?))
}

/// The last system a job of the panel built for a host.
#[derive(sqlx::FromRow)]
struct ServerBuilt {
    job: i64,
    system: String,
    at: i64,
    kind: String,
}

/// What the server knows of its own build of the host's configuration.
fn server_build_fact(
    build: Option<&HostBuild>,
    last_system: Option<&ServerBuilt>,
    now: SystemTime,
) -> Fact {
    let when = |t| views::ago(Some(t), now);
    let value = match (build, last_system) {
        (Some(b), _) if b.failing() => format!(
            "fails since {} (see above)",
            views::full_time(b.failing_since)
        ),
        (_, Some(l)) if l.at > 0 => format!(
            "{} ({} by job #{}, {})",
            l.system,
            if l.kind == "dry-build" {
                "evaluated"
            } else {
                "built"
            },
            l.job,
            when(super::db::from_ms(l.at))
        ),
        (Some(b), _) => match b.last_ok {
            Some(t) => format!("the configuration built {}", when(t)),
            None => "not built yet".into(),
        },
        (None, _) => "not built on this server yet".into(),
    };
    Fact {
        mono: last_system.is_some() && !build.is_some_and(HostBuild::failing),
        ..fact("Server build", value)
    }
}

/// One page of a log: lines `first..first + lines.len()` (1-based), read from a
/// decompressed stream of at most `cap` bytes. What could be read before an error
/// (a corrupt or truncated upload) is kept, with the error.
pub struct LogText {
    pub lines: Vec<String>,
    /// Number of the first line of `lines`.
    pub first: usize,
    /// Lines in the log (in its first `cap` bytes).
    pub total: usize,
    /// The log is longer than `cap` once decompressed.
    pub truncated: bool,
    /// Some lines were longer than [`LOG_LINE_BYTES`] and are cut.
    pub cut_lines: bool,
    pub error: Option<String>,
    pub compressed: u64,
}

/// The page of lines from `from` (1-based), or the last page when `None`.
pub fn read_log(
    path: &std::path::Path,
    cap: usize,
    from: Option<usize>,
) -> std::io::Result<LogText> {
    let f = open_host_file(path)?;
    let compressed = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut dec = flate2::read::MultiGzDecoder::new(std::io::BufReader::new(f));
    let mut page = PageLines::new(from);
    let mut line: Vec<u8> = Vec::new();
    let mut line_len = 0usize;
    let mut read = 0usize;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut error = None;
    let mut truncated = false;
    loop {
        if read >= cap {
            truncated = matches!(dec.read(&mut chunk[..1]), Ok(n) if n > 0);
            break;
        }
        let want = chunk.len().min(cap - read);
        let n = match dec.read(&mut chunk[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                error = Some(format!(
                    "the log is not a valid gzip file past this point ({e})"
                ));
                break;
            }
        };
        read += n;
        let mut rest = &chunk[..n];
        while !rest.is_empty() {
            let (part, done) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], Some(i + 1)),
                None => (rest, None),
            };
            // Only a line of the page is kept; the others are only counted.
            if page.wants_next() {
                let room = LOG_LINE_BYTES.saturating_sub(line.len());
                line.extend_from_slice(&part[..part.len().min(room)]);
            }
            line_len += part.len();
            match done {
                Some(i) => {
                    page.push(&mut line, line_len);
                    line_len = 0;
                    rest = &rest[i..];
                }
                None => rest = &[],
            }
        }
    }
    if line_len > 0 {
        page.push(&mut line, line_len);
    }
    Ok(page.finish(truncated, error, compressed))
}

/// The lines kept while a log streams by.
struct PageLines {
    from: Option<usize>,
    lines: std::collections::VecDeque<String>,
    bytes: usize,
    first: usize,
    seen: usize,
    cut_lines: bool,
    full: bool,
}

impl PageLines {
    fn new(from: Option<usize>) -> Self {
        let from = from.map(|f| f.max(1));
        PageLines {
            from,
            lines: Default::default(),
            bytes: 0,
            first: from.unwrap_or(1),
            seen: 0,
            cut_lines: false,
            full: false,
        }
    }

    /// Whether the line being read now belongs on the page.
    fn wants_next(&self) -> bool {
        match self.from {
            Some(f) => self.seen + 1 >= f && !self.full,
            None => true,
        }
    }

    fn push(&mut self, line: &mut Vec<u8>, len: usize) {
        let keep = self.wants_next();
        self.seen += 1;
        if !keep {
            line.clear();
            return;
        }
        let mut text = String::from_utf8_lossy(line).into_owned();
        line.clear();
        if len > LOG_LINE_BYTES {
            self.cut_lines = true;
            text.push_str(" …");
        }
        self.bytes += text.len();
        self.lines.push_back(text);
        match self.from {
            Some(_) => {
                self.full = self.lines.len() >= LOG_PAGE_LINES || self.bytes >= LOG_PAGE_BYTES;
            }
            // The last page: the oldest lines make room for new ones.
            None => {
                while self.lines.len() > LOG_PAGE_LINES
                    || (self.bytes > LOG_PAGE_BYTES && self.lines.len() > 1)
                {
                    let old = self.lines.pop_front().unwrap_or_default();
                    self.bytes -= old.len();
                }
                self.first = self.seen + 1 - self.lines.len();
            }
        }
    }

    fn finish(self, truncated: bool, error: Option<String>, compressed: u64) -> LogText {
        LogText {
            first: if self.lines.is_empty() {
                self.seen + 1
            } else {
                self.first
            },
            lines: self.lines.into(),
            total: self.seen,
            truncated,
            cut_lines: self.cut_lines,
            error,
            compressed,
        }
    }
}

#[derive(Template)]
#[template(path = "log.html")]
struct LogPage {
    nav: Nav,
    host: String,
    file: String,
    lines: Vec<String>,
    first: usize,
    total: usize,
    /// Links to other pages (empty when there is none).
    earlier: String,
    later: String,
    oldest: String,
    newest: String,
    raw: String,
    truncated: bool,
    cut_lines: bool,
    cap_mib: usize,
    error: String,
    missing: String,
    compressed: String,
    meta: Vec<Fact>,
}

#[derive(Deserialize, Default)]
pub struct LogQuery {
    /// First line of the page; the last page without it.
    #[serde(default)]
    from: Option<usize>,
    /// `?raw=1`: the file as uploaded.
    #[serde(default)]
    raw: Option<String>,
}

/// The report file as it is in the chroot, as a download.
async fn raw_log(path: PathBuf, file: &str) -> WebResult<Response> {
    let opened = tokio::task::spawn_blocking(move || open_host_file(&path)).await?;
    let f = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(WebError::NotFound(format!(
                "The log {file} is not in the host's logs/."
            )))
        }
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(WebError::BadRequest(
                "The log is a symbolic link: not followed.".into(),
            ))
        }
        Err(e) => return Err(WebError::internal(e)),
    };
    let len = f.metadata().map(|m| m.len()).ok();
    let stream = tokio_util_free_stream(f);
    let mut res = Response::new(axum::body::Body::from_stream(stream));
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/gzip"),
    );
    if let Some(len) = len {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    // The name is a checked report name (letters, digits, `-_.+`): no quoting issue.
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{file}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(res)
}

/// The file in 64 KiB chunks, read on the blocking pool.
fn tokio_util_free_stream(
    f: std::fs::File,
) -> impl futures_util::Stream<Item = std::io::Result<Vec<u8>>> + Send {
    futures_util::stream::unfold(Some(f), |f| async move {
        let mut f = f?;
        let r = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let n = f.read(&mut buf)?;
            buf.truncate(n);
            Ok::<_, std::io::Error>((buf, f))
        })
        .await
        .map_err(std::io::Error::other);
        match r {
            Ok(Ok((buf, _))) if buf.is_empty() => None,
            Ok(Ok((buf, f))) => Some((Ok(buf), Some(f))),
            Ok(Err(e)) | Err(e) => Some((Err(e), None)),
        }
    })
}

pub async fn log(
    State(state): State<AppState>,
    user: SessionUser,
    Path((name, file)): Path<(String, String)>,
    Query(q): Query<LogQuery>,
) -> WebResult<Response> {
    let h = host_name(&name)?;
    if file.starts_with('.') || file.contains('/') || ReportName::parse(&file).is_err() {
        return Err(WebError::BadRequest(format!(
            "{:?} is not a report log name (YYYYmmdd-HHMM_SYSTEM_STATUS.log.gz).",
            views::clip(&file, 80)
        )));
    }
    let path: PathBuf = Chroot::new(&state.settings().chroot_dir)
        .logs_dir(&h)
        .join(&file);
    if q.raw.is_some() {
        return raw_log(path, &file).await;
    }
    let from = q.from;
    let read = tokio::task::spawn_blocking(move || read_log(&path, LOG_CAP, from)).await?;
    let row: Option<ReportRow> = sqlx::query_as(
        "SELECT file, client_time, status, system, received, has_sidecar, sidecar_error, revision, \
                started, finished, error, agent_version, reboot_required \
         FROM reports WHERE host = ? AND file = ?",
    )
    .bind(h.as_str())
    .bind(&file)
    .fetch_optional(&state.db)
    .await?;
    let (log, error, missing) = match read {
        Ok(mut l) => {
            let error = l.error.take().unwrap_or_default();
            (Some(l), error, String::new())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && row.is_none() => {
            return Err(WebError::NotFound(format!(
                "Host {h} has no report {file}."
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (
            None,
            String::new(),
            "The log is no longer in the chroot (removed from the host's logs/).".into(),
        ),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => (
            None,
            "The log is a symbolic link: not followed.".into(),
            String::new(),
        ),
        Err(e) => {
            tracing::warn!("{h}: cannot read the log {file}: {e}");
            (None, format!("The log cannot be read: {e}."), String::new())
        }
    };
    let mut meta = Vec::new();
    if let Some(r) = &row {
        meta.push(fact("Status", r.status.clone()));
        meta.push(fact("Client time", r.client_time.clone()));
        meta.push(Fact {
            mono: true,
            ..fact("System", r.system.clone())
        });
        if let Some(rev) = &r.revision {
            meta.push(Fact {
                mono: true,
                ..fact("Revision", rev.clone())
            });
        }
        if let (Some(s), Some(f)) = (r.started, r.finished) {
            meta.push(fact("Duration", views::duration_ms(f - s)));
        }
        if let Some(e) = &r.error {
            meta.push(fact("Error", views::clip(e, 2000)));
        }
        if let Some(v) = &r.agent_version {
            meta.push(fact("Agent", v.clone()));
        }
        meta.push(fact(
            "Sidecar",
            match (&r.sidecar_error, r.has_sidecar) {
                (Some(e), _) => e.clone(),
                (None, true) => "present".into(),
                (None, false) => "none (legacy client)".into(),
            },
        ));
    }
    let base = format!("/hosts/{h}/logs/{}", views::segment(&file));
    let link = |from: usize| format!("{base}?from={from}");
    let mut p = LogPage {
        nav: Nav::new(&user, "fleet"),
        host: h.to_string(),
        raw: format!("{base}?raw=1"),
        file,
        lines: Vec::new(),
        first: 1,
        total: 0,
        earlier: String::new(),
        later: String::new(),
        oldest: String::new(),
        newest: String::new(),
        truncated: false,
        cut_lines: false,
        cap_mib: LOG_CAP / (1024 * 1024),
        error,
        missing,
        compressed: String::new(),
        meta,
    };
    if let Some(l) = log {
        let end = l.first + l.lines.len();
        if l.first > 1 {
            p.earlier = link(l.first.saturating_sub(LOG_PAGE_LINES).max(1));
            p.oldest = link(1);
        }
        if end <= l.total {
            p.later = link(end);
            p.newest = base.clone();
        }
        p.lines = l.lines;
        p.first = l.first;
        p.total = l.total;
        p.truncated = l.truncated;
        p.cut_lines = l.cut_lines;
        p.compressed = format_size(l.compressed);
    }
    Ok(Html(p.render().map_err(WebError::internal)?).into_response())
}

fn format_size(b: u64) -> String {
    if b >= 1024 * 1024 {
        format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
    } else if b >= 1024 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} bytes")
    }
}

/// A store path basename as nix prints it: 32 hash characters, `-`, a name.
fn valid_store_name(s: &str) -> bool {
    let (hash, name) = match s.split_once('-') {
        Some(x) => x,
        None => return false,
    };
    hash.len() == 32
        && hash
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b))
}

#[derive(Template)]
#[template(path = "diff.html")]
struct DiffPage {
    nav: Nav,
    host: String,
    from: String,
    to: String,
    output: String,
    error: String,
    computed: String,
    cached: bool,
}

pub async fn diff(
    State(state): State<AppState>,
    user: SessionUser,
    Path(name): Path<String>,
) -> WebResult<Html<String>> {
    let h = host_name(&name)?;
    let st = cached_status(&state, &h)?;
    let (Some(from), Some(to)) = (st.running_system.clone(), st.expected_system.clone()) else {
        return Err(WebError::BadRequest(format!(
            "Host {h} has no running or no expected system: there is nothing to compare."
        )));
    };
    let mut page = DiffPage {
        nav: Nav::new(&user, "fleet"),
        host: h.to_string(),
        from: from.clone(),
        to: to.clone(),
        output: String::new(),
        error: String::new(),
        computed: String::new(),
        cached: false,
    };
    let render = |p: DiffPage| -> WebResult<Html<String>> {
        Ok(Html(p.render().map_err(WebError::internal)?))
    };
    if from == to {
        page.error = "The host runs the expected system: nothing changed.".into();
        return render(page);
    }
    if !valid_store_name(&from) || !valid_store_name(&to) {
        page.error = "The reported system is not a store path name: cannot compare.".into();
        return render(page);
    }
    let cached: Option<(String, i64)> =
        sqlx::query_as("SELECT output, computed_at FROM closure_diffs WHERE from_system = ? AND to_system = ? AND ok = 1")
            .bind(&from)
            .bind(&to)
            .fetch_optional(&state.db)
            .await?;
    if let Some((output, at)) = cached {
        page.output = output;
        page.computed = views::full_time_ms(Some(at));
        page.cached = true;
        return render(page);
    }
    let (fp, tp) = (
        PathBuf::from("/nix/store").join(&from),
        PathBuf::from("/nix/store").join(&to),
    );
    for p in [&fp, &tp] {
        if !p.exists() {
            page.error = format!(
                "{} is not in this server's nix store: the difference cannot be computed here.",
                p.display()
            );
            return render(page);
        }
    }
    let nix = Nix::default();
    let job = tokio::task::spawn_blocking(move || nix.diff_closures(&fp, &tp));
    match tokio::time::timeout(Duration::from_secs(120), job).await {
        Err(_) => {
            page.error =
                "Computing the difference took longer than two minutes; try again later.".into()
        }
        Ok(r) => {
            match r? {
                Ok(out) => {
                    let out = if out.len() > DIFF_CAP {
                        format!(
                            "{}\n… (cut at {} KiB)",
                            views::clip(&out, DIFF_CAP),
                            DIFF_CAP / 1024
                        )
                    } else {
                        out
                    };
                    let out = if out.trim().is_empty() {
                        "(no package differences)".to_owned()
                    } else {
                        out
                    };
                    let now = now_ms();
                    sqlx::query(
                    "INSERT OR REPLACE INTO closure_diffs (from_system, to_system, output, ok, computed_at) VALUES (?, ?, ?, 1, ?)",
                )
                .bind(&from)
                .bind(&to)
                .bind(&out)
                .bind(now)
                .execute(&state.db)
                .await?;
                    page.output = out;
                    page.computed = views::full_time_ms(Some(now));
                }
                Err(e) => {
                    tracing::warn!("{h}: closure diff failed: {}", e.summary());
                    page.error = "nix could not compare the two systems; the details are in the server's log.".into();
                }
            }
        }
    }
    render(page)
}
