//! Logging in and out, sessions, the login rate limit and API tokens, against the
//! real `bento serve` and its SQLite file.

mod panel_common;

use std::time::Duration;

use anyhow::{ensure, Result};
use panel_common::{client, hidden, set_cookie, try_login, PanelServer, ADMIN, PASSWORD};
use reqwest::header::{AUTHORIZATION, COOKIE, LOCATION, RETRY_AFTER};
use reqwest::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_sets_a_strict_session_and_logout_ends_it() -> Result<()> {
    let p = PanelServer::start("panel-auth")?;
    let c = client();

    // Without a session every page sends to the login page, and back after it.
    let res = c.get(p.url("/jobs")).send().await?;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()[LOCATION], "/login?next=%2Fjobs");

    let (status, cookie, body) = try_login(&c, &p.base, ADMIN, "not the password").await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(cookie.is_none());
    assert!(body.contains("Wrong user name or password."), "{body}");
    let (status, _, _) = try_login(&c, &p.base, "nobody", PASSWORD).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The session cookie: HttpOnly, SameSite=Strict, not Secure without TLS.
    let res = panel_common::post_login(&c, &p.base, ADMIN, PASSWORD, "/audit").await?;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()[LOCATION], "/audit");
    let (_, header) = set_cookie(&res, "bento_session").unwrap();
    assert!(header.contains("HttpOnly"), "{header}");
    assert!(header.contains("SameSite=Strict"), "{header}");
    assert!(header.contains("Path=/"), "{header}");
    assert!(!header.contains("Secure"), "{header}");

    let s = p.login().await?;
    let fleet = s.page("/").await?;
    assert!(fleet.contains("<h1>Fleet</h1>"));
    assert!(fleet.contains(ADMIN));

    // An outside `next` never leaves the site.
    let res = panel_common::post_login(&c, &p.base, ADMIN, PASSWORD, "//evil.example/").await?;
    assert_eq!(res.headers()[LOCATION], "/");

    // Logging out ends the session on the server, not only in the browser.
    let res = s.post("/logout", &[]).await?;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()[LOCATION], "/login");
    let res = s.get("/").await?;
    assert_eq!(
        res.status(),
        StatusCode::SEE_OTHER,
        "the old cookie still works"
    );

    // Every login, failure and logout is in the audit log with its address.
    let s = p.login().await?;
    let audit = s.page("/audit").await?;
    for action in ["login-failed", "login", "logout", "user-add"] {
        assert!(
            audit.contains(&format!(">{action}<")),
            "{action} missing from the audit log"
        );
    }
    assert!(audit.contains("127.0.0.1"));
    assert!(
        audit.contains(">nobody<"),
        "the failed user name is recorded"
    );
    Ok(())
}

