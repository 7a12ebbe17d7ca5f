//! Alerts from `bento serve` to real HTTP receivers on loopback (and a real SMTP
//! sink): a failed update is told within 15 s, naming the host, once, then
//! "recovered"; so are a rollback, a host gone offline and a reboot pending for
//! longer than `reboot_pending_after` (and not before); a rollout that halts or
//! ends is told; healthy hosts are not; a webhook with `events` gets only those;
//! a receiver that is down gets the alert on a later try.
//!
//! Reports and heartbeats are written into the chroot as the agent writes them
//! (the panel reads them the same way); waits are on what a receiver got or what
//! the panel shows, never on time.

mod panel_common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use bento_core::report::ReportStatus;
use bento_tests::cli::current_release;
use bento_tests::sshd::unique_prefix;
use panel_common::{eventually, system, PanelServer};
use reqwest::StatusCode;
use serde_json::Value;

/// How long an alert may take to reach its receiver on a loaded machine (it
/// usually takes a second or two: the panel looks at the fleet every second).
const ALERT_DEADLINE: Duration = Duration::from_secs(60);
/// A deploy of toy hosts (real nix builds).
const BUILD: Duration = Duration::from_secs(300);

/// One received request: its headers (lowercase names), body, and when it came.
#[derive(Debug, Clone)]
struct Received {
    headers: Vec<(String, String)>,
    body: String,
    at: Instant,
}

/// A minimal HTTP/1.1 receiver: answers `503` to its first `fail_first`
/// requests, then `200`, and keeps what it got.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Received>>>,
    refused: Arc<Mutex<usize>>,
}

impl Receiver {
    fn start(fail_first: usize) -> Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let refused: Arc<Mutex<usize>> = Arc::default();
        let (g, r) = (got.clone(), refused.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream);
                let mut headers = Vec::new();
                let mut line = String::new();
                let mut len = 0usize;
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let l = line.trim_end();
                    if l.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = l.split_once(':') {
                        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_owned());
                        if k == "content-length" {
                            len = v.parse().unwrap_or(0);
                        }
                        headers.push((k, v));
                    }
                }
                let mut body = vec![0; len];
                let _ = reader.read_exact(&mut body);
                let mut refused = r.lock().unwrap();
                let status = if *refused < fail_first {
                    *refused += 1;
                    "503 Service Unavailable"
                } else {
                    g.lock().unwrap().push(Received {
                        headers,
                        body: String::from_utf8_lossy(&body).into_owned(),
                        at: Instant::now(),
                    });
                    "200 OK"
                };
                let _ = reader.get_mut().write_all(
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                );
            }
        });
        Ok(Receiver { port, got, refused })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook/secret-token", self.port)
    }

    fn bodies(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.body.clone())
            .collect()
    }

    /// The JSON alerts received so far, in order, with when each came.
    fn alerts(&self) -> Vec<(Instant, Value)> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|r| (r.at, serde_json::from_str(&r.body).unwrap_or(Value::Null)))
            .collect()
    }

    /// The alerts received so far, each as `event host-or-rollout [recovered]`.
    fn summary(&self) -> Vec<String> {
        self.alerts().iter().map(|(_, a)| describe(a)).collect()
    }

    /// Waits for the first alert that `wanted` accepts (`what` names it).
    async fn wait_for(
        &self,
        p: &PanelServer,
        what: &str,
        wanted: impl Fn(&Value) -> bool,
    ) -> Result<(Instant, Value)> {
        eventually(ALERT_DEADLINE, what, || async {
            Ok(self.alerts().into_iter().find(|(_, a)| wanted(a)))
        })
        .await
        .with_context(|| {
            format!(
                "received: {:#?}\nserver log:\n{}",
                self.summary(),
                p.server_log()
            )
        })
    }
}

/// An alert about `host` (not a recovery).
fn alert<'a>(event: &'static str, host: &'a str) -> impl Fn(&Value) -> bool + 'a {
    move |a| a["event"] == event && a["host"] == host && a["recovered"] == false
}

