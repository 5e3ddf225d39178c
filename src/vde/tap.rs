//! The switch's tap port: a Linux tap device `vde-tap<V>` that ntd opens itself through
//! `/dev/net/tun` (upstream runs `vde_plug2tap`), so that frames from the host's bridge `br<V>`
//! — where systemd-nspawn containers attach their veths — and frames from the VMs' VDE ports
//! meet in one switch. To the switch it is one more endpoint: counted, captured, labelled and
//! impaired like any other; only its data path differs (`DataPort`): one `read(2)` or
//! `write(2)` per frame instead of `recvmmsg`/`sendmmsg`, and it has no control stream.
//!
//! The device is not persistent: it exists while ntd holds its fd and vanishes with it on
//! every exit path, SIGKILL included. Attaching it to the bridge is [`crate::netlink`]'s job.
//! This module owns the fd and the `ifreq` encoding (pure, unit-tested); it never blocks (the
//! fd is non-blocking, a full device queue drops and counts the frame).

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use mio::net::UnixDatagram;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::net::MMsgHdr;

use super::recv_batch::RecvBatch;
use super::send::send_batch;
use super::stats::PortCounters;
use crate::netlink::msg::valid_ifname;
use crate::netlink::{Netlink, NetlinkError, VlanBridge};

/// `struct ifreq` is 40 bytes on 64-bit Linux: the name (16) and a 24-byte union.
const IFREQ_LEN: usize = 40;
const IFNAMSIZ: usize = 16;
/// `IFF_TAP`: an Ethernet device (frames with their 14-byte header).
const IFF_TAP: u16 = 0x0002;
/// `IFF_NO_PI`: no 4-byte packet-information prefix on every frame.
const IFF_NO_PI: u16 = 0x1000;
/// `TUNSETIFF` = `_IOW('T', 202, int)`.
const TUNSETIFF: rustix::ioctl::Opcode = rustix::ioctl::opcode::write::<i32>(b'T', 202);

/// The name of vlan `vlan`'s tap, as upstream names it.
pub fn tap_name(vlan: u32) -> String {
    format!("vde-tap{vlan}")
}

/// The `ifreq` that `TUNSETIFF` takes to create tap `name` without packet information.
pub fn tunsetiff_request(name: &str) -> Option<[u8; IFREQ_LEN]> {
    if !valid_ifname(name) {
        return None;
    }
    let mut req = [0u8; IFREQ_LEN];
    req[..name.len()].copy_from_slice(name.as_bytes());
    req[IFNAMSIZ..IFNAMSIZ + 2].copy_from_slice(&(IFF_TAP | IFF_NO_PI).to_ne_bytes());
    Some(req)
}

/// An open, non-persistent tap device.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
}

