//! A libvdeplug client written from the protocol description (protocols.md §1), used by the
//! switch tests and the switch bench to drive ntd's switch and the real `vde_switch` with the
//! same code. It can behave like vde2 2.3.x's libvdeplug (keeps its socket file, sends a
//! zero-length datagram on close) or like vdeplug4 (unlinks its socket file right after the
//! handshake, closes silently). All sockets are non-blocking; waiting is done by calling a
//! `pump` closure (which runs an in-process switch, or just sleeps for a switch process).
#![allow(dead_code)]

use std::io;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ntd::vde::wire::{self, PortRequest};

/// Which libvdeplug the client imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Vde2,
    Vdeplug4,
}

pub struct ClientOptions {
    pub description: String,
    pub port: PortRequest,
    pub flavour: Flavour,
    pub timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            description: format!("harness user=0 pid={}", std::process::id()),
            port: PortRequest::Any,
            flavour: Flavour::Vdeplug4,
            timeout: Duration::from_secs(3),
        }
    }
}

impl ClientOptions {
    pub fn described(description: &str) -> Self {
        ClientOptions {
            description: description.to_string(),
            ..Default::default()
        }
    }
    pub fn port(mut self, port: PortRequest) -> Self {
        self.port = port;
        self
    }
    pub fn flavour(mut self, flavour: Flavour) -> Self {
        self.flavour = flavour;
        self
    }
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// Why a handshake failed.
#[derive(Debug)]
pub enum HandshakeError {
    /// The switch closed the control stream after `got` reply bytes.
    Closed {
        got: usize,
    },
    /// No complete reply within the timeout (the stream is still open: the switch hangs).
    NoReply,
    Io(io::Error),
}

impl From<io::Error> for HandshakeError {
    fn from(e: io::Error) -> Self {
        HandshakeError::Io(e)
    }
}

pub struct VdeClient {
    pub ctl: Option<UnixStream>,
    pub data: Option<UnixDatagram>,
    pub my_path: PathBuf,
    pub switch_path: PathBuf,
    pub reply: Vec<u8>,
    pub request: Vec<u8>,
    flavour: Flavour,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Bind a datagram socket at `DIR/.PPPPP-NNNNN` like libvdeplug (retrying on EADDRINUSE).
pub fn bind_client_socket(dir: &Path) -> io::Result<(UnixDatagram, PathBuf)> {
    let dir = std::fs::canonicalize(dir)?;
    loop {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(".{:05}-{:05}", std::process::id(), n));
        match UnixDatagram::bind(&path) {
            Ok(s) => return Ok((s, path)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(e),
        }
    }
}

impl VdeClient {
    /// Handshake with the switch in `dir`, calling `pump` while waiting for the reply.
    pub fn connect(
        dir: &Path,
        opts: ClientOptions,
        pump: &mut dyn FnMut(),
    ) -> Result<VdeClient, HandshakeError> {
        let (data, my_path) = bind_client_socket(dir)?;
        let request = wire::encode_request(opts.port, &my_path, &opts.description)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let result = Self::handshake(dir, &request, opts.timeout, pump);
        let (ctl, reply) = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_file(&my_path);
                return Err(e);
            }
        };
        let switch_path = wire::decode_sockaddr_un(&reply)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        data.connect(&switch_path)?;
        data.set_nonblocking(true)?;
        if opts.flavour == Flavour::Vdeplug4 {
            std::fs::remove_file(&my_path)?;
        }
        Ok(VdeClient {
            ctl: Some(ctl),
            data: Some(data),
            my_path,
            switch_path,
            reply,
            request,
            flavour: opts.flavour,
        })
    }

    /// Send raw `request` bytes on a fresh control connection and wait for 110 reply bytes.
    pub fn handshake(
        dir: &Path,
        request: &[u8],
        timeout: Duration,
        pump: &mut dyn FnMut(),
    ) -> Result<(UnixStream, Vec<u8>), HandshakeError> {
        let mut ctl = UnixStream::connect(dir.join("ctl"))?;
        use std::io::Write;
        ctl.write_all(request)?; // one send, as libvdeplug does
        ctl.set_nonblocking(true)?;
        let reply = read_reply(&mut ctl, timeout, pump)?;
        Ok((ctl, reply))
    }

    pub fn data(&self) -> &UnixDatagram {
        self.data.as_ref().expect("data socket closed")
    }

    pub fn send(&self, frame: &[u8]) -> io::Result<usize> {
        self.data().send(frame)
    }

