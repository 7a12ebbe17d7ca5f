//! Login, sessions, API tokens, CSRF and the login rate limit.
//!
//! - Passwords: argon2id (`bento user add|passwd`).
//! - Sessions: a random cookie (`HttpOnly; SameSite=Strict`, `Secure` when
//!   configured); the database keeps its SHA-256 only, with a per-session CSRF token.
//! - [`SessionUser`] is the logged-in user of a page; without a session the
//!   request is redirected to `/login`. [`ApiUser`] also takes `Authorization:
//!   Bearer` tokens (`bento token add`) and answers 401 in JSON. [`CsrfForm`] is the
//!   only way a handler reads a posted form: it checks the session and its token.
//! - Failed logins slow down the (user name, client address) pair that made them:
//!   after [`FREE_FAILURES`] a delay that doubles from 1 s up to [`MAX_DELAY`],
//!   kept in the database (`login_failures`). The right password from another
//!   address is never refused. One address is also capped at
//!   [`MAX_FAILURES_PER_SOURCE`] failures per [`LOGIN_WINDOW`], whatever the names.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use askama::Template;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use rand::RngCore;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::db::now_ms;
use super::error::{ApiError, WebError, WebResult};
use super::views::Nav;
use super::{audit, AppState};

pub const SESSION_COOKIE: &str = "bento_session";
/// Token of the login form, before there is a session (login CSRF).
pub const LOGIN_COOKIE: &str = "bento_login";
/// A session unused for this long is gone.
pub const SESSION_IDLE: Duration = Duration::from_secs(24 * 3600);
/// And no session lives longer than this.
pub const SESSION_MAX: Duration = Duration::from_secs(7 * 24 * 3600);
/// Failed logins of one (user, address) pair before each further one waits.
pub const FREE_FAILURES: i64 = 3;
/// The longest wait of a pair (the delay doubles from 1 s up to this).
pub const MAX_DELAY: Duration = Duration::from_secs(15 * 60);
/// A pair whose last failure is older than this starts again from zero.
pub const FAILURES_FORGOTTEN: Duration = Duration::from_secs(24 * 3600);
/// Failed logins allowed per client address within [`LOGIN_WINDOW`], all user
/// names together: high, since without `--behind-proxy` everyone behind a reverse
/// proxy shares one address; it only bounds guessing across many names.
pub const MAX_FAILURES_PER_SOURCE: usize = 300;
pub const LOGIN_WINDOW: Duration = Duration::from_secs(15 * 60);

/// 32 random bytes, hex.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An argon2id hash (PHC string) of a password.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))
}

pub fn verify_password(hash: &str, password: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// Verified against when the user does not exist, so both cases cost the same.
fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| hash_password("not a password").unwrap_or_default())
}

/// Value of a cookie in the request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

fn set_cookie(
    state: &AppState,
    name: &str,
    value: &str,
    path: &str,
    max_age: Option<u64>,
) -> HeaderValue {
    let mut c = format!("{name}={value}; Path={path}; HttpOnly; SameSite=Strict");
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    if state.config.secure_cookies {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).expect("cookie values are hex")
}

/// Where a request comes from: the peer address, or with `behind_proxy` the last
/// `X-Forwarded-For` entry (the one the local proxy added).
#[derive(Debug, Clone)]
pub struct ClientAddr(pub String);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(client_addr(parts, state)))
    }
}

fn client_addr(parts: &Parts, state: &AppState) -> String {
    if state.config.behind_proxy {
        if let Some(last) = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|s| !s.is_empty())
        {
            return super::views::clip(last, 64);
        }
    }
    parts
        .extensions
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The logged-in user of a page.
#[derive(Debug, Clone)]
pub struct SessionUser {
    pub id: i64,
    pub name: String,
    /// The session's CSRF token, put in every form.
    pub csrf: String,
    pub source: String,
    token_hash: String,
}

impl SessionUser {
    /// The audit's "who".
    pub fn actor(&self) -> String {
        self.name.clone()
    }
}

