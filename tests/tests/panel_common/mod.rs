//! The panel tests' fixture: the real `bento serve` binary on a loopback port it
//! picks itself (`--listen 127.0.0.1:0`, address read from its stderr), a real
//! SQLite file in the test directory, a bento directory of toy hosts and a chroot
//! holding reports in the real on-disk format.

#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context, Result};
use bento_core::report::{AgentState, ReportStatus};
use bento_tests::cli::BentoFixture;
use bento_tests::reports::{set_mtime, write_heartbeat, write_heartbeat_every, Report};
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::redirect::Policy;
use reqwest::{Response, StatusCode};
use time::OffsetDateTime;

pub const ADMIN: &str = "admin";
pub const PASSWORD: &str = "correct horse battery staple";
/// How long a test waits for the panel to see a change in the chroot. It usually
/// takes milliseconds (inotify); the deadline is for a loaded machine.
pub const HOST_DEADLINE: Duration = Duration::from_secs(30);

/// A running `bento serve`.
pub struct PanelServer {
    pub fx: BentoFixture,
    child: Option<Child>,
    pub base: String,
    log: Arc<Mutex<String>>,
    pub db_url: String,
    /// More arguments of `bento serve` (`--rescan-secs`...).
    serve_args: Vec<String>,
}

impl PanelServer {
    /// A bento directory (chroot under the test directory, logs owned by root), a user
    /// `admin`, and the panel started on it.
    pub fn start(label: &str) -> Result<PanelServer> {
        Self::start_with(label, "")
    }

    /// Same, with `extra` TOML in bento.toml (tags, `[web]`...).
    pub fn start_with(label: &str, extra: &str) -> Result<PanelServer> {
        Self::start_with_args(label, extra, &[])
    }

    /// Same, `bento serve` given `args` too (e.g. `--rescan-secs 1`).
    pub fn start_with_args(label: &str, extra: &str, args: &[&str]) -> Result<PanelServer> {
        let fx = BentoFixture::new(label)?;
        fx.write_config(extra)?;
        fs::create_dir_all(fx.chroot())?;
        let db_url = format!("sqlite://{}", fx.dir.join("panel.sqlite").display());
        let mut s = PanelServer {
            fx,
            child: None,
            base: String::new(),
            log: Arc::default(),
            db_url,
            serve_args: args.iter().map(|a| a.to_string()).collect(),
        };
        s.bento_stdin(
            &["user", "add", ADMIN, "--password-stdin"],
            &format!("{PASSWORD}\n"),
        )?;
        s.spawn()?;
        Ok(s)
    }

    /// Runs `bento ARGS --database DB` with `stdin`; fails unless it succeeds.
    pub fn bento_stdin(&self, args: &[&str], stdin: &str) -> Result<String> {
        let mut cmd = self.fx.cmd();
        cmd.args(args)
            .args(["--database", &self.db_url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("starting bento")?;
        child.stdin.take().unwrap().write_all(stdin.as_bytes())?;
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "bento {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    fn spawn(&mut self) -> Result<()> {
        let mut child = self
            .fx
            .cmd()
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--database",
                &self.db_url,
            ])
            .args(&self.serve_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting bento serve")?;
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("bento serve: listening on ") {
                    let _ = tx.send(addr.to_owned());
                }
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        self.child = Some(child);
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => self.base = addr,
            Err(_) => bail!("bento serve did not start:\n{}", self.server_log()),
        }
        Ok(())
    }

    /// Kills the server (SIGKILL: no chance to clean up) and starts it again on the
    /// same database.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// What the server wrote to stderr.
    pub fn server_log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn chroot(&self) -> PathBuf {
        self.fx.chroot()
    }

    pub fn logs(&self, host: &str) -> PathBuf {
        self.fx.host_chroot(host).join("logs")
    }

    /// Logs in as `admin`.
    pub async fn login(&self) -> Result<Session> {
        self.login_as(ADMIN, PASSWORD).await
    }

    pub async fn login_as(&self, user: &str, password: &str) -> Result<Session> {
        let c = client();
        let (status, cookie, _) = try_login(&c, &self.base, user, password).await?;
        ensure!(
            status == StatusCode::SEE_OTHER,
            "login as {user} answered {status}"
        );
        let cookie = cookie.context("no session cookie")?;
        let mut s = Session {
            client: c,
            base: self.base.clone(),
            cookie,
            csrf: String::new(),
            server_log: self.log.clone(),
        };
        let body = s.get("/jobs").await?.text().await?;
        s.csrf = hidden(&body, "csrf").context("no csrf field on /jobs")?;
        Ok(s)
    }

