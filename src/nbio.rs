//! Non-blocking byte plumbing shared by every stream and pipe on the poll loop.
//!
//! [`read_available`] drains whatever a readable fd holds (mio is edge-triggered: a reader
//! that stops early never hears of the rest); [`WriteBuffer`] keeps what a peer has not taken
//! yet and asks for WRITABLE interest only while bytes are pending. This module knows nothing
//! about protocols, and never blocks: a full peer leaves bytes buffered, a broken peer drops
//! them (its reader side notices the EOF).

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// Read what `s` has now, chunk by chunk into `buf`, handing each chunk to `f`. Returns true
/// once the peer is gone (EOF or an error).
pub fn read_available(s: &mut impl Read, buf: &mut [u8], mut f: impl FnMut(&[u8])) -> bool {
    loop {
        match s.read(buf) {
            Ok(0) => return true,
            Ok(n) => f(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}

/// `Read` for a borrowed fd (a pipe end).
pub struct FdReader<'a>(pub &'a OwnedFd);

impl Read for FdReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        rustix::io::read(self.0, buf).map_err(io::Error::from)
    }
}

/// How the fd of a [`WriteBuffer`] is registered in the poll loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// A bidirectional stream registered READABLE for its whole life: WRITABLE is added and
    /// removed with `reregister`.
    ReadableStream,
    /// A write-only pipe end: registered WRITABLE only while bytes are pending.
    WriteOnly,
}

/// Bytes waiting for a non-blocking peer.
#[derive(Debug)]
pub struct WriteBuffer {
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    pos: usize,
    armed: bool,
    token: Token,
    registration: Registration,
}

impl WriteBuffer {
    pub fn new(token: Token, registration: Registration) -> Self {
        WriteBuffer {
            buf: Vec::new(),
            pos: 0,
            armed: false,
            token,
            registration,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Forget everything pending (the peer is gone). The caller deregisters the fd.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.pos = 0;
        self.armed = false;
    }

    /// Queue `bytes` and write as much as the peer takes.
    pub fn send(&mut self, fd: &impl AsFd, registry: &Registry, bytes: &[u8]) {
        self.push(bytes);
        self.flush(fd, registry);
    }

    /// Write as much as the peer takes; keep WRITABLE interest armed while bytes remain.
    pub fn flush(&mut self, fd: &impl AsFd, registry: &Registry) {
        while self.pos < self.buf.len() {
            match rustix::io::write(fd.as_fd(), &self.buf[self.pos..]) {
                Ok(0) => break,
                Ok(n) => self.pos += n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => break,
                Err(_) => {
                    // A broken peer: its reader side notices; nothing more can be delivered.
                    self.buf.clear();
                    self.pos = 0;
                    break;
                }
            }
        }
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        self.arm(fd.as_fd().as_raw_fd(), registry);
    }

    fn arm(&mut self, raw: std::os::fd::RawFd, registry: &Registry) {
        let want = !self.is_empty();
        if want == self.armed {
            return;
        }
        let mut src = SourceFd(&raw);
        let ok = match (self.registration, want) {
            (Registration::ReadableStream, true) => registry.reregister(
                &mut src,
                self.token,
                Interest::READABLE | Interest::WRITABLE,
            ),
            (Registration::ReadableStream, false) => {
                registry.reregister(&mut src, self.token, Interest::READABLE)
            }
            (Registration::WriteOnly, true) => {
                registry.register(&mut src, self.token, Interest::WRITABLE)
            }
            (Registration::WriteOnly, false) => registry.deregister(&mut src),
        };
        if ok.is_ok() {
            self.armed = want;
        }
    }

    /// Whether a write-only fd is currently registered (it must be deregistered before it is
    /// closed).
    pub fn armed(&self) -> bool {
        self.armed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::Poll;

    #[test]
    fn write_buffer_full_pipe_keeps_bytes_and_delivers_them_later() {
        let poll = Poll::new().expect("poll");
        let (r, w) = rustix::pipe::pipe().expect("pipe");
        crate::child::set_nonblocking(&w).expect("nonblocking");
        let mut wb = WriteBuffer::new(Token(1), Registration::WriteOnly);
        let data: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        wb.send(&w, poll.registry(), &data);
        assert!(!wb.is_empty(), "a pipe holds less than 300 kB");
        assert!(wb.armed());
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        crate::child::set_nonblocking(&r).expect("nonblocking");
        while got.len() < data.len() {
            read_available(&mut FdReader(&r), &mut buf, |c| got.extend_from_slice(c));
            wb.flush(&w, poll.registry());
        }
        assert_eq!(got, data);
        assert!(wb.is_empty());
        assert!(!wb.armed());
    }

    #[test]
    fn write_buffer_broken_peer_drops_pending_bytes() {
        let poll = Poll::new().expect("poll");
        let (r, w) = rustix::pipe::pipe().expect("pipe");
        drop(r);
        let mut wb = WriteBuffer::new(Token(1), Registration::WriteOnly);
        wb.send(&w, poll.registry(), b"lost");
        assert!(wb.is_empty());
        assert!(!wb.armed());
    }
}
