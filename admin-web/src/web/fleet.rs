//! The fleet page: counts per state, then one row per host, filtered (state, flag,
//! tag, name), sorted and paginated in memory from [`Fleet`](super::ingest::Fleet).

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Html;
use bento_core::buildstate::{BuildState, HostBuild};
use bento_core::status::{HostStatus, State as HostState};
use serde::Deserialize;

use super::auth::SessionUser;
use super::builds::Failure;
use super::error::{WebError, WebResult};
use super::ingest::FleetCache;
use super::views::{self, Nav};
use super::AppState;

pub const DEFAULT_PER_PAGE: usize = 100;
pub const MAX_PER_PAGE: usize = 2000;

/// The fleet page's and `/api/v1/hosts`' query. Unknown values are ignored rather
/// than refused: a bookmarked URL keeps working.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FleetQuery {
    /// A state id (`failing`), or `problem` for every state that needs attention.
    #[serde(default)]
    pub state: String,
    /// `reboot`, `offline` or `build` (its configuration does not build).
    #[serde(default)]
    pub flag: String,
    #[serde(default)]
    pub tag: String,
    /// Part of the host name.
    #[serde(default)]
    pub q: String,
    /// `host`, `state`, `seen`, `report`, `config`.
    #[serde(default)]
    pub sort: String,
    /// `asc` or `desc`.
    #[serde(default)]
    pub order: String,
    #[serde(default)]
    pub page: String,
    #[serde(default)]
    pub per: String,
}

impl FleetQuery {
    fn state(&self) -> Option<StateFilter> {
        match self.state.as_str() {
            "problem" => Some(StateFilter::Problem),
            s => HostState::from_id(s).map(StateFilter::One),
        }
    }

    fn desc(&self) -> bool {
        match self.order.as_str() {
            "desc" => true,
            "asc" => false,
            // Times: newest first by default.
            _ => matches!(self.sort.as_str(), "seen" | "report" | "config"),
        }
    }

    pub fn per_page(&self) -> usize {
        self.per
            .parse::<usize>()
            .unwrap_or(DEFAULT_PER_PAGE)
            .clamp(1, MAX_PER_PAGE)
    }

    fn page(&self) -> usize {
        self.page.parse::<usize>().unwrap_or(1).max(1)
    }
}

#[derive(Clone, Copy)]
enum StateFilter {
    One(HostState),
    Problem,
}

/// Hosts matching a query, sorted, with the counts of the whole fleet.
pub struct Selection {
    pub rows: Vec<Arc<HostStatus>>,
    pub counts: [usize; HostState::ALL.len()],
    pub total: usize,
    pub reboot: usize,
    pub offline: usize,
    /// Hosts whose configuration does not build.
    pub build_failing: usize,
}

fn time_key(t: Option<time::OffsetDateTime>) -> i128 {
    t.map(|t| t.unix_timestamp_nanos()).unwrap_or(i128::MIN)
}

/// Filters and sorts the cached fleet.
pub fn select(cache: &FleetCache, builds: &BuildState, q: &FleetQuery) -> Selection {
    let state = q.state();
    let needle = q.q.trim().to_ascii_lowercase();
    let tag = q.tag.trim();
    let mut sel = Selection {
        rows: Vec::new(),
        counts: [0; HostState::ALL.len()],
        total: cache.hosts.len(),
        reboot: 0,
        offline: 0,
        build_failing: 0,
    };
    for h in cache.hosts.values() {
        if let Some(i) = HostState::ALL.iter().position(|s| *s == h.state) {
            sel.counts[i] += 1;
        }
        sel.reboot += h.reboot_pending as usize;
        sel.offline += h.offline as usize;
        let build_failing = builds.host(&h.host).is_some_and(HostBuild::failing);
        sel.build_failing += build_failing as usize;
        let keep = match state {
            None => true,
            Some(StateFilter::One(s)) => h.state == s,
            Some(StateFilter::Problem) => h.state.is_problem(),
        } && match q.flag.as_str() {
            "reboot" => h.reboot_pending,
            "offline" => h.offline,
            "build" => build_failing,
            _ => true,
        } && (tag.is_empty()
            || cache
                .tags
                .get(&h.host)
                .is_some_and(|t| t.iter().any(|x| x == tag)))
            && (needle.is_empty() || h.host.to_ascii_lowercase().contains(&needle));
        if keep {
            sel.rows.push(h.clone());
        }
    }
    let by: Option<fn(&HostStatus, &HostStatus) -> Ordering> = match q.sort.as_str() {
        "state" => Some(|a, b| views::state_rank(a.state).cmp(&views::state_rank(b.state))),
        "seen" => Some(|a, b| time_key(a.last_seen).cmp(&time_key(b.last_seen))),
        "report" => Some(|a, b| {
            time_key(a.last_report.as_ref().map(|r| r.received))
                .cmp(&time_key(b.last_report.as_ref().map(|r| r.received)))
        }),
        "config" => Some(|a, b| time_key(a.published_at).cmp(&time_key(b.published_at))),
        _ => None,
    };
    // Rows come sorted by name; the stable sort keeps names in order within a key.
    match (by, q.desc()) {
        (None, false) => {}
        (None, true) => sel.rows.reverse(),
        (Some(by), false) => sel.rows.sort_by(|a, b| by(a, b)),
        (Some(by), true) => sel.rows.sort_by(|a, b| by(b, a)),
    }
    sel
}

