//! Alerts from `bento serve`: every second the fleet the panel already follows is
//! looked at ([`bento_core::alerts::Tracker`]: one alert per host and event until
//! it recovers), and rollouts that ended are noticed (those that ended while the
//! panel was down too). What is alerted on, since when reboots have been pending
//! and which rollout ends were told are in the database, so a restart neither
//! repeats nor forgets an alert. Each alert becomes one
//! delivery per receiver in an outbox (`alert_deliveries`), sent by this task
//! alone, rate-limited per receiver and retried with backoff, so a receiver that
//! is down never holds up the panel or the reading of reports. The Alerts page
//! lists the deliveries.

use std::collections::HashMap;
use std::time::Duration;

use askama::Template;
use axum::extract::State;
use axum::response::Html;
use bento_core::alerts::{
    Alert, AlertSettings, Body, Email, Event, HostFacts, SmtpTls, Tracker, Webhook,
};
use bento_core::status::State as HostState;
use sqlx::SqlitePool;

use super::auth::SessionUser;
use super::db::now_ms;
use super::error::{WebError, WebResult};
use super::views::{self, Nav};
use super::AppState;

/// How often the fleet is looked at and the outbox is worked.
const TICK: Duration = Duration::from_secs(1);
/// A receiver's answer is waited for this long.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts before a delivery is given up.
const MAX_ATTEMPTS: i64 = 8;

/// The outbox's retry delay after `attempts` failures: 5 s, doubling, at most 10 min.
pub fn backoff(attempts: i64) -> Duration {
    let secs = 5u64.saturating_mul(1u64 << attempts.clamp(0, 20).saturating_sub(1) as u32);
    Duration::from_secs(secs.min(600))
}

/// A receiver's address without its path, query or credentials: webhook URLs
/// often hold their secret token, which stays in bento.toml only.
pub fn redacted(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or(host);
    format!("{scheme}://{host}/…")
}

/// Key in `alert_state`: since when (unix ms) rollout ends are alerted.
const ROLLOUTS_SINCE: &str = "rollouts_since";

pub async fn run(state: AppState) {
    let mut tracker = match load_active(&state.db).await {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("alerts: cannot read their state: {e}");
            Tracker::default()
        }
    };
    let client = match reqwest::Client::builder().timeout(SEND_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("alerts: no HTTP client: {e}");
            return;
        }
    };
    let mut reboot_seen = match load_reboot_pending(&state.db).await {
        Ok(m) => m,
        Err(e) => {
            tracing::error!("alerts: cannot read the pending reboots: {e}");
            HashMap::new()
        }
    };
    // Since when rollout ends are told: `None` until receivers are seen.
    let mut rollouts_since: Option<i64> = None;
    let mut shutdown = state.shutdown.clone();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        let settings = state.settings();
        let alerts = &settings.alerts;
        if alerts.webhook.is_empty() && alerts.email.is_none() {
            // Nobody to tell: what ends meanwhile is not told later.
            if rollouts_since.is_some() || first {
                if let Err(e) = forget_rollouts_since(&state.db).await {
                    tracing::warn!("alerts: cannot write their state: {e}");
                }
                rollouts_since = None;
            }
            first = false;
            continue;
        }
        first = false;
        let since = match rollouts_since {
            Some(s) => s,
            None => match load_rollouts_since(&state.db).await {
                Ok(s) => *rollouts_since.insert(s),
                Err(e) => {
                    tracing::warn!("alerts: cannot read their state: {e}");
                    continue;
                }
            },
        };
        let (alerts_now, pending) = look(&state, alerts, &mut tracker, &mut reboot_seen);
        if let Err(e) = save_reboot_pending(&state.db, &pending).await {
            tracing::warn!("alerts: cannot record the pending reboots: {e}");
        }
        for a in &alerts_now {
            if let Err(e) = enqueue(&state.db, alerts, a, None).await {
                tracing::warn!("alerts: cannot queue an alert: {e}");
            }
        }
        match ended_rollouts(&state.db, since).await {
            Ok(ended) => {
                for (a, end) in &ended {
                    if let Err(e) = enqueue(&state.db, alerts, a, Some(end)).await {
                        tracing::warn!("alerts: cannot queue an alert: {e}");
                    }
                }
            }
            Err(e) => tracing::warn!("alerts: cannot read the rollouts: {e}"),
        }
        if let Err(e) = deliver(&state.db, alerts, &client).await {
            tracing::warn!("alerts: cannot work the outbox: {e}");
        }
    }
}

