//! The panel's defences: every route behind a session, CSRF tokens on forms,
//! security headers, hostile reports escaped and capped, invalid host names refused.

mod panel_common;

use std::fs;
use std::time::{Duration, Instant};

use anyhow::Result;
use bento_core::report::ReportStatus;
use panel_common::{client, system, write_gz, PanelServer};
use reqwest::header::LOCATION;
use reqwest::StatusCode;

const XSS: &str = "<script>alert('owned')</script><img src=x onerror=alert(1)>";

/// Every route of the panel (`web::router`), with a concrete path.
const PAGES: [&str; 12] = [
    "/",
    "/hosts/web1",
    "/hosts/web1/logs/20240101-0000_sys_success.log.gz",
    "/hosts/web1/diff",
    "/jobs",
    "/jobs/1",
    "/rollouts",
    "/rollouts/1",
    "/rollouts/1/rollback",
    "/alerts",
    "/audit",
    "/events",
];
const JOB_LOG: &str = "/jobs/1/log";
const API: [&str; 6] = [
    "/api/v1/hosts",
    "/api/v1/hosts/web1",
    "/api/v1/hosts/web1/reports",
    "/api/v1/jobs",
    "/api/v1/jobs/1",
    "/metrics",
];
const FORMS: [&str; 6] = [
    "/jobs",
    "/jobs/1/cancel",
    "/rollouts/1/abort",
    "/rollouts/1/resume",
    "/rollouts/1/rollback",
    "/logout",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_but_login_healthz_and_static_needs_a_session() -> Result<()> {
    let p = PanelServer::start("panel-sec")?;
    p.add_host("web1", Some(&system("web1", 1)), Duration::from_secs(60))?;
    let c = client();
    for path in PAGES.iter().chain([&JOB_LOG]) {
        let res = c.get(p.url(path)).send().await?;
        assert_eq!(res.status(), StatusCode::SEE_OTHER, "GET {path}");
        let to = res.headers()[LOCATION].to_str()?.to_owned();
        assert!(to.starts_with("/login"), "GET {path} → {to}");
        assert!(res.text().await?.is_empty(), "GET {path} leaked a body");
    }
    for path in API {
        let res = c.get(p.url(path)).send().await?;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "GET {path}");
        let body = res.text().await?;
        assert!(!body.contains("web1"), "GET {path} leaked {body}");
    }
    let res = c
        .post(p.url("/api/v1/jobs"))
        .json(&serde_json::json!({"kind": "deploy"}))
        .send()
        .await?;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    for path in FORMS {
        let res = c
            .post(p.url(path))
            .form(&[("kind", "deploy"), ("csrf", "x")])
            .send()
            .await?;
        assert_eq!(res.status(), StatusCode::SEE_OTHER, "POST {path}");
        assert!(res.headers()[LOCATION].to_str()?.starts_with("/login"));
    }
    // A forged or expired cookie is no session either.
    let res = c
        .get(p.url("/"))
        .header("cookie", format!("bento_session={}", "ab".repeat(32)))
        .send()
        .await?;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    for path in [
        "/login",
        "/healthz",
        "/static/app.css",
        "/static/app.js",
        "/static/icon.svg",
    ] {
        let res = c.get(p.url(path)).send().await?;
        assert_eq!(res.status(), StatusCode::OK, "GET {path}");
    }
    // Nothing was started by any of this.
    let s = p.login().await?;
    assert_eq!(s.json("/api/v1/jobs").await?, serde_json::json!([]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_without_the_right_csrf_token_are_refused() -> Result<()> {
    let p = PanelServer::start("panel-sec")?;
    p.add_host("web1", Some(&system("web1", 1)), Duration::from_secs(60))?;
    let s = p.login().await?;
    for fields in [
        vec![("kind", "build"), ("host", "web1")],
        vec![("kind", "build"), ("host", "web1"), ("csrf", "")],
        vec![
            ("kind", "build"),
            ("host", "web1"),
            ("csrf", "0123456789abcdef"),
        ],
    ] {
        let res = s.post_raw("/jobs", &fields).await?;
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{fields:?}");
        assert!(res.text().await?.contains("Reload the page"));
    }
    // Another session's token is as wrong as a made-up one.
    let other = p.login().await?;
    assert_ne!(other.csrf, s.csrf);
    let res = s
        .post_raw("/jobs", &[("kind", "build"), ("csrf", &other.csrf)])
        .await?;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = s.post_raw("/logout", &[]).await?;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        s.get("/").await?.status(),
        StatusCode::OK,
        "logout without token must not log out"
    );
    assert_eq!(s.json("/api/v1/jobs").await?, serde_json::json!([]));

    // The login form has its own token, tied to a cookie.
    let c = client();
    let res = c
        .post(p.url("/login"))
        .form(&[
            ("user", "admin"),
            ("password", panel_common::PASSWORD),
            ("csrf", "x"),
        ])
        .send()
        .await?;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(panel_common::set_cookie(&res, "bento_session").is_none());

    // With its token the same form works (once the panel has seen the host).
    s.wait_for_host("web1").await?;
    let id = s.start_job("build", "web1").await?;
    assert!(id > 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_headers_and_no_inline_script() -> Result<()> {
    let p = PanelServer::start("panel-sec")?;
    p.add_host("web1", Some(&system("web1", 1)), Duration::from_secs(60))?;
    let file = p.report(
        "web1",
        &system("web1", 1),
        ReportStatus::Success,
        "ok\n",
        None,
    )?;
    let s = p.login().await?;
    s.wait_for_host_where("web1", "to have its report", |h| {
        h["last_report"]["file"] == file.as_str()
    })
    .await?;
    let id = s.start_job("dry-build", "web1").await?;
    let c = client();
    let mut pages = vec![
        "/".to_owned(),
        "/hosts/web1".into(),
        format!("/hosts/web1/logs/{file}"),
        "/jobs".into(),
        format!("/jobs/{id}"),
        "/audit".into(),
        "/no-such-page".into(),
    ];
    pages.push("/hosts/web1/diff".into());
    for path in &pages {
        let res = s.get(path).await?;
        check_headers(&res, path);
        let body = res.text().await?;
        let lower = body.to_ascii_lowercase();
        // Scripts only from files; no inline handlers or styles (the CSP forbids them anyway).
        for (i, _) in lower.match_indices("<script") {
            assert!(
                lower[i..].starts_with("<script src=\"/static/"),
                "{path}: inline script"
            );
        }
        assert!(!lower.contains(" style="), "{path}: inline style");
        assert!(
            !lower.contains(" onclick=") && !lower.contains(" onload="),
            "{path}: inline handler"
        );
    }
    for path in ["/login", "/static/app.css", "/healthz"] {
        check_headers(&c.get(p.url(path)).send().await?, path);
    }
    let css = c.get(p.url("/static/app.css")).send().await?;
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");
    let etag = css.headers()["etag"].clone();
    let again = c
        .get(p.url("/static/app.css"))
        .header("if-none-match", etag)
        .send()
        .await?;
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    Ok(())
}

fn check_headers(res: &reqwest::Response, path: &str) {
    let h = res.headers();
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'self'"), "{path}: {csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{path}: {csp}"
    );
    assert_eq!(h["x-frame-options"], "DENY", "{path}");
    assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
    assert_eq!(h["referrer-policy"], "same-origin", "{path}");
}

/// One spelling for the entities askama may use.
fn normalized(html: &str) -> String {
    html.replace("&#38;", "&amp;")
        .replace("&#60;", "&lt;")
        .replace("&#62;", "&gt;")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&#34;", "\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_reports_are_escaped_and_malformed_ones_shown_as_such() -> Result<()> {
    let p = PanelServer::start("panel-sec")?;
    let sys = system("evil", 1);
    p.add_host("evil", Some(&sys), Duration::from_secs(3600))?;
    let file = p.report(
        "evil",
        &sys,
        ReportStatus::Failure,
        &format!("line one\n{XSS}\n<b>bold</b> &amp; </pre></li></ol>\n"),
        Some(XSS),
    )?;
    let logs = p.logs("evil");
    // A malformed sidecar, a malformed name, a symlink to a secret, a corrupt gzip.
    fs::write(
        logs.join("20240101-0000_x_success.json"),
        "{ not json <script>",
    )?;
    write_gz(&logs.join("20240101-0000_x_success.log.gz"), b"old\n")?;
    fs::write(logs.join("<script>alert(1)<%2Fscript>.log.gz"), b"junk")?;
    let secret = p.fx.dir.join("secret.txt");
    fs::write(&secret, "TOP-SECRET-SERVER-FILE")?;
    std::os::unix::fs::symlink(&secret, logs.join("20240102-0000_x_success.log.gz"))?;
    fs::write(
        logs.join("20240103-0000_x_rollback.log.gz"),
        b"\x1f\x8b\x08\x00garbage",
    )?;
    let s = p.login().await?;
    let host = panel_common::eventually(
        Duration::from_secs(10),
        "the evil host's failure",
        || async {
            let h = s.json_opt("/api/v1/hosts/evil").await?;
            Ok(h.filter(|h| h["state"] == "failing"))
        },
    )
    .await?;
    assert!(!host["warnings"].as_array().unwrap().is_empty(), "{host}");

    for path in [
        "/".to_owned(),
        "/hosts/evil".into(),
        format!("/hosts/evil/logs/{file}"),
    ] {
        let body = s.page(&path).await?;
        assert!(!body.contains("<script>alert"), "{path} has a raw script");
        assert!(!body.contains("<img src=x"), "{path} has a raw img");
        assert!(!body.contains("<b>bold</b>"), "{path} has raw HTML");
        if path != "/" {
            assert!(
                normalized(&body).contains("&lt;script&gt;alert('owned')&lt;/script&gt;"),
                "{path} does not show the text:\n{body}"
            );
        }
    }
    let host_page = s.page("/hosts/evil").await?;
    assert!(
        host_page.contains("malformed sidecar"),
        "malformed sidecar not shown"
    );
    assert!(host_page.contains("Problems reading this host"));

    let log = s.page(&format!("/hosts/evil/logs/{file}")).await?;
    assert!(log.contains("line one"));
    assert!(
        normalized(&log).contains("&lt;b&gt;bold&lt;/b&gt; &amp;amp; &lt;/pre&gt;"),
        "{log}"
    );

    // The symlink is never followed; the corrupt log is shown as corrupt.
    let linked = s
        .page("/hosts/evil/logs/20240102-0000_x_success.log.gz")
        .await;
    match linked {
        Ok(body) => {
            assert!(!body.contains("TOP-SECRET"), "followed a symlink");
            assert!(body.contains("symbolic link"), "{body}");
        }
        Err(e) => assert!(e.to_string().contains("404"), "{e}"),
    }
    let corrupt = s
        .page("/hosts/evil/logs/20240103-0000_x_rollback.log.gz")
        .await?;
    assert!(corrupt.contains("not a valid gzip file"), "{corrupt}");
    // Paths that try to leave logs/ are not report names.
    for bad in [
        "..%2F..%2Fsecret.txt",
        "..",
        "%2Fetc%2Fpasswd",
        ".hidden.log.gz",
    ] {
        let res = s.get(&format!("/hosts/evil/logs/{bad}")).await?;
        assert!(
            res.status() == StatusCode::BAD_REQUEST || res.status() == StatusCode::NOT_FOUND,
            "{bad}: {}",
            res.status()
        );
        assert!(!res.text().await?.contains("TOP-SECRET"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_is_cut_at_the_cap() -> Result<()> {
    let p = PanelServer::start("panel-sec")?;
    let sys = system("bomb", 1);
    p.add_host("bomb", Some(&sys), Duration::from_secs(3600))?;
    let file = p.report("bomb", &sys, ReportStatus::Success, "x", None)?;
    // 512 MiB of log lines in well under a MiB: one 8 MiB gzip member, 64 times
    // (a valid gzip file; every reader of multi-member gzip sees all of it).
    let line = format!("{}\n", "A".repeat(127));
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    for _ in 0..(8 * 1024 * 1024 / line.len()) {
        std::io::Write::write_all(&mut e, line.as_bytes())?;
    }
    let member = e.finish()?;
    let gz = member.repeat(64);
    assert!(gz.len() < 2 * 1024 * 1024, "{}", gz.len());
    fs::write(p.logs("bomb").join(&file), gz)?;
    let s = p.login().await?;
    let t = Instant::now();
    let body = s.page(&format!("/hosts/bomb/logs/{file}")).await?;
    let took = t.elapsed();
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(
        body.contains("longer than 16 MiB once decompressed"),
        "no truncation note"
    );
    assert!(body.len() < 6 * 1024 * 1024, "page of {} bytes", body.len());
    eprintln!(
        "gzip bomb (512 MiB) answered in {took:?} with a {} KiB page",
        body.len() / 1024
    );
    // The server is fine afterwards.
    s.page("/").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_host_names_are_refused_with_a_clear_message() -> Result<()> {
    let p = PanelServer::start("panel-sec")?;
    p.add_host("web1", Some(&system("web1", 1)), Duration::from_secs(60))?;
    let s = p.login().await?;
    for bad in [
        "../../etc",
        "a;rm -rf /",
        "web1 --option",
        "-x",
        "<script>",
        &"a".repeat(80),
    ] {
        let res = s
            .post("/jobs", &[("kind", "deploy"), ("host", bad)])
            .await?;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{bad}");
        let body = res.text().await?;
        assert!(body.contains("invalid host name"), "{bad}: {body}");
        assert!(!body.contains("<script>"), "{bad}: unescaped");
    }
    let res = s
        .post("/jobs", &[("kind", "deploy"), ("host", "nosuchhost")])
        .await?;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.text().await?.contains("There is no host nosuchhost"));
    let res = s
        .post("/jobs", &[("kind", "rm-rf"), ("host", "web1")])
        .await?;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.text().await?.contains("Unknown job"));
    assert_eq!(
        s.json("/api/v1/jobs").await?,
        serde_json::json!([]),
        "a refused job was queued"
    );

    for path in [
        "/hosts/..%2F..%2Fetc",
        "/hosts/%3Cscript%3E",
        "/api/v1/hosts/a%20b",
    ] {
        let res = s.get(path).await?;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{path}");
        assert!(!res.text().await?.contains("<script>"));
    }
    assert_eq!(
        s.get("/hosts/unknown").await?.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(s.get("/jobs/abc").await?.status(), StatusCode::BAD_REQUEST);
    assert_eq!(s.get("/jobs/999").await?.status(), StatusCode::NOT_FOUND);
    Ok(())
}
