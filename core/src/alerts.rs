//! Alerts: what is worth telling the admin, once. `[alerts]` in bento.toml names
//! where they go (`[[alerts.webhook]]`); [`Tracker`] turns the hosts' states and
//! the rollouts' ends into alerts, one per host and event until it recovers, then
//! a "recovered" one; [`Body`] is what a receiver gets (generic JSON, ntfy or a
//! Slack-compatible form). `bento serve` delivers them (outbox, retries).

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Event {
    /// The host's last update failed.
    Failed,
    /// The host rolled back to its last good system.
    RolledBack,
    /// The host's heartbeat is late.
    Offline,
    /// A reboot has been pending longer than `reboot_pending_after`.
    RebootPending,
    /// A rollout halted on failures.
    RolloutHalted,
    /// A rollout ended (every wave concluded, or aborted).
    RolloutFinished,
}

impl Event {
    pub const ALL: [Event; 6] = [
        Event::Failed,
        Event::RolledBack,
        Event::Offline,
        Event::RebootPending,
        Event::RolloutHalted,
        Event::RolloutFinished,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Event::Failed => "failed",
            Event::RolledBack => "rolled-back",
            Event::Offline => "offline",
            Event::RebootPending => "reboot-pending",
            Event::RolloutHalted => "rollout-halted",
            Event::RolloutFinished => "rollout-finished",
        }
    }

    pub fn from_id(id: &str) -> Option<Event> {
        Event::ALL.into_iter().find(|e| e.id() == id)
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// The body a webhook receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// `{"event", "host", "rollout", "recovered", "message", "at"}`.
    #[default]
    Json,
    /// ntfy: the message as text, `Title`, `Tags` and `Priority` headers.
    Ntfy,
    /// Slack-compatible incoming webhook: `{"text": ...}` (Mattermost, Rocket.Chat too).
    Slack,
}

/// `[[alerts.webhook]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// `http://` or `https://`.
    pub url: String,
    /// The events sent (default: all).
    #[serde(default)]
    pub events: Option<Vec<Event>>,
    #[serde(default)]
    pub format: Format,
}

impl Webhook {
    pub fn wants(&self, e: Event) -> bool {
        self.events.as_ref().is_none_or(|es| es.contains(&e))
    }
}

/// How `[alerts.email]` talks to its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SmtpTls {
    /// Plain SMTP, then STARTTLS (required).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS at all: a relay on this machine or a trusted network only.
    None,
}

/// `[alerts.email]`: alerts by mail, over SMTP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Email {
    /// The SMTP server's name or address.
    pub server: String,
    /// Default: 587 (STARTTLS), 465 (TLS), 25 (none).
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: SmtpTls,
    /// `bento <bento@example.org>`.
    pub from: String,
    pub to: Vec<String>,
    pub username: Option<String>,
    /// A file holding the password (never the password in bento.toml).
    pub password_file: Option<std::path::PathBuf>,
    /// The events sent (default: all).
    #[serde(default)]
    pub events: Option<Vec<Event>>,
}

impl Email {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
            SmtpTls::None => 25,
        })
    }

    pub fn wants(&self, e: Event) -> bool {
        self.events.as_ref().is_none_or(|es| es.contains(&e))
    }
}

/// `[alerts]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSettings {
    #[serde(default)]
    pub webhook: Vec<Webhook>,
    pub email: Option<Email>,
    /// Seconds a reboot may be pending before it is an alert (default a day).
    #[serde(default = "default_reboot_after")]
    pub reboot_pending_after: u64,
    /// Deliveries per receiver and minute; more wait their turn (default 20).
    #[serde(default = "default_per_minute")]
    pub max_per_minute: u32,
}

fn default_reboot_after() -> u64 {
    86_400
}
fn default_per_minute() -> u32 {
    20
}

impl Default for AlertSettings {
    fn default() -> Self {
        AlertSettings {
            webhook: Vec::new(),
            email: None,
            reboot_pending_after: default_reboot_after(),
            max_per_minute: default_per_minute(),
        }
    }
}

impl AlertSettings {
    /// What is wrong with these settings, for `bento check-config`.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, w) in self.webhook.iter().enumerate() {
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                out.push(format!(
                    "alerts.webhook[{i}].url {:?}: only http:// and https:// URLs are supported",
                    w.url
                ));
            }
        }
        if let Some(e) = &self.email {
            if e.to.is_empty() {
                out.push("alerts.email.to names nobody".into());
            }
            if e.server.is_empty() {
                out.push("alerts.email.server is empty".into());
            }
            if e.username.is_some() != e.password_file.is_some() {
                out.push("alerts.email: username and password_file go together".into());
            }
        }
        if self.max_per_minute == 0 {
            out.push("alerts.max_per_minute must be at least 1".into());
        }
        out
    }
}

