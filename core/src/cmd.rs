//! One builder for every subprocess: argument lists (never a shell), the command
//! line for logs, a typed error carrying the exit status and the tail of stderr.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("cannot start `{cmd}`: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("`{cmd}` failed ({status}){}", tail_suffix(.stderr_tail))]
    Failed {
        cmd: String,
        status: ExitStatus,
        stderr_tail: String,
        /// The end of stderr (at most [`STDERR_KEPT`] bytes), for [`CmdError::error_block`].
        stderr: String,
    },
    #[error("`{cmd}`: {source}")]
    Io { cmd: String, source: std::io::Error },
}

fn tail_suffix(t: &str) -> String {
    if t.is_empty() {
        String::new()
    } else {
        format!(": {t}")
    }
}

impl CmdError {
    /// One line for tables and reports: the first line of the program's own
    /// `error:` block (nix's message), else the last meaningful line of stderr.
    pub fn summary(&self) -> String {
        match self {
            CmdError::Failed {
                stderr_tail,
                status,
                stderr,
                ..
            } => match error_block(stderr) {
                Some(b) => b.lines().next().unwrap_or_default().to_owned(),
                None => last_line(stderr_tail).unwrap_or_else(|| status.to_string()),
            },
            other => other.to_string(),
        }
    }

    /// The whole message: the program's `error:` block (nix prints the error, the
    /// position and the offending source lines), else the last meaningful line.
    pub fn message(&self) -> String {
        match self {
            CmdError::Failed { stderr, .. } => {
                error_block(stderr).unwrap_or_else(|| self.summary())
            }
            other => other.to_string(),
        }
    }
}

fn last_line(s: &str) -> Option<String> {
    s.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
}

/// Most lines of an `error:` block kept.
const ERROR_BLOCK_LINES: usize = 60;

/// The `error:` block of a program's stderr: from the first line that starts with
/// `error:` to the end, without nix's `--show-trace` hint, colours removed. What
/// nix prints before it is progress and build log lines; after it come the
/// position, the source lines and any follow-up errors ("1 dependencies of
/// derivation … failed to build"), all part of the message.
pub fn error_block(stderr: &str) -> Option<String> {
    let clean = strip_ansi(stderr);
    let lines: Vec<&str> = clean.lines().collect();
    let start = lines.iter().position(|l| l.starts_with("error:"))?;
    let mut block: Vec<&str> = lines[start..]
        .iter()
        .copied()
        .filter(|l| !l.starts_with("(use '--show-trace'"))
        .collect();
    while block.last().is_some_and(|l| l.trim().is_empty()) {
        block.pop();
    }
    if block.len() > ERROR_BLOCK_LINES {
        let cut = block.len() - ERROR_BLOCK_LINES;
        block.drain(1..=cut);
        block.insert(1, "       …");
    }
    Some(block.join("\n"))
}