pub struct Row {
    pub host: String,
    pub url: String,
    pub tags: Vec<String>,
    pub expected: String,
    pub expected_full: String,
    pub running: String,
    pub running_full: String,
    pub match_emoji: &'static str,
    pub emoji: &'static str,
    pub label: &'static str,
    pub class: &'static str,
    pub reboot: bool,
    pub offline: bool,
    pub warnings: usize,
    pub warnings_title: String,
    pub report_ago: String,
    pub report_title: String,
    pub config_ago: String,
    pub config_title: String,
    pub seen_ago: String,
    pub seen_title: String,
    pub build_failure: Option<Failure>,
}

impl Row {
    pub fn new(
        h: &HostStatus,
        tags: &[String],
        build: Option<&HostBuild>,
        now: SystemTime,
    ) -> Self {
        let received = h.last_report.as_ref().map(|r| r.received);
        Row {
            host: h.host.clone(),
            url: format!("/hosts/{}", h.host),
            tags: tags.to_vec(),
            expected: h.short_expected().to_owned(),
            expected_full: h
                .expected_system
                .clone()
                .unwrap_or_else(|| "non-flake host: built on the host, no system is pinned".into()),
            running: h.short_running().to_owned(),
            running_full: h.running_system.clone().unwrap_or_default(),
            match_emoji: if h.running_system.is_some() {
                h.match_emoji()
            } else {
                ""
            },
            emoji: h.state.emoji(),
            label: h.state.label(),
            class: views::state_class(h.state),
            reboot: h.reboot_pending,
            offline: h.offline,
            warnings: h.warnings.len(),
            warnings_title: format!(
                "{} reading this host's files",
                views::plural(h.warnings.len(), "problem", "problems")
            ),
            report_ago: views::ago(received, now),
            report_title: views::full_time(received),
            config_ago: views::ago(h.published_at, now),
            config_title: views::full_time(h.published_at),
            seen_ago: views::ago(h.last_seen, now),
            seen_title: views::full_time(h.last_seen),
            build_failure: build.and_then(|b| Failure::of(b, now)),
        }
    }
}

pub struct Count {
    pub id: &'static str,
    pub label: &'static str,
    pub emoji: &'static str,
    pub class: &'static str,
    pub count: usize,
    pub url: String,
    pub active: bool,
}

pub struct SortLink {
    pub label: &'static str,
    pub url: String,
    pub mark: &'static str,
}

#[derive(Template)]
#[template(path = "fleet.html")]
pub struct FleetPage {
    nav: Nav,
    total_label: String,
    matched: usize,
    counts: Vec<Count>,
    reboot: usize,
    offline: usize,
    reboot_url: String,
    offline_url: String,
    build_failing: usize,
    build_label: String,
    build_url: String,
    q: FleetQuery,
    states: Vec<(&'static str, &'static str)>,
    tags: Vec<String>,
    rows: Vec<Row>,
    sort_links: Vec<SortLink>,
    first: usize,
    last: usize,
    prev: String,
    next: String,
    problem: String,
    clear_url: String,
}

