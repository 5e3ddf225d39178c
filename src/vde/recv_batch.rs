//! Batched datagram receive (`recvmmsg(2)`) into one reusable set of buffers.
//!
//! rustix offers `sendmmsg` but not `recvmmsg`, so this module owns the one FFI binding to
//! glibc's `recvmmsg` and the `#[repr(C)]` mirrors of `struct iovec`, `struct msghdr` and
//! `struct mmsghdr` it needs (64-bit Linux layout, checked at compile time). It must not do
//! anything else: no policy about sizes or errors beyond reporting them.
//!
//! One call receives every queued datagram up to the batch size, and a short count proves the
//! queue is empty — which an edge-triggered poller needs to know — without the extra `recv`
//! that would fail with EAGAIN.

use std::ffi::{c_int, c_uint, c_void};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

#[repr(C)]
struct IoVec {
    base: *mut c_void,
    len: usize,
}

#[repr(C)]
struct MsgHdr {
    name: *mut c_void,
    namelen: u32,
    iov: *mut IoVec,
    iovlen: usize,
    control: *mut c_void,
    controllen: usize,
    flags: c_int,
}

#[repr(C)]
struct MMsgHdr {
    hdr: MsgHdr,
    len: c_uint,
}

// The C layouts on 64-bit Linux (x86_64, aarch64): a mismatch must not compile.
const _: () = assert!(std::mem::size_of::<IoVec>() == 16);
const _: () = assert!(std::mem::size_of::<MsgHdr>() == 56);
const _: () = assert!(std::mem::size_of::<MMsgHdr>() == 64);

/// `MSG_TRUNC`: as a flag, report the real length; in `msg_flags`, the datagram was cut.
const MSG_TRUNC: c_int = 0x20;
/// `MSG_DONTWAIT`.
const MSG_DONTWAIT: c_int = 0x40;

extern "C" {
    fn recvmmsg(
        fd: c_int,
        msgvec: *mut MMsgHdr,
        vlen: c_uint,
        flags: c_int,
        timeout: *mut c_void,
    ) -> c_int;
}

/// `slots` receive buffers of `slot_len` bytes each and the headers that point at them,
/// built once and reused for every call.
pub struct RecvBatch {
    buffers: Box<[u8]>,
    iovecs: Box<[IoVec]>,
    headers: Box<[MMsgHdr]>,
    slot_len: usize,
    received: usize,
}

