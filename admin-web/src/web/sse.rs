//! `/events`: what changed, as Server-Sent Events (`change` events with a JSON
//! [`Change`](super::Change)). Pages refresh the regions they show when a change
//! concerns them (`static/app.js`); without JavaScript nothing subscribes.

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::{broadcast, mpsc};

use super::auth::SessionUser;
use super::jobs::receiver_stream;
use super::{AppState, Change};

pub async fn events(State(state): State<AppState>, _user: SessionUser) -> Response {
    let (tx, rx) = mpsc::channel::<Event>(16);
    let mut changes = state.changes.subscribe();
    let mut shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        loop {
            let change = tokio::select! {
                c = changes.recv() => match c {
                    Ok(c) => c,
                    // Fell behind: tell the page to refresh everything.
                    Err(broadcast::error::RecvError::Lagged(_)) => Change { all: true, ..Change::default() },
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = shutdown.changed() => return,
                _ = tx.closed() => return,
            };
            let ev = match Event::default().event("change").json_data(&change) {
                Ok(ev) => ev,
                Err(_) => continue,
            };
            if tx.send(ev).await.is_err() {
                return;
            }
        }
    });
    Sse::new(receiver_stream(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}
