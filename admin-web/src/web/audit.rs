//! The audit log: every login (failed ones too), logout, job and command-line
//! change, with who, what, when and from where.

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Html;
use serde::Deserialize;

use super::auth::SessionUser;
use super::db::now_ms;
use super::error::WebResult;
use super::views::{self, Nav};
use super::AppState;

/// Adds an entry. Fields are clipped: a user name typed at the login form is
/// attacker-controlled.
pub async fn record(
    db: impl sqlx::SqliteExecutor<'_>,
    actor: &str,
    action: &str,
    target: &str,
    detail: &str,
    source: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit (at, actor, action, target, detail, source) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(now_ms())
    .bind(views::clip(actor, 64))
    .bind(views::clip(action, 64))
    .bind(views::clip(target, 200))
    .bind(views::clip(detail, 500))
    .bind(views::clip(source, 64))
    .execute(db)
    .await?;
    Ok(())
}

#[derive(Deserialize, Default)]
pub struct AuditQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    before: Option<i64>,
}

struct Entry {
    id: i64,
    at: String,
    actor: String,
    action: String,
    target: String,
    detail: String,
    source: String,
    class: &'static str,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    nav: Nav,
    q: String,
    entries: Vec<Entry>,
    older: String,
}

const PAGE: i64 = 100;

pub async fn page(
    State(state): State<AppState>,
    user: SessionUser,
    Query(query): Query<AuditQuery>,
) -> WebResult<Html<String>> {
    let q = views::clip(query.q.trim(), 100);
    let like = format!(
        "%{}%",
        q.replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    );
    let rows: Vec<(i64, i64, String, String, String, String, String)> = sqlx::query_as(
        "SELECT id, at, actor, action, target, detail, source FROM audit \
         WHERE id < ? AND (? = '' OR actor LIKE ? ESCAPE '\\' OR action LIKE ? ESCAPE '\\' \
                           OR target LIKE ? ESCAPE '\\' OR source LIKE ? ESCAPE '\\') \
         ORDER BY id DESC LIMIT ?",
    )
    .bind(query.before.unwrap_or(i64::MAX))
    .bind(&q)
    .bind(&like)
    .bind(&like)
    .bind(&like)
    .bind(&like)
    .bind(PAGE)
    .fetch_all(&state.db)
    .await?;
    let older = if rows.len() as i64 == PAGE {
        let last = rows.last().map(|r| r.0).unwrap_or(0).to_string();
        format!("/audit{}", views::query(&[("q", &q), ("before", &last)]))
    } else {
        String::new()
    };
    let entries = rows
        .into_iter()
        .map(|(id, at, actor, action, target, detail, source)| Entry {
            id,
            at: views::full_time_ms(Some(at)),
            class: if action.contains("failed") || action.contains("refused") {
                "bad"
            } else {
                ""
            },
            actor,
            action,
            target,
            detail,
            source,
        })
        .collect();
    let page = AuditPage {
        nav: Nav::new(&user, "audit"),
        q,
        entries,
        older,
    };
    Ok(Html(
        page.render().map_err(super::error::WebError::internal)?,
    ))
}