/// Since when rollout ends are told: kept while receivers are configured, so a
/// restart (or a panel that was down) still tells what ended meanwhile.
async fn load_rollouts_since(db: &SqlitePool) -> Result<i64, sqlx::Error> {
    sqlx::query("INSERT OR IGNORE INTO alert_state (key, value) VALUES (?, ?)")
        .bind(ROLLOUTS_SINCE)
        .bind(now_ms())
        .execute(db)
        .await?;
    let (v,): (i64,) = sqlx::query_as("SELECT value FROM alert_state WHERE key = ?")
        .bind(ROLLOUTS_SINCE)
        .fetch_one(db)
        .await?;
    Ok(v)
}

async fn forget_rollouts_since(db: &SqlitePool) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM alert_state WHERE key = ?")
        .bind(ROLLOUTS_SINCE)
        .execute(db)
        .await?;
    Ok(())
}

async fn load_active(db: &SqlitePool) -> Result<Tracker, sqlx::Error> {
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT host, event FROM alert_active")
        .fetch_all(db)
        .await?;
    Ok(Tracker::restore(
        rows.into_iter()
            .filter_map(|(h, e)| Event::from_id(&e).map(|e| (h, e))),
    ))
}

/// Host → since when (unix ms) its reboot has been pending.
async fn load_reboot_pending(db: &SqlitePool) -> Result<HashMap<String, i64>, sqlx::Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT host, since FROM alert_reboot_pending")
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().collect())
}

/// Changes to the pending reboots: a host and since when, or `None` when done.
type RebootChanges = Vec<(String, Option<i64>)>;

async fn save_reboot_pending(db: &SqlitePool, changes: &RebootChanges) -> Result<(), sqlx::Error> {
    if changes.is_empty() {
        return Ok(());
    }
    let mut tx = db.begin().await?;
    for (host, since) in changes {
        match since {
            Some(t) => {
                sqlx::query(
                    "INSERT OR REPLACE INTO alert_reboot_pending (host, since) VALUES (?, ?)",
                )
                .bind(host)
                .bind(t)
                .execute(&mut *tx)
                .await?
            }
            None => {
                sqlx::query("DELETE FROM alert_reboot_pending WHERE host = ?")
                    .bind(host)
                    .execute(&mut *tx)
                    .await?
            }
        };
    }
    tx.commit().await
}

/// The alerts of one look at the fleet, and the changes to the pending reboots.
fn look(
    state: &AppState,
    settings: &AlertSettings,
    tracker: &mut Tracker,
    reboot_seen: &mut HashMap<String, i64>,
) -> (Vec<Alert>, RebootChanges) {
    let now_ms = now_ms();
    let now = now_ms / 1000;
    let cache = state.fleet.read();
    let mut out = Vec::new();
    let mut changes = Vec::new();
    for h in cache.hosts.values() {
        let why = || {
            h.last_report
                .as_ref()
                .and_then(|r| r.error.clone())
                .unwrap_or_else(|| h.label.clone())
        };
        let pending_for = if h.reboot_pending {
            let since = *reboot_seen.entry(h.host.clone()).or_insert_with(|| {
                changes.push((h.host.clone(), Some(now_ms)));
                now_ms
            });
            Some(Duration::from_millis(
                now_ms.saturating_sub(since).max(0) as u64
            ))
        } else {
            if reboot_seen.remove(&h.host).is_some() {
                changes.push((h.host.clone(), None));
            }
            None
        };
        let facts = HostFacts {
            host: h.host.clone(),
            failed: (h.state == HostState::Failing).then(why),
            rolled_back: (h.state == HostState::RolledBack).then(why),
            offline: h.offline,
            reboot_pending_for: pending_for,
        };
        out.extend(tracker.observe(&facts, settings, now));
    }
    (out, changes)
}

