//! Errors of the panel's handlers. What a user sees says what went wrong and what
//! to do; internal failures are logged and answered with a generic message.

use askama::Template;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::Json;

use super::auth;
use super::views::Nav;
use super::AppState;

#[derive(Debug)]
pub enum WebError {
    /// 400: the request itself is wrong (the message says how).
    BadRequest(String),
    /// 401 (API only): no session and no valid bearer token.
    Unauthorized,
    /// 403: a form without a valid CSRF token, ...
    Forbidden(String),
    NotFound(String),
    /// 429 with `Retry-After`.
    TooManyRequests {
        message: String,
        retry_after_secs: u64,
    },
    /// 500: logged; the browser gets no details.
    Internal(anyhow::Error),
}

pub type WebResult<T> = Result<T, WebError>;

impl WebError {
    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        WebError::Internal(e.into())
    }

    fn status(&self) -> StatusCode {
        match self {
            WebError::BadRequest(_) => StatusCode::BAD_REQUEST,
            WebError::Unauthorized => StatusCode::UNAUTHORIZED,
            WebError::Forbidden(_) => StatusCode::FORBIDDEN,
            WebError::NotFound(_) => StatusCode::NOT_FOUND,
            WebError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            WebError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The message shown to the user. Internal errors are logged here, once.
    fn public_message(&self) -> String {
        match self {
            WebError::BadRequest(m) | WebError::Forbidden(m) | WebError::NotFound(m) => m.clone(),
            WebError::Unauthorized => {
                "Log in, or send an API token as `Authorization: Bearer TOKEN` (create one with `bento token add NAME`).".into()
            }
            WebError::TooManyRequests { message, .. } => message.clone(),
            WebError::Internal(e) => {
                tracing::error!("internal error: {e:#}");
                "Something went wrong on the server. The details are in the server's log.".into()
            }
        }
    }

    fn title(&self) -> &'static str {
        match self {
            WebError::BadRequest(_) => "Bad request",
            WebError::Unauthorized => "Not logged in",
            WebError::Forbidden(_) => "Forbidden",
            WebError::NotFound(_) => "Not found",
            WebError::TooManyRequests { .. } => "Too many requests",
            WebError::Internal(_) => "Server error",
        }
    }

    fn finish(&self, mut res: Response) -> Response {
        *res.status_mut() = self.status();
        if let WebError::TooManyRequests {
            retry_after_secs, ..
        } = self
        {
            if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                res.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        res
    }
}

impl From<sqlx::Error> for WebError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::RowNotFound => WebError::NotFound("Not found.".into()),
            e => WebError::Internal(anyhow::Error::new(e).context("database")),
        }
    }
}

impl From<anyhow::Error> for WebError {
    fn from(e: anyhow::Error) -> Self {
        WebError::Internal(e)
    }
}

impl From<tokio::task::JoinError> for WebError {
    fn from(e: tokio::task::JoinError) -> Self {
        WebError::Internal(anyhow::Error::new(e).context("background task"))
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    title: &'a str,
    message: &'a str,
    status: u16,
    nav: Nav,
}

/// What an error page says, kept on its response so [`with_nav`] can render it
/// again with the navigation of the logged-in user (a handler's error has no
/// request to find the user in).
#[derive(Clone)]
struct ErrorPageInfo {
    title: &'static str,
    message: String,
    status: u16,
}

impl ErrorPageInfo {
    fn render(&self, nav: Nav) -> String {
        ErrorPage {
            title: self.title,
            message: &self.message,
            status: self.status,
            nav,
        }
        .render()
        .unwrap_or_else(|_| "<!doctype html><title>Error</title><p>Error</p>".into())
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let info = ErrorPageInfo {
            title: self.title(),
            message: self.public_message(),
            status: self.status().as_u16(),
        };
        let mut res = self.finish(Html(info.render(Nav::anonymous())).into_response());
        res.extensions_mut().insert(info);
        res
    }
}

/// Error pages keep the navigation for a logged-in user (a mistyped address is
/// one click from the fleet); others get the bare page, which reveals nothing.
pub async fn with_nav(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let mut session = HeaderMap::new();
    if let Some(c) = req.headers().get(header::COOKIE) {
        session.insert(header::COOKIE, c.clone());
    }
    let section = match req.uri().path() {
        p if p.starts_with("/jobs") => "jobs",
        p if p.starts_with("/audit") => "audit",
        _ => "fleet",
    };
    let mut res = next.run(req).await;
    let Some(info) = res.extensions_mut().remove::<ErrorPageInfo>() else {
        return res;
    };
    let Some(user) = auth::optional_user(&session, &state).await else {
        return res;
    };
    let (mut parts, _) = res.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(info.render(Nav::new(&user, section))))
}

/// The JSON form of [`WebError`], for `/api/*` and `/metrics`.
#[derive(Debug)]
pub struct ApiError(pub WebError);

pub type ApiResult<T> = Result<T, ApiError>;

impl<E: Into<WebError>> From<E> for ApiError {
    fn from(e: E) -> Self {
        ApiError(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = self.0.public_message();
        let mut res = Json(serde_json::json!({ "error": message })).into_response();
        if matches!(self.0, WebError::Unauthorized) {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"bento\""),
            );
        }
        self.0.finish(res)
    }
}

/// Unknown routes.
pub async fn not_found() -> WebError {
    WebError::NotFound("There is no such page.".into())
}
