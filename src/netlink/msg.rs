//! rtnetlink messages, byte for byte: the few requests ntd sends to the kernel (create a
//! bridge, bring a link up, enslave a link to a bridge, add an address, delete a link) and
//! the parser of the kernel's answers (`NLMSG_ERROR` acknowledgements). Netlink uses the host's
//! byte order and 4-byte alignment (`NLMSG_ALIGN`, `RTA_ALIGN`). This module is pure: it
//! builds and reads byte buffers and never touches a socket; [`super`] sends them.

use std::net::IpAddr;

/// `struct nlmsghdr`: length, type, flags, sequence, port id.
pub const HEADER_LEN: usize = 16;
const RTA_HEADER_LEN: usize = 4;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;

const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
/// `NLA_F_NESTED`: the attribute holds attributes.
const NLA_F_NESTED: u16 = 0x8000;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;

const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IFF_UP: u32 = 0x1;
/// `RT_SCOPE_UNIVERSE`: what `ip addr add` uses for a global address.
const RT_SCOPE_UNIVERSE: u8 = 0;

/// Longest interface name (IFNAMSIZ 16 with the terminating NUL).
pub const IFNAME_MAX: usize = 15;

/// An interface name the kernel accepts: 1..=15 bytes, no `/`, no whitespace, not `.`/`..`
/// (`dev_valid_name`).
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= IFNAME_MAX
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
}

/// A request being assembled: the header is patched with the total length at the end.
struct Builder {
    buf: Vec<u8>,
}

impl Builder {
    fn new(kind: u16, flags: u16, seq: u32) -> Builder {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        Builder { buf }
    }

    /// `struct ifinfomsg`.
    fn ifinfo(mut self, index: i32, flags: u32, change: u32) -> Builder {
        self.buf.push(AF_UNSPEC);
        self.buf.push(0);
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&index.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&change.to_ne_bytes());
        self
    }

    /// `struct ifaddrmsg`.
    fn ifaddr(mut self, family: u8, prefix: u8, index: u32) -> Builder {
        self.buf
            .extend_from_slice(&[family, prefix, 0, RT_SCOPE_UNIVERSE]);
        self.buf.extend_from_slice(&index.to_ne_bytes());
        self
    }

    fn attr(mut self, kind: u16, payload: &[u8]) -> Builder {
        push_attr(&mut self.buf, kind, payload);
        self
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

fn push_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = (RTA_HEADER_LEN + payload.len()) as u16;
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    while buf.len() % 4 != 0 {
        buf.push(0);
    }
}

/// A NUL-terminated name, as `IFLA_IFNAME` and `IFLA_INFO_KIND` carry it.
fn c_string(s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    v
}

/// `ip link add NAME type bridge` (fails with EEXIST if the name is taken).
pub fn new_bridge(seq: u32, name: &str) -> Vec<u8> {
    let mut kind = Vec::new();
    push_attr(&mut kind, IFLA_INFO_KIND, &c_string("bridge"));
    Builder::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, seq)
        .ifinfo(0, 0, 0)
        .attr(IFLA_IFNAME, &c_string(name))
        .attr(IFLA_LINKINFO | NLA_F_NESTED, &kind)
        .finish()
}

/// `ip link set dev INDEX up`.
pub fn set_up(seq: u32, index: u32) -> Vec<u8> {
    Builder::new(RTM_NEWLINK, 0, seq)
        .ifinfo(index as i32, IFF_UP, IFF_UP)
        .finish()
}

/// `ip link set dev INDEX master MASTER`.
pub fn set_master(seq: u32, index: u32, master: u32) -> Vec<u8> {
    Builder::new(RTM_NEWLINK, 0, seq)
        .ifinfo(index as i32, 0, 0)
        .attr(IFLA_MASTER, &master.to_ne_bytes())
        .finish()
}

/// `ip link delete dev INDEX`.
pub fn delete_link(seq: u32, index: u32) -> Vec<u8> {
    Builder::new(RTM_DELLINK, 0, seq)
        .ifinfo(index as i32, 0, 0)
        .finish()
}

/// `ip addr add ADDR/PREFIX dev INDEX` (IPv4: local and address both set, as `ip` does).
pub fn add_address(seq: u32, index: u32, addr: IpAddr, prefix: u8) -> Vec<u8> {
    let (family, bytes): (u8, Vec<u8>) = match addr {
        IpAddr::V4(a) => (AF_INET, a.octets().to_vec()),
        IpAddr::V6(a) => (AF_INET6, a.octets().to_vec()),
    };
    Builder::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, seq)
        .ifaddr(family, prefix, index)
        .attr(IFA_LOCAL, &bytes)
        .attr(IFA_ADDRESS, &bytes)
        .finish()
}

/// What the kernel answered to the request with sequence number `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The acknowledgement: the request was carried out.
    Ack,
    /// The request failed with this errno (positive).
    Error(i32),
    /// No answer to `seq` in this buffer (other messages only).
    Missing,
    /// The buffer is not a sequence of well-formed netlink messages.
    Malformed,
}