/// A rollout's end: id, status and when, as `alert_rollouts` records it.
type RolloutEnd = (i64, String, i64);

/// Rollouts that halted or ended since `since` and are not told yet, once per
/// end: a halted rollout that is resumed ends again, and that end is told too.
/// Each is marked told with its alert queued, in one transaction.
async fn ended_rollouts(
    db: &SqlitePool,
    since: i64,
) -> Result<Vec<(Alert, RolloutEnd)>, sqlx::Error> {
    let rows: Vec<(i64, String, String, i64)> = sqlx::query_as(
        "SELECT r.id, r.status, r.summary, r.finished_at FROM rollouts r \
         WHERE r.status NOT IN ('running', 'interrupted') AND r.finished_at >= ? \
         AND NOT EXISTS (SELECT 1 FROM alert_rollouts a \
                         WHERE a.rollout_id = r.id AND a.finished_at = r.finished_at) \
         ORDER BY r.id",
    )
    .bind(since)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, status, summary, finished_at)| {
            let event = if status == crate::rollouts::HALTED {
                Event::RolloutHalted
            } else {
                Event::RolloutFinished
            };
            let alert = Alert {
                event,
                host: None,
                rollout: Some(id),
                recovered: false,
                message: format!("rollout {id} {status}: {summary}"),
                at: now_ms() / 1000,
            };
            (alert, (id, status, finished_at))
        })
        .collect())
}

/// Records the condition and queues one delivery per receiver that wants it.
/// `rollout_end`: the rollout end the alert tells, marked told in the same
/// transaction (never told twice, never marked without its alert).
async fn enqueue(
    db: &SqlitePool,
    settings: &AlertSettings,
    a: &Alert,
    rollout_end: Option<&RolloutEnd>,
) -> anyhow::Result<()> {
    let now = now_ms();
    let mut tx = db.begin().await?;
    if let Some((id, status, finished_at)) = rollout_end {
        sqlx::query(
            "INSERT OR REPLACE INTO alert_rollouts (rollout_id, status, finished_at) VALUES (?, ?, ?)",
        )
        .bind(id)
        .bind(status)
        .bind(finished_at)
        .execute(&mut *tx)
        .await?;
    }
    if let Some(h) = &a.host {
        if a.recovered {
            sqlx::query("DELETE FROM alert_active WHERE host = ? AND event = ?")
                .bind(h)
                .bind(a.event.id())
                .execute(&mut *tx)
                .await?;
        } else {
            sqlx::query("INSERT OR IGNORE INTO alert_active (host, event, since) VALUES (?, ?, ?)")
                .bind(h)
                .bind(a.event.id())
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
    }
    let json = serde_json::to_string(a)?;
    let mut receivers: Vec<(String, String)> = settings
        .webhook
        .iter()
        .enumerate()
        .filter(|(_, w)| w.wants(a.event))
        .map(|(i, w)| (format!("webhook:{i}"), redacted(&w.url)))
        .collect();
    if let Some(e) = settings.email.as_ref().filter(|e| e.wants(a.event)) {
        receivers.push(("email".into(), format!("smtp://{}:{}", e.server, e.port())));
    }
    for (channel, target) in receivers {
        sqlx::query(
            "INSERT INTO alert_deliveries (created_at, event, host, rollout, recovered, message, alert, channel, target, status, next_try) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
        )
        .bind(now)
        .bind(a.event.id())
        .bind(&a.host)
        .bind(a.rollout)
        .bind(a.recovered)
        .bind(views::clip(&a.message, 2000))
        .bind(&json)
        .bind(channel)
        .bind(target)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Sends one alert by mail.
async fn send_mail(e: &Email, alert: &Alert) -> Result<(), String> {
    use lettre::message::{header::ContentType, Mailbox};
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let from: Mailbox = e
        .from
        .parse()
        .map_err(|err| format!("alerts.email.from {:?}: {err}", e.from))?;
    let mut m = Message::builder()
        .from(from)
        .subject(Body::title(alert))
        .header(ContentType::TEXT_PLAIN);
    for to in &e.to {
        let to: Mailbox = to
            .parse()
            .map_err(|err| format!("alerts.email.to {to:?}: {err}"))?;
        m = m.to(to);
    }
    let mail = m
        .body(format!("{}\n", alert.message))
        .map_err(|err| format!("cannot make the mail: {err}"))?;
    let builder = match e.tls {
        SmtpTls::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
            &e.server,
        )),
        SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&e.server),
        SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&e.server),
    }
    .map_err(|err| format!("{}: {err}", e.server))?;
    let mut builder = builder.port(e.port()).timeout(Some(SEND_TIMEOUT));
    if let (Some(user), Some(file)) = (&e.username, &e.password_file) {
        let password = std::fs::read_to_string(file)
            .map_err(|err| format!("alerts.email.password_file {}: {err}", file.display()))?;
        builder = builder.credentials(Credentials::new(
            user.clone(),
            password.trim_end().to_owned(),
        ));
    }
    builder
        .build()
        .send(mail)
        .await
        .map(|_| ())
        .map_err(|err| format!("the SMTP server refused or could not be reached: {err}"))
}