async fn session_from(
    headers: &HeaderMap,
    source: String,
    state: &AppState,
) -> Result<Option<SessionUser>, WebError> {
    let Some(token) = cookie(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let hash = sha256_hex(token);
    let now = now_ms();
    let row: Option<(i64, String, String, i64, i64)> = sqlx::query_as(
        "SELECT u.id, u.name, s.csrf, s.created_at, s.last_seen \
         FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = ?",
    )
    .bind(&hash)
    .fetch_optional(&state.db)
    .await?;
    let Some((id, name, csrf, created, last_seen)) = row else {
        return Ok(None);
    };
    if now - last_seen > SESSION_IDLE.as_millis() as i64
        || now - created > SESSION_MAX.as_millis() as i64
    {
        sqlx::query("DELETE FROM sessions WHERE token_hash = ?")
            .bind(&hash)
            .execute(&state.db)
            .await?;
        return Ok(None);
    }
    // One write a minute per session is enough for the idle timeout.
    if now - last_seen > 60_000 {
        sqlx::query("UPDATE sessions SET last_seen = ? WHERE token_hash = ?")
            .bind(now)
            .bind(&hash)
            .execute(&state.db)
            .await?;
    }
    Ok(Some(SessionUser {
        id,
        name,
        csrf,
        source,
        token_hash: hash,
    }))
}

/// The logged-in user of a request, if any: for responses that do not need one
/// but show more with one (an error page keeps the navigation).
pub async fn optional_user(headers: &HeaderMap, state: &AppState) -> Option<SessionUser> {
    cookie(headers, SESSION_COOKIE)?;
    session_from(headers, String::new(), state)
        .await
        .ok()
        .flatten()
}

/// Without a session: a redirect to the login page (then back here).
pub struct LoginRedirect(Response);

impl IntoResponse for LoginRedirect {
    fn into_response(self) -> Response {
        self.0
    }
}

impl FromRequestParts<AppState> for SessionUser {
    type Rejection = LoginRedirect;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match session_from(&parts.headers, client_addr(parts, state), state).await {
            Ok(Some(u)) => Ok(u),
            Ok(None) => {
                let next = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                let to = if next == "/" {
                    "/login".to_owned()
                } else {
                    format!("/login{}", super::views::query(&[("next", next)]))
                };
                Err(LoginRedirect(Redirect::to(&to).into_response()))
            }
            Err(e) => Err(LoginRedirect(e.into_response())),
        }
    }
}

/// Who calls the API: a session user or a bearer token.
#[derive(Debug, Clone)]
pub struct ApiUser {
    /// `alice`, or `token:ci` for a token.
    pub actor: String,
    pub source: String,
}

impl FromRequestParts<AppState> for ApiUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(auth) = parts.headers.get(header::AUTHORIZATION) {
            let token = auth
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .ok_or(ApiError(WebError::Unauthorized))?;
            let name = check_token(state, token)
                .await?
                .ok_or(ApiError(WebError::Unauthorized))?;
            return Ok(ApiUser {
                actor: format!("token:{name}"),
                source: client_addr(parts, state),
            });
        }
        match session_from(&parts.headers, client_addr(parts, state), state).await? {
            Some(u) => Ok(ApiUser {
                actor: u.name,
                source: u.source,
            }),
            None => Err(ApiError(WebError::Unauthorized)),
        }
    }
}

/// The name of a valid, unrevoked token.
async fn check_token(state: &AppState, token: &str) -> Result<Option<String>, WebError> {
    if token.is_empty() || token.len() > 200 {
        return Ok(None);
    }
    let hash = sha256_hex(token);
    let row: Option<(i64, String)> = sqlx::query_as(
        "SELECT id, name FROM api_tokens WHERE token_hash = ? AND revoked_at IS NULL",
    )
    .bind(&hash)
    .fetch_optional(&state.db)
    .await?;
    let Some((id, name)) = row else {
        return Ok(None);
    };
    sqlx::query("UPDATE api_tokens SET last_used = ? WHERE id = ?")
        .bind(now_ms())
        .bind(id)
        .execute(&state.db)
        .await?;
    Ok(Some(name))
}

/// A posted form of a logged-in user whose CSRF token matched the session's.
pub struct CsrfForm<T> {
    pub user: SessionUser,
    pub form: T,
}

#[derive(Deserialize)]
struct CsrfField {
    #[serde(default)]
    csrf: String,
}

/// Largest form the panel accepts.
const MAX_FORM: usize = 64 * 1024;