/// Two login pages open in one browser (two tabs, or a page's background refresh
/// that met the login) share the browser's token: the first form still logs in.
/// A forged form (another token) is refused and nothing is logged in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_login_page_keeps_the_first_form_valid() -> Result<()> {
    let p = PanelServer::start("panel-auth")?;
    let c = client();
    let first = c.get(p.url("/login")).send().await?;
    let (token, _) = set_cookie(&first, "bento_login").unwrap();
    let csrf = hidden(&first.text().await?, "csrf").unwrap();
    let browser = format!("bento_login={token}");

    let second = c
        .get(p.url("/login"))
        .header(COOKIE, &browser)
        .send()
        .await?;
    let (again, _) = set_cookie(&second, "bento_login").unwrap();
    assert_eq!(again, token, "the second page minted another token");
    assert_eq!(hidden(&second.text().await?, "csrf").unwrap(), csrf);

    // A cookie the server did not make is not taken over.
    let odd = c
        .get(p.url("/login"))
        .header(COOKIE, "bento_login=<script>")
        .send()
        .await?;
    let (fresh, _) = set_cookie(&odd, "bento_login").unwrap();
    assert_eq!(fresh.len(), 64, "{fresh}");

    let post = |csrf: String| {
        c.post(p.url("/login"))
            .header(COOKIE, &browser)
            .form(&[
                ("user", ADMIN),
                ("password", PASSWORD),
                ("csrf", &csrf),
                ("next", "/"),
            ])
            .send()
    };
    let forged = post("0".repeat(64)).await?;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert!(set_cookie(&forged, "bento_session").is_none());
    let res = post(csrf).await?;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert!(set_cookie(&res, "bento_session").is_some());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_password_ends_the_sessions() -> Result<()> {
    let p = PanelServer::start("panel-auth")?;
    let s = p.login().await?;
    s.page("/").await?;
    p.bento_stdin(
        &["user", "passwd", ADMIN, "--password-stdin"],
        "another long password\n",
    )?;
    assert_eq!(s.get("/").await?.status(), StatusCode::SEE_OTHER);
    let (status, _, _) = try_login(&client(), &p.base, ADMIN, PASSWORD).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    p.login_as(ADMIN, "another long password").await?;

    let users = p.bento_stdin(&["user", "list"], "")?;
    assert!(users.starts_with("admin\t"), "{users}");
    // Passwords too short are refused before anything is stored.
    let short = p.bento_stdin(&["user", "add", "bob", "--password-stdin"], "short\n");
    assert!(short.unwrap_err().to_string().contains("too short"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_rate_limited() -> Result<()> {
    let p = PanelServer::start("panel-auth")?;
    let c = client();
    for i in 0..2 {
        let (status, _, _) = try_login(&c, &p.base, ADMIN, &format!("guess {i}")).await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    // From the third failure on, this (user, address) waits, twice longer each
    // time: fail until the wait is long enough to be seen by the next request.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let res = panel_common::post_login(&c, &p.base, ADMIN, "guess", "/").await?;
        let retry: Option<u64> = res
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        if res.status() == StatusCode::UNAUTHORIZED && retry.is_some_and(|r| r >= 8) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the wait never grew");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // During the wait even the right password is refused, with a Retry-After.
    let res = panel_common::post_login(&c, &p.base, ADMIN, PASSWORD, "/").await?;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = res.headers()[RETRY_AFTER].to_str()?.parse()?;
    assert!(retry > 0 && retry <= 15 * 60, "{retry}");
    assert!(set_cookie(&res, "bento_session").is_none());
    let body = res.text().await?;
    assert!(body.contains("Too many failed logins"), "{body}");

    // The wait is per (user name, address): another account still works.
    p.bento_stdin(
        &["user", "add", "carol", "--password-stdin"],
        "carol's long password\n",
    )?;
    let s = p.login_as("carol", "carol's long password").await?;
    let audit = s.page("/audit?q=login-refused").await?;
    assert!(audit.contains(">login-refused<"), "{audit}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_are_created_listed_and_revoked() -> Result<()> {
    let p = PanelServer::start("panel-auth")?;
    let c = client();
    let token = p
        .bento_stdin(&["token", "add", "ci"], "")?
        .trim()
        .to_owned();
    ensure!(token.starts_with("bento_") && token.len() > 40, "{token}");

    let get = |path: &str, auth: Option<String>| {
        let mut r = c.get(p.url(path));
        if let Some(a) = auth {
            r = r.header(AUTHORIZATION, a);
        }
        r.send()
    };
    let res = get("/api/v1/hosts", Some(format!("Bearer {token}"))).await?;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.json::<serde_json::Value>().await?,
        serde_json::json!([])
    );
    let res = get("/metrics", Some(format!("Bearer {token}"))).await?;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res
        .text()
        .await?
        .contains("bento_hosts{state=\"up-to-date\"} 0"));

    for bad in [
        format!("Bearer {token}x"),
        "Bearer ".into(),
        format!("Basic {token}"),
    ] {
        let res = get("/api/v1/hosts", Some(bad.clone())).await?;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{bad}");
        assert!(res.headers().contains_key("www-authenticate"));
        let body: serde_json::Value = res.json().await?;
        assert!(body["error"].as_str().unwrap().contains("bento token add"));
    }

    // A token starts jobs through the API; a browser session may not (it has the form).
    let res = c
        .post(p.url("/api/v1/jobs"))
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .json(&serde_json::json!({"kind": "deploy", "host": "../../etc"}))
        .send()
        .await?;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = res.json().await?;
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("invalid host name"),
        "{body}"
    );
    let s = p.login().await?;
    let res = s
        .client
        .post(p.url("/api/v1/jobs"))
        .header("cookie", s.cookie_header())
        .json(&serde_json::json!({"kind": "build"}))
        .send()
        .await?;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    let list = p.bento_stdin(&["token", "list"], "")?;
    assert!(list.contains("ci\tactive"), "{list}");
    assert!(!list.contains(&token), "token values are never shown again");
    p.bento_stdin(&["token", "revoke", "ci"], "")?;
    let res = get("/api/v1/hosts", Some(format!("Bearer {token}"))).await?;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    let audit = s.page("/audit").await?;
    assert!(audit.contains(">token-add<") && audit.contains(">token-revoke<"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_are_secure_when_served_over_tls() -> Result<()> {
    let p = PanelServer::start_with("panel-auth", "[web]\nsecure_cookies = true\n")?;
    let c = client();
    let page = c.get(p.url("/login")).send().await?;
    let (_, header) = set_cookie(&page, "bento_login").unwrap();
    assert!(header.contains("; Secure"), "{header}");
    assert!(page.headers().contains_key("strict-transport-security"));
    let res = c
        .get(p.url("/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await?;
    assert_eq!(res.text().await?, "ok\n");
    Ok(())
}