/// Sends what is due, within each receiver's rate.
async fn deliver(
    db: &SqlitePool,
    settings: &AlertSettings,
    client: &reqwest::Client,
) -> anyhow::Result<()> {
    let now = now_ms();
    let due: Vec<(i64, String, String, i64)> = sqlx::query_as(
        "SELECT id, channel, alert, attempts FROM alert_deliveries \
         WHERE status = 'pending' AND next_try <= ? ORDER BY id LIMIT 50",
    )
    .bind(now)
    .fetch_all(db)
    .await?;
    for (id, channel, alert, attempts) in due {
        let hook = channel
            .strip_prefix("webhook:")
            .and_then(|i| i.parse::<usize>().ok())
            .and_then(|i| settings.webhook.get(i));
        let email = settings.email.as_ref().filter(|_| channel == "email");
        if hook.is_none() && email.is_none() {
            fail(
                db,
                id,
                attempts,
                "the receiver is no longer in [alerts]",
                true,
            )
            .await?;
            continue;
        }
        let (sent_last_minute,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM alert_deliveries WHERE channel = ? AND sent_at >= ?",
        )
        .bind(&channel)
        .bind(now - 60_000)
        .fetch_one(db)
        .await?;
        if sent_last_minute >= i64::from(settings.max_per_minute) {
            sqlx::query("UPDATE alert_deliveries SET next_try = ? WHERE id = ?")
                .bind(now + 5_000)
                .bind(id)
                .execute(db)
                .await?;
            continue;
        }
        let alert: Alert = match serde_json::from_str(&alert) {
            Ok(a) => a,
            Err(e) => {
                fail(db, id, attempts, &format!("unreadable alert: {e}"), true).await?;
                continue;
            }
        };
        let result = match (hook, email) {
            (Some(hook), _) => post(client, hook, &alert).await,
            (None, Some(e)) => send_mail(e, &alert).await,
            (None, None) => unreachable!("checked above"),
        };
        match result {
            Ok(()) => {
                sqlx::query(
                    "UPDATE alert_deliveries SET status = 'sent', sent_at = ?, attempts = attempts + 1 WHERE id = ?",
                )
                .bind(now_ms())
                .bind(id)
                .execute(db)
                .await?;
            }
            Err(why) => {
                tracing::warn!(delivery = id, "alert not delivered: {why}");
                fail(db, id, attempts, &why, false).await?;
            }
        }
    }
    Ok(())
}