impl<T: DeserializeOwned + Send> FromRequest<AppState> for CsrfForm<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let user = SessionUser::from_request_parts(&mut parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let bytes = axum::body::to_bytes(body, MAX_FORM)
            .await
            .map_err(|_| WebError::BadRequest("The form is too large.".into()).into_response())?;
        let field: CsrfField = serde_urlencoded::from_bytes(&bytes).unwrap_or(CsrfField {
            csrf: String::new(),
        });
        if !constant_time_eq(field.csrf.as_bytes(), user.csrf.as_bytes()) {
            tracing::warn!(
                "{}: form without a valid CSRF token refused ({})",
                user.name,
                parts.uri.path()
            );
            return Err(WebError::Forbidden(
                "This form has expired or was not sent from the panel. Reload the page and try again."
                    .into(),
            )
            .into_response());
        }
        let form = serde_urlencoded::from_bytes(&bytes).map_err(|e| {
            WebError::BadRequest(format!("The form is not valid: {e}.")).into_response()
        })?;
        Ok(CsrfForm { user, form })
    }
}

/// Failed logins per key (`user:NAME`, `source:ADDR`) within [`LOGIN_WINDOW`].
#[derive(Default)]
pub struct RateLimiter {
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl RateLimiter {
    /// `Err(wait)` when a key is over its limit.
    pub fn check(&self, keys: &[(String, usize)]) -> Result<(), Duration> {
        let now = Instant::now();
        let mut map = self.failures.lock().expect("limiter");
        let mut wait = None;
        for (key, max) in keys {
            if let Some(q) = map.get_mut(key) {
                while q
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > LOGIN_WINDOW)
                {
                    q.pop_front();
                }
                if q.len() >= *max {
                    let oldest = q[q.len() - max];
                    let w = LOGIN_WINDOW.saturating_sub(now.duration_since(oldest));
                    wait = Some(wait.map_or(w, |x: Duration| x.max(w)));
                }
            }
        }
        wait.map_or(Ok(()), Err)
    }

    pub fn fail(&self, keys: &[(String, usize)]) {
        let now = Instant::now();
        let mut map = self.failures.lock().expect("limiter");
        if map.len() > 100_000 {
            map.retain(|_, q| {
                q.back()
                    .is_some_and(|t| now.duration_since(*t) < LOGIN_WINDOW)
            });
        }
        for (key, _) in keys {
            map.entry(key.clone()).or_default().push_back(now);
        }
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    nav: Nav,
    csrf: &'a str,
    next: &'a str,
    user: &'a str,
    error: &'a str,
}

#[derive(Deserialize, Default)]
pub struct LoginQuery {
    #[serde(default)]
    next: String,
}

/// Only a path of this site: one `/` then anything but `/` or `\\`, and no control
/// character or white space, as sent or percent-decoded. Browsers drop a TAB or a
/// newline inside a URL and read `\\` as `/`, so `/\t/evil` would go to `//evil`.
fn safe_next(next: &str) -> &str {
    fn plain(s: &[u8]) -> bool {
        s.first() == Some(&b'/')
            && !matches!(s.get(1), Some(b'/' | b'\\'))
            && !s.contains(&b'\\')
            && !s
                .iter()
                .any(|&b| b.is_ascii_control() || b.is_ascii_whitespace() || b >= 0x80)
    }
    if plain(next.as_bytes()) && plain(&percent_decode(next.as_bytes())) {
        next
    } else {
        "/"
    }
}

/// `%XX` decoded (once, as a browser or server would); other bytes as they are.
fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// The login form's CSRF token: the one this browser already holds, so that two
/// login pages open at once (two tabs, or a page's background refresh that met
/// the login) both stay valid; a new one otherwise.
fn login_token(headers: &HeaderMap) -> String {
    match cookie(headers, LOGIN_COOKIE) {
        Some(t) if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) => t.to_string(),
        _ => random_token(),
    }
}

fn login_form(
    state: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    next: &str,
    user: &str,
    error: &str,
) -> Response {
    let token = login_token(headers);
    let page = LoginPage {
        nav: Nav::anonymous(),
        csrf: &token,
        next: safe_next(next),
        user,
        error,
    };
    match page.render() {
        Ok(body) => {
            let mut res = (status, Html(body)).into_response();
            res.headers_mut().append(
                header::SET_COOKIE,
                set_cookie(state, LOGIN_COOKIE, &token, "/login", Some(3600)),
            );
            res
        }
        Err(e) => WebError::internal(e).into_response(),
    }
}

