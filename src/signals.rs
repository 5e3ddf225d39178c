//! Termination signals as a pollable file descriptor.
//!
//! SIGINT, SIGTERM, SIGHUP and SIGQUIT are blocked for the whole (single-threaded) process and
//! read from a `signalfd` registered in the poll loop, so cleanup runs in the loop like every
//! other event. rustix does not wrap `signalfd`, so this module holds ntd's only foreign calls,
//! to the C library that std already links. A blocked mask is inherited across `exec`, so every
//! child is spawned through [`crate::child::spawn`], which clears the mask again.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// glibc's `sigset_t` on Linux: 1024 bits.
#[repr(C)]
struct SigSet([u64; 16]);

extern "C" {
    fn sigprocmask(how: i32, set: *const SigSet, old: *mut SigSet) -> i32;
    fn signalfd(fd: i32, mask: *const SigSet, flags: i32) -> i32;
}

const SIG_BLOCK: i32 = 0;
const SFD_NONBLOCK: i32 = 0o4000;
const SFD_CLOEXEC: i32 = 0o2000000;

pub const SIGHUP: u32 = 1;
pub const SIGINT: u32 = 2;
pub const SIGQUIT: u32 = 3;
pub const SIGTERM: u32 = 15;

/// Size of `struct signalfd_siginfo`; the signal number is its first `u32`.
pub const SIGINFO_SIZE: usize = 128;

/// Block the termination signals and return a non-blocking fd that reports them.
pub fn termination_fd() -> io::Result<OwnedFd> {
    let mut set = SigSet([0; 16]);
    for sig in [SIGHUP, SIGINT, SIGQUIT, SIGTERM] {
        set.0[0] |= 1 << (sig - 1);
    }
    // SAFETY: `set` is a valid, initialised sigset_t-sized buffer; a null old-set pointer is
    // allowed. The process has a single thread, so the mask applies to every later event.
    if unsafe { sigprocmask(SIG_BLOCK, &set, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: -1 asks for a new descriptor; `set` outlives the call.
    let fd = unsafe { signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: signalfd returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Read every pending signal number from the signalfd.
pub fn drain(fd: &OwnedFd) -> Vec<u32> {
    let mut out = Vec::new();
    let mut buf = [0u8; SIGINFO_SIZE];
    while let Ok(n) = rustix::io::read(fd, &mut buf) {
        if n < 4 {
            break;
        }
        out.push(u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]));
    }
    out
}

/// Conventional shell exit status for death by `sig`.
pub fn exit_status_for(sig: u32) -> i32 {
    128 + sig as i32
}

const SIG_SETMASK: i32 = 2;

/// Empty the signal mask of the calling process. Meant for a forked child before `exec` (see
/// [`crate::child::spawn`]): a blocked SIGTERM would be inherited across exec, and QEMU would
/// ignore the driver's SIGTERM. Calling it in the driver itself would break signal handling.
pub fn clear_mask_in_child() -> io::Result<()> {
    let empty = SigSet([0; 16]);
    // SAFETY: `empty` is a valid sigset_t-sized buffer; sigprocmask is async-signal-safe and
    // touches no memory but the two pointers (the old-set pointer is null).
    if unsafe { sigprocmask(SIG_SETMASK, &empty, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
