//! Host network links for containers, through rtnetlink: one `NETLINK_ROUTE` socket that
//! creates a vlan's bridge `br<V>`, brings links up, enslaves links to a bridge, adds addresses
//! and deletes links ([`Netlink`]), and [`VlanBridge`], the bridge of one vlan with upstream's
//! addresses, removed when ntd is done with it.
//!
//! Why netlink and not `ip` children: each change is one small synchronous request the kernel
//! carries out inside `sendmsg` (its acknowledgement is queued before `send` returns), so it
//! needs neither a child process to reap nor the poll loop, works without `iproute2` in
//! `PATH` (the Nix sandbox has no `ip` unless the package puts it there), and every failure
//! comes back as an errno this module turns into a message. The messages themselves are built
//! and parsed byte for byte in [`msg`] (unit-tested); this module only sends them. It never
//! blocks: the answer is read with `MSG_DONTWAIT`, and a missing one is an error.

pub mod msg;

use msg::Answer;
use rustix::fd::OwnedFd;
use rustix::io::Errno;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
use std::fmt;
use std::io;
use std::net::IpAddr;

/// Largest answer read (an acknowledgement carrying the echoed request is far smaller).
const ANSWER_BUFFER: usize = 8192;

/// What went wrong talking to the kernel about links.
#[derive(Debug)]
pub enum NetlinkError {
    /// The rtnetlink socket could not be opened.
    Socket(io::Error),
    /// The kernel refused a request (`what` says which, for example "create bridge br1").
    Refused { what: String, source: io::Error },
    /// The kernel's answer was missing or not netlink.
    NoAnswer { what: String },
    /// An interface name the kernel would refuse.
    BadName { name: String },
}

impl fmt::Display for NetlinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetlinkError::Socket(e) => write!(f, "cannot open a netlink socket: {e}"),
            NetlinkError::Refused { what, source } => {
                write!(f, "cannot {what}: {source}")?;
                match source.raw_os_error() {
                    Some(code) if code == Errno::PERM.raw_os_error() => write!(
                        f,
                        " (containers need root, or CAP_NET_ADMIN, to create bridges and taps)"
                    ),
                    Some(code) if code == Errno::EXIST.raw_os_error() => write!(
                        f,
                        " (another test run in this network namespace uses the same vlan, or \
                         an earlier run left it behind)"
                    ),
                    _ => Ok(()),
                }
            }
            NetlinkError::NoAnswer { what } => {
                write!(f, "cannot {what}: the kernel sent no valid answer")
            }
            NetlinkError::BadName { name } => write!(
                f,
                "'{name}' is not a valid interface name (1 to {} bytes, no '/', ':' or spaces)",
                msg::IFNAME_MAX
            ),
        }
    }
}

impl std::error::Error for NetlinkError {}

/// An rtnetlink socket in the caller's network namespace.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
    answer: Vec<u8>,
}

