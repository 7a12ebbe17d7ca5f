//! The bounds that keep one client from taking the server from the others:
//! file descriptors counted against `RLIMIT_NOFILE`, connections that have not
//! logged in kept apart from the hosts' and limited per source address, failed
//! logins throttled per address, and a stream the server can cut when a
//! connection overstays its login grace.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::{info, warn};

/// Descriptors kept free for everything that is not a client: the listener,
/// the runtime, logging, the panel's database and HTTP clients in `bento serve`.
const FD_RESERVE: usize = 128;

/// Raises the soft `RLIMIT_NOFILE` to the hard one and returns it.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// The descriptors clients may hold, all together.
pub struct FdBudget {
    limit: usize,
    used: AtomicUsize,
}

/// Descriptors taken from the budget, given back when dropped.
pub struct FdPermit {
    budget: Arc<FdBudget>,
    n: usize,
}

impl Drop for FdPermit {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.n, Ordering::AcqRel);
    }
}

impl FdBudget {
    pub fn new(nofile: u64) -> Arc<FdBudget> {
        let nofile = usize::try_from(nofile).unwrap_or(usize::MAX);
        Arc::new(FdBudget {
            limit: nofile.saturating_sub(FD_RESERVE).max(16),
            used: AtomicUsize::new(0),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// `n` descriptors, or `None` when they would pass the budget.
    pub fn take(self: &Arc<Self>, n: usize) -> Option<FdPermit> {
        let mut cur = self.used.load(Ordering::Acquire);
        loop {
            if cur + n > self.limit {
                return None;
            }
            match self
                .used
                .compare_exchange(cur, cur + n, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Some(FdPermit {
                        budget: self.clone(),
                        n,
                    })
                }
                Err(now) => cur = now,
            }
        }
    }
}

/// Whether the error of `accept`/`open` means the process (or the system) is
/// out of descriptors or memory for them: wait and refuse, never stop.
pub fn is_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// How many connections are where, for admission.
#[derive(Default)]
struct Counts {
    unauthenticated: usize,
    /// Those of addresses a host logged in from lately (their own budget).
    unauthenticated_known: usize,
    /// Addresses a host logged in from, and when it last did.
    known: HashMap<IpAddr, Instant>,
    by_source: HashMap<IpAddr, usize>,
    authenticated: usize,
}

/// Connections that have not logged in and those of hosts, counted apart.
pub struct Admission {
    max_connections: usize,
    max_unauthenticated: usize,
    max_per_source: usize,
    counts: Mutex<Counts>,
}

/// Why a new connection is closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// `max_connections` hosts are logged in.
    Full,
    /// `max_unauthenticated` connections are logging in.
    TooManyUnauthenticated,
    /// Over half of `max_unauthenticated` are logging in: dropped at random,
    /// more often the fuller it gets.
    EarlyDrop,
    /// `max_unauthenticated_per_source` connections of this address are.
    TooManyFromSource,
    /// The address failed to log in too often this minute.
    Penalized,
    /// No descriptors left in the budget.
    NoDescriptors,
}

impl Refusal {
    pub fn text(self) -> &'static str {
        match self {
            Refusal::Full => "the hosts' connections are all taken (max_connections)",
            Refusal::TooManyUnauthenticated => {
                "too many connections are logging in (max_unauthenticated)"
            }
            Refusal::EarlyDrop => {
                "many connections are logging in: dropped at random (over half of max_unauthenticated)"
            }
            Refusal::TooManyFromSource => {
                "too many connections of this address are logging in (max_unauthenticated_per_source)"
            }
            Refusal::Penalized => {
                "this address failed to log in too often in the last minute (max_auth_failures_per_minute)"
            }
            Refusal::NoDescriptors => "no file descriptors left (RLIMIT_NOFILE)",
        }
    }
}

/// One connection's place: not logged in, then a host's, freed when dropped.
pub struct Ticket {
    admission: Arc<Admission>,
    source: IpAddr,
    authenticated: bool,
    /// Counted in the budget of known addresses.
    known: bool,
}

/// How long an address a host logged in from keeps its own budget.
const KNOWN_FOR: Duration = Duration::from_secs(3600);

