//! The daemon's watch between polls: one SFTP session kept open, the published
//! revision read every `watch_interval` (one `readlink`), so a new release starts
//! within seconds instead of at the next poll. A dropped session is opened again
//! with backoff; the full poll (heartbeat, outbox, self-update) stays on `interval`.

use std::time::Duration;

use tokio::time::Instant;

use crate::agent::Agent;
use crate::remote::Remote;

/// Longest wait between two attempts to open the session again.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Returns when the server publishes a revision this host has neither applied nor
/// refused, or at `until` (the next full poll), whichever comes first.
pub async fn until_new_release(agent: &Agent, until: Instant) {
    let every = agent.cfg.watch_interval;
    if every.is_zero() {
        tokio::time::sleep_until(until).await;
        return;
    }
    let mut backoff = every;
    let mut session: Option<Remote> = None;
    while Instant::now() < until {
        let remote = match session.take() {
            Some(r) => r,
            None => match Remote::connect(&agent.cfg).await {
                Ok(r) => {
                    backoff = every;
                    r
                }
                Err(e) => {
                    tracing::debug!(
                        "watch: cannot connect ({e}); again in {}s",
                        backoff.as_secs()
                    );
                    tokio::time::sleep_until(until.min(Instant::now() + backoff)).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        match agent.published_revision(&remote).await {
            Ok(Some(rev)) if is_new(agent, &rev) => {
                tracing::info!("watch: {rev} was published");
                remote.close().await;
                return;
            }
            Ok(_) => session = Some(remote),
            Err(e) => {
                tracing::debug!("watch: the session dropped ({e})");
                remote.close().await;
                continue;
            }
        }
        tokio::time::sleep_until(until.min(Instant::now() + every)).await;
    }
    if let Some(r) = session {
        r.close().await;
    }
}

fn is_new(agent: &Agent, rev: &str) -> bool {
    let st = agent.state.load();
    let applied = st.applied.as_ref().is_some_and(|a| a.revision == rev);
    let refused = st.refused.as_ref().is_some_and(|r| r.revision == rev);
    !applied && !refused
}