/// `s` without terminal escape sequences (CSI `ESC [ … letter` and OSC `ESC ] … BEL`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('[') => {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() || c == '~' {
                        break;
                    }
                }
            }
            Some(']') => {
                while let Some(c) = chars.next() {
                    if c == '\x07' {
                        break;
                    }
                    if c == '\x1b' && chars.peek() == Some(&'\\') {
                        chars.next();
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// A subprocess to run.
#[derive(Debug, Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
}

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    pub stdout: String,
    pub stderr: String,
}

const STDERR_TAIL_LINES: usize = 20;
/// Bytes of stderr kept for the error message of a failed command.
pub const STDERR_KEPT: usize = 64 * 1024;

fn kept(stderr: &str) -> String {
    if stderr.len() <= STDERR_KEPT {
        return stderr.to_owned();
    }
    let mut from = stderr.len() - STDERR_KEPT;
    while !stderr.is_char_boundary(from) {
        from += 1;
    }
    stderr[from..].to_owned()
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Cmd {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            cwd: None,
        }
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        self
    }

    pub fn cwd(mut self, dir: impl AsRef<Path>) -> Self {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    /// The command line, for logs and dry runs (arguments quoted when needed).
    pub fn display(&self) -> String {
        let mut s = quote(&self.program);
        for a in &self.args {
            s.push(' ');
            s.push_str(&quote(a));
        }
        s
    }

    pub fn to_command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args);
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        c.stdin(Stdio::null());
        c
    }

    /// Runs to completion, capturing stdout and stderr; a non-zero exit is an error.
    pub fn run(&self) -> Result<CmdOutput, CmdError> {
        let out = self
            .to_command()
            .output()
            .map_err(|source| CmdError::Spawn {
                cmd: self.display(),
                source,
            })?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            return Err(CmdError::Failed {
                cmd: self.display(),
                status: out.status,
                stderr_tail: tail(&stderr, STDERR_TAIL_LINES),
                stderr: kept(&stderr),
            });
        }
        Ok(CmdOutput { stdout, stderr })
    }

    /// Runs to completion, passing every stderr line to `on_line` as it comes (for
    /// progress displays and live logs); stdout is captured.
    pub fn run_streaming(&self, mut on_line: impl FnMut(&str)) -> Result<CmdOutput, CmdError> {
        let io_err = |source| CmdError::Io {
            cmd: self.display(),
            source,
        };
        let mut child = self
            .to_command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| CmdError::Spawn {
                cmd: self.display(),
                source,
            })?;
        let mut stdout_pipe = child.stdout.take().expect("piped");
        let stdout_reader = std::thread::spawn(move || {
            let mut s = Vec::new();
            stdout_pipe.read_to_end(&mut s).map(|_| s)
        });
        let mut stderr = String::new();
        let mut reader = BufReader::new(child.stderr.take().expect("piped"));
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line).map_err(io_err)?;
            if n == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\n', '\r']);
            on_line(text);
            stderr.push_str(text);
            stderr.push('\n');
        }
        let status = child.wait().map_err(io_err)?;
        let stdout = stdout_reader
            .join()
            .unwrap_or_else(|_| Ok(Vec::new()))
            .map_err(io_err)?;
        if !status.success() {
            return Err(CmdError::Failed {
                cmd: self.display(),
                status,
                stderr_tail: tail(&stderr, STDERR_TAIL_LINES),
                stderr: kept(&stderr),
            });
        }
        Ok(CmdOutput {
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr,
        })
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@+,#".contains(&b))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_carries_status_and_stderr_tail() {
        let e = Cmd::new("/bin/sh")
            .args(["-c", "echo first >&2; echo 'the reason' >&2; exit 3"])
            .run()
            .unwrap_err();
        assert_eq!(e.summary(), "the reason");
        assert!(e.to_string().contains("exit status: 3"), "{e}");
    }

    #[test]
    fn the_error_block_is_kept_whole() {
        let stderr = "\x1b[1mwarning:\x1b[0m Git tree is dirty\n\
            \x1b[31;1merror:\x1b[0m undefined variable 'x'\n\n       at /tmp/s/configuration.nix:7:5:\n\n            6|   {\n            7|     x\n             |     ^\n\
            (use '--show-trace' to show detailed location information)\n";
        let e = Cmd::new("/bin/sh")
            .args(["-c", "printf '%s' \"$0\" >&2; exit 1", stderr])
            .run()
            .unwrap_err();
        assert_eq!(e.summary(), "error: undefined variable 'x'");
        let m = e.message();
        assert!(m.starts_with("error: undefined variable 'x'\n"), "{m}");
        assert!(m.contains("at /tmp/s/configuration.nix:7:5:"), "{m}");
        assert!(m.ends_with("|     ^"), "{m}");
        assert!(!m.contains("show-trace") && !m.contains('\x1b'), "{m}");
    }

    #[test]
    fn arguments_are_never_interpreted_by_a_shell() {
        let out = Cmd::new("echo").arg("$(id); rm -rf /").run().unwrap();
        assert_eq!(out.stdout.trim(), "$(id); rm -rf /");
        assert_eq!(
            Cmd::new("echo").arg("a b").arg("it's").display(),
            r#"echo 'a b' 'it'\''s'"#
        );
    }

    #[test]
    fn streaming_sees_every_stderr_line() {
        let mut seen = Vec::new();
        let out = Cmd::new("/bin/sh")
            .args(["-c", "echo one >&2; echo out; echo two >&2"])
            .run_streaming(|l| seen.push(l.to_owned()))
            .unwrap();
        assert_eq!(seen, ["one", "two"]);
        assert_eq!(out.stdout, "out\n");
    }
}
