//! The panel against an attacker: an open redirect after login (in real Chromium,
//! with a second server standing for the attacker's), a lockout of the admin
//! account by wrong passwords, and a gzip bomb in a host's logs/.

mod panel_common;

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bento_core::report::ReportStatus;
use fantoccini::Locator;
use panel_common::{
    client, client_from, eventually, post_login, submit_login, system, ChromeDriver, PanelServer,
    ADMIN, PASSWORD,
};
use reqwest::header::{CONTENT_DISPOSITION, CONTENT_TYPE, COOKIE, LOCATION, RETRY_AFTER};
use reqwest::StatusCode;

/// `next` values as sent on the wire (already percent-encoded) that must never
/// send the browser anywhere but the panel's `/`.
const BAD_NEXT: &[&str] = &[
    "//evil.example/phish",
    "/%5Cevil.example",
    "%5C%5Cevil.example",
    "/%5C/evil.example",
    "/%09/evil.example/phish",
    "%09//evil.example",
    "/%0A/evil.example",
    "/%0D%0ASet-Cookie:%20a=b",
    "/%20/evil.example",
    "/%E3%80%80/evil.example",
    "/%C2%A0/evil.example",
    "%2F%2Fevil.example",
    "/%252F/evil.example",
    "/%255C/evil.example",
    "/%255Cevil.example",
    "https://evil.example/",
    "http:evil.example",
    "https:%2F%2Fevil.example",
    "javascript:alert(1)",
    "/x%00",
    "/x%7F",
    "jobs",
    "",
];

fn login_url(p: &PanelServer, next: &str) -> String {
    p.url(&format!("/login?next={next}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_next_leaves_the_panel() -> Result<()> {
    let p = PanelServer::start("harden-next")?;
    let s = p.login().await?;
    for next in BAD_NEXT {
        // A logged-in user is redirected by the GET alone.
        let res = s
            .client
            .get(login_url(&p, next))
            .header(COOKIE, s.cookie_header())
            .send()
            .await?;
        ensure!(
            res.status() == StatusCode::SEE_OTHER,
            "{next:?}: {}",
            res.status()
        );
        let to = res.headers().get(LOCATION).context("no Location")?;
        ensure!(
            to.as_bytes() == b"/",
            "GET next={next:?} redirected to {to:?}"
        );
        // And a login with it.
        let res = post_login(&client(), &p.base, ADMIN, PASSWORD, &percent_decoded(next)).await?;
        ensure!(
            res.status() == StatusCode::SEE_OTHER,
            "{next:?}: {}",
            res.status()
        );
        let to = res.headers().get(LOCATION).context("no Location")?;
        ensure!(
            to.as_bytes() == b"/",
            "POST next={next:?} redirected to {to:?}"
        );
    }
    for good in ["/jobs", "/hosts/web01?page=2", "/audit"] {
        let res = s
            .client
            .get(login_url(&p, good))
            .header(COOKIE, s.cookie_header())
            .send()
            .await?;
        let to = res.headers().get(LOCATION).context("no Location")?;
        ensure!(
            to.as_bytes() == good.as_bytes(),
            "{good} redirected to {to:?}"
        );
    }
    Ok(())
}

/// What a form field holds once the browser has decoded the query.
fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A server standing for evil.example: counts every connection it gets.
async fn evil_server() -> Result<(u16, Arc<AtomicUsize>)> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = l.local_addr()?.port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = l.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = sock
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nevil!",
                    )
                    .await;
            });
        }
    });
    Ok((port, hits))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_stays_on_the_panel_after_login() -> Result<()> {
    let driver = ChromeDriver::start()?;
    let p = PanelServer::start("harden-chromium")?;
    let (evil, hits) = evil_server().await?;
    let c = driver.browser().await?;
    let result = async {
        let panel_port = c_port(&p.base);
        let payloads = [
            format!("/%09/127.0.0.1:{evil}/phish"),
            format!("/%5C127.0.0.1:{evil}/phish"),
            format!("%2F%2F127.0.0.1:{evil}/phish"),
            format!("//127.0.0.1:{evil}/phish"),
            format!("/%0A/127.0.0.1:{evil}/phish"),
        ];
        // Logged in, the GET alone redirects.
        login_in(&c, &p.url("/login")).await?;
        on_the_fleet(&c, panel_port, evil, &hits).await?;
        for next in &payloads {
            c.goto(&login_url(&p, next)).await?;
            on_the_fleet(&c, panel_port, evil, &hits).await?;
        }
        // Logged out, the login form carries `next` and the login follows it.
        c.delete_all_cookies().await?;
        login_in(&c, &login_url(&p, &payloads[0])).await?;
        on_the_fleet(&c, panel_port, evil, &hits).await?;
        ensure!(
            hits.load(Ordering::SeqCst) == 0,
            "the browser connected to the other server"
        );
        Ok(())
    }
    .await;
    let _ = c.close().await;
    if result.is_err() {
        eprintln!("server log:\n{}", p.server_log());
    }
    result
}