/// One alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub event: Event,
    pub host: Option<String>,
    pub rollout: Option<i64>,
    /// The condition ended (host events only).
    pub recovered: bool,
    pub message: String,
    /// Unix seconds.
    pub at: i64,
}

/// What the tracker knows of a host at one look.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostFacts {
    pub host: String,
    /// The last update failed (and why).
    pub failed: Option<String>,
    /// It rolled back (and why).
    pub rolled_back: Option<String>,
    pub offline: bool,
    /// How long a reboot has been pending.
    pub reboot_pending_for: Option<Duration>,
}

/// Active host conditions: one alert each until it recovers. The caller keeps
/// them across restarts (each alert says what started or ended;
/// [`Tracker::restore`] takes them back), so a restart
/// of the panel does not send everything again.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    active: BTreeSet<(String, Event)>,
}

impl Tracker {
    pub fn restore(keys: impl IntoIterator<Item = (String, Event)>) -> Self {
        Tracker {
            active: keys.into_iter().collect(),
        }
    }

    /// The alerts for one look at `host`: new conditions and recovered ones.
    pub fn observe(&mut self, facts: &HostFacts, settings: &AlertSettings, now: i64) -> Vec<Alert> {
        let reboot_after = Duration::from_secs(settings.reboot_pending_after);
        let conditions: [(Event, Option<String>); 4] = [
            (
                Event::Failed,
                facts
                    .failed
                    .as_ref()
                    .map(|why| format!("{}: the update failed: {why}", facts.host)),
            ),
            (
                Event::RolledBack,
                facts.rolled_back.as_ref().map(|why| {
                    format!("{}: rolled back to its last good system: {why}", facts.host)
                }),
            ),
            (
                Event::Offline,
                facts
                    .offline
                    .then(|| format!("{}: offline (its heartbeat is late)", facts.host)),
            ),
            (
                Event::RebootPending,
                facts
                    .reboot_pending_for
                    .filter(|d| *d >= reboot_after)
                    .map(|d| {
                        format!(
                            "{}: a reboot has been pending for {}",
                            facts.host,
                            how_long(d)
                        )
                    }),
            ),
        ];
        let mut out = Vec::new();
        for (event, now_msg) in conditions {
            let key = (facts.host.clone(), event);
            let was = self.active.contains(&key);
            // A reboot-pending alert ends with the reboot, not when the pending
            // time looks short again: the panel counts that time from when it
            // saw the reboot pending, which starts over when the panel does.
            let still = event == Event::RebootPending && facts.reboot_pending_for.is_some();
            match (was, now_msg) {
                (true, None) if still => {}
                (false, Some(message)) => {
                    self.active.insert(key);
                    out.push(Alert {
                        event,
                        host: Some(facts.host.clone()),
                        rollout: None,
                        recovered: false,
                        message,
                        at: now,
                    });
                }
                (true, None) => {
                    self.active.remove(&key);
                    out.push(Alert {
                        event,
                        host: Some(facts.host.clone()),
                        rollout: None,
                        recovered: true,
                        message: format!("{}: recovered ({event})", facts.host),
                        at: now,
                    });
                }
                _ => {}
            }
        }
        out
    }
}

/// A duration as an alert says it: `45 s`, `12 min`, `5 h`, `3 d`.
fn how_long(d: Duration) -> String {
    match d.as_secs() {
        s if s < 120 => format!("{s} s"),
        s if s < 2 * 3600 => format!("{} min", s / 60),
        s if s < 2 * 86_400 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    }
}

/// What a receiver gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body {
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Body {
    /// The one-line title of an alert (a mail's subject, ntfy's `Title`).
    pub fn title(alert: &Alert) -> String {
        match (alert.recovered, &alert.host, alert.rollout) {
            (true, Some(h), _) => format!("bento: {h} recovered"),
            (false, Some(h), _) => format!("bento: {h} {}", alert.event),
            (_, None, Some(r)) => format!("bento: rollout {r} {}", alert.event),
            _ => format!("bento: {}", alert.event),
        }
    }

    pub fn of(alert: &Alert, format: Format) -> Body {
        let title = Body::title(alert);
        match format {
            Format::Json => Body {
                content_type: "application/json",
                headers: Vec::new(),
                body: serde_json::to_string(alert).unwrap_or_default(),
            },
            Format::Ntfy => Body {
                content_type: "text/plain; charset=utf-8",
                headers: vec![
                    ("Title", title),
                    (
                        "Tags",
                        if alert.recovered {
                            "white_check_mark".into()
                        } else {
                            "warning".into()
                        },
                    ),
                    (
                        "Priority",
                        if alert.recovered { "default" } else { "high" }.into(),
                    ),
                ],
                body: alert.message.clone(),
            },
            Format::Slack => Body {
                content_type: "application/json",
                headers: Vec::new(),
                // Slack's control sequences (`<!channel>`, `<url|text>`) come
                // from `<`, `>` and `&`: a host's text is escaped as Slack asks.
                body: serde_json::json!({
                    "text": format!("*{}*\n{}", slack_escape(&title), slack_escape(&alert.message))
                })
                .to_string(),
            },
        }
    }
}

