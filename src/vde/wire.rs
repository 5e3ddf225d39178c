//! The libvdeplug control protocol on the wire (`struct request_v3` and the `sockaddr_un`
//! reply), as spoken by vde2 2.3.x's libvdeplug and by vdeplug4's `vde` module.
//!
//! This module owns the byte layout only: decoding a request that may arrive in pieces
//! ([`RequestBuffer`]), validating it, and encoding requests and replies. It must not touch
//! sockets, files or the clock, so that every byte sequence can be fed to it in tests.
//!
//! Layout (host byte order, little-endian on every platform ntd targets):
//! `magic` u32 `0xfeedface` · `version` u32 `3` · `type` u32 (bits 0–7 request type, bits 8–31
//! the requested port) · `sockaddr_un` (u16 family = 1, then 108 bytes of NUL-padded path) ·
//! description, 0..128 bytes, no terminating NUL. Total 122..250 bytes, no length field.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// `SWITCH_MAGIC` of libvdeplug.
pub const SWITCH_MAGIC: u32 = 0xfeed_face;
/// The only protocol version current clients speak.
pub const VERSION: u32 = 3;
/// Request type: a normal port (any, or the one in bits 8–31).
pub const REQ_NEW_CONTROL: u8 = 0;
/// Request type: the management port 0.
pub const REQ_NEW_PORT0: u8 = 1;
/// `AF_UNIX` as stored in `sun_family`.
pub const AF_UNIX_FAMILY: u16 = 1;
/// Size of `sun_path`, including the terminating NUL.
pub const SUN_PATH_LEN: usize = 108;
/// Size of `struct sockaddr_un` on Linux (the reply is exactly this long).
pub const SOCKADDR_UN_LEN: usize = 2 + SUN_PATH_LEN;
/// Fixed part of a request: magic, version, type, sockaddr_un.
pub const HEADER_LEN: usize = 12 + SOCKADDR_UN_LEN;
/// Longest description libvdeplug sends (`MAXDESCR`).
pub const MAX_DESCRIPTION: usize = 128;
/// Longest valid request.
pub const MAX_REQUEST: usize = HEADER_LEN + MAX_DESCRIPTION;
/// Largest port number that fits in bits 8–31 of the type field.
pub const MAX_PORT_FIELD: u32 = 0x00ff_ffff;

/// Which port a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRequest {
    /// `REQ_NEW_CONTROL` with port 0: the switch picks the lowest free port.
    Any,
    /// `REQ_NEW_CONTROL` with port N > 0 (several clients may share it).
    Explicit(u32),
    /// `REQ_NEW_PORT0`: the management port 0 (receives no flooded traffic).
    Management,
}

/// A decoded, validated `request_v3`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub port: PortRequest,
    /// Absolute path of the client's bound SOCK_DGRAM data socket.
    pub data_path: PathBuf,
    /// Free text such as `QEMU user=root pid=1234`; control characters replaced by `?`.
    pub description: String,
}

/// Why bytes are not a valid request (or a path cannot be put on the wire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// Fewer than [`HEADER_LEN`] bytes.
    Short { len: usize },
    /// More than [`MAX_REQUEST`] bytes (description longer than 128 bytes, or garbage).
    TooLong { len: usize },
    /// Magic is not `0xfeedface` (vde_switch: "V0 request not supported").
    BadMagic(u32),
    /// Version other than 3.
    BadVersion(u32),
    /// Request type other than 0 (`REQ_NEW_CONTROL`) or 1 (`REQ_NEW_PORT0`).
    UnknownType(u8),
    /// `sun_family` is not `AF_UNIX`.
    BadFamily(u16),
    /// `sun_path` has no terminating NUL within its 108 bytes.
    PathNotTerminated,
    /// `sun_path` is empty (or an abstract-namespace name).
    EmptyPath,
    /// `sun_path` is not absolute.
    RelativePath(PathBuf),
    /// A path to encode does not fit in `sun_path` (at most 107 bytes).
    PathTooLong { len: usize },
    /// A path to encode contains a NUL byte.
    PathHasNul,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Short { len } => {
                write!(f, "request too short: {len} bytes, a request_v3 needs at least {HEADER_LEN}")
            }
            WireError::TooLong { len } => write!(
                f,
                "request too long: more than {MAX_REQUEST} bytes (got {len}); is the client speaking VDE?"
            ),
            WireError::BadMagic(m) => {
                write!(f, "bad magic {m:#010x} (expected {SWITCH_MAGIC:#010x}); not a libvdeplug v3 client")
            }
            WireError::BadVersion(v) => write!(f, "unsupported protocol version {v} (only 3 is supported)"),
            WireError::UnknownType(t) => write!(f, "unknown request type {t} (expected 0 or 1)"),
            WireError::BadFamily(fam) => write!(f, "data socket address family {fam} is not AF_UNIX (1)"),
            WireError::PathNotTerminated => write!(f, "data socket path is not NUL-terminated within 108 bytes"),
            WireError::EmptyPath => write!(f, "data socket path is empty (abstract sockets are not supported)"),
            WireError::RelativePath(p) => {
                write!(f, "data socket path {:?} is relative; libvdeplug always sends an absolute path", p)
            }
            WireError::PathTooLong { len } => write!(
                f,
                "socket path is {len} bytes, sun_path holds at most {} (use a shorter directory)",
                SUN_PATH_LEN - 1
            ),
            WireError::PathHasNul => write!(f, "socket path contains a NUL byte"),
        }
    }
}