/// Fills and sends the login form at `url`.
async fn login_in(c: &fantoccini::Client, url: &str) -> Result<()> {
    c.goto(url).await?;
    c.wait()
        .for_element(Locator::Css("input[name=user]"))
        .await?;
    submit_login(c).await?;
    Ok(())
}

fn c_port(base: &str) -> u16 {
    base.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or(0)
}

/// Waits until the browser shows the panel's fleet page; fails at once if it went
/// to the other server.
async fn on_the_fleet(
    c: &fantoccini::Client,
    panel: u16,
    evil: u16,
    hits: &AtomicUsize,
) -> Result<()> {
    let r = eventually(Duration::from_secs(20), "the fleet page", || async {
        let url = c.current_url().await?;
        ensure!(
            url.port() != Some(evil) && hits.load(Ordering::SeqCst) == 0,
            "the browser went to the other server: {url}"
        );
        if url.port() != Some(panel) || url.path() != "/" {
            return Ok(None);
        }
        let h1 = c.find(Locator::Css("main h1")).await;
        Ok(match h1 {
            Ok(h) => (h.text().await? == "Fleet").then_some(()),
            Err(_) => None,
        })
    })
    .await;
    if r.is_err() {
        eprintln!(
            "browser at {:?}, other server connected to {} times",
            c.current_url().await.map(|u| u.to_string()),
            hits.load(Ordering::SeqCst)
        );
    }
    r
}