impl FleetQuery {
    /// This query as a URL with some keys replaced.
    fn url_with(&self, changes: &[(&str, &str)]) -> String {
        let get = |k: &str, v: &str| -> String {
            changes
                .iter()
                .find(|(ck, _)| *ck == k)
                .map(|(_, cv)| cv.to_string())
                .unwrap_or_else(|| v.to_owned())
        };
        let pairs = [
            ("q", get("q", &self.q)),
            ("state", get("state", &self.state)),
            ("flag", get("flag", &self.flag)),
            ("tag", get("tag", &self.tag)),
            ("sort", get("sort", &self.sort)),
            ("order", get("order", &self.order)),
            ("per", get("per", &self.per)),
            ("page", get("page", &self.page)),
        ];
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        format!("/{}", views::query(&refs))
    }
}

/// Renders the fleet page for a user (in-process; the benchmark calls it too).
pub fn render(state: &AppState, nav: Nav, q: FleetQuery) -> WebResult<String> {
    let now = SystemTime::now();
    let builds = state.builds();
    let cache = state.fleet.read();
    let sel = select(&cache, &builds, &q);
    let per = q.per_page();
    let pages = sel.rows.len().div_ceil(per).max(1);
    let page = q.page().min(pages);
    let first = (page - 1) * per;
    let last = (first + per).min(sel.rows.len());
    let rows: Vec<Row> = sel.rows[first..last]
        .iter()
        .map(|h| {
            let tags = cache.tags.get(&h.host).map(Vec::as_slice).unwrap_or(&[]);
            Row::new(h, tags, builds.host(&h.host), now)
        })
        .collect();
    let active_state = q.state.as_str();
    let counts = HostState::ALL
        .iter()
        .zip(sel.counts)
        .map(|(s, count)| Count {
            id: s.id(),
            label: s.label(),
            emoji: s.emoji(),
            class: views::state_class(*s),
            count,
            url: q.url_with(&[
                ("state", if active_state == s.id() { "" } else { s.id() }),
                ("page", ""),
            ]),
            active: active_state == s.id(),
        })
        .collect();
    let sort_links = [
        ("Host", "host"),
        ("State", "state"),
        ("Last report", "report"),
        ("New config", "config"),
        ("Last seen", "seen"),
    ]
    .into_iter()
    .map(|(label, key)| {
        let current = q.sort == key || (q.sort.is_empty() && key == "host");
        let desc = q.desc();
        let order = if current {
            if desc {
                "asc"
            } else {
                "desc"
            }
        } else {
            ""
        };
        SortLink {
            label,
            url: q.url_with(&[
                ("sort", if key == "host" { "" } else { key }),
                ("order", order),
                ("page", ""),
            ]),
            mark: match (current, desc) {
                (false, _) => "",
                (true, false) => "▲",
                (true, true) => "▼",
            },
        }
    })
    .collect();
    let page_str = |p: usize| p.to_string();
    let prev = if page > 1 {
        q.url_with(&[("page", &page_str(page - 1))])
    } else {
        String::new()
    };
    let next = if page < pages {
        q.url_with(&[("page", &page_str(page + 1))])
    } else {
        String::new()
    };
    let reboot_url = q.url_with(&[
        ("flag", if q.flag == "reboot" { "" } else { "reboot" }),
        ("page", ""),
    ]);
    let offline_url = q.url_with(&[
        ("flag", if q.flag == "offline" { "" } else { "offline" }),
        ("page", ""),
    ]);
    let build_url = q.url_with(&[
        ("flag", if q.flag == "build" { "" } else { "build" }),
        ("page", ""),
    ]);
    let p = FleetPage {
        nav,
        build_failing: sel.build_failing,
        build_label: views::plural(
            sel.build_failing,
            "config does not build",
            "configs do not build",
        ),
        build_url,
        total_label: views::plural(sel.total, "host", "hosts"),
        matched: sel.rows.len(),
        counts,
        reboot: sel.reboot,
        offline: sel.offline,
        reboot_url,
        offline_url,
        states: HostState::ALL.iter().map(|s| (s.id(), s.label())).collect(),
        tags: cache.all_tags.clone(),
        rows,
        sort_links,
        first: if last > first { first + 1 } else { 0 },
        last,
        prev,
        next,
        problem: cache.problem.clone().unwrap_or_default(),
        clear_url: "/".into(),
        q,
    };
    p.render().map_err(WebError::internal)
}

pub async fn page(
    State(state): State<AppState>,
    user: SessionUser,
    Query(q): Query<FleetQuery>,
) -> WebResult<Html<String>> {
    Ok(Html(render(&state, Nav::new(&user, "fleet"), q)?))
}