impl Admission {
    pub fn new(
        max_connections: usize,
        max_unauthenticated: usize,
        max_per_source: usize,
    ) -> Arc<Admission> {
        Arc::new(Admission {
            max_connections,
            max_unauthenticated,
            max_per_source,
            counts: Mutex::default(),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a connection that has not logged in yet.
    pub fn enter(self: &Arc<Self>, source: IpAddr) -> Result<Ticket, Refusal> {
        let mut c = self.counts();
        if c.authenticated >= self.max_connections {
            return Err(Refusal::Full);
        }
        if c.by_source.get(&source).copied().unwrap_or(0) >= self.max_per_source {
            return Err(Refusal::TooManyFromSource);
        }
        // An address a host logged in from lately has a budget of its own: a
        // flood from other addresses cannot lock the fleet's hosts out.
        let known = c
            .known
            .get(&source)
            .is_some_and(|t| t.elapsed() < KNOWN_FOR);
        if known {
            if c.unauthenticated_known >= self.max_unauthenticated {
                return Err(Refusal::TooManyUnauthenticated);
            }
            c.unauthenticated_known += 1;
        } else {
            if c.unauthenticated >= self.max_unauthenticated {
                return Err(Refusal::TooManyUnauthenticated);
            }
            if early_drop(
                c.unauthenticated,
                self.max_unauthenticated,
                rand::random::<f64>(),
            ) {
                return Err(Refusal::EarlyDrop);
            }
            c.unauthenticated += 1;
        }
        *c.by_source.entry(source).or_insert(0) += 1;
        Ok(Ticket {
            admission: self.clone(),
            source,
            authenticated: false,
            known,
        })
    }
}

/// Random early drop, as OpenSSH's `MaxStartups start:rate:full` with start at
/// half the budget: from there a new connection is dropped with a probability
/// rising linearly to 1 at `full`. A flood from many addresses then keeps the
/// budget short of full, so an honest host's connection still finds a place
/// most of the time, and it retries while the flood's connections time out.
/// `roll` is uniform in [0, 1).
fn early_drop(unauthenticated: usize, full: usize, roll: f64) -> bool {
    let start = full / 2;
    if start == 0 || unauthenticated < start {
        return false;
    }
    let p = (unauthenticated - start + 1) as f64 / (full - start + 1) as f64;
    roll < p
}

impl Ticket {
    fn leave_unauthenticated(&self, c: &mut Counts) {
        if self.known {
            c.unauthenticated_known -= 1;
        } else {
            c.unauthenticated -= 1;
        }
        if let Some(n) = c.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                c.by_source.remove(&self.source);
            }
        }
    }

    /// Moves the connection to the hosts' places; false when they are all taken.
    pub fn promote(&mut self) -> bool {
        if self.authenticated {
            return true;
        }
        let admission = self.admission.clone();
        let mut c = admission.counts();
        if c.authenticated >= admission.max_connections {
            return false;
        }
        self.leave_unauthenticated(&mut c);
        c.authenticated += 1;
        self.authenticated = true;
        let now = Instant::now();
        // Bounded by the hosts' own logins; stale addresses go first.
        let cap = 4 * admission.max_connections.max(256);
        if c.known.len() >= cap {
            c.known.retain(|_, t| now.duration_since(*t) < KNOWN_FOR);
        }
        if c.known.len() < cap || c.known.contains_key(&self.source) {
            c.known.insert(self.source, now);
        }
        true
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let admission = self.admission.clone();
        let mut c = admission.counts();
        if self.authenticated {
            c.authenticated -= 1;
        } else {
            self.leave_unauthenticated(&mut c);
        }
    }
}

/// One address's failed logins in the current minute.
struct Window {
    start: Instant,
    failures: usize,
    /// Failures not logged one by one (summed up when the minute ends).
    unlogged: usize,
    last: String,
    blocked_logged: bool,
}

const MINUTE: Duration = Duration::from_secs(60);

/// Failed logins per source address: the first of a minute is logged in full,
/// the others in one summary line when the minute ends; past the limit, the
/// address's new connections are closed at once until then.
pub struct AuthFailures {
    max_per_minute: usize,
    windows: Mutex<HashMap<IpAddr, Window>>,
}

impl AuthFailures {
    pub fn new(max_per_minute: usize) -> Arc<AuthFailures> {
        Arc::new(AuthFailures {
            max_per_minute,
            windows: Mutex::default(),
        })
    }