pub async fn login_page(
    State(state): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<LoginQuery>,
    ClientAddr(source): ClientAddr,
    headers: HeaderMap,
) -> Response {
    if let Ok(Some(_)) = session_from(&headers, source, &state).await {
        return Redirect::to(safe_next(&q.next)).into_response();
    }
    login_form(&state, &headers, StatusCode::OK, &q.next, "", "")
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    next: String,
}

pub async fn login(
    State(state): State<AppState>,
    ClientAddr(source): ClientAddr,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    let cookie_token = cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    if cookie_token.is_empty() || !constant_time_eq(cookie_token.as_bytes(), form.csrf.as_bytes()) {
        return login_form(
            &state,
            &headers,
            StatusCode::FORBIDDEN,
            &form.next,
            &form.user,
            "The login form expired or was not sent from this page. Please try again.",
        );
    }
    let user = super::views::clip(form.user.trim(), 64);
    let source_key = [(format!("source:{source}"), MAX_FAILURES_PER_SOURCE)];
    let blocked = match pair_blocked(&state.db, &user, &source).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    if let Some(wait) = blocked.or(state.limiter.check(&source_key).err()) {
        let _ = audit::record(
            &state.db,
            &user,
            "login-refused",
            "",
            "too many failed logins",
            &source,
        )
        .await;
        let mut res = login_form(
            &state,
            &headers,
            StatusCode::TOO_MANY_REQUESTS,
            &form.next,
            &user,
            &format!("Too many failed logins. Try again in {}.", wait_text(wait)),
        );
        set_retry_after(&mut res, wait);
        return res;
    }
    match try_login(&state, &user, form.password, &source, &headers).await {
        Ok(Some(token)) => {
            if let Err(e) = sqlx::query("DELETE FROM login_failures WHERE user = ? AND source = ?")
                .bind(&user)
                .bind(&source)
                .execute(&state.db)
                .await
            {
                tracing::warn!("cannot clear the failed logins of {user} from {source}: {e}");
            }
            let _ = audit::record(&state.db, &user, "login", "", "", &source).await;
            let mut res = Redirect::to(safe_next(&form.next)).into_response();
            let h = res.headers_mut();
            h.append(
                header::SET_COOKIE,
                set_cookie(
                    &state,
                    SESSION_COOKIE,
                    &token,
                    "/",
                    Some(SESSION_MAX.as_secs()),
                ),
            );
            h.append(
                header::SET_COOKIE,
                set_cookie(&state, LOGIN_COOKIE, "", "/login", Some(0)),
            );
            res
        }
        Ok(None) => {
            state.limiter.fail(&source_key);
            let delay = match record_failure(&state.db, &user, &source).await {
                Ok(d) => d,
                Err(e) => return e.into_response(),
            };
            let _ = audit::record(
                &state.db,
                &user,
                "login-failed",
                "",
                "wrong user name or password",
                &source,
            )
            .await;
            let mut res = login_form(
                &state,
                &headers,
                StatusCode::UNAUTHORIZED,
                &form.next,
                &user,
                &match delay {
                    Some(d) => format!(
                        "Wrong user name or password. Too many failed logins: try again in {}.",
                        wait_text(d)
                    ),
                    None => "Wrong user name or password.".to_owned(),
                },
            );
            if let Some(d) = delay {
                set_retry_after(&mut res, d);
            }
            res
        }
        Err(e) => e.into_response(),
    }
}

fn set_retry_after(res: &mut Response, wait: Duration) {
    let secs = wait.as_millis().div_ceil(1000).max(1);
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        res.headers_mut().insert(header::RETRY_AFTER, v);
    }
}