impl std::error::Error for WireError {}

/// Encode `path` as a 110-byte `struct sockaddr_un` (the switch's reply).
pub fn encode_sockaddr_un(path: &Path) -> Result<[u8; SOCKADDR_UN_LEN], WireError> {
    let raw = path.as_os_str().as_bytes();
    if raw.len() >= SUN_PATH_LEN {
        return Err(WireError::PathTooLong { len: raw.len() });
    }
    if raw.contains(&0) {
        return Err(WireError::PathHasNul);
    }
    let mut out = [0u8; SOCKADDR_UN_LEN];
    out[..2].copy_from_slice(&AF_UNIX_FAMILY.to_ne_bytes());
    out[2..2 + raw.len()].copy_from_slice(raw);
    Ok(out)
}

/// Decode a `struct sockaddr_un` (at least 110 bytes) into an absolute path.
pub fn decode_sockaddr_un(buf: &[u8]) -> Result<PathBuf, WireError> {
    if buf.len() < SOCKADDR_UN_LEN {
        return Err(WireError::Short { len: buf.len() });
    }
    let family = u16::from_ne_bytes([buf[0], buf[1]]);
    if family != AF_UNIX_FAMILY {
        return Err(WireError::BadFamily(family));
    }
    let sun_path = &buf[2..SOCKADDR_UN_LEN];
    let end = sun_path
        .iter()
        .position(|&b| b == 0)
        .ok_or(WireError::PathNotTerminated)?;
    if end == 0 {
        return Err(WireError::EmptyPath);
    }
    let path = PathBuf::from(OsStr::from_bytes(&sun_path[..end]));
    if !path.is_absolute() {
        return Err(WireError::RelativePath(path));
    }
    Ok(path)
}

/// Decode and validate a complete request (`HEADER_LEN..=MAX_REQUEST` bytes).
pub fn parse_request(buf: &[u8]) -> Result<Request, WireError> {
    if buf.len() < HEADER_LEN {
        return Err(WireError::Short { len: buf.len() });
    }
    if buf.len() > MAX_REQUEST {
        return Err(WireError::TooLong { len: buf.len() });
    }
    let word = |at: usize| u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
    let magic = word(0);
    if magic != SWITCH_MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    let version = word(4);
    if version != VERSION {
        return Err(WireError::BadVersion(version));
    }
    let kind = word(8);
    let port = match ((kind & 0xff) as u8, kind >> 8) {
        (REQ_NEW_CONTROL, 0) => PortRequest::Any,
        (REQ_NEW_CONTROL, n) => PortRequest::Explicit(n),
        // vdeplug4 sends REQ_NEW_PORT0 without port bits; ignore them if present.
        (REQ_NEW_PORT0, _) => PortRequest::Management,
        (other, _) => return Err(WireError::UnknownType(other)),
    };
    let data_path = decode_sockaddr_un(&buf[12..HEADER_LEN])?;
    Ok(Request {
        port,
        data_path,
        description: clean_description(&buf[HEADER_LEN..]),
    })
}

