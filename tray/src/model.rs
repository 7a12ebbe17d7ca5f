//! What the tray shows and says, decided from the agent's status and events alone.
//!
//! Nothing here touches D-Bus, sockets or files: [`view`] maps a status to the icon,
//! title, tooltip and menu; [`apply`] folds an event into the status the tray keeps;
//! [`Decider`] is the one place that decides which notifications are sent, and
//! remembers (by key) which ones already were, so a restart does not repeat them.
//! NixOS versions come in as a [`Versions`] table that the shells fill from the
//! store, and the last status heard as a [`LastKnown`] while the agent is away.

use std::collections::{HashSet, VecDeque};

use bento_core::agent_proto::{Activity, AgentStatus, Event, ScheduledReboot, UpdateRecord};
use bento_core::report::ReportStatus;
use serde::Serialize;
use time::{Duration, OffsetDateTime, UtcOffset};

use crate::version::Versions;

/// How far ahead of a scheduled restart the reminder comes.
pub const REMINDER_AHEAD: Duration = Duration::minutes(10);
/// One step of "Postpone restart".
pub const POSTPONE_STEP: Duration = Duration::hours(1);
/// How many notified keys the state file keeps (oldest dropped first).
const SEEN_CAPACITY: usize = 200;

/// The one state the icon shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Condition {
    UpToDate,
    Busy(Activity),
    RebootPending,
    Failed,
    RolledBack,
    Unreachable,
}

impl Condition {
    /// Decides the state; a running update wins, then a problem with the last
    /// update, then a pending restart.
    pub fn of(status: Option<&AgentStatus>) -> Condition {
        let Some(status) = status else {
            return Condition::Unreachable;
        };
        if status.activity != Activity::Idle {
            return Condition::Busy(status.activity);
        }
        match status.last_update.as_ref().map(|r| r.status) {
            Some(ReportStatus::Failure) => Condition::Failed,
            Some(ReportStatus::Rollback) => Condition::RolledBack,
            _ if status.reboot_required || status.reboot_scheduled.is_some() => {
                Condition::RebootPending
            }
            _ => Condition::UpToDate,
        }
    }

    /// Whether the state asks for the user's attention (SNI status `NeedsAttention`).
    pub fn needs_attention(self) -> bool {
        matches!(
            self,
            Condition::RebootPending | Condition::Failed | Condition::RolledBack
        )
    }

    pub fn headline(self) -> &'static str {
        match self {
            Condition::UpToDate => "Your computer is up to date",
            Condition::Busy(Activity::Checking) => "Checking for updates…",
            Condition::Busy(Activity::Downloading) => "Downloading updates…",
            Condition::Busy(Activity::Building) => "Preparing updates…",
            Condition::Busy(Activity::Activating) => "Installing updates…",
            Condition::Busy(Activity::Rebooting) => "Restarting to finish updating…",
            Condition::Busy(Activity::Idle) => "Updating…",
            Condition::RebootPending => "Restart required to finish updating",
            Condition::Failed => "The last update failed",
            Condition::RolledBack => "The last update was undone",
            Condition::Unreachable => "Cannot reach the update service",
        }
    }
}

/// Everything the tray item shows, ready for the D-Bus shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub condition: Condition,
    pub title: String,
    pub tooltip: String,
    pub menu: Menu,
}

/// Which menu entries exist and how they read. The status line is `View::title`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Menu {
    /// Whether "Check for updates now" can be clicked (not while busy or unreachable).
    pub check_enabled: bool,
    pub reboot_now: bool,
    /// Label and seconds for "Postpone restart" while a restart is scheduled and the
    /// admin's deadline leaves room.
    pub postpone: Option<(String, u64)>,
}

pub const MENU_CHECK: &str = "Check for updates now";
pub const MENU_DETAILS: &str = "Show details…";
pub const MENU_REBOOT: &str = "Restart now";
pub const MENU_QUIT: &str = "Quit";

/// The last status heard from the agent, kept while it cannot be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastKnown {
    pub status: AgentStatus,
    /// Until when it held: when the connection was lost (or when the agent last
    /// wrote its status file).
    pub at: OffsetDateTime,
}

/// The tray's view of `status` (`None`: the agent cannot be reached; then
/// `last` is what it said before).
pub fn view(
    status: Option<&AgentStatus>,
    last: Option<&LastKnown>,
    versions: &Versions,
    now: OffsetDateTime,
    tz: UtcOffset,
) -> View {
    let condition = Condition::of(status);
    let mut lines = Vec::new();
    let mut menu = Menu {
        check_enabled: false,
        reboot_now: false,
        postpone: None,
    };
    match status {
        None => {
            if let Some(l) = last {
                lines.push(format!(
                    "Last known state ({}): {}",
                    when(l.at, now, tz),
                    Condition::of(Some(&l.status)).headline()
                ));
                lines.extend(status_lines(&l.status, versions, now, tz));
            }
            lines.push("Updates resume as soon as the update service is back.".to_owned());
        }
        Some(s) => {
            menu.check_enabled = s.activity == Activity::Idle;
            menu.reboot_now = s.reboot_required || s.reboot_scheduled.is_some();
            menu.postpone = s
                .reboot_scheduled
                .as_ref()
                .and_then(|r| postpone_step(r, tz, now));
            lines.extend(status_lines(s, versions, now, tz));
            if s.reboot_scheduled.is_none()
                && s.reboot_required
                && condition != Condition::RebootPending
            {
                lines.push("A restart is needed to finish an earlier update".to_owned());
            }
            if s.server_reachable == Some(false) {
                lines.push("The last check could not reach the update server".to_owned());
            }
        }
    }
    View {
        condition,
        title: condition.headline().to_owned(),
        tooltip: lines.join("\n"),
        menu,
    }
}

/// What runs, the last update and a scheduled restart, one line each.
fn status_lines(
    s: &AgentStatus,
    versions: &Versions,
    now: OffsetDateTime,
    tz: UtcOffset,
) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(running) = running_version(s, versions, tz) {
        lines.push(format!("Running {running}"));
    }
    match &s.last_update {
        Some(u) => lines.push(format!(
            "Last update {}: {}",
            when(u.time, now, tz),
            result_words(u)
        )),
        None => lines.push("No update installed yet".to_owned()),
    }
    if let Some(r) = &s.reboot_scheduled {
        lines.push(format!("Restart scheduled {}", when(r.at, now, tz)));
    }
    lines
}

