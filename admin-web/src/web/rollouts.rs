//! The Rollouts pages: every deploy's waves and each host's outcome, as
//! `bento rollout list|show` print them, Abort, Resume and Rollback (shown
//! host by host for the admin to confirm before anything is republished).

use askama::Template;
use axum::extract::{Path, State};
use axum::response::{Html, Redirect};

use super::auth::{CsrfForm, Empty, SessionUser};
use super::error::{WebError, WebResult};
use super::views::{self, Nav};
use super::AppState;
use crate::rollouts::{self, HostRow, RolloutRow};

struct RolloutView {
    id: i64,
    job_id: Option<i64>,
    status: String,
    class: &'static str,
    wave: String,
    created: String,
    created_by: String,
    source: String,
    finished: String,
    summary: String,
    running: bool,
    rollback_of: Option<i64>,
}

impl RolloutView {
    fn new(r: &RolloutRow) -> Self {
        RolloutView {
            id: r.id,
            job_id: r.job_id,
            class: match r.status.as_str() {
                rollouts::HALTED | rollouts::ABORTED | rollouts::INTERRUPTED => "bad",
                s => views::status_class(s),
            },
            status: r.status.clone(),
            wave: format!("{} of {}", (r.wave + 1).min(r.waves), r.waves),
            created: views::full_time_ms(Some(r.created_at)),
            created_by: r.created_by.clone(),
            source: r.source.clone(),
            finished: views::full_time_ms(r.finished_at),
            summary: views::clip(&r.summary, 300),
            running: r.status == rollouts::RUNNING,
            rollback_of: r.rollback_of,
        }
    }
}

struct HostView {
    host: String,
    wave: String,
    phase: String,
    class: &'static str,
    revision: String,
    published: String,
    reason: String,
}

impl HostView {
    fn new(h: &HostRow) -> Self {
        HostView {
            host: h.host.clone(),
            wave: format!("{} ({})", h.wave + 1, h.wave_entry),
            class: match h.phase.as_str() {
                "success" => "ok",
                "failed" | "rolled-back" | "no-answer" => "bad",
                "pending" | "skipped" => "pending",
                _ => "busy",
            },
            phase: h.phase.clone(),
            revision: h
                .revision
                .as_deref()
                .map(|r| r.get(..12).unwrap_or(r).to_owned())
                .unwrap_or_default(),
            published: views::full_time_ms(h.published_at),
            reason: h.reason.clone().unwrap_or_default(),
        }
    }
}

#[derive(Template)]
#[template(path = "rollouts.html")]
struct ListPage {
    nav: Nav,
    rollouts: Vec<RolloutView>,
}

#[derive(Template)]
#[template(path = "rollout.html")]
struct ShowPage {
    nav: Nav,
    r: RolloutView,
    hosts: Vec<HostView>,
    can_abort: bool,
    can_resume: bool,
    can_rollback: bool,
    rolled_back_by: Vec<i64>,
    /// The jobs that went on with it (Resume, or the panel's restart).
    resumed_by: Vec<i64>,
}

async fn settle(state: &AppState) {
    if let Err(e) = rollouts::settle(&state.db, &state.settings()).await {
        tracing::warn!("cannot update the rollouts: {e:#}");
    }
}

pub async fn list(State(state): State<AppState>, user: SessionUser) -> WebResult<Html<String>> {
    settle(&state).await;
    let rows = rollouts::list(&state.db, 100).await?;
    let page = ListPage {
        nav: Nav::new(&user, "rollouts"),
        rollouts: rows.iter().map(RolloutView::new).collect(),
    };
    Ok(Html(page.render().map_err(WebError::internal)?))
}

fn parse_id(s: &str) -> WebResult<i64> {
    views::parse_number(s, "rollout")
}