/// "1 second", "40 seconds", "1 minute", "15 minutes".
fn wait_text(wait: Duration) -> String {
    let secs = wait.as_millis().div_ceil(1000).max(1) as u64;
    let (n, unit) = if secs < 60 {
        (secs, "second")
    } else {
        (secs.div_ceil(60), "minute")
    };
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

/// The wait after the `failures`-th failure of a pair, if any.
fn backoff(failures: i64) -> Option<Duration> {
    let over = failures - FREE_FAILURES;
    if over < 0 {
        return None;
    }
    let secs = 1u64 << over.min(20);
    Some(Duration::from_secs(secs).min(MAX_DELAY))
}

/// How long this pair must still wait, if it must.
async fn pair_blocked(
    db: &sqlx::SqlitePool,
    user: &str,
    source: &str,
) -> WebResult<Option<Duration>> {
    let until: Option<i64> = sqlx::query_scalar(
        "SELECT blocked_until FROM login_failures WHERE user = ? AND source = ?",
    )
    .bind(user)
    .bind(source)
    .fetch_optional(db)
    .await?;
    let now = now_ms();
    Ok(until
        .filter(|u| *u > now)
        .map(|u| Duration::from_millis((u - now) as u64)))
}

/// Counts a failure of the pair; returns the wait it now has, if any.
async fn record_failure(
    db: &sqlx::SqlitePool,
    user: &str,
    source: &str,
) -> WebResult<Option<Duration>> {
    let now = now_ms();
    let forgotten = now - FAILURES_FORGOTTEN.as_millis() as i64;
    let failures: i64 = sqlx::query_scalar(
        "INSERT INTO login_failures (user, source, failures, last_failure, blocked_until)          VALUES (?1, ?2, 1, ?3, 0)          ON CONFLICT (user, source) DO UPDATE SET            failures = CASE WHEN last_failure < ?4 THEN 1 ELSE failures + 1 END,            last_failure = ?3          RETURNING failures",
    )
    .bind(user)
    .bind(source)
    .bind(now)
    .bind(forgotten)
    .fetch_one(db)
    .await?;
    let delay = backoff(failures);
    if let Some(d) = delay {
        sqlx::query("UPDATE login_failures SET blocked_until = ? WHERE user = ? AND source = ?")
            .bind(now + d.as_millis() as i64)
            .bind(user)
            .bind(source)
            .execute(db)
            .await?;
    }
    Ok(delay)
}

/// Checks the password; on success creates a session and returns its cookie value.
async fn try_login(
    state: &AppState,
    user: &str,
    password: String,
    source: &str,
    headers: &HeaderMap,
) -> WebResult<Option<String>> {
    let row: Option<(i64, String)> =
        sqlx::query_as("SELECT id, password_hash FROM users WHERE name = ?")
            .bind(user)
            .fetch_optional(&state.db)
            .await?;
    let (id, hash) = match row {
        Some((id, hash)) => (Some(id), hash),
        None => (None, dummy_hash().to_owned()),
    };
    let ok = tokio::task::spawn_blocking(move || verify_password(&hash, &password)).await?;
    let Some(id) = id.filter(|_| ok) else {
        return Ok(None);
    };
    let token = random_token();
    let now = now_ms();
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|s| super::views::clip(s, 200))
        .unwrap_or_default();
    sqlx::query(
        "INSERT INTO sessions (token_hash, user_id, csrf, created_at, last_seen, source, user_agent) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(sha256_hex(&token))
    .bind(id)
    .bind(random_token())
    .bind(now)
    .bind(now)
    .bind(source)
    .bind(agent)
    .execute(&state.db)
    .await?;
    Ok(Some(token))
}

#[derive(Deserialize)]
pub struct Empty {}

pub async fn logout(State(state): State<AppState>, f: CsrfForm<Empty>) -> WebResult<Response> {
    sqlx::query("DELETE FROM sessions WHERE token_hash = ?")
        .bind(&f.user.token_hash)
        .execute(&state.db)
        .await?;
    audit::record(&state.db, &f.user.actor(), "logout", "", "", &f.user.source).await?;
    let mut res = Redirect::to("/login").into_response();
    res.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&state, SESSION_COOKIE, "", "/", Some(0)),
    );
    Ok(res)
}