/// The running system as people name it: "NixOS 24.11 (31 December 2024)";
/// "revision 0123456789ab" only when its NixOS version cannot be read.
pub fn running_version(s: &AgentStatus, versions: &Versions, tz: UtcOffset) -> Option<String> {
    let installed = s.system.as_deref().and_then(|sys| {
        s.history
            .iter()
            .chain(&s.last_update)
            .find(|u| u.system.as_deref() == Some(sys) && installed(u.status))
            .map(|u| u.time.to_offset(tz).date())
    });
    system_version(
        s.system.as_deref(),
        s.revision.as_deref(),
        installed,
        versions,
    )
}

/// The NixOS version of `system`, else its short revision, else nothing.
fn system_version(
    system: Option<&str>,
    revision: Option<&str>,
    installed: Option<time::Date>,
    versions: &Versions,
) -> Option<String> {
    match (system.and_then(|sys| versions.get(sys)), revision) {
        (Some(v), _) => Some(v.label(installed)),
        (None, Some(rev)) => Some(format!("revision {}", short_revision(rev))),
        (None, None) => None,
    }
}

/// Whether an update with this outcome installed its system.
fn installed(status: ReportStatus) -> bool {
    matches!(status, ReportStatus::Success | ReportStatus::Autoupdate)
}

/// The version an update installed, as [`running_version`] names it.
fn record_version(u: &UpdateRecord, versions: &Versions, tz: UtcOffset) -> Option<String> {
    let installed = installed(u.status).then(|| u.time.to_offset(tz).date());
    system_version(
        u.system.as_deref(),
        u.revision.as_deref(),
        installed,
        versions,
    )
}

/// How long the next "Postpone" moves the restart: one step, or less when the
/// deadline is nearer; `None` when the deadline is reached.
fn postpone_step(r: &ScheduledReboot, tz: UtcOffset, now: OffsetDateTime) -> Option<(String, u64)> {
    let room = r.deadline - r.at;
    if room <= Duration::ZERO {
        return None;
    }
    if room >= POSTPONE_STEP {
        Some((
            "Postpone restart by 1 hour".to_owned(),
            POSTPONE_STEP.whole_seconds() as u64,
        ))
    } else {
        Some((
            format!("Postpone restart until {}", clock(r.deadline, now, tz)),
            room.whole_seconds() as u64,
        ))
    }
}

/// The first 12 characters of a revision: enough to tell two apart.
pub fn short_revision(rev: &str) -> &str {
    rev.get(..12).unwrap_or(rev)
}

fn result_words(u: &UpdateRecord) -> String {
    match (u.status, &u.error) {
        (ReportStatus::Success | ReportStatus::Autoupdate, _) => "installed".to_owned(),
        (ReportStatus::Failure, Some(e)) => format!("failed ({e})"),
        (ReportStatus::Failure, None) => "failed".to_owned(),
        (ReportStatus::Rollback, Some(e)) => format!("undone ({e})"),
        (ReportStatus::Rollback, None) => "undone".to_owned(),
    }
}

/// "today at 14:05", "yesterday at 09:30", "tomorrow at 03:00", "on 3 March at 14:05".
pub fn when(t: OffsetDateTime, now: OffsetDateTime, tz: UtcOffset) -> String {
    let (t, now) = (t.to_offset(tz), now.to_offset(tz));
    let hm = format!("{:02}:{:02}", t.hour(), t.minute());
    let days = (t.date() - now.date()).whole_days();
    match days {
        0 => format!("today at {hm}"),
        -1 => format!("yesterday at {hm}"),
        1 => format!("tomorrow at {hm}"),
        _ => format!("on {} {} at {hm}", t.day(), t.month()),
    }
}

/// "14:05" today, else as [`when`] without "at".
fn clock(t: OffsetDateTime, now: OffsetDateTime, tz: UtcOffset) -> String {
    let w = when(t, now, tz);
    w.strip_prefix("today at ").map(str::to_owned).unwrap_or(w)
}

/// Folds one event into the status the tray keeps between full status answers.
pub fn apply(status: &mut AgentStatus, event: &Event, now: OffsetDateTime) {
    match event {
        Event::CheckStarted => status.activity = Activity::Checking,
        Event::CheckFinished { new_release } => {
            status.last_check = Some(now);
            if !new_release {
                status.activity = Activity::Idle;
            }
        }
        Event::UpdateStarted { .. } => status.activity = Activity::Building,
        Event::UpdateFinished { record } => {
            status.activity = Activity::Idle;
            if record.revision.is_some() {
                status.revision.clone_from(&record.revision);
            }
            if record.system.is_some() {
                status.system.clone_from(&record.system);
            }
            remember(status, record);
        }
        Event::UpdateFailed { record } | Event::RolledBack { record } => {
            status.activity = Activity::Idle;
            remember(status, record);
        }
        Event::RebootRequired => status.reboot_required = true,
        Event::RebootScheduled { at, deadline } => {
            status.reboot_required = true;
            status.reboot_scheduled = Some(ScheduledReboot {
                at: *at,
                deadline: *deadline,
            });
        }
        Event::RebootPostponed { at } => {
            let deadline = status
                .reboot_scheduled
                .as_ref()
                .map_or(*at, |r| r.deadline.max(*at));
            status.reboot_scheduled = Some(ScheduledReboot { at: *at, deadline });
        }
    }
}

fn remember(status: &mut AgentStatus, record: &UpdateRecord) {
    status.last_update = Some(record.clone());
    if status.history.first() != Some(record) {
        status.history.insert(0, record.clone());
    }
}

/// How loud a notification is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    Normal,
    Critical,
}

/// A button on a notification (shown where the server supports actions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeAction {
    RebootNow,
    /// Postpone by this many seconds.
    Postpone(u64),
    ShowDetails,
}

impl NoticeAction {
    /// The action key on the wire (`ActionInvoked`); "default" is a click on the
    /// notification itself, which opens the details.
    pub fn key(self) -> String {
        match self {
            NoticeAction::RebootNow => "reboot".to_owned(),
            NoticeAction::Postpone(s) => format!("postpone:{s}"),
            NoticeAction::ShowDetails => "default".to_owned(),
        }
    }

    pub fn from_key(key: &str) -> Option<NoticeAction> {
        match key {
            "reboot" => Some(NoticeAction::RebootNow),
            "default" | "details" => Some(NoticeAction::ShowDetails),
            _ => key
                .strip_prefix("postpone:")
                .and_then(|s| s.parse().ok())
                .map(NoticeAction::Postpone),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            NoticeAction::RebootNow => "Restart now",
            NoticeAction::Postpone(_) => "Postpone",
            NoticeAction::ShowDetails => "Show details",
        }
    }
}