    /// A host in the chroot as `bento deploy` leaves it: release `rev` published
    /// `published_ago` ago, expected system `expected` in states.txt.
    pub fn add_host(
        &self,
        host: &str,
        expected: Option<&str>,
        published_ago: Duration,
    ) -> Result<()> {
        let hd = self.fx.host_chroot(host);
        fs::create_dir_all(hd.join("logs"))?;
        fs::create_dir_all(hd.join(".releases/r1"))?;
        let current = hd.join(".releases/current");
        if current.symlink_metadata().is_err() {
            std::os::unix::fs::symlink("r1", &current)?;
        }
        fs::write(hd.join("last_change_date"), "r1\n")?;
        set_mtime(
            &hd.join("last_change_date"),
            SystemTime::now() - published_ago,
        )?;
        if let Some(e) = expected {
            let states = self.chroot().join("states.txt");
            let mut text = fs::read_to_string(&states).unwrap_or_default();
            text.push_str(&format!("{host}={e}\n"));
            fs::write(states, text)?;
        }
        Ok(())
    }

    /// Writes a report of the new agent (with sidecar) for revision `r1`.
    pub fn report(
        &self,
        host: &str,
        system: &str,
        status: ReportStatus,
        log: &str,
        error: Option<&str>,
    ) -> Result<String> {
        Report {
            log,
            error,
            time: OffsetDateTime::now_utc(),
            ..Report::agent(host, system, status, "r1")
        }
        .write(&self.logs(host))
    }

    /// The report of `host`'s agent on the release it was last published, as the
    /// agent writes it. The system is the release's own: `states.txt` is written
    /// after the host's release is swapped in, so it may not name the host yet.
    /// Returns the log's file name (in [`PanelServer::logs`]).
    pub fn report_release(
        &self,
        host: &str,
        status: ReportStatus,
        error: Option<&str>,
    ) -> Result<String> {
        let (revision, dir) = bento_tests::cli::current_release(&self.fx.host_chroot(host))
            .context("not published")?;
        let expected = bento_core::release::Manifest::read_from(&dir)?
            .expected_system
            .context("the release names no system")?;
        let system = expected.rsplit('/').next().unwrap_or(&expected);
        Report {
            log: "activation log\n",
            error,
            time: OffsetDateTime::now_utc(),
            ..Report::agent(host, system, status, &revision)
        }
        .write(&self.logs(host))
    }

    pub fn heartbeat(&self, host: &str, system: &str, reboot: bool) -> Result<()> {
        write_heartbeat(
            &self.logs(host),
            host,
            Some(system),
            Some("r1"),
            AgentState::Idle,
            reboot,
        )
    }

    /// The heartbeat of an agent that polls every `interval_secs`.
    pub fn heartbeat_every(&self, host: &str, system: &str, interval_secs: u64) -> Result<()> {
        write_heartbeat_every(
            &self.logs(host),
            host,
            Some(system),
            Some("r1"),
            AgentState::Idle,
            false,
            interval_secs,
        )
    }
}

impl Drop for PanelServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A store path basename for a made-up system of `host`, version `v`.
// Not every test that includes this module uses it.
#[allow(unused_imports)]
pub use bento_tests::reports::toy_system as system;

/// An HTTP client that follows no redirect and keeps no cookie: tests see both.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client")
}

/// Value of `name=` in a response's Set-Cookie headers, with the whole header.
pub fn set_cookie(res: &Response, name: &str) -> Option<(String, String)> {
    res.headers().get_all(SET_COOKIE).iter().find_map(|v| {
        let v = v.to_str().ok()?;
        let value = v
            .strip_prefix(&format!("{name}="))?
            .split(';')
            .next()?
            .to_owned();
        Some((value, v.to_owned()))
    })
}

/// The value of a hidden form field in a page.
pub fn hidden(body: &str, name: &str) -> Option<String> {
    let at = body.find(&format!("name=\"{name}\" value=\""))?;
    let rest = &body[at + name.len() + 15..];
    Some(rest[..rest.find('"')?].to_owned())
}

