//! A guard on the bytes the server sends, between `ssh`'s stdout and the SFTP library.
//!
//! The library allocates what a packet's length or a NAME's entry count says before
//! reading it, and subtracts header sizes from lengths unchecked: a hostile server could
//! make one packet cost gigabytes or abort the agent. This reader follows the packet
//! framing and fails the session on the first packet that cannot be honest.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

const SSH_FXP_DATA: u8 = 103;
const SSH_FXP_NAME: u8 = 104;
/// Length, type, request id and (for NAME) the entry count.
const HEADER: usize = 13;
/// The smallest NAME entry: empty filename and longname strings, then the attribute
/// flags word.
const MIN_NAME_ENTRY: u64 = 4 + 4 + 4;

/// Why the guard ended the session, shared with [`crate::remote::Remote`] so its
/// errors can say so instead of the library's generic I/O failure.
#[derive(Debug, Clone, Default)]
pub struct Violation(Arc<Mutex<Option<String>>>);

impl Violation {
    pub fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, msg: &str) {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert_with(|| msg.to_owned());
    }
}

pub struct Guarded<R> {
    inner: R,
    max_packet: u32,
    header: [u8; HEADER],
    /// Bytes of the current packet seen so far, its length field included.
    pos: u64,
    /// The current packet's full size (length field included), once known.
    total: u64,
    violation: Violation,
    failed: bool,
}

impl<R> Guarded<R> {
    pub fn new(inner: R, max_packet: u32, violation: Violation) -> Self {
        Guarded {
            inner,
            max_packet,
            header: [0; HEADER],
            pos: 0,
            total: 0,
            violation,
            failed: false,
        }
    }

    /// Follows the framing over `data`; the first dishonest packet is an error.
    fn scan(&mut self, mut data: &[u8]) -> Result<(), String> {
        while !data.is_empty() {
            if (self.pos as usize) < HEADER && (self.total == 0 || self.pos < self.total) {
                self.header[self.pos as usize] = data[0];
                data = &data[1..];
                self.pos += 1;
                self.check_header()?;
            } else {
                let skip = (self.total - self.pos).min(data.len() as u64);
                self.pos += skip;
                data = &data[skip as usize..];
            }
            if self.total != 0 && self.pos == self.total {
                self.pos = 0;
                self.total = 0;
            }
        }
        Ok(())
    }

    fn check_header(&mut self) -> Result<(), String> {
        let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        match self.pos {
            4 => {
                let len = be(&self.header[..4]);
                if len > self.max_packet {
                    return Err(format!(
                        "the server sent an SFTP packet of {len} bytes (at most {} are accepted)",
                        self.max_packet
                    ));
                }
                // Type and request id (or version) at least.
                if len < 5 {
                    return Err(format!(
                        "the server sent a truncated SFTP packet ({len} bytes)"
                    ));
                }
                self.total = 4 + u64::from(len);
            }
            9 => {
                let len = self.total - 4;
                let kind = self.header[4];
                if (kind == SSH_FXP_DATA || kind == SSH_FXP_NAME) && len < 9 {
                    return Err(format!(
                        "the server sent a truncated SFTP packet (type {kind}, {len} bytes)"
                    ));
                }
            }
            13 if self.header[4] == SSH_FXP_NAME => {
                let count = u64::from(be(&self.header[9..13]));
                let room = (self.total - HEADER as u64) / MIN_NAME_ENTRY;
                if count > room {
                    return Err(format!(
                        "the server sent a directory page claiming {count} entries in {} bytes",
                        self.total
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Guarded<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                this.violation.get().unwrap_or_default(),
            )));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let scanned = this.scan(&buf.filled()[before..]);
        if let Err(msg) = scanned {
            // Nothing of a dishonest packet reaches the library.
            buf.set_filled(before);
            this.failed = true;
            this.violation.set(&msg);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, msg)));
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut p = ((body.len() + 5) as u32).to_be_bytes().to_vec();
        p.push(kind);
        p.extend_from_slice(&7u32.to_be_bytes());
        p.extend_from_slice(body);
        p
    }

    fn guard() -> Guarded<&'static [u8]> {
        Guarded::new(&[][..], 1024, Violation::default())
    }

    #[test]
    fn honest_packets_pass_in_any_split() {
        let mut stream = packet(SSH_FXP_DATA, &[0, 0, 0, 3, b'a', b'b', b'c']);
        stream.extend(packet(
            SSH_FXP_NAME,
            &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ));
        stream.extend(packet(101, &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
        for split in 1..stream.len() {
            let mut g = guard();
            for part in stream.chunks(split) {
                g.scan(part).unwrap();
            }
            assert_eq!((g.pos, g.total), (0, 0), "split {split}");
        }
    }

    #[test]
    fn oversized_truncated_and_overcounted_packets_fail() {
        let mut big = 2000u32.to_be_bytes().to_vec();
        big.push(SSH_FXP_DATA);
        assert!(guard().scan(&big).unwrap_err().contains("2000 bytes"));
        assert!(guard().scan(&[0, 0, 0, 2, 1, 1]).is_err());
        assert!(guard().scan(&packet(SSH_FXP_DATA, &[0, 0])).is_err());
        let lying = packet(SSH_FXP_NAME, &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
        assert!(guard()
            .scan(&lying)
            .unwrap_err()
            .contains("4294967295 entries"));
    }
}