/// An ongoing situation that one notification on screen stands for: a newer
/// notice about it replaces the one shown, and a critical one is withdrawn once
/// the situation is over, so a warning never outlives what it warns about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// The outcome of the last update (installed, failed, undone).
    LastUpdate,
    /// A scheduled restart (announcement, reminder).
    ScheduledRestart,
}

impl Topic {
    /// Whether a critical notice about this topic no longer holds for `status`
    /// (`None`: the agent is unreachable, which proves nothing).
    pub fn is_over(self, status: Option<&AgentStatus>) -> bool {
        let Some(s) = status else {
            return false;
        };
        match self {
            Topic::LastUpdate => s.last_update.as_ref().is_some_and(|u| installed(u.status)),
            Topic::ScheduledRestart => s.reboot_scheduled.is_none(),
        }
    }
}

/// One desktop notification to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// What makes it "the same event" for the no-duplicates rule; `None` for answers
    /// to the user's own clicks, which are never deduplicated.
    pub key: Option<String>,
    pub summary: String,
    pub body: String,
    pub urgency: Urgency,
    /// A freedesktop icon name; servers without it show their default.
    pub icon: &'static str,
    pub actions: Vec<NoticeAction>,
    /// What it is about, when it replaces the previous notice on the same topic.
    pub topic: Option<Topic>,
}

impl Notice {
    fn message(summary: &str, body: String, icon: &'static str) -> Notice {
        Notice {
            key: None,
            summary: summary.to_owned(),
            body,
            urgency: Urgency::Normal,
            icon,
            actions: Vec::new(),
            topic: None,
        }
    }
}

/// Which request a refusal or error answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    CheckNow,
    Postpone,
}

/// How the agent answered something the user asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Ok,
    Denied(String),
    Error(String),
    /// The agent could not be reached at all.
    Unreachable,
}

/// The notification for the answer to a click, if the user needs one.
pub fn answer_notice(asked: Asked, answer: &Answer) -> Option<Notice> {
    let n = match (asked, answer) {
        (_, Answer::Ok) => return None,
        (Asked::CheckNow, Answer::Denied(why)) => Notice::message(
            "You are not allowed to check for updates",
            format!(
                "{}. Updates still install automatically; ask your administrator if you need one sooner.",
                sentence(why, "This account may not start an update check")
            ),
            "dialog-information",
        ),
        (Asked::Postpone, Answer::Denied(why)) => Notice::message(
            "The restart cannot be postponed",
            format!(
                "{}. Save your work before the restart.",
                sentence(why, "This account may not postpone the restart")
            ),
            "dialog-information",
        ),
        (Asked::CheckNow, Answer::Error(why)) => Notice::message(
            "Could not check for updates",
            format!("{}. Updates are tried again automatically.", sentence(why, "Unknown error")),
            "dialog-information",
        ),
        (Asked::Postpone, Answer::Error(why)) => Notice::message(
            "Could not postpone the restart",
            format!("{}.", sentence(why, "Unknown error")),
            "dialog-information",
        ),
        (_, Answer::Unreachable) => Notice::message(
            "Cannot reach the update service",
            "The service that installs updates on this computer does not answer right now, so it cannot do that. Updates resume as soon as it is back.".to_owned(),
            "dialog-information",
        ),
    };
    Some(n)
}

/// The notification when restarting did not work.
pub fn reboot_failed_notice(why: &str) -> Notice {
    Notice::message(
        "Could not restart the computer",
        format!(
            "{}. Restart it from the system menu instead.",
            sentence(why, "The restart was refused")
        ),
        "dialog-error",
    )
}