impl Netlink {
    pub fn open() -> Result<Netlink, NetlinkError> {
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            None, // protocol 0: NETLINK_ROUTE
        )
        .map_err(|e| NetlinkError::Socket(e.into()))?;
        Ok(Netlink {
            fd,
            seq: 0,
            answer: vec![0; ANSWER_BUFFER],
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Send one request and read its acknowledgement.
    fn request(
        &mut self,
        what: impl FnOnce() -> String,
        message: &[u8],
    ) -> Result<(), NetlinkError> {
        let seq = u32::from_ne_bytes([message[8], message[9], message[10], message[11]]);
        let refused = |what: String, e: Errno| NetlinkError::Refused {
            what,
            source: e.into(),
        };
        loop {
            match rustix::net::send(&self.fd, message, SendFlags::empty()) {
                Ok(_) => break,
                Err(Errno::INTR) => {}
                Err(e) => return Err(refused(what(), e)),
            }
        }
        // rtnetlink handles the request inside sendmsg: its answer is queued already.
        loop {
            match rustix::net::recv(&self.fd, &mut self.answer[..], RecvFlags::DONTWAIT) {
                Ok((_, n)) => match msg::parse_answer(&self.answer[..n], seq) {
                    Answer::Ack => return Ok(()),
                    Answer::Error(code) => {
                        return Err(refused(what(), Errno::from_raw_os_error(code)))
                    }
                    Answer::Missing => {} // an answer to an earlier request: read on
                    Answer::Malformed => return Err(NetlinkError::NoAnswer { what: what() }),
                },
                Err(Errno::INTR) => {}
                Err(_) => return Err(NetlinkError::NoAnswer { what: what() }),
            }
        }
    }

    /// The index of link `name`, `None` if there is none.
    pub fn link_index(&self, name: &str) -> Result<Option<u32>, NetlinkError> {
        if !msg::valid_ifname(name) {
            return Err(NetlinkError::BadName { name: name.into() });
        }
        match rustix::net::netdevice::name_to_index(&self.fd, name) {
            Ok(i) => Ok(Some(i)),
            Err(Errno::NODEV) => Ok(None),
            Err(e) => Err(NetlinkError::Refused {
                what: format!("look up link {name}"),
                source: e.into(),
            }),
        }
    }

    fn index_of(&self, name: &str) -> Result<u32, NetlinkError> {
        self.link_index(name)?.ok_or_else(|| NetlinkError::Refused {
            what: format!("find link {name}"),
            source: Errno::NODEV.into(),
        })
    }

    /// Create bridge `name` (it must not exist yet) and return its index.
    pub fn create_bridge(&mut self, name: &str) -> Result<u32, NetlinkError> {
        if !msg::valid_ifname(name) {
            return Err(NetlinkError::BadName { name: name.into() });
        }
        let seq = self.next_seq();
        self.request(
            || format!("create bridge {name}"),
            &msg::new_bridge(seq, name),
        )?;
        self.index_of(name)
    }

    pub fn set_up(&mut self, index: u32, name: &str) -> Result<(), NetlinkError> {
        let seq = self.next_seq();
        self.request(|| format!("bring link {name} up"), &msg::set_up(seq, index))
    }

    /// Make link `index` a port of bridge `master`.
    pub fn set_master(&mut self, index: u32, master: u32, what: &str) -> Result<(), NetlinkError> {
        let seq = self.next_seq();
        self.request(
            || format!("attach {what}"),
            &msg::set_master(seq, index, master),
        )
    }

    pub fn add_address(
        &mut self,
        index: u32,
        addr: IpAddr,
        prefix: u8,
        name: &str,
    ) -> Result<(), NetlinkError> {
        let seq = self.next_seq();
        self.request(
            || format!("add address {addr}/{prefix} to {name}"),
            &msg::add_address(seq, index, addr, prefix),
        )
    }

    pub fn delete_link(&mut self, index: u32, name: &str) -> Result<(), NetlinkError> {
        let seq = self.next_seq();
        self.request(
            || format!("delete link {name}"),
            &msg::delete_link(seq, index),
        )
    }
}

/// The name of vlan `vlan`'s bridge, as upstream's `run-nspawn` names it.
pub fn bridge_name(vlan: u32) -> String {
    format!("br{vlan}")
}

/// The host's addresses on vlan `vlan`'s bridge, as upstream's `run-nspawn` sets them when
/// it creates the bridge: `192.168.V.254/24` and `2001:db8:V::fe/64` (the vlan's decimal
/// digits as the hex group, like its f-string). `None` for the IPv6 one where upstream's
/// string is no address (vlans of five digits and more) or for IPv4 past 255.
pub fn bridge_addresses(vlan: u32) -> Vec<(IpAddr, u8)> {
    let mut out = Vec::new();
    if let Ok(v4) = format!("192.168.{vlan}.254").parse() {
        out.push((v4, 24));
    }
    if let Ok(v6) = format!("2001:db8:{vlan}::fe").parse() {
        out.push((v6, 64));
    }
    out
}

/// A vlan's bridge `br<V>` that ntd created (up, with upstream's host addresses); containers'
/// start scripts find it and add their veths, and ntd's tap joins it. Removed by
/// [`VlanBridge::remove`]; dropping it removes it too, best effort.
pub struct VlanBridge {
    name: String,
    index: u32,
    removed: bool,
}

impl VlanBridge {
    /// Create, address and bring up `br<vlan>`. On failure nothing is left behind.
    pub fn create(nl: &mut Netlink, vlan: u32) -> Result<VlanBridge, NetlinkError> {
        let name = bridge_name(vlan);
        let index = nl.create_bridge(&name)?;
        let bridge = VlanBridge {
            name,
            index,
            removed: false,
        };
        for (addr, prefix) in bridge_addresses(vlan) {
            nl.add_address(index, addr, prefix, &bridge.name)?;
        }
        nl.set_up(index, &bridge.name)?;
        Ok(bridge)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    /// Make link `link` a port of this bridge and bring it up.
    pub fn enslave(&self, nl: &mut Netlink, link: &str) -> Result<(), NetlinkError> {
        let index = nl.index_of(link)?;
        nl.set_master(
            index,
            self.index,
            &format!("{link} to bridge {}", self.name),
        )?;
        nl.set_up(index, link)
    }

    /// Delete the bridge (its ports stay, detached).
    pub fn remove(mut self, nl: &mut Netlink) -> Result<(), NetlinkError> {
        self.removed = true;
        match nl.delete_link(self.index, &self.name) {
            // Gone already (its namespace went away, or someone deleted it): what we want.
            Err(NetlinkError::Refused { source, .. })
                if source.raw_os_error() == Some(Errno::NODEV.raw_os_error()) =>
            {
                Ok(())
            }
            other => other,
        }
    }
}

impl Drop for VlanBridge {
    fn drop(&mut self) {
        if !self.removed {
            if let Ok(mut nl) = Netlink::open() {
                let _ = nl.delete_link(self.index, &self.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_addresses_follow_run_nspawn() {
        let a = bridge_addresses(1);
        assert_eq!(a[0], ("192.168.1.254".parse().unwrap(), 24));
        assert_eq!(a[1], ("2001:db8:1::fe".parse().unwrap(), 64));
        // The decimal digits are read as a hex group, as in upstream's f-string.
        assert_eq!(
            bridge_addresses(10)[1].0,
            "2001:db8:10::fe".parse::<IpAddr>().unwrap()
        );
        // Past 255 there is no IPv4 address, past four digits no IPv6 one.
        assert_eq!(bridge_addresses(300).len(), 1);
        assert!(bridge_addresses(12345).is_empty());
        assert_eq!(bridge_name(7), "br7");
    }

    #[test]
    fn refused_messages_name_the_fix() {
        let e = NetlinkError::Refused {
            what: "create bridge br1".into(),
            source: Errno::PERM.into(),
        };
        assert!(e.to_string().starts_with("cannot create bridge br1: "));
        assert!(e.to_string().contains("need root"));
        let e = NetlinkError::Refused {
            what: "create bridge br1".into(),
            source: Errno::EXIST.into(),
        };
        assert!(e.to_string().contains("left it behind"));
    }
}