    fn windows(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Window>> {
        self.windows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a failure; returns whether to log it in full (the first of its minute).
    pub fn failed(&self, source: IpAddr, what: &str) -> bool {
        let now = Instant::now();
        let mut w = self.windows();
        let flushed = match w.get(&source) {
            Some(win) if now.duration_since(win.start) >= MINUTE => w.remove(&source),
            _ => None,
        };
        if let Some(old) = flushed {
            summarize(source, &old);
        }
        let win = w.entry(source).or_insert_with(|| Window {
            start: now,
            failures: 0,
            unlogged: 0,
            last: String::new(),
            blocked_logged: false,
        });
        win.failures += 1;
        win.last = what.to_owned();
        if win.failures == 1 {
            return true;
        }
        win.unlogged += 1;
        if win.failures >= self.max_per_minute && !win.blocked_logged {
            win.blocked_logged = true;
            warn!(
                target: "bento::sftp", peer = %source,
                "{} failed logins in under a minute: new connections of this address are closed until the minute ends (max_auth_failures_per_minute)",
                win.failures
            );
        }
        false
    }

    /// Whether the address is over its limit this minute.
    pub fn penalized(&self, source: IpAddr) -> bool {
        self.windows()
            .get(&source)
            .is_some_and(|w| w.failures >= self.max_per_minute && w.start.elapsed() < MINUTE)
    }

    /// Logs the summaries of the minutes that ended, and forgets them.
    pub fn sweep(&self) {
        let mut w = self.windows();
        let ended: Vec<IpAddr> = w
            .iter()
            .filter(|(_, win)| win.start.elapsed() >= MINUTE)
            .map(|(a, _)| *a)
            .collect();
        for a in ended {
            if let Some(win) = w.remove(&a) {
                summarize(a, &win);
            }
        }
    }
}

fn summarize(source: IpAddr, win: &Window) {
    if win.unlogged > 0 {
        info!(
            target: "bento::sftp", peer = %source,
            "{} more failed logins from this address in the minute after the first (last: {})",
            win.unlogged, win.last
        );
    }
}

/// Cuts a [`Killable`] stream: its reads and writes fail from then on, so the
/// SSH session ends and its socket is closed.
#[derive(Default)]
pub struct KillSwitch {
    killed: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

impl KillSwitch {
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        for w in self
            .wakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            w.wake();
        }
    }

    fn check(&self, cx: &Context<'_>) -> io::Result<()> {
        if self.killed.load(Ordering::Acquire) {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "connection cut"));
        }
        let mut w = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
        if !w.iter().any(|k| k.will_wake(cx.waker())) {
            // A read and a write side at most; keep the newest.
            if w.len() >= 2 {
                w.remove(0);
            }
            w.push(cx.waker().clone());
        }
        Ok(())
    }
}

/// A stream the server can cut from outside the SSH session.
pub struct Killable<S> {
    inner: S,
    switch: Arc<KillSwitch>,
}

impl<S> Killable<S> {
    pub fn new(inner: S, switch: Arc<KillSwitch>) -> Self {
        Killable { inner, switch }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Killable<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.switch.check(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Killable<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.switch.check(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.switch.check(cx)?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Logs a line at most once a minute per key, with how many were held back.
#[derive(Default)]
pub struct Throttled {
    last: Mutex<HashMap<String, (Instant, usize)>>,
}

impl Throttled {
    /// Calls `log` with the count of lines held back since the last one, or not at all.
    pub fn log(&self, key: &str, log: impl FnOnce(usize)) {
        let now = Instant::now();
        let mut m = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() > 4096 {
            m.retain(|_, (t, _)| now.duration_since(*t) < MINUTE);
        }
        match m.get_mut(key) {
            Some((t, held)) if now.duration_since(*t) < MINUTE => *held += 1,
            Some((t, held)) => {
                let n = *held;
                *t = now;
                *held = 0;
                drop(m);
                log(n);
            }
            None => {
                m.insert(key.to_owned(), (now, 0));
                drop(m);
                log(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::early_drop;

    #[test]
    fn early_drop_rises_from_half_to_full() {
        assert!(!early_drop(0, 100, 0.0));
        assert!(!early_drop(49, 100, 0.0));
        assert!(early_drop(50, 100, 0.0));
        assert!(!early_drop(50, 100, 0.1));
        assert!(early_drop(75, 100, 0.4));
        assert!(!early_drop(75, 100, 0.6));
        assert!(early_drop(99, 100, 0.97));
        // A budget of one never drops early.
        assert!(!early_drop(0, 1, 0.0));
    }
}