/// Find the answer to request `seq` in a datagram from the kernel.
pub fn parse_answer(buf: &[u8], seq: u32) -> Answer {
    let mut rest = buf;
    while !rest.is_empty() {
        if rest.len() < HEADER_LEN {
            return Answer::Malformed;
        }
        let len = u32_at(rest, 0) as usize;
        if len < HEADER_LEN || len > rest.len() {
            return Answer::Malformed;
        }
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        let msg_seq = u32_at(rest, 8);
        if msg_seq == seq {
            match kind {
                NLMSG_ERROR => {
                    if len < HEADER_LEN + 4 {
                        return Answer::Malformed;
                    }
                    let errno = i32::from_ne_bytes([rest[16], rest[17], rest[18], rest[19]]);
                    return if errno == 0 {
                        Answer::Ack
                    } else {
                        Answer::Error(errno.saturating_neg())
                    };
                }
                NLMSG_DONE => return Answer::Ack,
                _ => {}
            }
        }
        let advance = align4(len).min(rest.len());
        rest = &rest[advance..];
    }
    Answer::Missing
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(msg: &[u8]) -> (u32, u16, u16, u32) {
        (
            u32_at(msg, 0),
            u16::from_ne_bytes([msg[4], msg[5]]),
            u16::from_ne_bytes([msg[6], msg[7]]),
            u32_at(msg, 8),
        )
    }

    #[test]
    fn new_bridge_encodes_name_and_nested_kind() {
        let msg = new_bridge(7, "br1");
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        assert_eq!(header(&msg), (msg.len() as u32, RTM_NEWLINK, flags, 7));
        assert_eq!(msg.len(), 16 + 16 + 8 + 16);
        // IFLA_IFNAME: len 8 (4 + "br1\0"), type 3.
        assert_eq!(&msg[32..40], &[8, 0, 3, 0, b'b', b'r', b'1', 0]);
        // IFLA_LINKINFO | NESTED: len 16, holding IFLA_INFO_KIND "bridge\0" (len 11, padded).
        assert_eq!(&msg[40..44], &[16, 0, 18, 0x80]);
        assert_eq!(&msg[44..56], b"\x0b\x00\x01\x00bridge\x00\x00");
    }

    #[test]
    fn set_up_sets_flag_and_change_mask() {
        let msg = set_up(1, 5);
        assert_eq!(
            header(&msg),
            (32, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, 1)
        );
        assert_eq!(
            &msg[16..32],
            &[0, 0, 0, 0, 5, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]
        );
    }

    #[test]
    fn set_master_carries_the_master_index() {
        let msg = set_master(2, 9, 4);
        assert_eq!(msg.len(), 40);
        assert_eq!(&msg[20..24], &9i32.to_ne_bytes());
        assert_eq!(&msg[32..40], &[8, 0, 10, 0, 4, 0, 0, 0]);
    }

    #[test]
    fn delete_link_names_the_index_only() {
        let msg = delete_link(3, 12);
        assert_eq!(
            header(&msg),
            (32, RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, 3)
        );
        assert_eq!(&msg[20..24], &12i32.to_ne_bytes());
    }

    #[test]
    fn add_address_encodes_both_families() {
        let v4 = add_address(4, 6, "192.168.1.254".parse().unwrap(), 24);
        assert_eq!(v4.len(), 16 + 8 + 8 + 8);
        assert_eq!(&v4[16..24], &[AF_INET, 24, 0, 0, 6, 0, 0, 0]);
        assert_eq!(&v4[24..32], &[8, 0, 2, 0, 192, 168, 1, 254]);
        assert_eq!(&v4[32..40], &[8, 0, 1, 0, 192, 168, 1, 254]);
        let v6 = add_address(5, 6, "2001:db8:1::fe".parse().unwrap(), 64);
        assert_eq!(v6.len(), 16 + 8 + 20 + 20);
        assert_eq!(&v6[16..18], &[AF_INET6, 64]);
        assert_eq!(&v6[24..28], &[20, 0, 2, 0]);
        assert_eq!(v6[28..30], [0x20, 0x01]);
        assert_eq!(v6[43], 0xfe);
    }

    fn error_msg(seq: u32, errno: i32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&errno.to_ne_bytes());
        m.extend_from_slice(&[0u8; 16]);
        m
    }

    #[test]
    fn parse_answer_reads_ack_error_and_skips_other_sequences() {
        assert_eq!(parse_answer(&error_msg(9, 0), 9), Answer::Ack);
        assert_eq!(parse_answer(&error_msg(9, -17), 9), Answer::Error(17));
        let mut two = error_msg(8, -1);
        two.extend_from_slice(&error_msg(9, 0));
        assert_eq!(parse_answer(&two, 9), Answer::Ack);
        assert_eq!(parse_answer(&error_msg(8, 0), 9), Answer::Missing);
        assert_eq!(parse_answer(&[], 9), Answer::Missing);
    }

    #[test]
    fn parse_answer_rejects_truncated_and_lying_lengths() {
        let m = error_msg(9, 0);
        for cut in 1..m.len() {
            assert_eq!(parse_answer(&m[..cut], 9), Answer::Malformed, "cut {cut}");
        }
        let mut lying = m.clone();
        lying[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert_eq!(parse_answer(&lying, 9), Answer::Malformed);
        lying[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(parse_answer(&lying, 9), Answer::Malformed);
        let mut short_error = m[..20].to_vec();
        short_error[0..4].copy_from_slice(&18u32.to_ne_bytes());
        assert_eq!(parse_answer(&short_error[..18], 9), Answer::Malformed);
    }

    #[test]
    fn valid_ifname_follows_the_kernel_rules() {
        assert!(valid_ifname("vde-tap1"));
        assert!(valid_ifname("c12-eth1"));
        assert!(valid_ifname(&"x".repeat(15)));
        for bad in ["", ".", "..", "a/b", "a b", "a:b", &"x".repeat(16)] {
            assert!(!valid_ifname(bad), "{bad:?}");
        }
    }
}
