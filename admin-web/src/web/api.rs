//! The JSON API: the same data as the pages. `/api/v1/hosts` has the shape of
//! `bento status --json`. Reads take a session or a bearer token; creating a job
//! takes a bearer token only (a browser uses the CSRF-protected form).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bento_core::buildstate::{BuildState, HostBuild};
use bento_core::status::HostStatus;
use bento_core::HostName;
use serde::{Deserialize, Serialize};

use super::auth::ApiUser;
use super::error::{ApiResult, WebError};
use super::fleet::{select, FleetQuery};
use super::jobs::{self, Job};
use super::AppState;

/// `/api/v1/hosts` as bytes (the benchmark calls it in process). Takes the same
/// filters as the fleet page; sorted by name unless `sort` says otherwise.
pub fn hosts_json(state: &AppState, q: &FleetQuery) -> Result<Vec<u8>, serde_json::Error> {
    let builds = state.builds();
    let cache = state.fleet.read();
    let sel = select(&cache, &builds, q);
    let rows: Vec<HostJson> = sel.rows.iter().map(|h| HostJson::new(h, &builds)).collect();
    serde_json::to_vec(&rows)
}

/// A host as the API shows it: its status (the shape of `bento status --json`) and
/// `build`, the server's last build of its configuration (`null` before the first):
/// `failing_since` and `error` are set while it does not build; `last_ok` is the
/// last time it did; `dir` is its directory under `hosts/`.
#[derive(Serialize)]
pub struct HostJson<'a> {
    #[serde(flatten)]
    status: &'a HostStatus,
    build: Option<&'a HostBuild>,
}

impl<'a> HostJson<'a> {
    fn new(status: &'a HostStatus, builds: &'a BuildState) -> Self {
        HostJson {
            build: builds.host(&status.host),
            status,
        }
    }
}

fn json_bytes(body: Vec<u8>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

pub async fn hosts(
    State(state): State<AppState>,
    _user: ApiUser,
    Query(q): Query<FleetQuery>,
) -> ApiResult<Response> {
    let body = hosts_json(&state, &q).map_err(WebError::internal)?;
    Ok(json_bytes(body))
}

fn host_name(name: &str) -> Result<HostName, WebError> {
    HostName::new(name).map_err(|e| WebError::BadRequest(format!("{e}.")))
}

pub async fn host(
    State(state): State<AppState>,
    _user: ApiUser,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let h = host_name(&name)?;
    let st = state
        .fleet
        .get(h.as_str())
        .ok_or_else(|| WebError::NotFound(format!("There is no host {h} in the chroot.")))?;
    let builds = state.builds();
    Ok(Json(HostJson::new(&st, &builds)).into_response())
}

/// A stored report.
#[derive(Serialize, sqlx::FromRow)]
pub struct Report {
    pub file: String,
    pub client_time: String,
    pub status: String,
    pub system: String,
    /// Server time (ms since the epoch) the report arrived.
    pub received: i64,
    pub has_sidecar: bool,
    pub sidecar_error: Option<String>,
    pub revision: Option<String>,
    pub started: Option<i64>,
    pub finished: Option<i64>,
    pub error: Option<String>,
    pub agent_version: Option<String>,
    pub reboot_required: bool,
}

#[derive(Deserialize, Default)]
pub struct Limit {
    limit: Option<i64>,
}

pub async fn reports(
    State(state): State<AppState>,
    _user: ApiUser,
    Path(name): Path<String>,
    Query(q): Query<Limit>,
) -> ApiResult<Json<Vec<Report>>> {
    let h = host_name(&name)?;
    let rows = sqlx::query_as::<_, Report>(
        "SELECT file, client_time, status, system, received, has_sidecar, sidecar_error, revision, \
                started, finished, error, agent_version, reboot_required \
         FROM reports WHERE host = ? ORDER BY client_time DESC, ctime DESC, id DESC LIMIT ?",
    )
    .bind(h.as_str())
    .bind(q.limit.unwrap_or(100).clamp(1, 1000))
    .fetch_all(&state.db)
    .await?;
    Ok(Json(rows))
}

pub async fn jobs(
    State(state): State<AppState>,
    _user: ApiUser,
    Query(q): Query<Limit>,
) -> ApiResult<Json<Vec<Job>>> {
    let rows = sqlx::query_as::<_, Job>("SELECT * FROM jobs ORDER BY id DESC LIMIT ?")
        .bind(q.limit.unwrap_or(100).clamp(1, 1000))
        .fetch_all(&state.db)
        .await?;
    Ok(Json(rows))
}

pub async fn job(
    State(state): State<AppState>,
    _user: ApiUser,
    Path(id): Path<String>,
) -> ApiResult<Json<Job>> {
    let id = jobs::parse_id(&id)?;
    Ok(Json(jobs::load(&state.db, id).await?))
}

#[derive(Deserialize)]
pub struct NewJob {
    kind: String,
    #[serde(default)]
    host: Option<String>,
    /// A deploy: `waves` (default, `[rollout]`) or `all`.
    #[serde(default)]
    mode: Option<String>,
}

pub async fn create_job(
    State(state): State<AppState>,
    user: ApiUser,
    Json(req): Json<NewJob>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    if !user.actor.starts_with("token:") {
        return Err(WebError::Forbidden(
            "Starting a job through the API needs a bearer token (`bento token add NAME`); in a browser use the Jobs page.".into(),
        )
        .into());
    }
    let id = jobs::enqueue(
        &state,
        &req.kind,
        req.host.as_deref().unwrap_or(""),
        req.mode.as_deref().unwrap_or(""),
        &user.actor,
        &user.source,
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(jobs::load(&state.db, id).await?)))
}