/// GET /login, then POST the form: (status, session cookie value, body).
pub async fn try_login(
    c: &reqwest::Client,
    base: &str,
    user: &str,
    password: &str,
) -> Result<(StatusCode, Option<String>, String)> {
    let res = post_login(c, base, user, password, "/").await?;
    let status = res.status();
    let cookie = set_cookie(&res, "bento_session")
        .map(|c| c.0)
        .filter(|c| !c.is_empty());
    Ok((status, cookie, res.text().await?))
}

/// What a browser does to log in: the login form (its cookie and CSRF token), then
/// the form posted with `next`. The answer whatever it is.
pub async fn post_login(
    c: &reqwest::Client,
    base: &str,
    user: &str,
    password: &str,
    next: &str,
) -> Result<reqwest::Response> {
    let page = c.get(format!("{base}/login")).send().await?;
    let (login_cookie, _) = set_cookie(&page, "bento_login").context("no login cookie")?;
    let csrf = hidden(&page.text().await?, "csrf").context("no csrf on the login form")?;
    Ok(c.post(format!("{base}/login"))
        .header(COOKIE, format!("bento_login={login_cookie}"))
        .form(&[
            ("user", user),
            ("password", password),
            ("csrf", &csrf),
            ("next", next),
        ])
        .send()
        .await?)
}

/// A logged-in browser-like client.
pub struct Session {
    pub client: reqwest::Client,
    pub base: String,
    pub cookie: String,
    pub csrf: String,
    /// The server's stderr, for errors that need it.
    server_log: Arc<Mutex<String>>,
}

impl Session {
    pub fn cookie_header(&self) -> String {
        format!("bento_session={}", self.cookie)
    }

    pub async fn get(&self, path: &str) -> Result<Response> {
        Ok(self
            .client
            .get(format!("{}{path}", self.base))
            .header(COOKIE, self.cookie_header())
            .send()
            .await?)
    }

    /// GET, expecting 200; the body.
    pub async fn page(&self, path: &str) -> Result<String> {
        let res = self.get(path).await?;
        ensure!(
            res.status() == StatusCode::OK,
            "GET {path}: {}",
            res.status()
        );
        Ok(res.text().await?)
    }

    pub async fn json(&self, path: &str) -> Result<serde_json::Value> {
        let res = self.get(path).await?;
        ensure!(
            res.status() == StatusCode::OK,
            "GET {path}: {}",
            res.status()
        );
        Ok(res.json().await?)
    }

    /// GET a JSON resource that may not exist yet: `None` on 404.
    pub async fn json_opt(&self, path: &str) -> Result<Option<serde_json::Value>> {
        let res = self.get(path).await?;
        if res.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        ensure!(
            res.status() == StatusCode::OK,
            "GET {path}: {}",
            res.status()
        );
        Ok(Some(res.json().await?))
    }

    /// POSTs a form with the session's CSRF token.
    pub async fn post(&self, path: &str, fields: &[(&str, &str)]) -> Result<Response> {
        let mut all: Vec<(&str, &str)> = fields.to_vec();
        all.push(("csrf", &self.csrf));
        self.post_raw(path, &all).await
    }

    /// POSTs exactly these fields.
    pub async fn post_raw(&self, path: &str, fields: &[(&str, &str)]) -> Result<Response> {
        Ok(self
            .client
            .post(format!("{}{path}", self.base))
            .header(COOKIE, self.cookie_header())
            .form(fields)
            .send()
            .await?)
    }

    /// Starts a job through the form; returns its id.
    pub async fn start_job(&self, kind: &str, host: &str) -> Result<i64> {
        self.submit_job(&[("kind", kind), ("host", host)]).await
    }

    /// Starts a deploy of the whole fleet in its `[rollout]` waves through the
    /// form; returns the job's id.
    pub async fn deploy_in_waves(&self) -> Result<i64> {
        self.submit_job(&[("kind", "deploy"), ("host", ""), ("mode", "waves")])
            .await
    }

    async fn submit_job(&self, fields: &[(&str, &str)]) -> Result<i64> {
        let res = self.post("/jobs", fields).await?;
        ensure!(
            res.status() == StatusCode::SEE_OTHER,
            "POST /jobs: {} {}",
            res.status(),
            res.text().await?
        );
        let loc = res
            .headers()
            .get(LOCATION)
            .context("no Location")?
            .to_str()?;
        Ok(loc
            .strip_prefix("/jobs/")
            .context("odd Location")?
            .parse()?)
    }