    /// One datagram if one is queued now.
    pub fn try_recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 70_000];
        match self.data().recv(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                Some(buf)
            }
            Err(_) => None,
        }
    }

    /// Wait up to `timeout` for one datagram, pumping meanwhile.
    pub fn recv(&self, timeout: Duration, pump: &mut dyn FnMut()) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(f) = self.try_recv() {
                return Some(f);
            }
            if Instant::now() >= deadline {
                return None;
            }
            pump();
        }
    }

    /// Everything that arrives within `window`.
    pub fn collect(&self, window: Duration, pump: &mut dyn FnMut()) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        while Instant::now() < deadline {
            while let Some(f) = self.try_recv() {
                out.push(f);
            }
            pump();
        }
        while let Some(f) = self.try_recv() {
            out.push(f);
        }
        out
    }

    /// Port number from the reply path (`DIR/NNN.K`).
    pub fn port_number(&self) -> Option<u32> {
        let name = self.switch_path.file_name()?.to_str()?;
        name.split('.').next()?.parse().ok()
    }

    /// Close like the imitated library's `vde_close`.
    pub fn close(mut self) {
        if self.flavour == Flavour::Vde2 {
            if let Some(d) = &self.data {
                let _ = d.send(&[]);
            }
            let _ = std::fs::remove_file(&self.my_path);
        }
        self.data = None;
        self.ctl = None;
    }

    pub fn close_ctl(&mut self) {
        self.ctl = None;
    }

    pub fn close_data(&mut self) {
        self.data = None;
    }
}

impl Drop for VdeClient {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.my_path);
    }
}

fn read_reply(
    ctl: &mut UnixStream,
    timeout: Duration,
    pump: &mut dyn FnMut(),
) -> Result<Vec<u8>, HandshakeError> {
    use std::io::Read;
    let deadline = Instant::now() + timeout;
    let mut reply = Vec::new();
    let mut buf = [0u8; wire::SOCKADDR_UN_LEN];
    while reply.len() < wire::SOCKADDR_UN_LEN {
        match ctl.read(&mut buf[..wire::SOCKADDR_UN_LEN - reply.len()]) {
            Ok(0) => return Err(HandshakeError::Closed { got: reply.len() }),
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(HandshakeError::NoReply);
                }
                pump();
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(HandshakeError::Closed { got: reply.len() })
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(reply)
}

/// What a refused raw request looked like from the client side.
#[derive(Debug, PartialEq, Eq)]
pub enum RawOutcome {
    /// The switch replied (110 bytes).
    Replied,
    /// The switch closed the stream without a complete reply.
    Closed,
    /// Nothing within the timeout; the stream stayed open.
    Hung,
}

/// Send arbitrary bytes as a request and observe what the switch does.
pub fn raw_request(
    dir: &Path,
    bytes: &[u8],
    timeout: Duration,
    pump: &mut dyn FnMut(),
) -> io::Result<RawOutcome> {
    match VdeClient::handshake(dir, bytes, timeout, pump) {
        Ok(_) => Ok(RawOutcome::Replied),
        Err(HandshakeError::Closed { .. }) => Ok(RawOutcome::Closed),
        Err(HandshakeError::NoReply) => Ok(RawOutcome::Hung),
        Err(HandshakeError::Io(e)) if e.kind() == io::ErrorKind::BrokenPipe => {
            Ok(RawOutcome::Closed)
        }
        Err(HandshakeError::Io(e)) => Err(e),
    }
}

// ---- frames ----

pub const BROADCAST: [u8; 6] = [0xff; 6];

pub fn mac(last: u8) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x12, 0x01, last]
}

pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A frame of exactly `len` bytes (len ≥ 14) with a recognisable pattern and a sequence number.
pub fn patterned(len: usize, src: [u8; 6], seq: u32) -> Vec<u8> {
    let mut f = eth(BROADCAST, src, 0x88b5, &[]);
    f.extend_from_slice(&seq.to_be_bytes());
    let mut i = 0u8;
    while f.len() < len {
        f.push(i);
        i = i.wrapping_add(7);
    }
    f.truncate(len);
    f
}

/// An 802.1Q-tagged broadcast (VLAN `vid`) carrying an ARP-sized payload.
pub fn tagged(src: [u8; 6], vid: u16) -> Vec<u8> {
    let mut f = BROADCAST.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x81, 0x00]);
    f.extend_from_slice(&vid.to_be_bytes());
    f.extend_from_slice(&[0x08, 0x06]);
    f.extend_from_slice(&[0x54; 46]);
    f
}

/// ARP request "who has `target`, tell `sender_ip`" from `src`.
pub fn arp_request(src: [u8; 6], sender_ip: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
    p.extend_from_slice(&src);
    p.extend_from_slice(&sender_ip);
    p.extend_from_slice(&[0; 6]);
    p.extend_from_slice(&target);
    eth(BROADCAST, src, 0x0806, &p)
}

/// Is `f` an ARP reply to `mac` from `ip`?
pub fn is_arp_reply(f: &[u8], to: [u8; 6], from_ip: [u8; 4]) -> bool {
    f.len() >= 42
        && f[0..6] == to
        && f[12..14] == [0x08, 0x06]
        && f[20..22] == [0, 2]
        && f[28..32] == from_ip
}
