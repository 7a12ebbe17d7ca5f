//! Desktop notifications (org.freedesktop.Notifications through notify-rust): a
//! thin shell that sends what `model::Decider` decided and hands button clicks back.

use std::collections::VecDeque;

use notify_rust::{Hint, Notification, NotificationResponse};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::model::{Notice, NoticeAction, Urgency};

/// The name notification servers show as the sender.
pub const APP_NAME: &str = "Software updates";

/// How many notifications keep listening for a click. Each holds a D-Bus
/// connection until the server closes it, and some servers keep notifications
/// for long: the oldest stop listening first.
const LISTENING: usize = 6;

#[derive(Debug)]
pub struct Notifier {
    clicks: mpsc::UnboundedSender<NoticeAction>,
    listening: VecDeque<JoinHandle<()>>,
}

impl Notifier {
    /// Button clicks on sent notifications arrive on `clicks`.
    pub fn new(clicks: mpsc::UnboundedSender<NoticeAction>) -> Notifier {
        Notifier {
            clicks,
            listening: VecDeque::new(),
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

    /// Sends one notification; when it has buttons, waits for a click in the background.
    pub async fn show(&mut self, n: &Notice) -> Result<u32, notify_rust::error::Error> {
        let mut note = Notification::new();
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
        tracing::info!("notified #{id}: {}", n.summary);
        if !n.actions.is_empty() {
            let clicks = self.clicks.clone();
            // The handle keeps the connection the server answers on (some servers
            // send `ActionInvoked` only to the notification's sender).
            self.listening.retain(|t| !t.is_finished());
            if self.listening.len() >= LISTENING {
                if let Some(oldest) = self.listening.pop_front() {
                    oldest.abort();
                }
            }
            self.listening.push_back(tokio::spawn(async move {
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
            }));
        }
        Ok(id)
    }
}
