//! `/metrics` (Prometheus text format; a session or a bearer token) and
//! `/healthz` (open: load balancers and the NixOS module's checks use it).

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bento_core::status::{HostStatus, State as HostState};

use super::auth::ApiUser;
use super::error::ApiResult;
use super::AppState;

/// Upper bounds (seconds) of the job duration histogram.
const BUCKETS: [f64; 10] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// One series per host (host names are `[a-z0-9-]`: no label escaping needed):
/// its state (value 1, as kube-state-metrics does for phases), when it was last
/// seen, whether a reboot is pending and whether it is offline.
fn per_host<'a>(out: &mut String, hosts: impl Iterator<Item = &'a HostStatus> + Clone) {
    out.push_str(
        "# HELP bento_host_state The host's state (1 for the state it is in).\n# TYPE bento_host_state gauge\n",
    );
    for h in hosts.clone() {
        let _ = writeln!(
            out,
            "bento_host_state{{host=\"{}\",state=\"{}\"}} 1",
            h.host,
            h.state.id()
        );
    }
    out.push_str(
        "# HELP bento_host_last_seen_timestamp_seconds When the host last reported or sent its heartbeat (Unix time).\n\
         # TYPE bento_host_last_seen_timestamp_seconds gauge\n",
    );
    for h in hosts.clone() {
        if let Some(t) = h.last_seen {
            let _ = writeln!(
                out,
                "bento_host_last_seen_timestamp_seconds{{host=\"{}\"}} {}",
                h.host,
                t.unix_timestamp()
            );
        }
    }
    out.push_str(
        "# HELP bento_host_reboot_pending Whether the host runs an older kernel than it built.\n\
         # TYPE bento_host_reboot_pending gauge\n",
    );
    for h in hosts.clone() {
        let _ = writeln!(
            out,
            "bento_host_reboot_pending{{host=\"{}\"}} {}",
            h.host,
            u8::from(h.reboot_pending)
        );
    }
    out.push_str(
        "# HELP bento_host_offline Whether the host's heartbeat is late.\n# TYPE bento_host_offline gauge\n",
    );
    for h in hosts {
        let _ = writeln!(
            out,
            "bento_host_offline{{host=\"{}\"}} {}",
            h.host,
            u8::from(h.offline)
        );
    }
}

/// The rollouts under way and the last one that ended: status, wave, and hosts
/// per phase.
async fn rollouts(out: &mut String, state: &AppState) -> Result<(), sqlx::Error> {
    let shown: Vec<(i64, String, i64, i64)> = sqlx::query_as(
        "SELECT id, status, wave, waves FROM rollouts WHERE status = 'running' \
         UNION SELECT * FROM (SELECT id, status, wave, waves FROM rollouts WHERE status != 'running' ORDER BY id DESC LIMIT 1) \
         ORDER BY id",
    )
    .fetch_all(&state.db)
    .await?;
    out.push_str(
        "# HELP bento_rollout_status A rollout's status (1), for those under way and the last one that ended.\n\
         # TYPE bento_rollout_status gauge\n",
    );
    for (id, status, _, _) in &shown {
        let _ = writeln!(
            out,
            "bento_rollout_status{{rollout=\"{id}\",status=\"{status}\"}} 1"
        );
    }
    out.push_str(
        "# HELP bento_rollout_wave The wave under way (from 1) and the waves planned.\n# TYPE bento_rollout_wave gauge\n",
    );
    for (id, _, wave, waves) in &shown {
        let _ = writeln!(
            out,
            "bento_rollout_wave{{rollout=\"{id}\"}} {}",
            (wave + 1).min(*waves)
        );
        let _ = writeln!(out, "bento_rollout_waves{{rollout=\"{id}\"}} {waves}");
    }
    out.push_str(
        "# HELP bento_rollout_hosts A rollout's hosts per phase (pending: its wave is not published).\n\
         # TYPE bento_rollout_hosts gauge\n",
    );
    for (id, _, _, _) in &shown {
        let phases: Vec<(String, i64)> = sqlx::query_as(
            "SELECT phase, COUNT(*) FROM rollout_hosts WHERE rollout_id = ? GROUP BY phase ORDER BY phase",
        )
        .bind(id)
        .fetch_all(&state.db)
        .await?;
        for (phase, n) in phases {
            let _ = writeln!(
                out,
                "bento_rollout_hosts{{rollout=\"{id}\",phase=\"{phase}\"}} {n}"
            );
        }
    }
    Ok(())
}

