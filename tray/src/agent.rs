//! The agent's socket, from the desktop side: follow it (status, then events,
//! reconnecting with backoff) and ask it one thing at a time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bento_core::agent_proto::{AgentStatus, Event, Request, Response, STATUS_FILE};
use time::OffsetDateTime;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

/// First wait after a failed connection; doubles up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a one-shot request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent's socket does not answer.
    #[error("cannot reach the agent at {path}: {source}")]
    Unreachable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the agent closed the connection")]
    Closed,
    #[error("the agent refused: {0}")]
    Refused(String),
    #[error("the agent did not answer in time")]
    Timeout,
    #[error("talking to the agent: {0}")]
    Io(#[from] std::io::Error),
    #[error("the agent sent something this tray does not understand: {0}")]
    Protocol(#[from] serde_json::Error),
}

/// What following the agent yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Connected (again): the full status.
    Connected(Box<AgentStatus>),
    Event(Event),
    /// The connection is gone (or never came); retrying in the background.
    Lost,
}

/// Follows the agent until `tx` is closed: connects, subscribes, forwards the status
/// and every event; when the connection fails or ends, reports [`Update::Lost`]
/// once and retries with backoff.
pub async fn follow(socket: PathBuf, tx: mpsc::Sender<Update>) {
    let mut backoff = BACKOFF_START;
    let mut lost_sent = false;
    loop {
        match subscribe(&socket, &tx).await {
            Outcome::ReceiverGone => return,
            Outcome::Dropped(why) => {
                tracing::warn!(
                    "lost the agent at {} ({why}); reconnecting",
                    socket.display()
                );
                backoff = BACKOFF_START;
                lost_sent = false;
            }
            Outcome::NotConnected(e) if !lost_sent => tracing::info!("waiting for the agent: {e}"),
            Outcome::NotConnected(e) => tracing::debug!("agent still unreachable: {e}"),
        }
        if !lost_sent {
            if tx.send(Update::Lost).await.is_err() {
                return;
            }
            lost_sent = true;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

enum Outcome {
    ReceiverGone,
    /// Had a status, then the connection ended.
    Dropped(String),
    /// Never got as far as a status.
    NotConnected(AgentError),
}

async fn subscribe(socket: &Path, tx: &mpsc::Sender<Update>) -> Outcome {
    let stream = match UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(source) => {
            return Outcome::NotConnected(AgentError::Unreachable {
                path: socket.to_owned(),
                source,
            })
        }
    };
    let (read, mut write) = stream.into_split();
    if let Err(e) = write
        .write_all(Request::Subscribe.to_line().as_bytes())
        .await
    {
        return Outcome::NotConnected(e.into());
    }
    let mut lines = BufReader::new(read).lines();
    let mut connected = false;
    let end = |connected: bool, e: AgentError| {
        if connected {
            Outcome::Dropped(e.to_string())
        } else {
            Outcome::NotConnected(e)
        }
    };
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => return end(connected, AgentError::Closed),
            Err(e) => return end(connected, e.into()),
        };
        if line.trim().is_empty() {
            continue;
        }
        let update = match serde_json::from_str::<Response>(&line) {
            Ok(Response::Status { status }) => {
                tracing::info!("connected to the agent on {}", status.host);
                connected = true;
                Update::Connected(status)
            }
            Ok(Response::Event { event }) => Update::Event(event),
            Ok(Response::Denied { message } | Response::Error { message }) => {
                return end(connected, AgentError::Refused(message));
            }
            Ok(Response::Ok { .. }) => continue,
            Err(e) => {
                // A newer agent may send kinds this tray does not know: skip them.
                tracing::warn!("ignoring a line from the agent: {e}");
                continue;
            }
        };
        if tx.send(update).await.is_err() {
            return Outcome::ReceiverGone;
        }
    }
}

/// Sends one request on its own connection and returns the agent's answer.
pub async fn request(socket: &Path, req: &Request) -> Result<Response, AgentError> {
    let exchange = async {
        let mut stream =
            UnixStream::connect(socket)
                .await
                .map_err(|source| AgentError::Unreachable {
                    path: socket.to_owned(),
                    source,
                })?;
        stream.write_all(req.to_line().as_bytes()).await?;
        let mut lines = BufReader::new(stream).lines();
        while let Some(line) = lines.next_line().await? {
            if !line.trim().is_empty() {
                return Ok(serde_json::from_str(&line)?);
            }
        }
        Err(AgentError::Closed)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| AgentError::Timeout)?
}

/// The status the agent last wrote beside its socket (`status.json`, which stays
/// when it stops), as of the file's last change: what is known while it is away.
pub fn status_file(socket: &Path) -> Option<crate::model::LastKnown> {
    let path = socket.parent()?.join(STATUS_FILE);
    let read = || -> anyhow::Result<crate::model::LastKnown> {
        let bytes = std::fs::read(&path)?;
        let at = std::fs::metadata(&path)?.modified()?;
        Ok(crate::model::LastKnown {
            status: serde_json::from_slice(&bytes)?,
            at: OffsetDateTime::from(at),
        })
    };
    match read() {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::debug!("no last known status in {}: {e:#}", path.display());
            None
        }
    }
}