/// One login attempt from `c`: (status, Retry-After seconds).
async fn attempt(
    c: &reqwest::Client,
    p: &PanelServer,
    password: &str,
) -> Result<(StatusCode, Option<u64>)> {
    let res = post_login(c, &p.base, ADMIN, password, "/").await?;
    let retry = res
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    Ok((res.status(), retry))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attacker_cannot_lock_the_admin_out() -> Result<()> {
    let p = PanelServer::start("harden-lockout")?;
    let attacker = client_from("127.0.0.2");
    let mut refused = 0;
    for _ in 0..12 {
        let (status, _) = attempt(&attacker, &p, "wrong").await?;
        ensure!(
            status == StatusCode::UNAUTHORIZED || status == StatusCode::TOO_MANY_REQUESTS,
            "a wrong password answered {status}"
        );
        refused += (status == StatusCode::TOO_MANY_REQUESTS) as usize;
    }
    ensure!(refused > 0, "the attacker was never slowed down");
    // The right password from another address works at once, and a typo there
    // is only a typo.
    let admin = client_from("127.0.0.1");
    let (status, _) = attempt(&admin, &p, "typo").await?;
    ensure!(
        status == StatusCode::UNAUTHORIZED,
        "a typo from elsewhere answered {status}"
    );
    let (status, _) = attempt(&admin, &p, PASSWORD).await?;
    ensure!(
        status == StatusCode::SEE_OTHER,
        "the admin's login answered {status}"
    );
    // The attacker's pair is still slowed down.
    let (status, retry) = attempt(&attacker, &p, PASSWORD).await?;
    ensure!(
        status == StatusCode::TOO_MANY_REQUESTS && retry.is_some_and(|r| r >= 1),
        "the attacker's address answered {status} ({retry:?})"
    );
    Ok(())
}

/// Sends wrong passwords from `c` until one is counted (not refused with 429); its
/// Retry-After.
async fn next_failure(c: &reqwest::Client, p: &PanelServer) -> Result<Option<u64>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, retry) = attempt(c, p, "wrong").await?;
        match status {
            StatusCode::UNAUTHORIZED => return Ok(retry),
            StatusCode::TOO_MANY_REQUESTS => {
                ensure!(retry.is_some(), "429 without Retry-After");
                ensure!(Instant::now() < deadline, "still refused after 60 s");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            s => anyhow::bail!("a wrong password answered {s}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backoff_grows_and_survives_a_restart() -> Result<()> {
    let mut p = PanelServer::start("harden-backoff")?;
    let c = client_from("127.0.0.3");
    ensure!(next_failure(&c, &p).await?.is_none());
    ensure!(next_failure(&c, &p).await?.is_none());
    let mut waits = Vec::new();
    for _ in 0..3 {
        waits.push(next_failure(&c, &p).await?.context("no Retry-After")?);
    }
    ensure!(waits == [1, 2, 4], "waits {waits:?}");
    // During the wait even the right password is refused, with the time left.
    let (status, retry) = attempt(&c, &p, PASSWORD).await?;
    ensure!(
        status == StatusCode::TOO_MANY_REQUESTS && retry.is_some_and(|r| (1..=4).contains(&r)),
        "the right password during the wait answered {status} ({retry:?})"
    );
    p.restart()?;
    // The count is in the database: the next failure waits twice as long again.
    let after = next_failure(&c, &p).await?;
    ensure!(
        after == Some(8),
        "after a restart the wait is {after:?}, not 8 s"
    );
    // Once the wait is over, the right password works.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _) = attempt(&c, &p, PASSWORD).await?;
        if status == StatusCode::SEE_OTHER {
            break;
        }
        ensure!(status == StatusCode::TOO_MANY_REQUESTS, "answered {status}");
        ensure!(
            Instant::now() < deadline,
            "the right password never worked again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And the pair starts again from zero.
    ensure!(next_failure(&c, &p).await?.is_none());
    Ok(())
}

/// `members` gzip members of 1 MiB of newlines each: a valid gzip file of a few
/// kilobytes per member.
fn gzip_bomb(members: usize) -> Result<Vec<u8>> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(&vec![b'\n'; 1024 * 1024])?;
    let member = e.finish()?;
    Ok(member.repeat(members))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_makes_a_small_page() -> Result<()> {
    let p = PanelServer::start("harden-bomb")?;
    let host = "bomb01";
    p.add_host(host, None, Duration::from_secs(60))?;
    let file = p.report(
        host,
        &system(host, 1),
        ReportStatus::Success,
        "small\n",
        None,
    )?;
    let s = p.login().await?;
    s.wait_for_host(host).await?;
    // 256 MiB of newlines once decompressed.
    let bomb = gzip_bomb(256)?;
    std::fs::write(p.logs(host).join(&file), &bomb)?;
    let url = format!("/hosts/{host}/logs/{file}");
    let started = Instant::now();
    let res = s.get(&url).await?;
    ensure!(res.status() == StatusCode::OK, "{}", res.status());
    let body = res.text().await?;
    let took = started.elapsed();
    eprintln!("bomb page: {} bytes in {took:?}", body.len());
    ensure!(body.len() < 1024 * 1024, "the page is {} bytes", body.len());
    ensure!(took < Duration::from_secs(30), "the page took {took:?}");
    ensure!(body.contains("once decompressed: the rest is not shown"));
    ensure!(body.contains("Earlier lines"));
    ensure!(body.matches("<li ").count() == 5000);
    // The raw download is the file itself.
    let res = s.get(&format!("{url}?raw=1")).await?;
    ensure!(res.status() == StatusCode::OK);
    ensure!(res
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v == "application/gzip"));
    let cd = res
        .headers()
        .get(CONTENT_DISPOSITION)
        .context("no Content-Disposition")?;
    ensure!(
        cd.to_str()? == format!("attachment; filename=\"{file}\""),
        "{cd:?}"
    );
    ensure!(
        res.bytes().await?.as_ref() == bomb.as_slice(),
        "the download differs"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_log_is_shown_in_pages() -> Result<()> {
    let p = PanelServer::start("harden-pages")?;
    let host = "long01";
    p.add_host(host, None, Duration::from_secs(60))?;
    let text: String = (1..=12_000).map(|i| format!("line {i}\n")).collect();
    let file = p.report(host, &system(host, 1), ReportStatus::Success, &text, None)?;
    let s = p.login().await?;
    s.wait_for_host(host).await?;
    let url = format!("/hosts/{host}/logs/{file}");
    let last = s.page(&url).await?;
    ensure!(last.contains("lines 7001–12000 of 12000"), "last page");
    ensure!(last.contains(">line 12000</li>") && !last.contains(">line 7000</li>"));
    ensure!(
        last.contains(&format!("{url}?from=2001")),
        "no link to earlier lines"
    );
    let first = s.page(&format!("{url}?from=1")).await?;
    ensure!(first.contains("lines 1–5000 of 12000"));
    ensure!(first.contains("id=\"L1\" data-n=\"1\">line 1</li>"));
    ensure!(!first.contains(">line 5001</li>"));
    ensure!(
        first.contains(&format!("{url}?from=5001")),
        "no link to later lines"
    );
    Ok(())
}