    /// Waits until the panel knows `host` (`/api/v1/hosts/HOST` answers 200) and
    /// returns its status. A host the test just added to the chroot reaches the panel
    /// through its chroot follower, a moment later: a request that needs the host (a
    /// job for it, its page) must wait for this first.
    pub async fn wait_for_host(&self, host: &str) -> Result<serde_json::Value> {
        self.wait_for_host_where(host, "to be known", |_| true)
            .await
    }

    /// Waits until the panel's status of `host` satisfies `ok` (`what` names the
    /// condition in the error); returns it.
    pub async fn wait_for_host_where(
        &self,
        host: &str,
        what: &str,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let path = format!("/api/v1/hosts/{host}");
        let last = Mutex::new(None);
        let found = eventually(
            HOST_DEADLINE,
            &format!("the panel's host {host} {what}"),
            || async {
                let h = self.json_opt(&path).await?;
                let done = h.as_ref().is_some_and(&ok);
                *last.lock().unwrap() = h.clone();
                Ok(h.filter(|_| done))
            },
        )
        .await;
        // The server's log says why it did not see the host (e.g. "cannot watch the
        // chroot": then only its rescans, every minute, see changes).
        found.with_context(|| {
            let seen = match last.lock().unwrap().take() {
                Some(h) => format!("last seen: {h}"),
                None => format!("GET {path} answered 404 all along"),
            };
            format!("{seen}\nserver log:\n{}", self.server_log.lock().unwrap())
        })
    }

    /// Waits until job `id` is done; returns it (from the API).
    pub async fn wait_job(&self, id: i64, timeout: Duration) -> Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let j = self.json(&format!("/api/v1/jobs/{id}")).await?;
            if matches!(
                j["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            ) {
                return Ok(j);
            }
            ensure!(
                Instant::now() < deadline,
                "job {id} not done in {timeout:?}: {j}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Polls `probe` until it yields, with a deadline (never a fixed sleep).
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut wait = Duration::from_millis(5);
    loop {
        if let Some(v) = probe().await? {
            return Ok(v);
        }
        ensure!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(100));
    }
}

pub fn write_gz(path: &Path, data: &[u8]) -> Result<()> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data)?;
    fs::write(path, e.finish()?)?;
    Ok(())
}

/// Reads a Server-Sent Events response until the next complete event; returns
/// (event name, data). Keep-alive comments are skipped.
pub async fn next_event(res: &mut Response, buf: &mut String) -> Result<(String, String)> {
    loop {
        if let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            if block.trim_start().starts_with(':') {
                continue;
            }
            let mut event = String::from("message");
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                }
            }
            return Ok((event, data.join("\n")));
        }
        let chunk = res.chunk().await?.context("the event stream ended")?;
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// Reads a job's log stream until `done`; returns the lines and the final status.
pub async fn read_job_log(
    s: &Session,
    id: i64,
    timeout: Duration,
) -> Result<(Vec<String>, String)> {
    let mut res = s.get(&format!("/jobs/{id}/log")).await?;
    ensure!(
        res.status() == StatusCode::OK,
        "log stream: {}",
        res.status()
    );
    let mut buf = String::new();
    let mut lines = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (event, data) = tokio::time::timeout_at(deadline, next_event(&mut res, &mut buf))
            .await
            .with_context(|| {
                format!("job {id} not done in {timeout:?}; log so far: {lines:#?}")
            })??;
        match event.as_str() {
            "line" => lines.push(data),
            "done" => return Ok((lines, data)),
            other => bail!("unexpected event {other}"),
        }
    }
}

/// Like [`client`], with connections made from `ip` (any 127.0.0.x on loopback),
/// so that the panel sees another client address.
pub fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .timeout(Duration::from_secs(60))
        .local_address(ip.parse::<std::net::IpAddr>().expect("an IP address"))
        .build()
        .expect("http client")
}

/// Headless Chromium through chromedriver (on a port it picks itself), with its own
/// profile; on drop it stops with every process of that profile.
pub struct ChromeDriver {
    child: Child,
    port: u16,
    profile: tempfile::TempDir,
}

pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const CHROMIUM: &str = "/usr/bin/chromium";

impl ChromeDriver {
    /// `None` (said loudly) when Chromium is not installed.
    /// Starts chromedriver (Chromium and its driver are installed by
    /// scripts/setup-debian.sh --tests: a missing one fails the test).
    pub fn start() -> Result<ChromeDriver> {
        for p in [CHROMEDRIVER, CHROMIUM] {
            anyhow::ensure!(
                Path::new(p).exists(),
                "{p} is missing: run scripts/setup-debian.sh --tests"
            );
        }
        let profile = tempfile::Builder::new()
            .prefix("bento-chromium-")
            .tempdir()?;
        let mut child = std::process::Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromedriver")?;
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line
                    .split("started successfully on port ")
                    .nth(1)
                    .and_then(|p| p.trim_end_matches('.').trim().parse::<u16>().ok())
                {
                    let _ = tx.send(port);
                }
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(p) => p,
            Err(_) => {
                let _ = child.kill();
                bail!("chromedriver did not say which port it listens on");
            }
        };
        Ok(ChromeDriver {
            child,
            port,
            profile,
        })
    }

    pub async fn browser(&self) -> Result<fantoccini::Client> {
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), "chrome".into());
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1400,1000",
                    format!("--user-data-dir={}", self.profile.path().display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        fantoccini::ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .context("starting Chromium through chromedriver")
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let marker = format!("--user-data-dir={}", self.profile.path().display());
        if let Ok(rd) = fs::read_dir("/proc") {
            for ent in rd.flatten() {
                let Ok(pid) = ent.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let cmdline = fs::read(ent.path().join("cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&marker) {
                    let _ = std::process::Command::new("kill")
                        .arg("-9")
                        .arg(pid.to_string())
                        .status();
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the browser tests save their screenshots: `$BENTO_SCREENSHOTS`, else
/// `target/screenshots/panel/`.
pub fn screenshots_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os("BENTO_SCREENSHOTS") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots/panel"),
    };
    fs::create_dir_all(&dir)?;
    Ok(dir.canonicalize()?)
}

/// Saves what the browser shows as `dir/NAME.png`.
pub async fn shot(c: &fantoccini::Client, dir: &Path, name: &str) -> Result<()> {
    let png = c.screenshot().await?;
    fs::write(dir.join(format!("{name}.png")), png)?;
    Ok(())
}

/// Fills the login form the browser shows with the admin's name and password,
/// and sends it.
pub async fn submit_login(c: &fantoccini::Client) -> Result<()> {
    use fantoccini::Locator;
    c.find(Locator::Css("input[name=user]"))
        .await?
        .send_keys(ADMIN)
        .await?;
    c.find(Locator::Css("input[name=password]"))
        .await?
        .send_keys(PASSWORD)
        .await?;
    click(c, "button[type=submit].primary").await
}

/// Clicks the first element matching `css`, finding it again if a live update
/// replaced it in between.
pub async fn click(c: &fantoccini::Client, css: &str) -> Result<()> {
    let mut attempts = 0;
    loop {
        let el = c.find(fantoccini::Locator::Css(css)).await?;
        match el.click().await {
            Ok(_) => return Ok(()),
            Err(e) if attempts < 20 && is_stale(&e) => attempts += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether `e` says the element left the page (replaced by a live update), in
/// either of the words chromedriver uses.
fn is_stale(e: &fantoccini::error::CmdError) -> bool {
    let m = e.to_string();
    m.contains("stale element") || m.contains("does not belong to the document")
}

/// The visible text of the first element matching `css`, spaces normalized. Live
/// updates replace page regions, so an element can go stale between finding and
/// reading it: then it is found again.
pub async fn text_of(c: &fantoccini::Client, css: &str) -> Result<Option<String>> {
    let mut attempts = 0;
    loop {
        let el = match c.find(fantoccini::Locator::Css(css)).await {
            Ok(el) => el,
            Err(e) if e.is_no_such_element() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match el.text().await {
            // Flex items come back on separate lines: compare words.
            Ok(t) => return Ok(Some(t.split_whitespace().collect::<Vec<_>>().join(" "))),
            Err(e) if attempts < 20 && is_stale(&e) => attempts += 1,
            Err(e) => return Err(e.into()),
        }
    }
}
