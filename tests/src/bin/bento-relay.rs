//! A `ProxyCommand` relay for the tests: `bento-relay HOST PORT COUNT_FILE [CUT_AFTER]`.
//!
//! Forwards stdin/stdout to `HOST:PORT`, counting the bytes the server sends into
//! `COUNT_FILE.<pid>` (rewritten as they pass), and, with `CUT_AFTER`, drops the
//! connection once that many bytes came from the server: a link lost in the middle
//! of a download, at a byte count the test chooses.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: bento-relay HOST PORT COUNT_FILE [CUT_AFTER]");
        return ExitCode::from(2);
    }
    let cut: Option<u64> = args.get(3).and_then(|s| s.parse().ok());
    // One file per connection: a run opens several, and ssh may kill its proxy
    // at any moment, so each count is rewritten as bytes pass.
    let count_file = format!("{}.{}", args[2], std::process::id());
    // ssh ends its ProxyCommand with SIGHUP when it closes, often in the middle
    // of a write: the count is replaced whole (a rename), never left empty.
    let tmp_file = format!("{count_file}.tmp");
    let record = |total: u64| {
        if std::fs::write(&tmp_file, total.to_string()).is_ok() {
            let _ = std::fs::rename(&tmp_file, &count_file);
        }
    };
    let stream = match TcpStream::connect((args[0].as_str(), args[1].parse().unwrap_or(22))) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bento-relay: {e}");
            return ExitCode::from(1);
        }
    };
    let mut up = stream.try_clone().expect("clone");
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 32 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if up.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = up.shutdown(Shutdown::Write);
    });
    let mut down = stream;
    let mut stdout = std::io::stdout();
    let mut buf = [0u8; 32 * 1024];
    let mut total: u64 = 0;
    loop {
        let room = cut.map_or(buf.len() as u64, |c| (c - total).min(buf.len() as u64));
        if room == 0 {
            // The link goes down.
            let _ = down.shutdown(Shutdown::Both);
            break;
        }
        match down.read(&mut buf[..room as usize]) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                total += n as u64;
                if stdout
                    .write_all(&buf[..n])
                    .and_then(|_| stdout.flush())
                    .is_err()
                {
                    break;
                }
                record(total);
            }
        }
    }
    record(total);
    ExitCode::SUCCESS
}
