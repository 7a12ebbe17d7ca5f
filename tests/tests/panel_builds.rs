//! What the panel says about the server's own builds: a host whose configuration no
//! longer builds is marked on the fleet page, explained on its page (since when, the
//! last good build, nix's whole error), counted in the API and `/metrics`; a failed
//! job shows nix's `error:` block line by line; a non-flake host says where it is
//! built. The record is core's `.bento/builds.json`, written by every build — by
//! the panel's own jobs on toy hosts here, or by the test itself.

mod panel_common;

use std::time::Duration;

use anyhow::{Context, Result};
use bento_core::buildstate::BuildState;
use bento_tests::sshd::unique_prefix;
use panel_common::{read_job_log, system, PanelServer};
use time::OffsetDateTime;

const BUILD: Duration = Duration::from_secs(300);

/// One spelling for the entities askama may use.
fn unescaped(html: &str) -> String {
    html.replace("&#38;", "&")
        .replace("&amp;", "&")
        .replace("&#60;", "<")
        .replace("&lt;", "<")
        .replace("&#62;", ">")
        .replace("&gt;", ">")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&#34;", "\"")
        .replace("&quot;", "\"")
}

/// The text of the first `<pre class="error-block">` of a page, unescaped.
fn error_block(html: &str) -> Option<String> {
    let start = html.find("<pre class=\"error-block\">")? + "<pre class=\"error-block\">".len();
    let end = start + html[start..].find("</pre>")?;
    Some(unescaped(&html[start..end]))
}