pub async fn page(
    State(state): State<AppState>,
    user: SessionUser,
    Path(id): Path<String>,
) -> WebResult<Html<String>> {
    let (id, r, hosts) = load_settled(&state, &id).await?;
    let rolled_back_by = rollouts::rolled_back_by(&state.db, id).await?;
    let resumed_by: Vec<i64> = sqlx::query_as::<_, (i64,)>(
        "SELECT id FROM jobs WHERE kind = 'deploy' AND mode = ? ORDER BY id",
    )
    .bind(format!("resume:{id}"))
    .fetch_all(&state.db)
    .await?
    .into_iter()
    .map(|(j,)| j)
    .collect();
    let can_resume = resumable(&r) && rolled_back_by.is_empty();
    let can_rollback = rolled_back_by.is_empty()
        && hosts
            .iter()
            .any(|h| h.revision.is_some() && h.previous_revision.is_some());
    let can_abort = matches!(
        r.status.as_str(),
        rollouts::RUNNING | rollouts::HALTED | rollouts::INTERRUPTED
    ) && !r.abort_requested;
    let page = ShowPage {
        nav: Nav::new(&user, "rollouts"),
        r: RolloutView::new(&r),
        hosts: hosts.iter().map(HostView::new).collect(),
        can_abort,
        can_resume,
        can_rollback,
        rolled_back_by,
        resumed_by,
    };
    Ok(Html(page.render().map_err(WebError::internal)?))
}

pub async fn abort(
    State(state): State<AppState>,
    Path(id): Path<String>,
    f: CsrfForm<Empty>,
) -> WebResult<Redirect> {
    let id = parse_id(&id)?;
    rollouts::request_abort(&state.db, id, &f.user.actor(), &f.user.source)
        .await
        .map_err(|e| WebError::BadRequest(format!("{e:#}")))?;
    Ok(Redirect::to(&format!("/rollouts/{id}")))
}

/// Resume: a deploy job that goes on with the rollout (queued like any job,
/// after the deploy lock).
pub async fn resume(
    State(state): State<AppState>,
    Path(id): Path<String>,
    f: CsrfForm<Empty>,
) -> WebResult<Redirect> {
    let id = parse_id(&id)?;
    let (r, _) = load_or_404(&state, id).await?;
    if !resumable(&r) {
        return Err(WebError::BadRequest(format!(
            "Rollout {id} is {}: only a halted, aborted or interrupted rollout resumes.",
            r.status
        )));
    }
    deploy_job(&state, &format!("resume:{id}"), &f).await
}

/// One host of a rollback's confirmation page.
struct RollbackRow {
    host: String,
    now: String,
    back_to: String,
    why: String,
}

#[derive(Template)]
#[template(path = "rollout_rollback.html")]
struct RollbackPage {
    nav: Nav,
    r: RolloutView,
    back: Vec<RollbackRow>,
    stay: Vec<RollbackRow>,
    /// Why no rollback can be asked for (already rolled back).
    refused: String,
}

/// What Rollback would do, host by host, for the admin to confirm: which hosts
/// go back to which release, which stay and why. Nothing is changed here.
pub async fn rollback_page(
    State(state): State<AppState>,
    user: SessionUser,
    Path(id): Path<String>,
) -> WebResult<Html<String>> {
    let (id, r, hosts) = load_settled(&state, &id).await?;
    let refused = match rollouts::refuse_if_rolled_back(&state.db, id).await {
        Ok(()) => String::new(),
        Err(e) => format!("{e:#}."),
    };
    let chroot = bento_core::chroot::Chroot::new(&state.settings().chroot_dir);
    let plan = rollouts::rollback_preview(&chroot, &hosts)
        .map_err(|e| WebError::BadRequest(format!("{e:#}")))?;
    let short = |r: &str| r.get(..12).unwrap_or(r).to_owned();
    let now = |host: &str| {
        hosts
            .iter()
            .find(|h| h.host == host)
            .and_then(|h| h.revision.as_deref())
            .map(short)
            .unwrap_or_default()
    };
    let page = RollbackPage {
        nav: Nav::new(&user, "rollouts"),
        r: RolloutView::new(&r),
        back: plan
            .to_republish
            .iter()
            .map(|(h, rev)| RollbackRow {
                host: h.to_string(),
                now: now(h.as_str()),
                back_to: short(rev),
                why: String::new(),
            })
            .collect(),
        stay: plan
            .skipped
            .iter()
            .map(|(h, why)| RollbackRow {
                host: h.to_string(),
                now: now(h.as_str()),
                back_to: String::new(),
                why: why.clone(),
            })
            .collect(),
        refused,
    };
    Ok(Html(page.render().map_err(WebError::internal)?))
}

