//! Restarting the computer on the user's request.

use zbus::Connection;

/// How "Restart now" restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rebooter {
    /// logind on the system bus, as the desktop's own restart does: polkit decides
    /// (and may ask for a password, hence `interactive = true`).
    Logind,
    /// A command instead (argument list, no shell), for tests and unusual setups.
    Command(Vec<String>),
}

impl Rebooter {
    /// From the `--reboot-command` setting: words split on whitespace.
    pub fn from_setting(command: Option<&str>) -> Rebooter {
        match command.map(|c| c.split_whitespace().map(str::to_owned).collect::<Vec<_>>()) {
            Some(argv) if !argv.is_empty() => Rebooter::Command(argv),
            _ => Rebooter::Logind,
        }
    }

    /// Asks for the restart; the error is one line for the user.
    pub async fn reboot(&self) -> Result<(), String> {
        match self {
            Rebooter::Logind => {
                let conn = Connection::system()
                    .await
                    .map_err(|e| format!("Cannot reach the system's login manager ({e})"))?;
                conn.call_method(
                    Some("org.freedesktop.login1"),
                    "/org/freedesktop/login1",
                    Some("org.freedesktop.login1.Manager"),
                    "Reboot",
                    &(true,),
                )
                .await
                .map(drop)
                .map_err(|e| match e {
                    zbus::Error::MethodError(_, Some(msg), _) => msg,
                    e => e.to_string(),
                })
            }
            Rebooter::Command(argv) => {
                tracing::info!("restarting with {argv:?}");
                let out = tokio::process::Command::new(&argv[0])
                    .args(&argv[1..])
                    .output()
                    .await
                    .map_err(|e| format!("Cannot run {} ({e})", argv[0]))?;
                if out.status.success() {
                    Ok(())
                } else {
                    let err = String::from_utf8_lossy(&out.stderr);
                    let last = err.lines().last().unwrap_or("").trim();
                    Err(format!("{} ended with {}: {last}", argv[0], out.status))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_picks_the_way() {
        assert_eq!(Rebooter::from_setting(None), Rebooter::Logind);
        assert_eq!(Rebooter::from_setting(Some("  ")), Rebooter::Logind);
        assert_eq!(
            Rebooter::from_setting(Some("touch /tmp/x")),
            Rebooter::Command(vec!["touch".into(), "/tmp/x".into()])
        );
    }
}