/// `&`, `<` and `>` as Slack's message format wants them escaped.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(host: &str) -> HostFacts {
        HostFacts {
            host: host.into(),
            ..HostFacts::default()
        }
    }

    #[test]
    fn one_alert_per_condition_until_it_recovers() {
        let s = AlertSettings::default();
        let mut t = Tracker::default();
        assert!(t.observe(&facts("web1"), &s, 1).is_empty());
        let bad = HostFacts {
            failed: Some("build of system failed".into()),
            ..facts("web1")
        };
        let a = t.observe(&bad, &s, 2);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].event, Event::Failed);
        assert!(!a[0].recovered);
        assert!(a[0].message.contains("web1") && a[0].message.contains("build of system failed"));
        // Still failing: nothing new.
        assert!(t.observe(&bad, &s, 3).is_empty());
        let a = t.observe(&facts("web1"), &s, 4);
        assert_eq!(a.len(), 1);
        assert!(a[0].recovered);
        assert!(t.observe(&facts("web1"), &s, 5).is_empty());
        // A restored tracker does not alert again.
        let mut again = Tracker::restore([("web1".to_owned(), Event::Failed)]);
        assert!(again.observe(&bad, &s, 6).is_empty());
    }

    #[test]
    fn a_reboot_pending_counts_only_after_its_time() {
        let s = AlertSettings {
            reboot_pending_after: 3600,
            ..AlertSettings::default()
        };
        let mut t = Tracker::default();
        let f = |secs| HostFacts {
            reboot_pending_for: Some(Duration::from_secs(secs)),
            ..facts("db1")
        };
        assert!(t.observe(&f(60), &s, 1).is_empty());
        let a = t.observe(&f(7200), &s, 2);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].event, Event::RebootPending);
        assert!(
            a[0].message.ends_with("pending for 2 h"),
            "{}",
            a[0].message
        );
        // Restarted, the panel counts the pending time from zero again: still
        // pending is not recovered.
        let mut again = Tracker::restore([("db1".to_owned(), Event::RebootPending)]);
        assert!(again.observe(&f(0), &s, 3).is_empty());
        let a = again.observe(&facts("db1"), &s, 4);
        assert_eq!(a.len(), 1);
        assert!(a[0].recovered);
    }

    #[test]
    fn durations_read_in_their_unit() {
        assert_eq!(how_long(Duration::from_secs(5)), "5 s");
        assert_eq!(how_long(Duration::from_secs(600)), "10 min");
        assert_eq!(how_long(Duration::from_secs(86_400)), "24 h");
        assert_eq!(how_long(Duration::from_secs(5 * 86_400)), "5 d");
    }

    #[test]
    fn settings_parse_and_name_what_is_wrong() {
        let s: AlertSettings = toml::from_str(
            "[[webhook]]\nurl = \"https://ntfy.example/bento\"\nformat = \"ntfy\"\nevents = [\"failed\", \"rollout-halted\"]\n",
        )
        .unwrap();
        assert!(s.problems().is_empty());
        assert!(s.webhook[0].wants(Event::Failed));
        assert!(!s.webhook[0].wants(Event::Offline));
        let e =
            toml::from_str::<AlertSettings>("[[webhook]]\nurl = \"x\"\nevents = [\"exploded\"]\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("exploded"), "{e}");
        let s: AlertSettings = toml::from_str("[[webhook]]\nurl = \"ftp://x\"\n").unwrap();
        assert!(s.problems()[0].contains("ftp://x"));
    }

    #[test]
    fn bodies_for_each_format() {
        let a = Alert {
            event: Event::Failed,
            host: Some("web1".into()),
            rollout: None,
            recovered: false,
            message: "web1: the update failed: <b>x</b>".into(),
            at: 7,
        };
        let j = Body::of(&a, Format::Json);
        let v: serde_json::Value = serde_json::from_str(&j.body).unwrap();
        assert_eq!(v["event"], "failed");
        assert_eq!(v["host"], "web1");
        let n = Body::of(&a, Format::Ntfy);
        assert_eq!(n.body, a.message);
        assert!(n
            .headers
            .iter()
            .any(|(k, v)| *k == "Title" && v == "bento: web1 failed"));
        let s = Body::of(&a, Format::Slack);
        let v: serde_json::Value = serde_json::from_str(&s.body).unwrap();
        let text = v["text"].as_str().unwrap();
        assert!(text.contains("web1 failed"));
        // A compromised host's text cannot ping the channel or hide a link.
        assert!(
            text.contains("&lt;b&gt;x&lt;/b&gt;") && !text.contains('<'),
            "{text}"
        );
    }
}