/// Rollback: a deploy job that puts the rollout's hosts back on the release they
/// had before (queued like any job, after the deploy lock). A rollout still
/// under way is asked to stop first, so the job gets the lock once it has.
pub async fn rollback(
    State(state): State<AppState>,
    Path(id): Path<String>,
    f: CsrfForm<Empty>,
) -> WebResult<Redirect> {
    let id = parse_id(&id)?;
    let (r, _) = load_or_404(&state, id).await?;
    rollouts::refuse_if_rolled_back(&state.db, id)
        .await
        .map_err(|e| WebError::BadRequest(format!("{e:#}.")))?;
    if r.status == rollouts::RUNNING && rollouts::driver_alive(&r) && !r.abort_requested {
        rollouts::request_abort(&state.db, id, &f.user.actor(), &f.user.source)
            .await
            .map_err(|e| WebError::BadRequest(format!("{e:#}")))?;
    }
    deploy_job(&state, &format!("rollback:{id}"), &f).await
}

/// Queues the deploy job `mode` asks for (resume or rollback), and goes to it.
async fn deploy_job(state: &AppState, mode: &str, f: &CsrfForm<Empty>) -> WebResult<Redirect> {
    let job =
        super::jobs::enqueue(state, "deploy", "", mode, &f.user.actor(), &f.user.source).await?;
    Ok(Redirect::to(&format!("/jobs/{job}")))
}

/// Rollout `id` and its hosts, or the panel's "not found".
async fn load_or_404(state: &AppState, id: i64) -> WebResult<(RolloutRow, Vec<HostRow>)> {
    rollouts::load(&state.db, id)
        .await?
        .ok_or_else(|| WebError::NotFound(format!("There is no rollout {id}.")))
}

/// A rollout to show, as of the chroot's latest reports.
async fn load_settled(state: &AppState, id: &str) -> WebResult<(i64, RolloutRow, Vec<HostRow>)> {
    let id = parse_id(id)?;
    settle(state).await;
    let (r, hosts) = load_or_404(state, id).await?;
    Ok((id, r, hosts))
}

fn resumable(r: &RolloutRow) -> bool {
    matches!(
        r.status.as_str(),
        rollouts::HALTED | rollouts::ABORTED | rollouts::INTERRUPTED
    )
}

/// At the panel's start: the rollouts it drove that its stop interrupted are
/// taken up again, each by a resume job.
pub async fn resume_interrupted(state: &AppState) -> anyhow::Result<()> {
    rollouts::settle(&state.db, &state.settings()).await?;
    let ids: Vec<(i64,)> = sqlx::query_as(
        "SELECT id FROM rollouts WHERE status = 'interrupted' AND source = 'panel' ORDER BY id",
    )
    .fetch_all(&state.db)
    .await?;
    for (id,) in ids {
        let job = super::jobs::enqueue(
            state,
            "deploy",
            "",
            &format!("resume:{id}"),
            "panel",
            "restart",
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        tracing::info!("rollout {id} was interrupted by the panel's stop: job {job} resumes it");
    }
    Ok(())
}

/// The rollout of a deploy job, if it has one: the one it resumes (a rollout
/// keeps the job that started it, from the panel or the command line), else the
/// one it recorded.
pub async fn of_job(state: &AppState, job: i64, mode: &str) -> Option<i64> {
    if let Some(id) = mode
        .strip_prefix("resume:")
        .and_then(|n| n.parse::<i64>().ok())
    {
        return Some(id);
    }
    sqlx::query_as::<_, (i64,)>("SELECT id FROM rollouts WHERE job_id = ? ORDER BY id DESC LIMIT 1")
        .bind(job)
        .fetch_optional(&state.db)
        .await
        .ok()
        .flatten()
        .map(|(id,)| id)
}