/// Deletes expired sessions now and then.
pub async fn expire_sessions(state: AppState) {
    let mut shutdown = state.shutdown.clone();
    loop {
        let now = now_ms();
        let r = sqlx::query("DELETE FROM sessions WHERE last_seen < ? OR created_at < ?")
            .bind(now - SESSION_IDLE.as_millis() as i64)
            .bind(now - SESSION_MAX.as_millis() as i64)
            .execute(&state.db)
            .await;
        if let Err(e) = r {
            tracing::warn!("cannot expire sessions: {e}");
        }
        let r = sqlx::query("DELETE FROM login_failures WHERE last_failure < ?")
            .bind(now - FAILURES_FORGOTTEN.as_millis() as i64)
            .execute(&state.db)
            .await;
        if let Err(e) = r {
            tracing::warn!("cannot forget old failed logins: {e}");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Creates a user or sets a password (the command line's `bento user`).
pub async fn set_password(
    db: &sqlx::SqlitePool,
    name: &str,
    password: &str,
    create: bool,
) -> anyhow::Result<()> {
    let pw = password.to_owned();
    let hash = tokio::task::spawn_blocking(move || hash_password(&pw)).await??;
    let now = now_ms();
    if create {
        let r = sqlx::query(
            "INSERT INTO users (name, password_hash, created_at, password_changed_at) VALUES (?, ?, ?, ?)",
        )
        .bind(name)
        .bind(&hash)
        .bind(now)
        .bind(now)
        .execute(db)
        .await;
        match r {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                anyhow::bail!("user {name:?} exists already (change the password with `bento user passwd {name}`)")
            }
            Err(e) => Err(e.into()),
        }
    } else {
        let r = sqlx::query(
            "UPDATE users SET password_hash = ?, password_changed_at = ? WHERE name = ?",
        )
        .bind(&hash)
        .bind(now)
        .bind(name)
        .execute(db)
        .await?;
        if r.rows_affected() == 0 {
            anyhow::bail!("no user {name:?} (create it with `bento user add {name}`)");
        }
        // A new password ends every session of the user.
        sqlx::query("DELETE FROM sessions WHERE user_id = (SELECT id FROM users WHERE name = ?)")
            .bind(name)
            .execute(db)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_this_site() {
        for ok in [
            "/",
            "/jobs/3",
            "/?state=failing&q=web",
            "/hosts/web01/logs/x.log.gz",
        ] {
            assert_eq!(safe_next(ok), ok);
        }
        for bad in [
            "//evil.example/",
            "/\\evil.example",
            "\\\\evil.example",
            "/\t/evil.example/phish",
            "/%09/evil.example/phish",
            "\t//evil.example",
            "/ /evil.example",
            "/\u{a0}/evil.example",
            "/%2F/evil.example",
            "/%2f/evil.example",
            "%2F%2Fevil.example",
            "/%5Cevil.example",
            "/%5cevil.example",
            "/x\\..\\..\\evil",
            "/%0d%0aSet-Cookie:%20a=b",
            "https://evil.example/",
            "http:evil.example",
            "javascript:alert(1)",
            "/x\0",
            "/x\x7f",
            "",
            "jobs",
            "/x\r\nSet-Cookie: a=b",
        ] {
            assert_eq!(safe_next(bad), "/", "{bad:?}");
        }
    }

    #[test]
    fn the_source_limiter_counts_failures_per_key() {
        let l = RateLimiter::default();
        let keys = [("source:x".to_owned(), 2)];
        assert!(l.check(&keys).is_ok());
        l.fail(&keys);
        assert!(l.check(&keys).is_ok());
        l.fail(&keys);
        let wait = l.check(&keys).unwrap_err();
        assert!(wait > Duration::from_secs(14 * 60) && wait <= LOGIN_WINDOW);
        assert!(l.check(&[("source:y".to_owned(), 2)]).is_ok());
    }

    #[test]
    fn the_backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff(1), None);
        assert_eq!(backoff(FREE_FAILURES - 1), None);
        assert_eq!(backoff(FREE_FAILURES), Some(Duration::from_secs(1)));
        assert_eq!(backoff(FREE_FAILURES + 1), Some(Duration::from_secs(2)));
        assert_eq!(backoff(FREE_FAILURES + 3), Some(Duration::from_secs(8)));
        assert_eq!(backoff(FREE_FAILURES + 40), Some(MAX_DELAY));
    }

    #[test]
    fn waits_are_worded_in_the_singular_and_plural() {
        assert_eq!(wait_text(Duration::from_millis(300)), "1 second");
        assert_eq!(wait_text(Duration::from_secs(2)), "2 seconds");
        assert_eq!(wait_text(Duration::from_secs(60)), "1 minute");
        assert_eq!(wait_text(Duration::from_secs(61)), "2 minutes");
        assert_eq!(wait_text(MAX_DELAY), "15 minutes");
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; bento_session=abc ; b=2"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("bento_login=xyz"));
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, LOGIN_COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "bento"), None);
    }

    #[test]
    fn passwords_verify_only_against_their_hash() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, "correct horse"));
        assert!(!verify_password(&h, "correct horse "));
        assert!(!verify_password("not a hash", "correct horse"));
    }
}