/// The end of the condition `event` of `host`.
fn recovery<'a>(event: &'static str, host: &'a str) -> impl Fn(&Value) -> bool + 'a {
    move |a| a["event"] == event && a["host"] == host && a["recovered"] == true
}

/// An alert about rollout `id`.
fn rollout_alert(event: &'static str, id: i64) -> impl Fn(&Value) -> bool {
    move |a| a["event"] == event && a["rollout"] == id && a["host"].is_null()
}

fn describe(a: &Value) -> String {
    let subject = match (a["host"].as_str(), a["rollout"].as_i64()) {
        (Some(h), _) => h.to_owned(),
        (None, Some(r)) => format!("rollout {r}"),
        _ => "?".into(),
    };
    let recovered = if a["recovered"] == true {
        " recovered"
    } else {
        ""
    };
    format!(
        "{} {subject}{recovered}",
        a["event"].as_str().unwrap_or("?")
    )
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `[[alerts.webhook]]` for `r`, with `more` TOML (format, events).
fn webhook(r: &Receiver, more: &str) -> String {
    format!("[[alerts.webhook]]\nurl = \"{}\"\n{more}\n", r.url())
}

/// `host`'s failed update, as its agent reports it.
fn report_failure(p: &PanelServer, host: &str) -> Result<()> {
    p.report(
        host,
        &system(host, 2),
        ReportStatus::Failure,
        "error: builder failed\n",
        Some("build of system failed"),
    )?;
    Ok(())
}

/// `hosts` up to date, with their heartbeat, as the panel shows them; logged in.
async fn healthy(p: &PanelServer, hosts: &[&str]) -> Result<panel_common::Session> {
    for h in hosts {
        p.add_host(h, Some(&system(h, 2)), Duration::from_secs(3600))?;
        p.report(h, &system(h, 2), ReportStatus::Success, "done\n", None)?;
        p.heartbeat(h, &system(h, 2), false)?;
    }
    let s = p.login().await?;
    for h in hosts {
        s.wait_for_host_where(h, "up to date", |v| v["state"] == "up-to-date")
            .await?;
    }
    Ok(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_update_is_alerted_once_then_recovered_and_a_down_receiver_gets_it_later(
) -> Result<()> {
    let json = Receiver::start(0)?;
    let ntfy = Receiver::start(1)?;
    let p = PanelServer::start_with(
        "alerts",
        &format!(
            "[[alerts.webhook]]\nurl = \"{}\"\n\n[[alerts.webhook]]\nurl = \"{}\"\nformat = \"ntfy\"\nevents = [\"failed\"]\n",
            json.url(),
            ntfy.url()
        ),
    )?;
    let hour = Duration::from_secs(3600);
    for h in ["web1", "web2"] {
        p.add_host(h, Some(&system(h, 2)), hour)?;
        p.report(h, &system(h, 2), ReportStatus::Success, "done\n", None)?;
        p.heartbeat(h, &system(h, 2), false)?;
    }
    let s = p.login().await?;
    s.wait_for_host("web2").await?;

    report_failure(&p, "web1")?;
    let started = std::time::Instant::now();
    let alert = eventually(Duration::from_secs(15), "the failure alert", || async {
        Ok(json.bodies().into_iter().find(|b| b.contains("\"failed\"")))
    })
    .await?;
    eprintln!("failure alerted after {:?}", started.elapsed());
    let v: serde_json::Value = serde_json::from_str(&alert)?;
    assert_eq!(v["event"], "failed");
    assert_eq!(v["host"], "web1");
    assert_eq!(v["recovered"], false);
    assert!(
        v["message"]
            .as_str()
            .unwrap_or("")
            .contains("build of system failed"),
        "{v}"
    );

    // The receiver that was down at first gets it on a later try, in ntfy's form.
    let got = eventually(Duration::from_secs(30), "the retried delivery", || async {
        Ok(ntfy.got.lock().unwrap().first().cloned())
    })
    .await?;
    assert_eq!(*ntfy.refused.lock().unwrap(), 1);
    assert!(got.body.contains("web1: the update failed"), "{got:?}");
    assert!(
        got.headers
            .iter()
            .any(|(k, v)| k == "title" && v == "bento: web1 failed"),
        "{got:?}"
    );

    // Fixed: one "recovered", and never anything about the healthy host.
    p.report(
        "web1",
        &system("web1", 2),
        ReportStatus::Success,
        "done\n",
        None,
    )?;
    let recovered = eventually(Duration::from_secs(15), "the recovered alert", || async {
        Ok(json
            .bodies()
            .into_iter()
            .find(|b| b.contains("\"recovered\":true")))
    })
    .await?;
    assert!(recovered.contains("\"host\":\"web1\""), "{recovered}");
    let bodies = json.bodies();
    assert_eq!(
        bodies
            .iter()
            .filter(|b| b.contains("\"event\":\"failed\""))
            .count(),
        2,
        "one alert and one recovery: {bodies:#?}"
    );
    assert!(!bodies.iter().any(|b| b.contains("web2")), "{bodies:#?}");
    // The Alerts page lists the deliveries, without the receivers' secrets, and
    // what went wrong with the first try.
    let page = s.page("/alerts").await?;
    assert!(page.contains("web1"), "{page}");
    assert!(page.contains(">sent<"), "{page}");
    assert!(
        !page.contains("secret-token"),
        "the receiver's secret is on the Alerts page"
    );
    assert!(page.contains("the receiver answered 503"), "{page}");
    Ok(())
}

/// A local SMTP sink (Debian's python3-aiosmtpd) printing what it receives.
struct SmtpSink {
    child: std::process::Child,
    port: u16,
    out: std::path::PathBuf,
}

impl SmtpSink {
    fn start(dir: &std::path::Path) -> Result<SmtpSink> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let out = dir.join("smtp-sink.out");
        let child = std::process::Command::new("/usr/bin/python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .env("PYTHONUNBUFFERED", "1")
            .stdout(std::fs::File::create(&out)?)
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!("python3-aiosmtpd (scripts/setup-debian.sh --tests): {e}")
            })?;
        let sink = SmtpSink { child, port, out };
        bento_tests::wait_for(Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        })
        .ok_or_else(|| anyhow::anyhow!("the SMTP sink does not answer on {port}"))?;
        Ok(sink)
    }

    fn received(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_update_is_mailed() -> Result<()> {
    let dir = bento_tests::TestDir::new("alerts-smtp")?;
    let sink = SmtpSink::start(dir.path())?;
    let p = PanelServer::start_with(
        "alerts-mail",
        &format!(
            "[alerts.email]\nserver = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"bento <bento@fleet.example>\"\nto = [\"admin@fleet.example\"]\nevents = [\"failed\"]\n",
            sink.port
        ),
    )?;
    p.add_host("web1", Some(&system("web1", 2)), Duration::from_secs(3600))?;
    p.report(
        "web1",
        &system("web1", 2),
        ReportStatus::Success,
        "done\n",
        None,
    )?;
    let s = p.login().await?;
    s.wait_for_host("web1").await?;
    report_failure(&p, "web1")?;
    let mail = eventually(Duration::from_secs(15), "the alert mail", || async {
        let got = sink.received();
        Ok(got.contains("web1: the update failed").then_some(got))
    })
    .await?;
    assert!(mail.contains("Subject: bento: web1 failed"), "{mail}");
    assert!(mail.contains("To: admin@fleet.example"), "{mail}");
    assert!(mail.contains("build of system failed"), "{mail}");
    let page = s.page("/alerts").await?;
    assert!(page.contains("smtp://127.0.0.1"), "{page}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_is_alerted_then_recovered_and_a_webhook_with_events_gets_only_those(
) -> Result<()> {
    let every = Receiver::start(0)?;
    let rollbacks = Receiver::start(0)?;
    let p = PanelServer::start_with(
        "alerts-rollback",
        &format!(
            "{}{}",
            webhook(&every, ""),
            webhook(&rollbacks, "events = [\"rolled-back\"]")
        ),
    )?;
    let s = healthy(&p, &["web1", "web2"]).await?;

    // web2 fails: told to the webhook of every event.
    report_failure(&p, "web2")?;
    every
        .wait_for(&p, "web2's failure", alert("failed", "web2"))
        .await?;

    // web1 rolls back: told to both, naming the host and why.
    p.report(
        "web1",
        &system("web1", 1),
        ReportStatus::Rollback,
        "switch-to-configuration failed; rolled back\n",
        Some("the server was unreachable after the switch"),
    )?;
    let (_, a) = rollbacks
        .wait_for(&p, "web1's rollback", alert("rolled-back", "web1"))
        .await?;
    let message = a["message"].as_str().unwrap_or("");
    assert!(message.starts_with("web1: rolled back"), "{a}");
    assert!(
        message.contains("the server was unreachable after the switch"),
        "{a}"
    );
    // web2's failure was queued before it, and never for this webhook.
    assert_eq!(
        rollbacks.summary(),
        ["rolled-back web1"],
        "a webhook for rolled-back only"
    );
    every
        .wait_for(&p, "web1's rollback", alert("rolled-back", "web1"))
        .await?;

    // A later success ends each condition: web2 first, then web1.
    p.report(
        "web2",
        &system("web2", 2),
        ReportStatus::Success,
        "done\n",
        None,
    )?;
    every
        .wait_for(&p, "web2's recovery", recovery("failed", "web2"))
        .await?;
    p.report(
        "web1",
        &system("web1", 2),
        ReportStatus::Success,
        "done\n",
        None,
    )?;
    rollbacks
        .wait_for(&p, "web1's recovery", recovery("rolled-back", "web1"))
        .await?;
    // Every delivery goes out in the order the alerts were made: all of them are
    // in by now, and web2's recovery was not for the rolled-back webhook.
    assert_eq!(
        rollbacks.summary(),
        ["rolled-back web1", "rolled-back web1 recovered"]
    );
    every
        .wait_for(&p, "web1's recovery", recovery("rolled-back", "web1"))
        .await?;
    assert_eq!(
        every.summary(),
        [
            "failed web2",
            "rolled-back web1",
            "failed web2 recovered",
            "rolled-back web1 recovered"
        ]
    );
    let page = s.page("/alerts").await?;
    assert!(page.contains("rolled-back (recovered)"), "{page}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_heartbeat_stops_is_alerted_offline_then_recovered_when_it_reports(
) -> Result<()> {
    let hook = Receiver::start(0)?;
    // Offline after 2 missed polls of its heartbeat's interval; the panel rescans
    // the chroot every second, so a late heartbeat is noticed within a second.
    let p = PanelServer::start_with_args(
        "alerts-offline",
        &format!("offline_after_polls = 2\n{}", webhook(&hook, "")),
        &["--rescan-secs", "1"],
    )?;
    let s = healthy(&p, &["web1", "web2"]).await?;

    // web1's agent polls every second, then stops: its heartbeat is late 2 s on.
    let before = unix_now();
    p.heartbeat_every("web1", &system("web1", 2), 1)?;
    let (_, a) = hook
        .wait_for(&p, "web1 offline", alert("offline", "web1"))
        .await?;
    assert_eq!(a["message"], "web1: offline (its heartbeat is late)", "{a}");
    // Not before 2 polls of 1 s were missed.
    assert!(a["at"].as_i64().unwrap_or(0) >= before + 2, "{a}");
    let h = s.json("/api/v1/hosts/web1").await?;
    assert_eq!(h["offline"], true, "{h}");

    // It polls again (every minute now): recovered.
    p.heartbeat("web1", &system("web1", 2), false)?;
    hook.wait_for(&p, "web1 back online", recovery("offline", "web1"))
        .await?;
    s.wait_for_host_where("web1", "online", |h| h["offline"] == false)
        .await?;
    // web2 polls every minute and reported a minute ago at most: never offline.
    assert_eq!(
        hook.summary(),
        ["offline web1", "offline web1 recovered"],
        "nothing about the healthy host"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reboot_pending_is_alerted_only_once_older_than_reboot_pending_after() -> Result<()> {
    let hook = Receiver::start(0)?;
    let after = 5;
    let mut p = PanelServer::start_with(
        "alerts-reboot",
        &format!(
            "[alerts]\nreboot_pending_after = {after}\n\n{}",
            webhook(&hook, "")
        ),
    )?;
    // db1 sorts before web1: in one look at the fleet db1 comes first.
    let s = healthy(&p, &["db1", "web1"]).await?;

    // db1's new kernel waits for a reboot.
    let (t0, t0_unix) = (Instant::now(), unix_now());
    p.heartbeat("db1", &system("db1", 2), true)?;
    s.wait_for_host_where("db1", "with a reboot pending", |h| {
        h["reboot_pending"] == true
    })
    .await?;
    // The panel has seen it: web1's failure, which comes after, is alerted from a
    // look at a fleet where db1's reboot is pending. No alert for db1 yet, unless
    // (on a machine loaded enough) `after` has passed since.
    report_failure(&p, "web1")?;
    let (failed_at, _) = hook
        .wait_for(&p, "web1's failure", alert("failed", "web1"))
        .await?;
    let early = |until: Instant| {
        hook.alerts()
            .into_iter()
            .filter(|(at, a)| a["event"] == "reboot-pending" && *at < until)
            .map(|(_, a)| describe(&a))
            .collect::<Vec<_>>()
    };
    let limit = t0 + Duration::from_secs(after);
    assert_eq!(
        early(failed_at.min(limit)),
        Vec::<String>::new(),
        "a reboot-pending alert before the reboot was pending {after} s"
    );
    eprintln!(
        "web1's failure alerted {:?} after db1's reboot became pending",
        failed_at - t0
    );

    let (got_at, a) = hook
        .wait_for(&p, "db1's pending reboot", alert("reboot-pending", "db1"))
        .await?;
    eprintln!("reboot pending alerted after {:?}", got_at - t0);
    assert!(got_at >= limit, "alerted after {:?}", got_at - t0);
    assert!(
        a["at"].as_i64().unwrap_or(0) >= t0_unix + after as i64,
        "{a}"
    );
    let message = a["message"].as_str().unwrap_or("");
    assert!(
        message.starts_with("db1: a reboot has been pending for ") && message.ends_with(" s"),
        "{a}"
    );

    // A restarted panel keeps the alert: it is neither recovered nor sent again. web1's recovery, made after the panel saw
    // db1 again, is the mark that it looked. (Killed only once every delivery is
    // marked sent: one killed between its send and its mark is sent again.)
    eventually(ALERT_DEADLINE, "every delivery marked sent", || async {
        let page = s.page("/alerts").await?;
        Ok((!page.contains(">pending</span>")).then_some(()))
    })
    .await?;
    p.restart()?;
    let s = p.login().await?;
    s.wait_for_host_where("db1", "with a reboot pending", |h| {
        h["reboot_pending"] == true
    })
    .await?;
    p.report(
        "web1",
        &system("web1", 2),
        ReportStatus::Success,
        "done\n",
        None,
    )?;
    hook.wait_for(&p, "web1's recovery", recovery("failed", "web1"))
        .await?;
    assert_eq!(
        hook.summary(),
        ["failed web1", "reboot-pending db1", "failed web1 recovered"],
        "the restart changed db1's alert"
    );

    // Rebooted: recovered.
    p.heartbeat("db1", &system("db1", 2), false)?;
    hook.wait_for(&p, "db1's reboot", recovery("reboot-pending", "db1"))
        .await?;
    Ok(())
}

/// A panel with two toy hosts, the first one a wave of its own, and `hook`.
fn rollout_panel(label: &str, hook: &Receiver) -> Result<(PanelServer, String, String)> {
    let prefix = unique_prefix();
    let (canary, rest) = (format!("{prefix}-a"), format!("{prefix}-b"));
    let mut p = PanelServer::start_with(
        label,
        &format!(
            "[rollout]\nwaves = [\"host:{canary}\", \"rest\"]\n\n{}",
            webhook(hook, "")
        ),
    )?;
    for h in [&canary, &rest] {
        p.fx.fleet.flake_host(h, &[h])?;
    }
    Ok((p, canary, rest))
}

/// Starts a deploy in waves from the panel; waits until its first wave is out.
async fn deploy_in_waves(p: &PanelServer, s: &panel_common::Session, first: &str) -> Result<()> {
    s.deploy_in_waves().await?;
    eventually(BUILD, "the first wave", || async {
        Ok(current_release(&p.fx.host_chroot(first)).map(|_| ()))
    })
    .await
    .with_context(|| p.server_log())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halted_rollout_is_alerted_naming_its_host_and_its_end_once_resumed() -> Result<()> {
    let hook = Receiver::start(0)?;
    let (p, canary, rest) = rollout_panel("alerts-halted", &hook)?;
    let s = p.login().await?;
    deploy_in_waves(&p, &s, &canary).await?;

    // The canary fails: the rollout halts, and says who stopped it.
    p.report_release(
        &canary,
        ReportStatus::Failure,
        Some("switch-to-configuration failed"),
    )?;
    let (_, a) = hook
        .wait_for(&p, "the halted rollout", rollout_alert("rollout-halted", 1))
        .await?;
    let message = a["message"].as_str().unwrap_or("");
    assert!(
        message.starts_with("rollout 1 halted: halted in wave 1"),
        "{a}"
    );
    assert!(message.contains(&canary), "{a}");
    assert!(message.contains("switch-to-configuration failed"), "{a}");
    assert!(current_release(&p.fx.host_chroot(&rest)).is_none());
    hook.wait_for(&p, "the canary's failure", alert("failed", &canary))
        .await?;

    // Resumed from the panel: the next wave goes out, and the rollout's end is
    // told too (the same rollout ends a second time).
    let res = s.post("/rollouts/1/resume", &[]).await?;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    eventually(BUILD, "the second wave", || async {
        Ok(current_release(&p.fx.host_chroot(&rest)).map(|_| ()))
    })
    .await?;
    p.report_release(&rest, ReportStatus::Success, None)?;
    let (_, a) = hook
        .wait_for(
            &p,
            "the resumed rollout's end",
            rollout_alert("rollout-finished", 1),
        )
        .await?;
    let message = a["message"].as_str().unwrap_or("");
    assert!(message.starts_with("rollout 1 "), "{a}");
    assert!(message.contains("1 succeeded, 1 failed"), "{a}");
    let halted = hook
        .alerts()
        .iter()
        .filter(|(_, a)| rollout_alert("rollout-halted", 1)(a))
        .count();
    assert_eq!(halted, 1, "{:#?}", hook.summary());
    let page = s.page("/alerts").await?;
    assert!(page.contains("rollout-halted"), "{page}");
    assert!(page.contains("rollout 1"), "{page}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_rollout_is_alerted_as_finished_and_nothing_of_its_healthy_hosts() -> Result<()>
{
    let hook = Receiver::start(0)?;
    let (p, canary, rest) = rollout_panel("alerts-finished", &hook)?;
    let s = p.login().await?;
    deploy_in_waves(&p, &s, &canary).await?;
    p.report_release(&canary, ReportStatus::Success, None)?;
    eventually(BUILD, "the second wave", || async {
        Ok(current_release(&p.fx.host_chroot(&rest)).map(|_| ()))
    })
    .await?;
    p.report_release(&rest, ReportStatus::Success, None)?;
    let (_, a) = hook
        .wait_for(
            &p,
            "the rollout's end",
            rollout_alert("rollout-finished", 1),
        )
        .await?;
    let message = a["message"].as_str().unwrap_or("");
    assert!(
        message.starts_with("rollout 1 succeeded: ") && message.contains("2 succeeded, 0 failed"),
        "{a}"
    );
    for h in [&canary, &rest] {
        s.wait_for_host_where(h, "up to date", |v| v["state"] == "up-to-date")
            .await?;
    }
    // Later, the canary rolls back: that alert is the mark that the panel looked
    // at both hosts up to date, and nothing came of them before it.
    p.report_release(
        &canary,
        ReportStatus::Rollback,
        Some("the health check failed"),
    )?;
    hook.wait_for(&p, "the canary's rollback", alert("rolled-back", &canary))
        .await?;
    assert_eq!(
        hook.summary(),
        [
            "rollout-finished rollout 1".to_owned(),
            format!("rolled-back {canary}")
        ]
    );
    Ok(())
}

/// The time a reboot has been pending counts from when the panel first saw it,
/// across a restart: a panel that was down past `reboot_pending_after` alerts
/// as soon as it looks again, not `reboot_pending_after` after its start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_reboot_counts_from_when_it_was_first_seen_across_a_restart() -> Result<()> {
    let hook = Receiver::start(0)?;
    let after = 20;
    let mut p = PanelServer::start_with(
        "alerts-reboot-restart",
        &format!(
            "[alerts]\nreboot_pending_after = {after}\n\n{}",
            webhook(&hook, "")
        ),
    )?;
    let s = healthy(&p, &["db1", "web1"]).await?;
    let t0 = Instant::now();
    p.heartbeat("db1", &system("db1", 2), true)?;
    s.wait_for_host_where("db1", "with a reboot pending", |h| {
        h["reboot_pending"] == true
    })
    .await?;
    // web1's failure is alerted from a look that saw db1's reboot pending (and
    // recorded since when).
    report_failure(&p, "web1")?;
    hook.wait_for(&p, "web1's failure", alert("failed", "web1"))
        .await?;
    p.kill();
    // Down until the reboot has been pending `after` seconds.
    tokio::time::sleep_until((t0 + Duration::from_secs(after)).into()).await;
    p.heartbeat("db1", &system("db1", 2), true)?;
    let restarted = Instant::now();
    p.restart()?;
    let (got_at, a) = hook
        .wait_for(&p, "db1's pending reboot", alert("reboot-pending", "db1"))
        .await?;
    assert!(
        got_at < restarted + Duration::from_secs(after),
        "alerted {:?} after the restart: the pending time was counted from it",
        got_at - restarted
    );
    let message = a["message"].as_str().unwrap_or("");
    assert!(
        message.starts_with("db1: a reboot has been pending for "),
        "{a}"
    );
    Ok(())
}

/// A rollout that ends while the panel is down (the command line concludes it
/// from the hosts' reports) is alerted when the panel starts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_that_ends_while_the_panel_is_down_is_alerted_when_it_starts() -> Result<()> {
    let hook = Receiver::start(0)?;
    let host = format!("{}-a", unique_prefix());
    let mut p = PanelServer::start_with("alerts-down", &webhook(&hook, ""))?;
    p.fx.fleet.flake_host(&host, &[&host])?;
    // An alert: the panel has looked with its receiver, so rollout ends are
    // told from here on.
    healthy(&p, &["web1"]).await?;
    report_failure(&p, "web1")?;
    hook.wait_for(&p, "web1's failure", alert("failed", "web1"))
        .await?;
    p.kill();

    p.bento_stdin(&["deploy"], "")?;
    p.report_release(&host, ReportStatus::Success, None)?;
    let list = p.bento_stdin(&["rollout", "list"], "")?;
    let first = list
        .lines()
        .find(|l| l.trim_start().starts_with("1 "))
        .with_context(|| format!("rollout 1 is not listed:\n{list}"))?;
    assert!(first.contains("succeeded"), "{list}");
    assert!(
        !hook
            .alerts()
            .iter()
            .any(|(_, a)| rollout_alert("rollout-finished", 1)(a)),
        "{:#?}",
        hook.summary()
    );

    p.restart()?;
    let (_, a) = hook
        .wait_for(
            &p,
            "the end of the rollout while the panel was down",
            rollout_alert("rollout-finished", 1),
        )
        .await?;
    let message = a["message"].as_str().unwrap_or("");
    assert!(message.starts_with("rollout 1 succeeded"), "{a}");
    Ok(())
}
