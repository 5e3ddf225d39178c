//! One stream between a machine and its QEMU (the guest shell's console socket, the QMP
//! socket): the socket while it is connected and the bytes the peer has not taken yet.
//!
//! A [`Link`] reads everything that is available (mio is edge-triggered), hands each chunk to
//! the conversation that parses it, writes without blocking (WRITABLE interest only while bytes
//! wait) and closes itself on EOF: deregistered, pending bytes dropped. It knows nothing about
//! what the bytes mean; that is [`super::session`]'s and [`super::qmp`]'s business.

use crate::nbio::{self, Registration, WriteBuffer};
use mio::net::UnixStream;
use mio::{Registry, Token};

/// See the module documentation.
#[derive(Debug)]
pub struct Link {
    stream: Option<UnixStream>,
    out: WriteBuffer,
}

impl Link {
    /// A link whose stream, once attached, is registered (READABLE) under `token`.
    pub fn new(token: Token) -> Link {
        Link {
            stream: None,
            out: WriteBuffer::new(token, Registration::ReadableStream),
        }
    }

    pub fn connected(&self) -> bool {
        self.stream.is_some()
    }

    /// Use `stream` (already registered READABLE under this link's token) from now on.
    pub fn attach(&mut self, stream: UnixStream) {
        self.out.clear();
        self.stream = Some(stream);
    }

    /// Read what the peer has sent, chunk by chunk into `buf`, handing each chunk to `feed`.
    /// Returns true when the peer closed the stream; the link is closed then.
    pub fn read(&mut self, registry: &Registry, buf: &mut [u8], feed: impl FnMut(&[u8])) -> bool {
        let Some(s) = self.stream.as_mut() else {
            return false;
        };
        let eof = nbio::read_available(s, buf, feed);
        if eof {
            self.close(registry);
        }
        eof
    }

    /// Queue `bytes` and write what the peer takes now; false when not connected (the bytes
    /// are dropped).
    pub fn send(&mut self, registry: &Registry, bytes: &[u8]) -> bool {
        match self.stream.as_ref() {
            Some(s) => {
                if !bytes.is_empty() {
                    self.out.send(s, registry, bytes);
                }
                true
            }
            None => false,
        }
    }

    /// The peer can take more: write what waits.
    pub fn flush(&mut self, registry: &Registry) {
        if let Some(s) = self.stream.as_ref() {
            self.out.flush(s, registry);
        }
    }

    /// Deregister and drop the stream and whatever waited for it.
    pub fn close(&mut self, registry: &Registry) {
        if let Some(mut s) = self.stream.take() {
            let _ = registry.deregister(&mut s);
        }
        self.out.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Interest, Poll};

    fn pair(poll: &Poll) -> (Link, std::os::unix::net::UnixStream) {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut ours = UnixStream::from_std(ours);
        poll.registry()
            .register(&mut ours, Token(3), Interest::READABLE)
            .unwrap();
        let mut link = Link::new(Token(3));
        link.attach(ours);
        (link, theirs)
    }

    #[test]
    fn link_sends_reads_and_closes_itself_at_eof() {
        use std::io::{Read, Write};
        let poll = Poll::new().unwrap();
        let (mut link, mut peer) = pair(&poll);
        assert!(link.send(poll.registry(), b"hello"));
        let mut got = [0u8; 5];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        peer.write_all(b"abc").unwrap();
        let mut buf = [0u8; 2];
        let mut seen = Vec::new();
        assert!(!link.read(poll.registry(), &mut buf, |c| seen.extend_from_slice(c)));
        assert_eq!(seen, b"abc");
        drop(peer);
        assert!(link.read(poll.registry(), &mut buf, |_| {}));
        assert!(!link.connected());
        assert!(!link.send(poll.registry(), b"lost"));
    }
}
