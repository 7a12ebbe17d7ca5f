//! Alerts from `bento serve` to real HTTP receivers on loopback: a failed update
//! is told within 15 s, naming the host, once, then "recovered"; healthy hosts
//! are not; a receiver that is down gets the alert on a later try.

mod panel_common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use bento_core::report::ReportStatus;
use panel_common::{eventually, system, PanelServer};

/// One received request: its headers (lowercase names) and body.
#[derive(Debug, Clone)]
struct Received {
    headers: Vec<(String, String)>,
    body: String,
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

    p.report(
        "web1",
        &system("web1", 2),
        ReportStatus::Failure,
        "error: builder failed\n",
        Some("build of system failed"),
    )?;
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
    p.report(
        "web1",
        &system("web1", 2),
        ReportStatus::Failure,
        "error: builder failed\n",
        Some("build of system failed"),
    )?;
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