// SAFETY: the raw pointers inside point only into this value's own heap allocations (which
// never move while it lives); nothing is shared with another thread.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// Buffers are allocated zeroed, so pages a batch never touches are never made resident.
    pub fn new(slots: usize, slot_len: usize) -> RecvBatch {
        let mut buffers = vec![0u8; slots * slot_len].into_boxed_slice();
        let base = buffers.as_mut_ptr();
        let mut iovecs: Box<[IoVec]> = (0..slots)
            .map(|i| IoVec {
                // SAFETY: i * slot_len < slots * slot_len, inside `buffers`.
                base: unsafe { base.add(i * slot_len) }.cast(),
                len: slot_len,
            })
            .collect();
        let iov_base = iovecs.as_mut_ptr();
        let headers: Box<[MMsgHdr]> = (0..slots)
            .map(|i| MMsgHdr {
                hdr: MsgHdr {
                    name: std::ptr::null_mut(),
                    namelen: 0,
                    // SAFETY: i < slots, inside `iovecs`.
                    iov: unsafe { iov_base.add(i) },
                    iovlen: 1,
                    control: std::ptr::null_mut(),
                    controllen: 0,
                    flags: 0,
                },
                len: 0,
            })
            .collect();
        RecvBatch {
            buffers,
            iovecs,
            headers,
            slot_len,
            received: 0,
        }
    }

    /// Receive up to `max` queued datagrams without blocking. `Ok(n)` with `n < max` means the
    /// socket's queue was empty afterwards; EAGAIN (nothing queued) is returned as `Ok(0)`.
    pub fn recv(&mut self, fd: BorrowedFd<'_>, max: usize) -> io::Result<usize> {
        let vlen = max.min(self.headers.len());
        self.received = 0;
        debug_assert_eq!(self.iovecs.len(), self.headers.len());
        // SAFETY: `headers[..vlen]` are valid mmsghdr structures whose single iovec points at
        // a distinct, writable `slot_len`-byte region of `buffers`; all three allocations are
        // owned by `self`, which is borrowed mutably for the duration of the call. No address
        // or control buffers are passed (null with zero length) and no timeout.
        let n = unsafe {
            recvmmsg(
                fd.as_raw_fd(),
                self.headers.as_mut_ptr(),
                vlen as c_uint,
                MSG_DONTWAIT | MSG_TRUNC,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(e)
            };
        }
        self.received = n as usize;
        Ok(self.received)
    }

    /// Read up to `max` frames with one `read(2)` each, for an fd that is not a socket (a tap
    /// device returns one frame per read). Same contract as [`RecvBatch::recv`]: `Ok(n)` with
    /// `n < max` means the fd had nothing more; a read error after some frames ends the batch
    /// (the next wake-up sees it again).
    pub fn read_each(&mut self, fd: BorrowedFd<'_>, max: usize) -> io::Result<usize> {
        let vlen = max.min(self.headers.len());
        self.received = 0;
        let mut i = 0;
        while i < vlen {
            let start = i * self.slot_len;
            let slot = &mut self.buffers[start..start + self.slot_len];
            match rustix::io::read(fd, slot) {
                Ok(n) => {
                    self.headers[i].len = n as c_uint;
                    self.headers[i].hdr.flags = 0;
                    i += 1;
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => break,
                Err(e) if i == 0 => return Err(e.into()),
                Err(_) => break,
            }
        }
        self.received = i;
        Ok(i)
    }

    /// Real length of datagram `i` of the last call (may exceed the slot when truncated).
    pub fn len(&self, i: usize) -> usize {
        if i < self.received {
            self.headers[i].len as usize
        } else {
            0
        }
    }

    /// Whether datagram `i` of the last call was longer than its slot.
    pub fn truncated(&self, i: usize) -> bool {
        i < self.received
            && (self.headers[i].hdr.flags & MSG_TRUNC != 0 || self.len(i) > self.slot_len)
    }

    /// The bytes of datagram `i` of the last call (cut to the slot if truncated).
    pub fn frame(&self, i: usize) -> &[u8] {
        let start = i * self.slot_len;
        &self.buffers[start..start + self.len(i).min(self.slot_len)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn recv_three_queued_datagrams_returns_three_then_zero() {
        let (a, b) = UnixDatagram::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        for msg in [&b"first"[..], &[7u8; 1514], &[]] {
            a.send(msg).unwrap();
        }
        let mut batch = RecvBatch::new(8, 2048);

        let n = batch.recv(b.as_fd(), 8).unwrap();

        assert_eq!(n, 3);
        assert_eq!(batch.frame(0), b"first");
        assert_eq!(batch.frame(1), &[7u8; 1514][..]);
        assert_eq!((batch.len(2), batch.frame(2).len()), (0, 0));
        assert!(!batch.truncated(1));
        assert_eq!(batch.recv(b.as_fd(), 8).unwrap(), 0, "EAGAIN is Ok(0)");
    }

    #[test]
    fn recv_oversize_reports_real_length_and_truncation() {
        let (a, b) = UnixDatagram::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        a.send(&[1u8; 5000]).unwrap();
        let mut batch = RecvBatch::new(2, 4096);

        assert_eq!(batch.recv(b.as_fd(), 2).unwrap(), 1);

        assert!(batch.truncated(0));
        assert_eq!(batch.len(0), 5000);
        assert_eq!(batch.frame(0).len(), 4096);
    }

    #[test]
    fn read_each_reads_one_frame_per_read_until_empty() {
        let (a, b) = UnixDatagram::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        for msg in [&b"one"[..], &[9u8; 1514]] {
            a.send(msg).unwrap();
        }
        let mut batch = RecvBatch::new(4, 2048);

        assert_eq!(batch.read_each(b.as_fd(), 4).unwrap(), 2);

        assert_eq!(batch.frame(0), b"one");
        assert_eq!(batch.frame(1), &[9u8; 1514][..]);
        assert!(!batch.truncated(1));
        assert_eq!(batch.read_each(b.as_fd(), 4).unwrap(), 0, "EAGAIN is Ok(0)");
        for i in 0..3u8 {
            a.send(&[i; 20]).unwrap();
        }
        assert_eq!(batch.read_each(b.as_fd(), 2).unwrap(), 2, "max respected");
        assert_eq!(batch.read_each(b.as_fd(), 2).unwrap(), 1);
        assert_eq!(batch.frame(0), &[2u8; 20][..]);
    }

    #[test]
    fn recv_respects_max_and_leaves_the_rest_queued() {
        let (a, b) = UnixDatagram::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        for i in 0..5u8 {
            a.send(&[i; 20]).unwrap();
        }
        let mut batch = RecvBatch::new(4, 64);

        assert_eq!(batch.recv(b.as_fd(), 4).unwrap(), 4);
        assert_eq!(batch.frame(3), &[3u8; 20][..]);
        assert_eq!(batch.recv(b.as_fd(), 4).unwrap(), 1);
        assert_eq!(batch.frame(0), &[4u8; 20][..]);
    }
}