/// The description as printable text: up to the first NUL (C clients would stop there too),
/// invalid UTF-8 replaced, control characters replaced by `?` so it cannot forge log lines.
fn clean_description(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end])
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Encode a request exactly as libvdeplug sends it (used by test clients and benches).
pub fn encode_request(
    port: PortRequest,
    data_path: &Path,
    description: &str,
) -> Result<Vec<u8>, WireError> {
    let kind: u32 = match port {
        PortRequest::Any => u32::from(REQ_NEW_CONTROL),
        PortRequest::Explicit(n) => u32::from(REQ_NEW_CONTROL) | ((n & MAX_PORT_FIELD) << 8),
        PortRequest::Management => u32::from(REQ_NEW_PORT0),
    };
    let descr = description.as_bytes();
    let descr = &descr[..descr.len().min(MAX_DESCRIPTION)];
    let mut out = Vec::with_capacity(HEADER_LEN + descr.len());
    out.extend_from_slice(&SWITCH_MAGIC.to_ne_bytes());
    out.extend_from_slice(&VERSION.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&encode_sockaddr_un(data_path)?);
    out.extend_from_slice(descr);
    Ok(out)
}

/// What a [`RequestBuffer`] holds so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assembly {
    /// Not yet [`HEADER_LEN`] bytes: keep reading.
    NeedMore,
    /// More than [`MAX_REQUEST`] bytes arrived: reject.
    Overflow,
    /// At least the header is here: decode what arrived (the rest is the description).
    Ready,
}

/// Fixed-size accumulator for a request arriving in arbitrary pieces on the control stream.
///
/// It holds at most `MAX_REQUEST + 1` bytes: one byte past the limit is enough to know the
/// request is oversized, so memory stays bounded whatever a client sends.
pub struct RequestBuffer {
    buf: [u8; MAX_REQUEST + 1],
    len: usize,
}

impl Default for RequestBuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestBuffer {
    pub fn new() -> Self {
        RequestBuffer {
            buf: [0; MAX_REQUEST + 1],
            len: 0,
        }
    }

    /// Bytes received so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Room for the next read; empty once the buffer has overflowed.
    pub fn spare(&mut self) -> &mut [u8] {
        &mut self.buf[self.len..]
    }

    /// Record that `n` bytes were read into [`RequestBuffer::spare`].
    pub fn advance(&mut self, n: usize) {
        self.len = (self.len + n).min(self.buf.len());
    }

