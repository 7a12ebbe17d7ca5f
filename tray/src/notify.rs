//! Desktop notifications (org.freedesktop.Notifications through notify-rust): a
//! thin shell that sends what `model::Decider` decided and hands button clicks back.
//! It keeps the id of the notice shown for each [`Topic`], so the next one on the
//! topic replaces it (`replaces_id`) and a critical one is withdrawn
//! (`CloseNotification`) once the model says its topic is over.

use std::collections::{HashMap, VecDeque};

use bento_core::agent_proto::AgentStatus;

use notify_rust::{Hint, Notification, NotificationResponse};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::model::{Notice, NoticeAction, Topic, Urgency};

/// The name notification servers show as the sender.
pub const APP_NAME: &str = "Software updates";

/// How many notifications keep listening for a click. Each holds a D-Bus
/// connection until the server closes it, and some servers keep notifications
/// for long: the oldest stop listening first.
const LISTENING: usize = 6;

#[derive(Debug)]
pub struct Notifier {
    clicks: mpsc::UnboundedSender<NoticeAction>,
    /// Listeners for clicks, by notification id, oldest first.
    listening: VecDeque<(u32, JoinHandle<()>)>,
    /// The notice on screen for each topic: its id and how loud it was.
    shown: HashMap<Topic, (u32, Urgency)>,
}

impl Notifier {
    /// Button clicks on sent notifications arrive on `clicks`.
    pub fn new(clicks: mpsc::UnboundedSender<NoticeAction>) -> Notifier {
        Notifier {
            clicks,
            listening: VecDeque::new(),
            shown: HashMap::new(),
        }
    }

    /// Whether the notification server shows buttons; `false` when there is none.
    pub async fn supports_actions(&self) -> bool {
        // notify-rust only offers a blocking call for this; ask over zbus directly.
        let caps = async {
            let conn = zbus::Connection::session().await?;
            let reply = conn
                .call_method(
                    Some("org.freedesktop.Notifications"),
                    "/org/freedesktop/Notifications",
                    Some("org.freedesktop.Notifications"),
                    "GetCapabilities",
                    &(),
                )
                .await?;
            reply.body().deserialize::<Vec<String>>()
        };
        match caps.await {
            Ok(caps) => caps.iter().any(|c| c == "actions"),
            Err(e) => {
                tracing::debug!("no notification capabilities: {e}");
                false
            }
        }
    }

    /// Sends one notification, in place of the one shown on its topic; when it has
    /// buttons, waits for a click in the background.
    pub async fn show(&mut self, n: &Notice) -> Result<u32, notify_rust::error::Error> {
        let mut note = Notification::new();
        let replaces = n.topic.and_then(|t| self.shown.get(&t)).map(|&(id, _)| id);
        if let Some(id) = replaces {
            note.id(id);
            // The old buttons are gone with it; a click must not be heard twice.
            self.stop_listening(id);
        }
        note.appname(APP_NAME)
            .summary(&n.summary)
            .body(&n.body)
            .icon(n.icon)
            .hint(Hint::DesktopEntry("bento-tray".to_owned()))
            .urgency(match n.urgency {
                Urgency::Normal => notify_rust::Urgency::Normal,
                Urgency::Critical => notify_rust::Urgency::Critical,
            });
        for a in &n.actions {
            note.action(&a.key(), a.label());
        }
        let handle = note.show_async().await?;
        let id = handle.id();
        match replaces {
            Some(old) => tracing::info!("notified #{id} (replacing #{old}): {}", n.summary),
            None => tracing::info!("notified #{id}: {}", n.summary),
        }
        if let Some(t) = n.topic {
            self.shown.insert(t, (id, n.urgency));
        }
        if !n.actions.is_empty() {
            let clicks = self.clicks.clone();
            // The handle keeps the connection the server answers on (some servers
            // send `ActionInvoked` only to the notification's sender).
            self.listening.retain(|(_, t)| !t.is_finished());
            if self.listening.len() >= LISTENING {
                if let Some((_, oldest)) = self.listening.pop_front() {
                    oldest.abort();
                }
            }
            self.listening.push_back((
                id,
                tokio::spawn(async move {
                    handle
                        .wait_for_action_async(|r| {
                            let key = match r {
                                NotificationResponse::Action(k) => k.as_str(),
                                NotificationResponse::Default => "default",
                                _ => return,
                            };
                            if let Some(action) = NoticeAction::from_key(key) {
                                let _ = clicks.send(action);
                            }
                        })
                        .await;
                }),
            ));
        }
        Ok(id)
    }

    /// Withdraws the critical notices whose topic `status` shows is over (a failed
    /// update followed by one that installed, a restart no longer scheduled).
    pub async fn withdraw_over(&mut self, status: Option<&AgentStatus>) {
        let over: Vec<(Topic, u32)> = self
            .shown
            .iter()
            .filter(|(t, (_, u))| *u == Urgency::Critical && t.is_over(status))
            .map(|(t, (id, _))| (*t, *id))
            .collect();
        for (topic, id) in over {
            self.shown.remove(&topic);
            self.stop_listening(id);
            match close(id).await {
                Ok(()) => tracing::info!("withdrew notification #{id} ({topic:?} is over)"),
                // Already dismissed by the user, or the server went: nothing to withdraw.
                Err(e) => tracing::debug!("could not withdraw notification #{id}: {e}"),
            }
        }
    }

    fn stop_listening(&mut self, id: u32) {
        self.listening.retain(|(i, t)| {
            if *i == id {
                t.abort();
            }
            *i != id
        });
    }
}

async fn close(id: u32) -> zbus::Result<()> {
    let conn = zbus::Connection::session().await?;
    conn.call_method(
        Some("org.freedesktop.Notifications"),
        "/org/freedesktop/Notifications",
        Some("org.freedesktop.Notifications"),
        "CloseNotification",
        &(id,),
    )
    .await?;
    Ok(())
}