/// The host names of the fleet page's rows.
fn rows(body: &str) -> Vec<String> {
    body.match_indices("<td class=\"host\" data-label=\"Host\"><a href=\"/hosts/")
        .map(|(i, m)| body[i + m.len()..].split('"').next().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flake_that_stops_evaluating_marks_its_host_until_it_builds_again() -> Result<()> {
    let mut p = PanelServer::start("panel-builds")?;
    let host = format!("{}-app", unique_prefix());
    p.fx.fleet.flake_host(&host, &[&host])?;
    let s = p.login().await?;
    let id = s.start_job("deploy", &host).await?;
    let done = s.wait_job(id, BUILD).await?;
    assert_eq!(done["status"], "succeeded", "{done}\n{}", p.server_log());
    let st = s.wait_for_host(&host).await?;
    assert!(st["build"]["last_ok"].is_string(), "{st}");
    assert!(st["build"]["failing_since"].is_null(), "{st}");
    let fleet = s.page("/").await?;
    assert!(
        !fleet.contains("config does not build"),
        "marked before any failure"
    );

    // The flake loses its last brace: nix cannot even parse it.
    let flake = p.fx.fleet.host_dir(&host).join("flake.nix");
    let good = std::fs::read_to_string(&flake)?;
    let broken = good
        .trim_end()
        .strip_suffix('}')
        .context("the toy flake ends with }")?;
    p.fx.fleet.write_file(&host, "flake.nix", broken)?;
    let failed = s.start_job("build", &host).await?;
    let (lines, status) = read_job_log(&s, failed, BUILD).await?;
    assert_eq!(status, "failed", "{lines:#?}");

    // The job's log has nix's whole error block, one line each, not its last line.
    let at = lines
        .iter()
        .position(|l| l.starts_with(&format!("{host}: FAILED: ")) && l.contains("error:"))
        .with_context(|| format!("no FAILED line with nix's error: {lines:#?}"))?;
    assert!(
        lines[at].contains("syntax error, unexpected end of file"),
        "{lines:#?}"
    );
    let rest = &lines[at + 1..];
    assert!(
        rest.iter()
            .any(|l| l.starts_with(&format!("{host}: ")) && l.contains("flake.nix:")),
        "the error's position is not a line of its own: {lines:#?}"
    );
    assert!(
        rest.iter().any(|l| l.trim_end().ends_with('^')),
        "the source excerpt is missing: {lines:#?}"
    );
    // The job's page shows the message as written, over several lines.
    let job_page = s.page(&format!("/jobs/{failed}")).await?;
    let block = error_block(&job_page).context("no error block on the job page")?;
    assert!(block.contains("error: syntax error"), "{block}");
    assert!(
        block.lines().count() >= 3 && block.contains("flake.nix:"),
        "the job's result lost lines: {block}"
    );

    // The fleet page marks the host, counts it and filters on it.
    let fleet = s.page("/").await?;
    assert!(fleet.contains("⛔ config does not build since "), "{fleet}");
    assert!(fleet.contains("1 config does not build<"), "no count chip");
    assert_eq!(rows(&s.page("/?flag=build").await?), [host.as_str()]);
    // Its page says since when, and shows nix's error.
    let page = s.page(&format!("/hosts/{host}")).await?;
    assert!(page.contains("Config does not build since "), "{page}");
    assert!(page.contains("Last successful build: "), "{page}");
    let block = error_block(&page).context("no error block on the host page")?;
    assert!(block.contains("error: syntax error"), "{block}");
    // So does the API, and /metrics counts it.
    let st = s.json(&format!("/api/v1/hosts/{host}")).await?;
    assert!(st["build"]["failing_since"].is_string(), "{st}");
    assert!(
        st["build"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("syntax error"),
        "{st}"
    );
    let listed = s.json("/api/v1/hosts?flag=build").await?;
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    let m = s.get("/metrics").await?.text().await?;
    assert!(m.contains("bento_hosts_build_failing 1"), "{m}");

    // Repaired, it builds again and the marks go.
    p.fx.fleet.write_file(&host, "flake.nix", &good)?;
    let fixed = s.start_job("build", &host).await?;
    let done = s.wait_job(fixed, BUILD).await?;
    assert_eq!(done["status"], "succeeded", "{done}");
    let st = s.json(&format!("/api/v1/hosts/{host}")).await?;
    assert!(st["build"]["failing_since"].is_null(), "{st}");
    assert!(!s.page("/").await?.contains("config does not build"));
    assert!(!s
        .page(&format!("/hosts/{host}"))
        .await?
        .contains("Config does not build"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_failure_shows_on_every_page_and_goes_when_it_builds() -> Result<()> {
    let p = PanelServer::start("panel-builds")?;
    for h in ["web1", "web2"] {
        p.add_host(h, Some(&system(h, 1)), Duration::from_secs(3600))?;
    }
    let s = p.login().await?;
    s.wait_for_host("web1").await?;
    s.wait_for_host("web2").await?;
    let root = p.fx.bento_dir();
    let error = "error: undefined variable 'x'\n\n       at hosts/web1/configuration.nix:7:1:\n\n            6|\n            7| x <script>alert(1)</script>\n             | ^";
    let mut st = BuildState::default();
    let yesterday = OffsetDateTime::now_utc() - time::Duration::days(1);
    st.record_ok("web1", "web1", yesterday);
    st.record_failure("web1", "web1", error, OffsetDateTime::now_utc());
    st.record_ok("web2", "web2", yesterday);
    st.save(&root)?;

    // Written by another process (`bento build`): seen at the next page load.
    let fleet = s.page("/").await?;
    assert!(fleet.contains("⛔ config does not build since "), "{fleet}");
    assert_eq!(rows(&s.page("/?flag=build").await?), ["web1"]);
    let page = s.page("/hosts/web1").await?;
    assert!(!page.contains("<script>alert"), "unescaped error");
    assert_eq!(error_block(&page).as_deref(), Some(error));
    assert!(page.contains("Last successful build: "));
    assert!(!s
        .page("/hosts/web2")
        .await?
        .contains("Config does not build"));
    let h = s.json("/api/v1/hosts/web1").await?;
    assert_eq!(h["build"]["error"], error, "{h}");
    assert!(h["build"]["failing_since"].is_string() && h["build"]["last_ok"].is_string());
    assert!(s.json("/api/v1/hosts/web2").await?["build"]["failing_since"].is_null());
    let all = s.json("/api/v1/hosts").await?;
    assert!(all[0]["build"]["failing_since"].is_string(), "{all}");

    st.record_ok("web1", "web1", OffsetDateTime::now_utc());
    st.save(&root)?;
    assert!(!s.page("/").await?.contains("config does not build"));
    assert!(!s
        .page("/hosts/web1")
        .await?
        .contains("Config does not build"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_flake_host_says_it_is_built_on_the_host_and_what_the_server_built() -> Result<()> {
    let mut p = PanelServer::start("panel-builds")?;
    let host = format!("{}-old", unique_prefix());
    p.fx.fleet.nonflake_host(&host)?;
    let s = p.login().await?;
    let id = s.start_job("deploy", &host).await?;
    let done = s.wait_job(id, BUILD).await?;
    assert_eq!(done["status"], "succeeded", "{done}\n{}", p.server_log());
    let st = s.wait_for_host(&host).await?;
    assert!(st["expected_system"].is_null(), "no pinned system: {st}");
    let page = s.page(&format!("/hosts/{host}")).await?;
    assert!(page.contains("built on the host (non-flake)"), "{page}");
    assert!(
        !page.contains("no expected system"),
        "says there is nothing although the server built it"
    );
    let fact = page
        .split("<dt>Server build</dt>")
        .nth(1)
        .context("no server build on the page")?;
    let fact = &fact[..fact.find("</dd>").unwrap_or(fact.len())];
    assert!(
        fact.contains("/nix/store/") && fact.contains(&format!("job #{id}")),
        "{fact}"
    );
    Ok(())
}