/// Posts one alert to a webhook.
async fn post(client: &reqwest::Client, hook: &Webhook, alert: &Alert) -> Result<(), String> {
    let body = Body::of(alert, hook.format);
    let mut req = client
        .post(&hook.url)
        .header(reqwest::header::CONTENT_TYPE, body.content_type)
        .header(
            reqwest::header::USER_AGENT,
            concat!("bento/", env!("CARGO_PKG_VERSION")),
        );
    for (k, v) in &body.headers {
        req = req.header(*k, v);
    }
    match req.body(body.body).send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("the receiver answered {}", r.status())),
        // reqwest's message names the URL: keep only what went wrong.
        Err(e) => Err(describe(&e)),
    }
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        format!("no answer within {}s", SEND_TIMEOUT.as_secs())
    } else if e.is_connect() {
        "cannot connect to the receiver".into()
    } else {
        "the request failed".into()
    }
}

/// A failed attempt: retried later, or given up.
async fn fail(
    db: &SqlitePool,
    id: i64,
    attempts: i64,
    why: &str,
    give_up: bool,
) -> Result<(), sqlx::Error> {
    let attempts = attempts + 1;
    let status = if give_up || attempts >= MAX_ATTEMPTS {
        "failed"
    } else {
        "pending"
    };
    sqlx::query(
        "UPDATE alert_deliveries SET status = ?, attempts = ?, last_error = ?, next_try = ? WHERE id = ?",
    )
    .bind(status)
    .bind(attempts)
    .bind(views::clip(why, 500))
    .bind(now_ms() + backoff(attempts).as_millis() as i64)
    .bind(id)
    .execute(db)
    .await?;
    Ok(())
}

struct DeliveryView {
    id: i64,
    created: String,
    event: String,
    subject: String,
    message: String,
    target: String,
    status: String,
    class: &'static str,
    attempts: i64,
    last_error: String,
}

#[derive(Template)]
#[template(path = "alerts.html")]
struct AlertsPage {
    nav: Nav,
    deliveries: Vec<DeliveryView>,
    receivers: usize,
}

type Row = (
    i64,
    i64,
    String,
    Option<String>,
    Option<i64>,
    bool,
    String,
    String,
    String,
    i64,
    Option<String>,
);

pub async fn page(State(state): State<AppState>, user: SessionUser) -> WebResult<Html<String>> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, created_at, event, host, rollout, recovered, message, target, status, attempts, last_error \
         FROM alert_deliveries ORDER BY id DESC LIMIT 200",
    )
    .fetch_all(&state.db)
    .await?;
    let deliveries = rows
        .into_iter()
        .map(
            |(id, at, event, host, rollout, recovered, message, target, status, attempts, err)| {
                DeliveryView {
                    id,
                    created: views::full_time_ms(Some(at)),
                    event: if recovered {
                        format!("{event} (recovered)")
                    } else {
                        event
                    },
                    subject: match (host, rollout) {
                        (Some(h), _) => h,
                        (None, Some(r)) => format!("rollout {r}"),
                        _ => String::new(),
                    },
                    message,
                    target,
                    class: match status.as_str() {
                        "sent" => "ok",
                        "failed" => "bad",
                        _ => "pending",
                    },
                    status,
                    attempts,
                    last_error: err.unwrap_or_default(),
                }
            },
        )
        .collect();
    let page = AlertsPage {
        nav: Nav::new(&user, "alerts"),
        deliveries,
        receivers: {
            let a = &state.settings().alerts;
            a.webhook.len() + usize::from(a.email.is_some())
        },
    };
    Ok(Html(page.render().map_err(WebError::internal)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_ten_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(4), Duration::from_secs(40));
        assert_eq!(backoff(30), Duration::from_secs(600));
    }

    #[test]
    fn receivers_are_shown_without_their_secret() {
        assert_eq!(
            redacted("https://hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            redacted("https://user:pw@ntfy.example:8443/topic?auth=x"),
            "https://ntfy.example:8443/…"
        );
    }
}