/// The agent's message as a sentence without its final period (we add ours).
fn sentence(msg: &str, fallback: &str) -> String {
    let s = msg.trim().trim_end_matches('.');
    let s = if s.is_empty() { fallback } else { s };
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// The one place that decides what is notified, and remembers what was.
#[derive(Debug, Default)]
pub struct Decider {
    seen: VecDeque<String>,
    seen_set: HashSet<String>,
    /// Whether the server shows buttons (capability "actions").
    pub actions: bool,
    /// The kernel's boot id: "restart required" is said once per boot.
    boot: String,
}

impl Decider {
    /// Starts from the keys already notified in an earlier run.
    pub fn new(seen: impl IntoIterator<Item = String>) -> Decider {
        let mut d = Decider::default();
        for k in seen {
            d.mark(k);
        }
        d
    }

    /// Names the current boot (`/proc/sys/kernel/random/boot_id`).
    pub fn in_boot(mut self, boot: &str) -> Decider {
        boot.trim().clone_into(&mut self.boot);
        self
    }

    /// The keys to persist, oldest first.
    pub fn seen(&self) -> impl Iterator<Item = &str> {
        self.seen.iter().map(String::as_str)
    }

    fn mark(&mut self, key: String) -> bool {
        if !self.seen_set.insert(key.clone()) {
            return false;
        }
        self.seen.push_back(key);
        while self.seen.len() > SEEN_CAPACITY {
            if let Some(old) = self.seen.pop_front() {
                self.seen_set.remove(&old);
            }
        }
        true
    }

    /// Undoes the mark for a notice that could not be delivered, so it is tried again.
    pub fn forget(&mut self, key: &str) {
        if self.seen_set.remove(key) {
            self.seen.retain(|k| k != key);
        }
    }

    /// Keeps the notices never sent before, marking them as sent.
    fn fresh(&mut self, notices: Vec<Notice>) -> Vec<Notice> {
        notices
            .into_iter()
            .filter(|n| n.key.clone().is_none_or(|k| self.mark(k)))
            .collect()
    }

    /// On (re)connecting: whatever happened while the tray was not listening.
    pub fn on_status(
        &mut self,
        status: &AgentStatus,
        versions: &Versions,
        now: OffsetDateTime,
        tz: UtcOffset,
    ) -> Vec<Notice> {
        let mut out = Vec::new();
        if let Some(u) = &status.last_update {
            out.extend(self.update_notice(u, versions, tz));
        }
        if status.reboot_required {
            out.push(self.reboot_required_notice());
        }
        if let Some(r) = &status.reboot_scheduled {
            out.extend(self.scheduled_notices(r, now, tz));
        }
        self.fresh(out)
    }

    /// For one event, with `status` already updated by [`apply`].
    pub fn on_event(
        &mut self,
        status: &AgentStatus,
        event: &Event,
        versions: &Versions,
        now: OffsetDateTime,
        tz: UtcOffset,
    ) -> Vec<Notice> {
        let out = match event {
            Event::UpdateFinished { record }
            | Event::UpdateFailed { record }
            | Event::RolledBack { record } => self
                .update_notice(record, versions, tz)
                .into_iter()
                .collect(),
            Event::RebootRequired => vec![self.reboot_required_notice()],
            Event::RebootScheduled { .. } | Event::RebootPostponed { .. } => status
                .reboot_scheduled
                .as_ref()
                .map(|r| self.scheduled_notices(r, now, tz))
                .unwrap_or_default(),
            Event::CheckStarted | Event::CheckFinished { .. } | Event::UpdateStarted { .. } => {
                Vec::new()
            }
        };
        self.fresh(out)
    }

    /// When the reminder before a scheduled restart is due (`None`: nothing to wait for).
    pub fn next_wakeup(&self, status: Option<&AgentStatus>) -> Option<OffsetDateTime> {
        let r = status?.reboot_scheduled.as_ref()?;
        (!self.seen_set.contains(&soon_key(r.at))).then_some(r.at - REMINDER_AHEAD)
    }

    /// Called at [`Decider::next_wakeup`]: the reminder, once.
    pub fn on_tick(
        &mut self,
        status: Option<&AgentStatus>,
        now: OffsetDateTime,
        tz: UtcOffset,
    ) -> Vec<Notice> {
        let Some(r) = status.and_then(|s| s.reboot_scheduled.as_ref()) else {
            return Vec::new();
        };
        let out = self.scheduled_notices(r, now, tz);
        self.fresh(out)
    }

    fn update_notice(
        &self,
        u: &UpdateRecord,
        versions: &Versions,
        tz: UtcOffset,
    ) -> Option<Notice> {
        let key = Some(format!(
            "update:{}:{}:{}",
            stamp(u.time),
            u.status.as_str(),
            u.revision.as_deref().unwrap_or("-")
        ));
        let details = self.buttons(&[NoticeAction::ShowDetails]);
        let n = match u.status {
            ReportStatus::Success | ReportStatus::Autoupdate => {
                let mut body = match record_version(u, versions, tz) {
                    Some(v) => format!("Now running {v}."),
                    None => "The latest version is installed.".to_owned(),
                };
                match u.changed_packages {
                    Some(1) => body.push_str(" 1 package changed."),
                    Some(n) if n > 0 => body.push_str(&format!(" {n} packages changed.")),
                    _ => {}
                }
                Notice {
                    key,
                    summary: "Your computer was updated".to_owned(),
                    body,
                    urgency: Urgency::Normal,
                    icon: "software-update-available",
                    actions: details,
                    topic: Some(Topic::LastUpdate),
                }
            }
            ReportStatus::Failure => Notice {
                key,
                summary: "Update failed".to_owned(),
                body: format!(
                    "{}. Your computer keeps running the previous version; the update will be tried again.",
                    sentence(u.error.as_deref().unwrap_or(""), "The update could not be installed")
                ),
                urgency: Urgency::Critical,
                icon: "dialog-error",
                actions: details,
                topic: Some(Topic::LastUpdate),
            },
            ReportStatus::Rollback => Notice {
                key,
                summary: "Update undone".to_owned(),
                body: format!(
                    "{}. The new version did not work, so your computer went back to the previous one.",
                    sentence(u.error.as_deref().unwrap_or(""), "The update was undone")
                ),
                urgency: Urgency::Critical,
                icon: "dialog-warning",
                actions: details,
                topic: Some(Topic::LastUpdate),
            },
        };
        Some(n)
    }

    /// Once per boot: until the computer restarts, later updates that also need a
    /// restart do not repeat it (the icon keeps saying so).
    fn reboot_required_notice(&self) -> Notice {
        Notice {
            key: Some(format!("reboot-required:{}", self.boot)),
            summary: "Restart required to finish updating".to_owned(),
            body: "An update was installed. Restart your computer when it suits you to finish installing it."
                .to_owned(),
            urgency: Urgency::Normal,
            icon: "system-reboot",
            actions: self.buttons(&[NoticeAction::RebootNow, NoticeAction::ShowDetails]),
            topic: None,
        }
    }

    /// The announcement of a restart, or the reminder when it is near.
    fn scheduled_notices(
        &self,
        r: &ScheduledReboot,
        now: OffsetDateTime,
        tz: UtcOffset,
    ) -> Vec<Notice> {
        let mut buttons = vec![NoticeAction::RebootNow];
        let postpone = postpone_step(r, tz, now);
        if let Some((_, secs)) = postpone {
            buttons.push(NoticeAction::Postpone(secs));
        }
        let actions = self.buttons(&buttons);
        let later = match &postpone {
            Some(_) if r.deadline > r.at => format!(
                " You can restart now, or postpone it until {} at the latest.",
                clock(r.deadline, now, tz)
            ),
            _ => " It cannot be postponed further.".to_owned(),
        };
        let left = r.at - now;
        if left <= REMINDER_AHEAD {
            let minutes = (left.whole_seconds().max(0) + 59) / 60;
            let summary = match minutes {
                0 => "Your computer is restarting now".to_owned(),
                1 => "Your computer will restart in 1 minute".to_owned(),
                m => format!("Your computer will restart in {m} minutes"),
            };
            // An announcement that comes this late is the reminder: one notice, not two.
            return vec![Notice {
                key: Some(soon_key(r.at)),
                summary,
                body: format!(
                    "Save your work now: the restart finishes installing an update.{later}"
                ),
                urgency: Urgency::Critical,
                icon: "system-reboot",
                actions,
                topic: Some(Topic::ScheduledRestart),
            }];
        }
        vec![Notice {
            key: Some(format!("reboot-at:{}", stamp(r.at))),
            summary: format!("Your computer will restart {}", when(r.at, now, tz)),
            body: format!(
                "The restart finishes installing an update. Save your work before then.{later}"
            ),
            urgency: Urgency::Normal,
            icon: "system-reboot",
            actions,
            topic: Some(Topic::ScheduledRestart),
        }]
    }

    fn buttons(&self, wanted: &[NoticeAction]) -> Vec<NoticeAction> {
        if self.actions {
            wanted.to_vec()
        } else {
            Vec::new()
        }
    }
}

fn soon_key(at: OffsetDateTime) -> String {
    format!("reboot-soon:{}", stamp(at))
}

/// A time as a stable key: UTC, RFC 3339.
fn stamp(t: OffsetDateTime) -> String {
    t.to_offset(UtcOffset::UTC)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// What the details window shows, as plain text (the page only sets `textContent`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Details {
    pub condition: Condition,
    pub headline: String,
    pub host: Option<String>,
    /// The running NixOS version ("NixOS 24.11 (31 December 2024)").
    pub version: Option<String>,
    /// The running release's full revision, for whoever needs to quote it.
    pub revision: Option<String>,
    /// The running system's store path basename.
    pub system: Option<String>,
    /// How it came to this computer: downloaded as the administrator's server
    /// built it, or built here.
    pub obtained: Option<String>,
    pub summary: Vec<String>,
    pub reboot: String,
    pub updates: Vec<DetailsRow>,
    /// What the list of updates says when it is empty.
    pub no_updates: String,
    pub changes: Vec<String>,
    pub log_tail: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DetailsRow {
    pub when: String,
    pub result: String,
    pub ok: bool,
    /// The NixOS version this update was to, else "—".
    pub version: String,
    /// Its short revision, else "—".
    pub revision: String,
    pub note: String,
}

/// One sentence on how the running system reached this computer.
fn obtained_line(s: &AgentStatus) -> Option<String> {
    use bento_core::report::Obtained;
    let how = match s.obtained.as_ref()? {
        Obtained::Fetched {
            paths,
            bytes,
            millis,
        } => format!(
            "Downloaded as your administrator's server built it: {paths} part{} ({}) in {:.1} s.",
            if *paths == 1 { "" } else { "s" },
            bento_core::report::human_bytes(*bytes),
            *millis as f64 / 1000.0
        ),
        Obtained::Built { millis } => format!(
            "Built on this computer in {:.0} s.",
            (*millis as f64 / 1000.0).max(1.0)
        ),
    };
    let exact = match s.exact {
        Some(true) => " It is exactly the system prepared for this computer.",
        Some(false) => {
            " It differs from the system the server prepared: your administrator can tell why."
        }
        None => "",
    };
    Some(format!("{how}{exact}"))
}

/// How many past updates the window lists.
const DETAILS_ROWS: usize = 20;

/// The window's contents: from `status` while connected; else "cannot reach the
/// update service" with the `last` state known, if any.
pub fn details(
    status: Option<&AgentStatus>,
    last: Option<&LastKnown>,
    versions: &Versions,
    now: OffsetDateTime,
    tz: UtcOffset,
) -> Details {
    let v = view(status, last, versions, now, tz);
    let (s, mut summary) = match (status, last) {
        (Some(s), _) => (s, v.tooltip.lines().map(str::to_owned).collect()),
        (None, Some(l)) => (
            &l.status,
            vec![
                "The service that installs updates on this computer does not answer; updates resume as soon as it is back.".to_owned(),
                format!(
                    "Last known state ({}): {}",
                    when(l.at, now, tz),
                    Condition::of(Some(&l.status)).headline()
                ),
            ],
        ),
        (None, None) => {
            return Details {
                condition: v.condition,
                headline: v.title,
                host: None,
                version: None,
                revision: None,
                system: None,
                obtained: None,
                summary: vec![
                    "The service that installs updates on this computer does not answer; updates resume as soon as it is back.".to_owned(),
                    "Nothing is known yet about this computer's updates.".to_owned(),
                ],
                reboot: "Not known.".to_owned(),
                updates: Vec::new(),
                no_updates: "Not known: the update service cannot be reached.".to_owned(),
                changes: Vec::new(),
                log_tail: Vec::new(),
            };
        }
    };
    if status.is_none() {
        summary.extend(status_lines(s, versions, now, tz));
    }
    let reboot = match (&s.reboot_scheduled, s.reboot_required) {
        (Some(r), _) => format!(
            "Your computer will restart {} to finish updating (it can be postponed until {} at the latest).",
            when(r.at, now, tz),
            clock(r.deadline, now, tz)
        ),
        (None, true) => "A restart is required to finish updating.".to_owned(),
        (None, false) => "No restart needed.".to_owned(),
    };
    let reboot = if status.is_none() {
        format!("Last known: {reboot}")
    } else {
        reboot
    };
    let updates = s
        .history
        .iter()
        .take(DETAILS_ROWS)
        .map(|u| DetailsRow {
            when: when(u.time, now, tz),
            result: match u.status {
                ReportStatus::Success => "Installed",
                ReportStatus::Autoupdate => "Installed (automatic)",
                ReportStatus::Failure => "Failed",
                ReportStatus::Rollback => "Undone",
            }
            .to_owned(),
            ok: installed(u.status),
            version: u
                .system
                .as_deref()
                .and_then(|sys| versions.get(sys))
                .map_or_else(|| "—".to_owned(), |v| format!("NixOS {}", v.release)),
            revision: u
                .revision
                .as_deref()
                .map(short_revision)
                .unwrap_or("—")
                .to_owned(),
            note: match (&u.error, u.changed_packages) {
                (Some(e), _) => e.clone(),
                (None, Some(1)) => "1 package changed".to_owned(),
                (None, Some(n)) => format!("{n} packages changed"),
                (None, None) => String::new(),
            },
        })
        .collect();
    Details {
        condition: v.condition,
        headline: v.title,
        host: Some(s.host.clone()),
        version: running_version(s, versions, tz),
        revision: s.revision.clone(),
        system: s.system.clone(),
        obtained: obtained_line(s),
        summary,
        reboot,
        updates,
        no_updates: "No updates yet.".to_owned(),
        changes: s.last_changes.clone(),
        log_tail: s.log_tail.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::NixosVersion;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-03-03 14:00 UTC);
    /// No NixOS version known: not a NixOS store, or not read yet.
    static NONE: std::sync::LazyLock<Versions> = std::sync::LazyLock::new(Versions::default);
    const TZ: UtcOffset = UtcOffset::UTC;

    fn record(status: ReportStatus, minutes_ago: i64) -> UpdateRecord {
        UpdateRecord {
            time: NOW - Duration::minutes(minutes_ago),
            status,
            revision: Some("0123456789abcdef0123".to_owned()),
            system: Some("abc-nixos-system-ws1".to_owned()),
            error: (status == ReportStatus::Failure || status == ReportStatus::Rollback)
                .then(|| "download of the new version failed".to_owned()),
            changed_packages: Some(12),
        }
    }

    fn status() -> AgentStatus {
        AgentStatus {
            host: "ws1".to_owned(),
            agent_version: "0.1.0".to_owned(),
            activity: Activity::Idle,
            revision: Some("0123456789abcdef0123".to_owned()),
            system: None,
            last_check: None,
            server_reachable: Some(true),
            last_update: None,
            history: Vec::new(),
            reboot_required: false,
            reboot_scheduled: None,
            log_tail: Vec::new(),
            last_changes: Vec::new(),
            obtained: None,
            exact: None,
        }
    }

    #[test]
    fn each_state_has_its_words() {
        let mut s = status();
        let v = view(Some(&s), None, &NONE, NOW, TZ);
        assert_eq!(v.condition, Condition::UpToDate);
        assert_eq!(v.title, "Your computer is up to date");
        assert!(v.menu.check_enabled && !v.menu.reboot_now && v.menu.postpone.is_none());
        assert!(
            v.tooltip.contains("Running revision 0123456789ab"),
            "{}",
            v.tooltip
        );

        s.activity = Activity::Checking;
        let v = view(Some(&s), None, &NONE, NOW, TZ);
        assert_eq!(v.title, "Checking for updates…");
        assert!(!v.menu.check_enabled);

        s.activity = Activity::Idle;
        s.reboot_required = true;
        assert_eq!(
            view(Some(&s), None, &NONE, NOW, TZ).title,
            "Restart required to finish updating"
        );
        assert!(view(Some(&s), None, &NONE, NOW, TZ).menu.reboot_now);

        s.last_update = Some(record(ReportStatus::Failure, 5));
        let v = view(Some(&s), None, &NONE, NOW, TZ);
        assert_eq!(v.condition, Condition::Failed);
        assert!(v
            .tooltip
            .contains("Last update today at 13:55: failed (download of the new version failed)"));
        assert!(v.tooltip.contains("A restart is needed"), "{}", v.tooltip);

        s.last_update = Some(record(ReportStatus::Rollback, 5));
        assert_eq!(
            view(Some(&s), None, &NONE, NOW, TZ).title,
            "The last update was undone"
        );

        let v = view(None, None, &NONE, NOW, TZ);
        assert_eq!(v.condition, Condition::Unreachable);
        assert_eq!(v.title, "Cannot reach the update service");
        assert!(!v.menu.check_enabled);
    }

    #[test]
    fn postpone_stops_at_the_deadline() {
        let mut s = status();
        s.reboot_scheduled = Some(ScheduledReboot {
            at: NOW + Duration::hours(1),
            deadline: NOW + Duration::hours(3),
        });
        assert_eq!(
            view(Some(&s), None, &NONE, NOW, TZ).menu.postpone,
            Some(("Postpone restart by 1 hour".to_owned(), 3600))
        );
        s.reboot_scheduled.as_mut().unwrap().deadline = NOW + Duration::minutes(90);
        assert_eq!(
            view(Some(&s), None, &NONE, NOW, TZ).menu.postpone,
            Some(("Postpone restart until 15:30".to_owned(), 1800))
        );
        s.reboot_scheduled.as_mut().unwrap().deadline = NOW + Duration::hours(1);
        assert_eq!(view(Some(&s), None, &NONE, NOW, TZ).menu.postpone, None);
    }

    #[test]
    fn times_read_like_speech() {
        assert_eq!(when(NOW + Duration::hours(1), NOW, TZ), "today at 15:00");
        assert_eq!(
            when(NOW - Duration::hours(20), NOW, TZ),
            "yesterday at 18:00"
        );
        assert_eq!(
            when(NOW + Duration::hours(11), NOW, TZ),
            "tomorrow at 01:00"
        );
        assert_eq!(
            when(NOW - Duration::days(5), NOW, TZ),
            "on 26 February at 14:00"
        );
        let cet = UtcOffset::from_hms(1, 0, 0).unwrap();
        assert_eq!(when(NOW, NOW, cet), "today at 15:00");
    }

    #[test]
    fn events_fold_into_the_status() {
        let mut s = status();
        apply(&mut s, &Event::CheckStarted, NOW);
        assert_eq!(s.activity, Activity::Checking);
        apply(&mut s, &Event::CheckFinished { new_release: true }, NOW);
        assert_eq!(s.activity, Activity::Checking);
        apply(
            &mut s,
            &Event::UpdateStarted {
                revision: "r2".into(),
            },
            NOW,
        );
        assert_eq!(s.activity, Activity::Building);
        let mut r = record(ReportStatus::Success, 0);
        r.revision = Some("r2".into());
        apply(&mut s, &Event::UpdateFinished { record: r.clone() }, NOW);
        assert_eq!(
            (s.activity, s.revision.as_deref()),
            (Activity::Idle, Some("r2"))
        );
        assert_eq!(s.history, vec![r.clone()]);
        apply(&mut s, &Event::UpdateFinished { record: r.clone() }, NOW);
        assert_eq!(s.history.len(), 1, "the same record is not listed twice");
        let at = NOW + Duration::hours(2);
        apply(
            &mut s,
            &Event::RebootScheduled {
                at,
                deadline: at + Duration::hours(4),
            },
            NOW,
        );
        assert!(s.reboot_required);
        apply(
            &mut s,
            &Event::RebootPostponed {
                at: at + Duration::hours(1),
            },
            NOW,
        );
        let sched = s.reboot_scheduled.unwrap();
        assert_eq!(
            (sched.at, sched.deadline),
            (at + Duration::hours(1), at + Duration::hours(4))
        );

        let mut s = status();
        apply(
            &mut s,
            &Event::RolledBack {
                record: record(ReportStatus::Rollback, 0),
            },
            NOW,
        );
        assert_eq!(
            s.revision.as_deref(),
            Some("0123456789abcdef0123"),
            "rollback keeps the running version"
        );
    }

    #[test]
    fn an_update_is_notified_once_across_restarts() {
        let mut s = status();
        let r = record(ReportStatus::Success, 0);
        let mut d = Decider::new([]);
        apply(&mut s, &Event::UpdateFinished { record: r.clone() }, NOW);
        let n = d.on_event(
            &s,
            &Event::UpdateFinished { record: r.clone() },
            &NONE,
            NOW,
            TZ,
        );
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].summary, "Your computer was updated");
        assert_eq!(
            n[0].body,
            "Now running revision 0123456789ab. 12 packages changed."
        );
        assert_eq!(n[0].urgency, Urgency::Normal);

        // The next run starts from the persisted keys and sees the same last update.
        let mut again = Decider::new(d.seen().map(str::to_owned).collect::<Vec<_>>());
        assert!(again.on_status(&s, &NONE, NOW, TZ).is_empty());

        // An update that finished while no tray ran is told once.
        let mut s2 = s.clone();
        s2.last_update = Some(record(ReportStatus::Failure, -1));
        let n = again.on_status(&s2, &NONE, NOW, TZ);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].summary, "Update failed");
        assert_eq!(n[0].urgency, Urgency::Critical);
        assert!(
            n[0].body.starts_with("Download of the new version failed."),
            "{}",
            n[0].body
        );
        assert!(again.on_status(&s2, &NONE, NOW, TZ).is_empty());
    }

    #[test]
    fn scheduled_restart_is_announced_then_reminded() {
        let mut s = status();
        let mut d = Decider::new([]);
        d.actions = true;
        let at = NOW + Duration::hours(1);
        let ev = Event::RebootScheduled {
            at,
            deadline: at + Duration::hours(2),
        };
        apply(&mut s, &ev, NOW);
        let n = d.on_event(&s, &ev, &NONE, NOW, TZ);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].summary, "Your computer will restart today at 15:00");
        assert_eq!(
            n[0].actions,
            vec![NoticeAction::RebootNow, NoticeAction::Postpone(3600)]
        );
        assert!(
            n[0].body.contains("until 17:00 at the latest"),
            "{}",
            n[0].body
        );
        assert_eq!(d.next_wakeup(Some(&s)), Some(at - REMINDER_AHEAD));

        let soon = at - Duration::minutes(10);
        let n = d.on_tick(Some(&s), soon, TZ);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].summary, "Your computer will restart in 10 minutes");
        assert_eq!(n[0].urgency, Urgency::Critical);
        assert!(d.on_tick(Some(&s), soon, TZ).is_empty());
        assert_eq!(d.next_wakeup(Some(&s)), None);

        // Postponed: a new time, announced again.
        let ev = Event::RebootPostponed {
            at: at + Duration::hours(1),
        };
        apply(&mut s, &ev, soon);
        let n = d.on_event(&s, &ev, &NONE, soon, TZ);
        assert_eq!(n[0].summary, "Your computer will restart today at 16:00");
    }

    #[test]
    fn late_announcement_is_the_reminder_alone() {
        let mut s = status();
        let mut d = Decider::new([]);
        let at = NOW + Duration::minutes(4);
        let ev = Event::RebootScheduled { at, deadline: at };
        apply(&mut s, &ev, NOW);
        let n = d.on_event(&s, &ev, &NONE, NOW, TZ);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].summary, "Your computer will restart in 4 minutes");
        assert!(n[0].body.ends_with("It cannot be postponed further."));
        assert!(
            n[0].actions.is_empty(),
            "no buttons when the server has no actions"
        );
    }

    #[test]
    fn reboot_required_is_told_once_per_boot() {
        let mut s = status();
        s.last_update = Some(record(ReportStatus::Success, 3));
        s.reboot_required = true;
        let mut d = Decider::new([]).in_boot("boot-1\n");
        let n = d.on_status(&s, &NONE, NOW, TZ);
        let titles: Vec<_> = n.iter().map(|n| n.summary.as_str()).collect();
        assert_eq!(
            titles,
            [
                "Your computer was updated",
                "Restart required to finish updating"
            ]
        );
        assert!(d
            .on_event(&s, &Event::RebootRequired, &NONE, NOW, TZ)
            .is_empty());

        // Another update in the same boot: the restart is already known.
        let mut r = record(ReportStatus::Success, 0);
        r.system = Some("def-nixos-system-ws1".into());
        apply(&mut s, &Event::UpdateFinished { record: r }, NOW);
        let mut again =
            Decider::new(d.seen().map(str::to_owned).collect::<Vec<_>>()).in_boot("boot-1");
        assert_eq!(
            again.on_status(&s, &NONE, NOW, TZ).len(),
            1,
            "only the update"
        );
        // After a restart, a new need to restart is told again.
        let mut next =
            Decider::new(again.seen().map(str::to_owned).collect::<Vec<_>>()).in_boot("boot-2");
        assert_eq!(
            next.on_event(&s, &Event::RebootRequired, &NONE, NOW, TZ)
                .len(),
            1
        );
    }

    #[test]
    fn refusals_say_what_to_do() {
        let n = answer_notice(
            Asked::CheckNow,
            &Answer::Denied("only members of wheel may do this".into()),
        )
        .unwrap();
        assert_eq!(n.summary, "You are not allowed to check for updates");
        assert!(n
            .body
            .starts_with("Only members of wheel may do this. Updates still install automatically"));
        assert!(answer_notice(Asked::CheckNow, &Answer::Ok).is_none());
        assert_eq!(
            answer_notice(Asked::Postpone, &Answer::Unreachable)
                .unwrap()
                .summary,
            "Cannot reach the update service"
        );
    }

    #[test]
    fn action_keys_round_trip() {
        for a in [
            NoticeAction::RebootNow,
            NoticeAction::Postpone(1800),
            NoticeAction::ShowDetails,
        ] {
            assert_eq!(NoticeAction::from_key(&a.key()), Some(a));
        }
        assert_eq!(NoticeAction::from_key("rm"), None);
    }

    #[test]
    fn seen_keys_are_bounded() {
        let mut d = Decider::new((0..SEEN_CAPACITY + 10).map(|i| i.to_string()));
        assert_eq!(d.seen().count(), SEEN_CAPACITY);
        assert_eq!(d.seen().next(), Some("10"));
        d.forget("10");
        assert_eq!(d.seen().next(), Some("11"));
    }

    #[test]
    fn details_say_how_the_system_came() {
        let mut s = status();
        assert_eq!(details(Some(&s), None, &NONE, NOW, TZ).obtained, None);
        s.obtained = Some(bento_core::report::Obtained::Fetched {
            paths: 3,
            bytes: 3 << 20,
            millis: 2500,
        });
        s.exact = Some(true);
        let line = details(Some(&s), None, &NONE, NOW, TZ).obtained.unwrap();
        assert!(line.contains("3 parts (3.0 MiB) in 2.5 s"), "{line}");
        assert!(line.contains("exactly the system prepared"), "{line}");
        s.obtained = Some(bento_core::report::Obtained::Built { millis: 90_000 });
        s.exact = Some(false);
        let line = details(Some(&s), None, &NONE, NOW, TZ).obtained.unwrap();
        assert!(
            line.starts_with("Built on this computer in 90 s."),
            "{line}"
        );
        assert!(line.contains("differs"), "{line}");
    }

    #[test]
    fn details_list_the_history() {
        let mut s = status();
        s.history = vec![
            record(ReportStatus::Rollback, 10),
            record(ReportStatus::Success, 60 * 24),
        ];
        s.last_update = s.history.first().cloned();
        s.last_changes = vec!["firefox: 130.0 → 131.0".into()];
        let d = details(Some(&s), None, &NONE, NOW, TZ);
        assert_eq!(d.headline, "The last update was undone");
        assert_eq!(d.updates.len(), 2);
        assert_eq!(d.updates[0].result, "Undone");
        assert_eq!(d.updates[1].when, "yesterday at 14:00");
        assert_eq!(d.updates[1].note, "12 packages changed");
        assert_eq!(d.reboot, "No restart needed.");
    }

    fn versions_of_ws1() -> Versions {
        let mut v = Versions::default();
        v.insert(
            "abc-nixos-system-ws1",
            NixosVersion::parse("24.11.20241231.edf04b7").unwrap(),
        );
        v.insert("def-nixos-system-ws1", NixosVersion::parse("2").unwrap());
        v
    }

    #[test]
    fn the_version_shown_is_the_nixos_version_and_date() {
        let versions = versions_of_ws1();
        let mut s = status();
        s.system = Some("abc-nixos-system-ws1".into());
        let v = view(Some(&s), None, &versions, NOW, TZ);
        assert!(
            v.tooltip.contains("Running NixOS 24.11 (31 December 2024)"),
            "{}",
            v.tooltip
        );
        assert!(!v.tooltip.contains("0123456789ab"), "{}", v.tooltip);

        // An update to it says the same; the revision is left to the details.
        let r = record(ReportStatus::Success, 0);
        let mut d = Decider::new([]);
        let ev = Event::UpdateFinished { record: r.clone() };
        apply(&mut s, &ev, NOW);
        let n = d.on_event(&s, &ev, &versions, NOW, TZ);
        assert_eq!(
            n[0].body,
            "Now running NixOS 24.11 (31 December 2024). 12 packages changed."
        );
        let det = details(Some(&s), None, &versions, NOW, TZ);
        assert_eq!(
            det.version.as_deref(),
            Some("NixOS 24.11 (31 December 2024)")
        );
        assert_eq!(det.revision.as_deref(), Some("0123456789abcdef0123"));
        assert_eq!(det.system.as_deref(), Some("abc-nixos-system-ws1"));
        assert_eq!(
            (
                det.updates[0].version.as_str(),
                det.updates[0].revision.as_str()
            ),
            ("NixOS 24.11", "0123456789ab")
        );

        // A version without a date in it (a toy system) gets the day it was installed.
        let mut r2 = record(ReportStatus::Success, 60 * 24);
        r2.system = Some("def-nixos-system-ws1".into());
        s.system.clone_from(&r2.system);
        s.history = vec![r2];
        let v = view(Some(&s), None, &versions, NOW, TZ);
        assert!(
            v.tooltip
                .contains("Running NixOS 2, installed 2 March 2026"),
            "{}",
            v.tooltip
        );
    }

    #[test]
    fn with_the_agent_down_the_details_say_so_and_show_the_last_known_state() {
        let versions = versions_of_ws1();
        let d = details(None, None, &versions, NOW, TZ);
        assert_eq!(d.headline, "Cannot reach the update service");
        assert_eq!(
            d.no_updates,
            "Not known: the update service cannot be reached."
        );
        assert!(d.updates.is_empty());

        let mut s = status();
        s.system = Some("abc-nixos-system-ws1".into());
        s.history = vec![record(ReportStatus::Success, 30)];
        s.last_update = s.history.first().cloned();
        s.last_changes = vec!["firefox: 130.0 → 131.0".into()];
        let last = LastKnown {
            status: s,
            at: NOW - Duration::minutes(5),
        };
        let d = details(None, Some(&last), &versions, NOW, TZ);
        assert_eq!(d.condition, Condition::Unreachable);
        assert_eq!(d.headline, "Cannot reach the update service");
        assert_eq!(
            d.summary[1],
            "Last known state (today at 13:55): Your computer is up to date"
        );
        assert!(
            d.summary
                .iter()
                .any(|l| l == "Running NixOS 24.11 (31 December 2024)"),
            "{:?}",
            d.summary
        );
        assert!(
            d.summary
                .iter()
                .any(|l| l == "Last update today at 13:30: installed"),
            "{:?}",
            d.summary
        );
        assert_eq!(d.updates.len(), 1);
        assert_eq!(d.changes, ["firefox: 130.0 → 131.0"]);
        assert_eq!(d.host.as_deref(), Some("ws1"));
        // The tray's tooltip says the same.
        let v = view(None, Some(&last), &versions, NOW, TZ);
        assert!(
            v.tooltip
                .starts_with("Last known state (today at 13:55): Your computer is up to date\n"),
            "{}",
            v.tooltip
        );
    }

    #[test]
    fn update_outcomes_share_one_topic_that_a_success_ends() {
        let mut s = status();
        let mut d = Decider::new([]);
        let undone = Event::RolledBack {
            record: record(ReportStatus::Rollback, 10),
        };
        apply(&mut s, &undone, NOW);
        let n = d.on_event(&s, &undone, &NONE, NOW, TZ);
        assert_eq!(
            (n[0].urgency, n[0].topic),
            (Urgency::Critical, Some(Topic::LastUpdate))
        );
        assert!(!Topic::LastUpdate.is_over(Some(&s)));
        assert!(
            !Topic::LastUpdate.is_over(None),
            "an unreachable agent proves nothing"
        );

        let mut ok = record(ReportStatus::Success, 0);
        ok.system = Some("def-nixos-system-ws1".into());
        let fixed = Event::UpdateFinished { record: ok };
        apply(&mut s, &fixed, NOW);
        let n = d.on_event(&s, &fixed, &NONE, NOW, TZ);
        assert_eq!(
            n[0].topic,
            Some(Topic::LastUpdate),
            "it replaces the warning"
        );
        assert!(Topic::LastUpdate.is_over(Some(&s)));

        // A restart's reminder ends when no restart is scheduled any more.
        let at = NOW + Duration::minutes(5);
        let ev = Event::RebootScheduled { at, deadline: at };
        apply(&mut s, &ev, NOW);
        let n = d.on_event(&s, &ev, &NONE, NOW, TZ);
        assert_eq!(
            (n[0].urgency, n[0].topic),
            (Urgency::Critical, Some(Topic::ScheduledRestart))
        );
        assert!(!Topic::ScheduledRestart.is_over(Some(&s)));
        s.reboot_scheduled = None;
        assert!(Topic::ScheduledRestart.is_over(Some(&s)));
    }
}
