//! The daemon's watch between polls: one SFTP session kept open so a new release
//! starts within seconds instead of at the next poll. With `bento sftp` the
//! session holds a read of its watch ([`WATCH_FILE`]), answered the moment
//! `current` changes (and once a minute besides); with OpenSSH's server, which
//! has no such file, the published revision is read every `watch_interval` (one
//! `readlink`). A dropped session is opened again with backoff; the full poll
//! (heartbeat, outbox, self-update) stays on `interval`.

use std::time::Duration;

use bento_core::chroot::WATCH_FILE;
use tokio::time::Instant;

use crate::agent::{valid_revision, Agent};
use crate::remote::{Remote, RemoteError};

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
    while Instant::now() < until {
        let remote = match Remote::connect(&agent.cfg).await {
            Ok(r) => r,
            Err(e) => {
                let wait = spread(backoff);
                tracing::debug!(
                    "watch: cannot connect ({e}); again in {:.1}s (backoff {}s)",
                    wait.as_secs_f64(),
                    backoff.as_secs()
                );
                tokio::time::sleep_until(until.min(Instant::now() + wait)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let mut worked = false;
        let outcome = tokio::select! {
            o = watch_session(agent, &remote, every, &mut worked) => Some(o),
            () = tokio::time::sleep_until(until) => None,
        };
        match outcome {
            None => {
                remote.abort().await;
                return;
            }
            Some(Ok(rev)) => {
                tracing::info!("watch: {rev} was published");
                remote.close().await;
                return;
            }
            Some(Err(e)) => {
                remote.abort().await;
                if worked {
                    backoff = every;
                }
                let wait = spread(backoff);
                tracing::debug!(
                    "watch: the session dropped ({e}); again in {:.1}s (backoff {}s)",
                    wait.as_secs_f64(),
                    backoff.as_secs()
                );
                // Never at once: a server that fails every session must not
                // make the agent reconnect in a loop.
                tokio::time::sleep_until(until.min(Instant::now() + wait)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// A wait of `backoff` spread over its second half: the agents whose sessions
/// one restart of the server dropped at once do not all come back in the same
/// instant (and never sooner than half the backoff).
fn spread(backoff: Duration) -> Duration {
    use rand::Rng;
    let half = backoff / 2;
    half + Duration::from_millis(rand::thread_rng().gen_range(0..=half.as_millis() as u64))
}

/// Watches on one session until a revision this host has not seen is published;
/// an error when the session fails. `worked` turns true once a valid answer
/// came (a session that only ever answers nonsense keeps backing off).
async fn watch_session(
    agent: &Agent,
    remote: &Remote,
    every: Duration,
    worked: &mut bool,
) -> Result<String, RemoteError> {
    if let Some(mut w) = remote.watch().await? {
        while let Some(rev) = remote.watch_next(&mut w).await? {
            if !valid_revision(&rev) {
                return Err(RemoteError::Refused(format!(
                    "{WATCH_FILE} names {rev:?}, not a revision"
                )));
            }
            *worked = true;
            if is_new(agent, &rev) {
                return Ok(rev);
            }
        }
        // Nothing in `current` (or a chroot of the original tool's layout):
        // what is published is read instead.
    }
    loop {
        if let Some(rev) = agent.published_revision(remote).await? {
            if is_new(agent, &rev) {
                return Ok(rev);
            }
        }
        *worked = true;
        tokio::time::sleep(every).await;
    }
}

fn is_new(agent: &Agent, rev: &str) -> bool {
    let st = agent.state.load();
    let applied = st.applied.as_ref().is_some_and(|a| a.revision == rev);
    let refused = st.refused.as_ref().is_some_and(|r| r.revision == rev);
    !applied && !refused
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backoff_is_spread_over_its_second_half() {
        let b = Duration::from_secs(4);
        let waits: Vec<Duration> = (0..200).map(|_| spread(b)).collect();
        assert!(waits.iter().all(|w| *w >= b / 2 && *w <= b), "{waits:?}");
        let first = waits[0];
        assert!(waits.iter().any(|w| *w != first), "no spread: {first:?}");
    }
}