    /// Append bytes (keeping only what fits); returns how many were taken.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let spare = self.spare();
        let n = bytes.len().min(spare.len());
        spare[..n].copy_from_slice(&bytes[..n]);
        self.advance(n);
        n
    }

    pub fn state(&self) -> Assembly {
        if self.len > MAX_REQUEST {
            Assembly::Overflow
        } else if self.len < HEADER_LEN {
            Assembly::NeedMore
        } else {
            Assembly::Ready
        }
    }

    /// Decode what arrived. Only meaningful once [`RequestBuffer::state`] is `Ready`.
    pub fn parse(&self) -> Result<Request, WireError> {
        parse_request(&self.buf[..self.len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &str = "/tmp/x/vde1.ctl/.25729-00000";

    /// The 146 bytes Debian's QEMU sent in exp2 (protocols.md §1.4), rebuilt by hand.
    fn qemu_request_bytes() -> Vec<u8> {
        let mut v = vec![0xce, 0xfa, 0xed, 0xfe, 3, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        let mut path = CLIENT.as_bytes().to_vec();
        path.resize(SUN_PATH_LEN, 0);
        v.extend_from_slice(&path);
        v.extend_from_slice(b"QEMU user=root pid=25729");
        v
    }

    #[test]
    fn parse_request_debian_qemu_bytes_decodes_all_fields() {
        let bytes = qemu_request_bytes();
        assert_eq!(bytes.len(), 146);

        let req = parse_request(&bytes).unwrap();

        assert_eq!(req.port, PortRequest::Any);
        assert_eq!(req.data_path, Path::new(CLIENT));
        assert_eq!(req.description, "QEMU user=root pid=25729");
    }

    #[test]
    fn encode_request_any_port_matches_qemu_bytes() {
        let bytes = encode_request(
            PortRequest::Any,
            Path::new(CLIENT),
            "QEMU user=root pid=25729",
        )
        .unwrap();
        assert_eq!(bytes, qemu_request_bytes());
    }

    #[test]
    fn encode_request_explicit_port_puts_port_in_bits_8_to_31() {
        let bytes = encode_request(PortRequest::Explicit(5), Path::new(CLIENT), "").unwrap();
        assert_eq!(&bytes[8..12], &[0, 5, 0, 0]);
        assert_eq!(bytes.len(), HEADER_LEN);
        assert_eq!(
            parse_request(&bytes).unwrap().port,
            PortRequest::Explicit(5)
        );
    }

    #[test]
    fn encode_request_management_sets_type_1() {
        let bytes = encode_request(PortRequest::Management, Path::new(CLIENT), "m").unwrap();
        assert_eq!(&bytes[8..12], &[1, 0, 0, 0]);
        assert_eq!(parse_request(&bytes).unwrap().port, PortRequest::Management);
    }

    #[test]
    fn parse_request_port0_with_port_bits_is_still_management() {
        let mut bytes = qemu_request_bytes();
        bytes[8..12].copy_from_slice(&(1u32 | (7 << 8)).to_ne_bytes());
        assert_eq!(parse_request(&bytes).unwrap().port, PortRequest::Management);
    }

    #[test]
    fn parse_request_largest_port_field_roundtrips() {
        let bytes =
            encode_request(PortRequest::Explicit(MAX_PORT_FIELD), Path::new(CLIENT), "").unwrap();
        assert_eq!(
            parse_request(&bytes).unwrap().port,
            PortRequest::Explicit(MAX_PORT_FIELD)
        );
    }

    #[test]
    fn encode_sockaddr_un_reply_matches_vde_switch_bytes() {
        let reply = encode_sockaddr_un(Path::new("/tmp/x/vde1.ctl/001.5")).unwrap();
        assert_eq!(reply.len(), 110);
        assert_eq!(&reply[..4], &[0x01, 0x00, 0x2f, 0x74]);
        assert_eq!(&reply[2..23], b"/tmp/x/vde1.ctl/001.5");
        assert!(reply[23..].iter().all(|&b| b == 0));
        assert_eq!(
            decode_sockaddr_un(&reply).unwrap(),
            Path::new("/tmp/x/vde1.ctl/001.5")
        );
    }

    #[test]
    fn encode_sockaddr_un_107_bytes_fits_108_does_not() {
        let ok = format!("/{}", "a".repeat(106));
        assert!(encode_sockaddr_un(Path::new(&ok)).is_ok());
        let too_long = format!("/{}", "a".repeat(107));
        assert_eq!(
            encode_sockaddr_un(Path::new(&too_long)),
            Err(WireError::PathTooLong { len: 108 })
        );
    }

    #[test]
    fn parse_request_description_empty_ok() {
        let bytes = &qemu_request_bytes()[..HEADER_LEN];
        assert_eq!(parse_request(bytes).unwrap().description, "");
    }

    #[test]
    fn parse_request_description_128_bytes_ok_129_rejected() {
        let mut bytes = qemu_request_bytes()[..HEADER_LEN].to_vec();
        bytes.extend(std::iter::repeat_n(b'd', MAX_DESCRIPTION));
        assert_eq!(parse_request(&bytes).unwrap().description.len(), 128);
        bytes.push(b'd');
        assert_eq!(parse_request(&bytes), Err(WireError::TooLong { len: 251 }));
    }

    #[test]
    fn parse_request_description_cut_at_nul_and_controls_replaced() {
        let mut bytes = qemu_request_bytes()[..HEADER_LEN].to_vec();
        bytes.extend_from_slice(b"evil\nline\x1b[0m\0tail");
        assert_eq!(parse_request(&bytes).unwrap().description, "evil?line?[0m");
    }

    #[test]
    fn parse_request_short_rejected() {
        assert_eq!(
            parse_request(&qemu_request_bytes()[..121]),
            Err(WireError::Short { len: 121 })
        );
        assert_eq!(parse_request(&[]), Err(WireError::Short { len: 0 }));
    }

    #[test]
    fn parse_request_bad_magic_rejected() {
        let mut bytes = qemu_request_bytes();
        bytes[..4].copy_from_slice(&0xdead_beefu32.to_ne_bytes());
        assert_eq!(parse_request(&bytes), Err(WireError::BadMagic(0xdead_beef)));
        // Byte-swapped magic (a big-endian client) is not accepted either.
        bytes[..4].copy_from_slice(&SWITCH_MAGIC.to_be_bytes());
        assert_eq!(
            parse_request(&bytes),
            Err(WireError::BadMagic(SWITCH_MAGIC.swap_bytes()))
        );
    }

    #[test]
    fn parse_request_versions_other_than_3_rejected() {
        for v in [0u32, 1, 2, 4, u32::MAX] {
            let mut bytes = qemu_request_bytes();
            bytes[4..8].copy_from_slice(&v.to_ne_bytes());
            assert_eq!(parse_request(&bytes), Err(WireError::BadVersion(v)));
        }
    }

    #[test]
    fn parse_request_unknown_type_rejected() {
        for t in [2u8, 3, 0x7f, 0xff] {
            let mut bytes = qemu_request_bytes();
            bytes[8] = t;
            assert_eq!(parse_request(&bytes), Err(WireError::UnknownType(t)));
        }
    }

    #[test]
    fn parse_request_bad_family_rejected() {
        let mut bytes = qemu_request_bytes();
        bytes[12..14].copy_from_slice(&2u16.to_ne_bytes());
        assert_eq!(parse_request(&bytes), Err(WireError::BadFamily(2)));
    }

    #[test]
    fn parse_request_relative_path_rejected() {
        let mut bytes = qemu_request_bytes();
        bytes[14..14 + 6].copy_from_slice(b"rel/x\0");
        assert_eq!(
            parse_request(&bytes),
            Err(WireError::RelativePath(PathBuf::from("rel/x")))
        );
    }

    #[test]
    fn parse_request_empty_or_abstract_path_rejected() {
        let mut bytes = qemu_request_bytes();
        bytes[14] = 0;
        assert_eq!(parse_request(&bytes), Err(WireError::EmptyPath));
    }

    #[test]
    fn parse_request_unterminated_path_rejected() {
        let mut bytes = qemu_request_bytes();
        bytes[14..HEADER_LEN].fill(b'/');
        assert_eq!(parse_request(&bytes), Err(WireError::PathNotTerminated));
    }

    #[test]
    fn request_buffer_pieces_of_one_byte_assemble_the_request() {
        let bytes = qemu_request_bytes();
        let mut rb = RequestBuffer::new();
        for (i, b) in bytes.iter().enumerate() {
            assert_eq!(
                rb.state(),
                if i < HEADER_LEN {
                    Assembly::NeedMore
                } else {
                    Assembly::Ready
                }
            );
            assert_eq!(rb.push(std::slice::from_ref(b)), 1);
        }
        assert_eq!(rb.state(), Assembly::Ready);
        assert_eq!(rb.parse().unwrap().description, "QEMU user=root pid=25729");
    }

    #[test]
    fn request_buffer_more_than_250_bytes_overflows_and_stops_taking() {
        let mut rb = RequestBuffer::new();
        assert_eq!(rb.push(&[0u8; 400]), MAX_REQUEST + 1);
        assert_eq!(rb.state(), Assembly::Overflow);
        assert!(rb.spare().is_empty());
        assert_eq!(rb.push(&[0u8; 10]), 0);
    }

    /// xorshift64*: a small seeded generator so the fuzz test is reproducible without crates.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Arbitrary bytes (pure noise, or a valid request with random mutations) in arbitrary
    /// chunkings: the parser never panics, the buffer never exceeds its bound, the outcome
    /// does not depend on the chunking, and valid requests are never rejected.
    #[test]
    fn request_buffer_fuzz_arbitrary_bytes_and_chunkings_never_panics() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let valid = qemu_request_bytes();
        for iteration in 0..20_000 {
            let mut input: Vec<u8> = match iteration % 3 {
                0 => (0..rng.below(400)).map(|_| rng.next() as u8).collect(),
                1 => {
                    let mut v = valid.clone();
                    for _ in 0..rng.below(4) {
                        let at = rng.below(v.len());
                        v[at] = rng.next() as u8;
                    }
                    v
                }
                _ => valid.clone(),
            };
            if iteration % 7 == 0 {
                input.truncate(rng.below(input.len() + 1));
            }

            // Feed once in one piece and once in random pieces.
            let mut whole = RequestBuffer::new();
            whole.push(&input);
            let mut pieces = RequestBuffer::new();
            let mut at = 0;
            while at < input.len() {
                let n = 1 + rng.below(input.len() - at);
                pieces.push(&input[at..at + n]);
                at += n;
                assert!(pieces.len() <= MAX_REQUEST + 1);
            }

            assert_eq!(whole.state(), pieces.state());
            if whole.state() == Assembly::Ready {
                let parsed = whole.parse();
                assert_eq!(parsed, pieces.parse());
                if iteration % 3 == 2 && input.len() == valid.len() {
                    assert!(parsed.is_ok(), "valid request rejected: {parsed:?}");
                }
                if let Ok(req) = parsed {
                    assert!(req.data_path.is_absolute());
                    assert!(req.description.len() <= 3 * MAX_DESCRIPTION);
                    assert!(!req.description.chars().any(char::is_control));
                }
            }
        }
    }
}