impl Tap {
    /// Create tap `name` (EBUSY if a tap of that name exists; EPERM without CAP_NET_ADMIN).
    pub fn open(name: &str) -> io::Result<Tap> {
        let mut req = tunsetiff_request(name).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("'{name}' is not a valid interface name"),
            )
        })?;
        let fd = rustix::fs::open(
            "/dev/net/tun",
            OFlags::RDWR | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` is a 40-byte buffer of
        // exactly that layout that lives across the call, and nothing else aliases it.
        unsafe {
            let updater = rustix::ioctl::Updater::<TUNSETIFF, [u8; IFREQ_LEN]>::new(&mut req);
            rustix::ioctl::ioctl(&fd, updater)?;
        }
        Ok(Tap {
            fd,
            name: name.to_owned(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A vlan's link to the host's containers: bridge `br<V>` (upstream's addresses, up) with
/// ntd's tap `vde-tap<V>` as a port, the tap plugged into the vlan's switch. Create it before
/// any container of the vlan starts: the containers' start scripts find the bridge and add
/// their veths. The tap closes with the switch; the bridge goes with [`VlanLink::remove`]
/// (or, in an isolated run, with the network namespace).
pub struct VlanLink {
    bridge: VlanBridge,
    endpoint: u32,
}

/// Why a vlan's container link could not be made.
#[derive(Debug)]
pub enum LinkError {
    Netlink(NetlinkError),
    Tap { name: String, source: io::Error },
    Switch(super::VdeError),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Netlink(e) => write!(f, "{e}"),
            LinkError::Tap { name, source } => {
                write!(f, "cannot create tap {name}: {source}")?;
                if source.raw_os_error() == Some(Errno::PERM.raw_os_error()) {
                    write!(
                        f,
                        " (containers need root, or CAP_NET_ADMIN, and /dev/net/tun)"
                    )?;
                }
                Ok(())
            }
            LinkError::Switch(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for LinkError {}

impl VlanLink {
    /// Create `br<V>`, open `vde-tap<V>`, make it a port of the bridge and of `switch`.
    /// On failure nothing is left behind.
    pub fn create(
        switch: &mut super::Switch,
        registry: &Registry,
        nl: &mut Netlink,
    ) -> Result<VlanLink, LinkError> {
        let vlan = switch.vlan();
        let bridge = VlanBridge::create(nl, vlan).map_err(LinkError::Netlink)?;
        let name = tap_name(vlan);
        let tap = Tap::open(&name).map_err(|source| LinkError::Tap {
            name: name.clone(),
            source,
        })?;
        bridge.enslave(nl, &name).map_err(LinkError::Netlink)?;
        let endpoint = switch
            .attach_tap(registry, tap)
            .map_err(LinkError::Switch)?;
        Ok(VlanLink { bridge, endpoint })
    }

    /// The switch endpoint of the tap (label it like a machine's port).
    pub fn endpoint(&self) -> u32 {
        self.endpoint
    }

    pub fn bridge_name(&self) -> &str {
        self.bridge.name()
    }

    /// Delete the bridge (call after the containers are gone; the tap goes with the switch).
    pub fn remove(self, nl: &mut Netlink) -> Result<(), NetlinkError> {
        self.bridge.remove(nl)
    }
}

/// Where an endpoint's frames come from and go to.
pub(super) enum DataPort {
    /// A VDE client's data socket (connected SOCK_DGRAM).
    Socket(UnixDatagram),
    /// The vlan's tap device.
    Tap(Tap),
}

impl DataPort {
    pub(super) fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        match self {
            DataPort::Socket(s) => registry.register(s, token, Interest::READABLE),
            DataPort::Tap(t) => {
                registry.register(&mut SourceFd(&t.fd.as_raw_fd()), token, Interest::READABLE)
            }
        }
    }

    pub(super) fn deregister(&mut self, registry: &Registry) {
        let _ = match self {
            DataPort::Socket(s) => registry.deregister(s),
            DataPort::Tap(t) => registry.deregister(&mut SourceFd(&t.fd.as_raw_fd())),
        };
    }

    /// Receive up to `max` frames into `rx` (see [`RecvBatch::recv`]).
    pub(super) fn recv(&self, rx: &mut RecvBatch, max: usize) -> io::Result<usize> {
        match self {
            DataPort::Socket(s) => rx.recv(s.as_fd(), max),
            DataPort::Tap(t) => rx.read_each(t.fd.as_fd(), max),
        }
    }

    /// Send the frames `msgs` (built over `frames`, one frame each) with as few system calls
    /// as the port allows; what the port refuses is dropped and counted.
    pub(super) fn send(
        &self,
        counters: &mut PortCounters,
        msgs: &mut [MMsgHdr<'_>],
        frames: &[[IoSlice<'_>; 1]],
    ) {
        match self {
            DataPort::Socket(s) => send_batch(s, counters, msgs),
            DataPort::Tap(t) => write_each(&t.fd, counters, frames),
        }
    }
}

/// One `write` per frame to a tap. A full device queue (EAGAIN) drops the rest of the batch;
/// a frame the device refuses (larger than its MTU allows, EINVAL) drops that frame only.
fn write_each(fd: &OwnedFd, counters: &mut PortCounters, frames: &[[IoSlice<'_>; 1]]) {
    let mut i = 0;
    while i < frames.len() {
        let frame: &[u8] = &frames[i][0];
        match rustix::io::write(fd, frame) {
            Ok(n) => {
                counters.frames_out += 1;
                counters.bytes_out += n as u64;
                i += 1;
            }
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => {
                counters.drops.receiver_full += (frames.len() - i) as u64;
                return;
            }
            Err(Errno::IO) | Err(Errno::BADFD) => {
                // The device went away (its namespace was torn down).
                counters.drops.receiver_gone += (frames.len() - i) as u64;
                return;
            }
            Err(_) => {
                counters.drops.send_error += 1;
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunsetiff_request_carries_name_and_tap_flags() {
        let req = tunsetiff_request("vde-tap1").unwrap();
        assert_eq!(&req[..9], b"vde-tap1\0");
        assert!(req[9..16].iter().all(|&b| b == 0));
        assert_eq!(u16::from_ne_bytes([req[16], req[17]]), 0x1002);
        assert!(req[18..].iter().all(|&b| b == 0));
        assert_eq!(TUNSETIFF, 0x4004_54ca);
    }

    #[test]
    fn tunsetiff_request_refuses_names_the_kernel_refuses() {
        assert!(tunsetiff_request("").is_none());
        assert!(tunsetiff_request("a-name-of-16-ch").is_some());
        assert!(tunsetiff_request("a-name-of-16-chr").is_none());
        assert!(tunsetiff_request("a/b").is_none());
    }

    #[test]
    fn tap_name_is_upstreams() {
        assert_eq!(tap_name(12), "vde-tap12");
    }

    #[test]
    fn write_each_counts_frames_and_stops_at_a_full_queue() {
        // A non-blocking socket pair stands in for the device: one frame per write.
        let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let fd: OwnedFd = a.into();
        let frame = [1u8; 60];
        let frames = [[IoSlice::new(&frame)], [IoSlice::new(&frame)]];
        let mut c = PortCounters::default();

        write_each(&fd, &mut c, &frames);

        assert_eq!((c.frames_out, c.bytes_out), (2, 120));
        let mut buf = [0u8; 100];
        assert_eq!(b.recv(&mut buf).unwrap(), 60);
        // Fill the peer's queue until EAGAIN: the rest of a batch is counted as full.
        let big = [[IoSlice::new(&[0u8; 4096][..])]; 64];
        let mut c = PortCounters::default();
        for _ in 0..100 {
            write_each(&fd, &mut c, &big);
        }
        assert!(c.drops.receiver_full > 0);
        assert_eq!(c.frames_out + c.drops.receiver_full, 6400);
    }
}