pub async fn metrics(State(state): State<AppState>, _user: ApiUser) -> ApiResult<Response> {
    let mut out = String::with_capacity(4096);
    {
        let cache = state.fleet.read();
        let mut counts = [0usize; HostState::ALL.len()];
        let (mut reboot, mut offline) = (0, 0);
        for h in cache.hosts.values() {
            if let Some(i) = HostState::ALL.iter().position(|s| *s == h.state) {
                counts[i] += 1;
            }
            reboot += h.reboot_pending as usize;
            offline += h.offline as usize;
        }
        out.push_str("# HELP bento_hosts Hosts per state.\n# TYPE bento_hosts gauge\n");
        for (s, n) in HostState::ALL.iter().zip(counts) {
            let _ = writeln!(out, "bento_hosts{{state=\"{}\"}} {n}", s.id());
        }
        let _ = writeln!(
            out,
            "# HELP bento_hosts_reboot_pending Hosts running an older kernel than they built.\n\
             # TYPE bento_hosts_reboot_pending gauge\nbento_hosts_reboot_pending {reboot}"
        );
        let _ = writeln!(
            out,
            "# HELP bento_hosts_offline Hosts whose heartbeat is late.\n\
             # TYPE bento_hosts_offline gauge\nbento_hosts_offline {offline}"
        );
        per_host(&mut out, cache.hosts.values().map(|h| &**h));
    }
    rollouts(&mut out, &state).await?;
    let failing = state
        .builds()
        .hosts
        .values()
        .filter(|b| b.failing())
        .count();
    let _ = writeln!(
        out,
        "# HELP bento_hosts_build_failing Hosts whose configuration did not build the last time it was tried.\n\
         # TYPE bento_hosts_build_failing gauge\nbento_hosts_build_failing {failing}"
    );
    let _ = writeln!(
        out,
        "# HELP bento_reports_ingested_total Reports read from the chroot since the panel started.\n\
         # TYPE bento_reports_ingested_total counter\nbento_reports_ingested_total {}",
        state.fleet.reports_ingested.load(Ordering::Relaxed)
    );

    if let Some(sftp) = &state.config.sftp {
        let _ = writeln!(
            out,
            "# HELP bento_sftp_up Whether the embedded SFTP server is serving.\n\
             # TYPE bento_sftp_up gauge\nbento_sftp_up {}\n\
             # HELP bento_sftp_restarts_total Times the embedded SFTP server was started again.\n\
             # TYPE bento_sftp_restarts_total counter\nbento_sftp_restarts_total {}",
            u8::from(sftp.is_up()),
            sftp.restarts()
        );
    }
    let by_status: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT kind, status, COUNT(*) FROM jobs GROUP BY kind, status ORDER BY kind, status",
    )
    .fetch_all(&state.db)
    .await?;
    out.push_str("# HELP bento_jobs Jobs per kind and status.\n# TYPE bento_jobs gauge\n");
    for (kind, status, n) in &by_status {
        let _ = writeln!(out, "bento_jobs{{kind=\"{kind}\",status=\"{status}\"}} {n}");
    }
    let durations: Vec<(String, i64)> = sqlx::query_as(
        "SELECT kind, finished_at - started_at FROM jobs \
         WHERE status IN ('succeeded', 'failed') AND started_at IS NOT NULL AND finished_at IS NOT NULL \
         ORDER BY kind",
    )
    .fetch_all(&state.db)
    .await?;
    out.push_str(
        "# HELP bento_job_duration_seconds Duration of finished jobs.\n# TYPE bento_job_duration_seconds histogram\n",
    );
    let mut i = 0;
    while i < durations.len() {
        let kind = &durations[i].0;
        let j = durations[i..]
            .iter()
            .position(|(k, _)| k != kind)
            .map_or(durations.len(), |p| i + p);
        let secs: Vec<f64> = durations[i..j]
            .iter()
            .map(|(_, ms)| *ms as f64 / 1000.0)
            .collect();
        for le in BUCKETS {
            let n = secs.iter().filter(|s| **s <= le).count();
            let _ = writeln!(
                out,
                "bento_job_duration_seconds_bucket{{kind=\"{kind}\",le=\"{le}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "bento_job_duration_seconds_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {}",
            secs.len()
        );
        let _ = writeln!(
            out,
            "bento_job_duration_seconds_sum{{kind=\"{kind}\"}} {:.3}",
            secs.iter().sum::<f64>()
        );
        let _ = writeln!(
            out,
            "bento_job_duration_seconds_count{{kind=\"{kind}\"}} {}",
            secs.len()
        );
        i = j;
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response())
}

pub async fn healthz(State(state): State<AppState>) -> Response {
    if let Some(sftp) = state.config.sftp.as_ref().filter(|h| !h.is_up()) {
        let why = sftp.last_error().unwrap_or_else(|| "starting".into());
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("SFTP server down: {why}\n"),
        )
            .into_response();
    }
    match sqlx::query_scalar::<_, i64>("SELECT 1")
        .fetch_one(&state.db)
        .await
    {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => {
            tracing::error!("health check: the database does not answer: {e}");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response()
        }
    }
}
