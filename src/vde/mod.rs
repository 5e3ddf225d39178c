//! The in-process VDE-compatible switch: one [`Switch`] per VLAN, speaking the libvdeplug
//! protocol so that unmodified `-netdev vde,sock=DIR` QEMU command lines (and `vde_plug`)
//! connect to it exactly as they would to `vde_switch --hub`.
//!
//! A switch owns its directory (`DIR`, mode 0700), the listening control socket `DIR/ctl`
//! (0600), one control stream and one connected SOCK_DGRAM data socket `DIR/NNN.K` per
//! endpoint, its counters, an optional learning table ([`fdb`]) and an optional pcap capture
//! ([`pcap`]). It plugs into the driver's single `mio::Poll` through tokens of one `owner`
//! (see [`crate::reactor`]) and must never block, sleep, print, spawn threads or panic on
//! anything a client sends; it reports what happened as [`SwitchEvent`]s for the driver to log.
//!
//! Forwarding: every datagram of at least 14 bytes is one Ethernet frame and is forwarded
//! byte for byte (no truncation to 1518, no tag handling, no padding), in hub mode to every
//! endpoint whose port is neither the ingress port nor the management port 0. Frames are read
//! in batches of up to [`FRAMES_PER_WAKEUP`] with one `recvmmsg` into reusable buffers (64 ×
//! 64 KiB, touched only as far as frames reach) and sent to each target with one `sendmmsg`;
//! a receiver that cannot keep up loses frames (counted), it never slows the loop. Nothing is
//! allocated per frame. Because mio is edge-triggered, a socket that still has data after a
//! batch is remembered and [`Switch::next_deadline`] asks the driver to come back immediately.
//!
//! Driver integration, in order: [`Switch::create`] before spawning any QEMU (QEMU aborts if
//! `ctl` is not listening) and export `QEMU_VDE_SOCKET_<vlan>` = [`Switch::dir`]; route every
//! event whose token owner is the switch's to [`Switch::handle_event`]; bound the poll timeout
//! by [`Switch::next_deadline`] and call [`Switch::on_timer`] once it has passed; log what
//! [`Switch::drain_events`] yields; call [`Switch::shutdown`] only after every QEMU attached
//! to it has exited (QEMU never reconnects to a switch).

pub mod fdb;
pub mod pcap;
mod recv_batch;
pub mod standalone;
pub mod wire;

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::{self, IoSlice};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use mio::event::Event;
use mio::net::{UnixDatagram, UnixListener, UnixStream};
use mio::{Interest, Registry};
use rustix::fs::Mode;
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, MMsgHdr, RecvFlags, SendAncillaryBuffer, SendFlags, SocketAddrUnix, SocketFlags,
    SocketType,
};
use smallvec::SmallVec;

use crate::reactor;
use fdb::{Destination, Fdb};
use pcap::PcapWriter;
use recv_batch::RecvBatch;
use wire::{Assembly, PortRequest, Request, RequestBuffer, WireError, SUN_PATH_LEN};

/// vde_switch's default `-n 32`: ports 0..31, port 0 being the management port.
pub const DEFAULT_MAX_PORTS: u32 = 32;
/// Upper bound for [`SwitchConfig::max_ports`] (keeps `NNN` at three digits).
pub const MAX_PORTS_LIMIT: u32 = 1000;
/// How long a client may take to send its request before it is disconnected.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Control connections that have not finished their request, at most.
pub const MAX_PENDING: usize = 64;
/// Endpoints (connected clients) per switch, at most.
pub const MAX_ENDPOINTS: usize = 1024;
/// Shortest datagram forwarded: destination, source, EtherType.
pub const MIN_FRAME: usize = 14;
/// Longest datagram forwarded; longer ones are dropped and counted as oversize.
pub const MAX_FRAME: usize = 65536;
/// Frames read from one data socket before other sockets get their turn.
pub const FRAMES_PER_WAKEUP: usize = 64;
/// SO_SNDBUF asked for on switch-side data sockets (queue towards a slow receiver).
pub const DEFAULT_SEND_BUFFER: usize = 1 << 20;
/// Longest switch directory path: `DIR/NNN.KKKKKKKKKK` must fit in `sun_path`, and so must the
/// client's `DIR/.PPPPP-NNNNN`.
pub const MAX_DIR_LEN: usize = SUN_PATH_LEN - 1 - 1 - MAX_DATA_NAME_LEN;
/// `NNN.` plus a u32 counter.
const MAX_DATA_NAME_LEN: usize = 4 + 10;
/// Buffered pcap records are written out at least this often.
pub const CAPTURE_FLUSH_INTERVAL: Duration = Duration::from_millis(500);
const ACCEPTS_PER_WAKEUP: usize = 64;
const CTL_READS_PER_WAKEUP: usize = 16;
const EVENT_QUEUE_CAP: usize = 512;

const KIND_LISTENER: usize = 0;
const KIND_PENDING: usize = 1;
const KIND_CTL: usize = 2;
const KIND_DATA: usize = 3;
const KIND_BITS: usize = 2;

fn slot(index: usize, kind: usize) -> usize {
    (index << KIND_BITS) | kind
}

/// How one switch behaves.
#[derive(Debug, Clone)]
pub struct SwitchConfig {
    /// Hub (flood everything, what NixOS runs) or learning bridge.
    pub hub: bool,
    /// Start a pcap capture of every forwarded frame into this file.
    pub capture: Option<PathBuf>,
    /// Port numbers 0..max_ports-1 exist (vde_switch `-n`), clamped to 2..=1000.
    pub max_ports: u32,
    /// Disconnect clients that have not sent a complete request after this long.
    pub request_timeout: Duration,
    /// SO_SNDBUF for switch-side data sockets (SO_SNDBUFFORCE when permitted); `None` keeps
    /// the kernel default.
    pub send_buffer: Option<usize>,
    /// Learning mode: expiry of learned addresses.
    pub fdb_max_age: Duration,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            hub: true,
            capture: None,
            max_ports: DEFAULT_MAX_PORTS,
            request_timeout: REQUEST_TIMEOUT,
            send_buffer: Some(DEFAULT_SEND_BUFFER),
            fdb_max_age: fdb::DEFAULT_MAX_AGE,
        }
    }
}

/// Everything that can go wrong in a switch: set-up failures returned by [`Switch::create`]
/// and [`Switch::start_capture`], and the reasons a client was refused (reported as
/// [`SwitchEvent::Rejected`]).
#[derive(Debug)]
pub enum VdeError {
    DirTooLong {
        path: PathBuf,
        len: usize,
        max: usize,
    },
    CreateDir {
        path: PathBuf,
        source: io::Error,
    },
    NotADirectory {
        path: PathBuf,
    },
    AlreadyRunning {
        ctl: PathBuf,
    },
    Listen {
        path: PathBuf,
        source: io::Error,
    },
    Register {
        source: io::Error,
    },
    Capture {
        path: PathBuf,
        source: io::Error,
    },
    Accept {
        source: io::Error,
    },
    Request(WireError),
    RequestTooLong {
        got: usize,
    },
    RequestTimeout {
        after: Duration,
        got: usize,
    },
    ClosedEarly {
        got: usize,
    },
    ReadRequest {
        source: io::Error,
    },
    PortOutOfRange {
        port: u32,
        max: u32,
    },
    NoFreePort {
        max: u32,
    },
    TooManyPending {
        max: usize,
    },
    TooManyEndpoints {
        max: usize,
    },
    ClientSocket {
        path: PathBuf,
        source: io::Error,
    },
    DataSocket {
        path: PathBuf,
        source: io::Error,
    },
    Reply {
        source: io::Error,
    },
    RemoveDir {
        path: PathBuf,
        source: io::Error,
    },
}

impl fmt::Display for VdeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use VdeError::*;
        match self {
            DirTooLong { path, len, max } => write!(
                f,
                "switch directory {} is {len} bytes long, at most {max} fit in the 108-byte \
                 sun_path of its sockets; use a shorter directory (e.g. under /tmp)",
                path.display()
            ),
            CreateDir { path, source } => {
                write!(
                    f,
                    "cannot create switch directory {}: {source}",
                    path.display()
                )
            }
            NotADirectory { path } => {
                write!(
                    f,
                    "{} exists and is not a directory; remove it or pick another path",
                    path.display()
                )
            }
            AlreadyRunning { ctl } => write!(
                f,
                "another switch is answering on {}; stop it or use another directory",
                ctl.display()
            ),
            Listen { path, source } => write!(f, "cannot listen on {}: {source}", path.display()),
            Register { source } => write!(
                f,
                "cannot register a switch socket with the poller: {source}"
            ),
            Capture { path, source } => {
                write!(f, "packet capture to {} failed: {source}", path.display())
            }
            Accept { source } => write!(f, "accepting a control connection failed: {source}"),
            Request(e) => write!(f, "invalid request: {e}"),
            RequestTooLong { got } => {
                write!(
                    f,
                    "request longer than {} bytes (got {got}); not a libvdeplug client",
                    wire::MAX_REQUEST
                )
            }
            RequestTimeout { after, got } => write!(
                f,
                "client sent only {got} of at least {} request bytes in {after:?}; disconnected",
                wire::HEADER_LEN
            ),
            ClosedEarly { got } => write!(
                f,
                "client closed after {got} bytes, before a complete request"
            ),
            ReadRequest { source } => write!(f, "reading the request failed: {source}"),
            PortOutOfRange { port, max } => write!(
                f,
                "client asked for port {port} but this switch has ports 1..={max} \
                 (vde_switch would leave the client hanging; ntd closes the connection)"
            ),
            NoFreePort { max } => write!(f, "all ports 1..={max} are in use"),
            TooManyPending { max } => write!(
                f,
                "more than {max} clients are mid-handshake; connection closed"
            ),
            TooManyEndpoints { max } => {
                write!(f, "switch already has {max} endpoints; connection closed")
            }
            ClientSocket { path, source } => write!(
                f,
                "cannot connect to the client's data socket {}: {source} (client gone, or path not \
                 reachable from the switch)",
                path.display()
            ),
            DataSocket { path, source } => {
                write!(
                    f,
                    "cannot create the switch data socket {}: {source}",
                    path.display()
                )
            }
            Reply { source } => write!(f, "cannot send the reply to the client: {source}"),
            RemoveDir { path, source } => write!(
                f,
                "switch directory {} not removed: {source} (files left by clients?)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for VdeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        use VdeError::*;
        match self {
            CreateDir { source, .. }
            | Listen { source, .. }
            | Register { source }
            | Capture { source, .. }
            | Accept { source }
            | ReadRequest { source }
            | ClientSocket { source, .. }
            | DataSocket { source, .. }
            | Reply { source }
            | RemoveDir { source, .. } => Some(source),
            Request(e) => Some(e),
            _ => None,
        }
    }
}

/// Frames that were not delivered, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drops {
    /// Ingress: datagrams shorter than 14 bytes (incl. vde2's zero-length close marker).
    pub runt: u64,
    /// Ingress: datagrams longer than [`MAX_FRAME`].
    pub oversize: u64,
    /// Ingress: receive errors (a socket error reported by recv).
    pub recv_error: u64,
    /// Ingress, learning mode: destination sits on the ingress port.
    pub filtered: u64,
    /// Egress: the receiver's queue was full (EAGAIN).
    pub receiver_full: u64,
    /// Egress: the receiver's socket is gone (ECONNREFUSED, ENOTCONN).
    pub receiver_gone: u64,
    /// Egress: any other send error.
    pub send_error: u64,
}

impl Drops {
    pub fn total(&self) -> u64 {
        self.runt
            + self.oversize
            + self.recv_error
            + self.filtered
            + self.receiver_full
            + self.receiver_gone
            + self.send_error
    }

    fn add(&mut self, o: &Drops) {
        self.runt += o.runt;
        self.oversize += o.oversize;
        self.recv_error += o.recv_error;
        self.filtered += o.filtered;
        self.receiver_full += o.receiver_full;
        self.receiver_gone += o.receiver_gone;
        self.send_error += o.send_error;
    }
}

impl fmt::Display for Drops {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "runt={} oversize={} recv_error={} filtered={} receiver_full={} receiver_gone={} send_error={}",
            self.runt,
            self.oversize,
            self.recv_error,
            self.filtered,
            self.receiver_full,
            self.receiver_gone,
            self.send_error
        )
    }
}

/// Traffic counters of one endpoint (in = from the client, out = to the client).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortCounters {
    pub frames_in: u64,
    pub bytes_in: u64,
    pub frames_out: u64,
    pub bytes_out: u64,
    pub drops: Drops,
}

impl PortCounters {
    fn add(&mut self, o: &PortCounters) {
        self.frames_in += o.frames_in;
        self.bytes_in += o.bytes_in;
        self.frames_out += o.frames_out;
        self.bytes_out += o.bytes_out;
        self.drops.add(&o.drops);
    }
}

/// Switch-wide counters (live endpoints plus every endpoint that has closed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SwitchStats {
    pub vlan: u32,
    /// Endpoints connected now.
    pub ports: usize,
    pub frames_in: u64,
    pub bytes_in: u64,
    /// Frame copies delivered (one ingress frame flooded to 3 ports counts 3).
    pub frames_out: u64,
    pub bytes_out: u64,
    pub drops: Drops,
    pub requests_accepted: u64,
    pub requests_rejected: u64,
    pub ports_closed: u64,
    pub captured_frames: u64,
    /// Receive batches that carried at least one datagram (frames_in / batches = batching).
    pub batches: u64,
    /// Events discarded because the driver did not drain them.
    pub events_lost: u64,
}

impl fmt::Display for SwitchStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "vlan={} ports={} frames_in={} bytes_in={} frames_out={} bytes_out={} batches={} \
             accepted={} rejected={} closed={} captured={} drops: {}",
            self.vlan,
            self.ports,
            self.frames_in,
            self.bytes_in,
            self.frames_out,
            self.bytes_out,
            self.batches,
            self.requests_accepted,
            self.requests_rejected,
            self.ports_closed,
            self.captured_frames,
            self.drops
        )
    }
}

/// One connected endpoint, as reported by [`Switch::ports`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    /// Port number (several endpoints may share one, like vde_switch).
    pub port: u32,
    /// The `K` of `NNN.K`: unique per endpoint for the life of the switch.
    pub endpoint: u32,
    /// What the client sent, e.g. `QEMU user=root pid=1234`.
    pub description: String,
    /// The switch-side data socket `DIR/NNN.K`.
    pub data_path: PathBuf,
    /// The client's data socket path (may already be unlinked by the client).
    pub client_path: PathBuf,
    pub counters: PortCounters,
}

/// Why an endpoint was closed.
#[derive(Debug)]
pub enum CloseReason {
    /// EOF on the control stream (the client exited or called vde_close).
    ControlClosed,
    /// The control stream failed.
    ControlError(io::Error),
    /// The switch is shutting down.
    Shutdown,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::ControlClosed => write!(f, "control stream closed"),
            CloseReason::ControlError(e) => write!(f, "control stream error: {e}"),
            CloseReason::Shutdown => write!(f, "switch shut down"),
        }
    }
}

/// Something the driver should log.
#[derive(Debug)]
pub enum SwitchEvent {
    PortOpened {
        vlan: u32,
        port: u32,
        endpoint: u32,
        description: String,
    },
    PortClosed {
        vlan: u32,
        port: u32,
        endpoint: u32,
        description: String,
        reason: CloseReason,
        counters: PortCounters,
    },
    /// A client was refused and its connection closed.
    Rejected { vlan: u32, reason: VdeError },
    /// A failure of the switch itself (capture, accept, poller); the switch keeps running.
    Error { vlan: u32, error: VdeError },
}

impl fmt::Display for SwitchEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SwitchEvent::PortOpened { vlan, port, endpoint, description } => {
                write!(f, "vde vlan {vlan}: port {port} opened (endpoint {endpoint}, \"{description}\")")
            }
            SwitchEvent::PortClosed { vlan, port, endpoint, description, reason, counters } => write!(
                f,
                "vde vlan {vlan}: port {port} closed (endpoint {endpoint}, \"{description}\"): {reason}; \
                 in {} frames / {} bytes, out {} frames / {} bytes, dropped {}",
                counters.frames_in,
                counters.bytes_in,
                counters.frames_out,
                counters.bytes_out,
                counters.drops.total()
            ),
            SwitchEvent::Rejected { vlan, reason } => write!(f, "vde vlan {vlan}: client refused: {reason}"),
            SwitchEvent::Error { vlan, error } => write!(f, "vde vlan {vlan}: {error}"),
        }
    }
}

/// Whether a socket was read until it would block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    Drained,
    More,
}

struct Pending {
    stream: UnixStream,
    request: RequestBuffer,
    deadline: Instant,
}

struct Endpoint {
    port: u32,
    id: u32,
    ctl: UnixStream,
    data: UnixDatagram,
    path: PathBuf,
    client_path: PathBuf,
    description: String,
    counters: PortCounters,
}

/// What [`Switch::connect_endpoint`] built, before the endpoint is stored.
struct NewEndpoint {
    index: usize,
    port: u32,
    id: u32,
    data: UnixDatagram,
    path: PathBuf,
}

struct Capture {
    path: PathBuf,
    writer: PcapWriter<File>,
    flush_due: Option<Instant>,
}

/// One VDE-compatible switch (one VLAN). See the module documentation.
pub struct Switch {
    vlan: u32,
    owner: usize,
    dir: PathBuf,
    ctl_path: PathBuf,
    max_ports: u32,
    request_timeout: Duration,
    send_buffer: Option<usize>,
    listener: Option<UnixListener>,
    pending: Vec<Option<Pending>>,
    endpoints: Vec<Option<Endpoint>>,
    /// Indices of live endpoints in connection order (flooding iterates this).
    active: Vec<usize>,
    next_id: u32,
    /// Slots that stopped at the per-wake-up cap and must be serviced again.
    backlog: SmallVec<[usize; 8]>,
    backlog_since: Option<Instant>,
    rx: RecvBatch,
    fdb: Option<Fdb>,
    capture: Option<Capture>,
    closed_totals: PortCounters,
    requests_accepted: u64,
    requests_rejected: u64,
    ports_closed: u64,
    captured_frames: u64,
    batches: u64,
    events: VecDeque<SwitchEvent>,
    events_lost: u64,
    cleaned_up: bool,
}

fn io_err(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

fn check_dir_len(path: &Path) -> Result<(), VdeError> {
    let len = path.as_os_str().as_bytes().len();
    if len > MAX_DIR_LEN {
        return Err(VdeError::DirTooLong {
            path: path.to_path_buf(),
            len,
            max: MAX_DIR_LEN,
        });
    }
    Ok(())
}

impl Switch {
    /// Create `dir` (mode 0700, reused if it exists, a stale `ctl` replaced), bind and listen
    /// on `dir/ctl` (mode 0600) and register it with `registry` under tokens of `owner`.
    pub fn create(
        vlan: u32,
        dir: &Path,
        owner: usize,
        registry: &Registry,
        cfg: SwitchConfig,
    ) -> Result<Switch, VdeError> {
        let abs = if dir.is_absolute() {
            dir.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|source| VdeError::CreateDir {
                    path: dir.to_path_buf(),
                    source,
                })?
                .join(dir)
        };
        check_dir_len(&abs)?;
        match rustix::fs::mkdir(&abs, Mode::from_raw_mode(0o700)) {
            Ok(()) => {}
            Err(Errno::EXIST) if abs.is_dir() => {}
            Err(Errno::EXIST) => return Err(VdeError::NotADirectory { path: abs }),
            Err(e) => {
                return Err(VdeError::CreateDir {
                    path: abs,
                    source: io_err(e),
                })
            }
        }
        rustix::fs::chmod(&abs, Mode::from_raw_mode(0o700)).map_err(|e| VdeError::CreateDir {
            path: abs.clone(),
            source: io_err(e),
        })?;
        // Clients realpath() the directory; use the same spelling in our replies.
        let dir = std::fs::canonicalize(&abs)
            .map_err(|source| VdeError::CreateDir { path: abs, source })?;
        check_dir_len(&dir)?;

        let ctl_path = dir.join("ctl");
        if std::fs::symlink_metadata(&ctl_path).is_ok() {
            if std::os::unix::net::UnixStream::connect(&ctl_path).is_ok() {
                return Err(VdeError::AlreadyRunning { ctl: ctl_path });
            }
            std::fs::remove_file(&ctl_path).map_err(|source| VdeError::Listen {
                path: ctl_path.clone(),
                source,
            })?;
        }
        let listener = UnixListener::bind(&ctl_path).map_err(|source| VdeError::Listen {
            path: ctl_path.clone(),
            source,
        })?;
        let max_ports = cfg.max_ports.clamp(2, MAX_PORTS_LIMIT);
        // From here on, dropping `sw` removes what was created.
        let mut sw = Switch {
            vlan,
            owner,
            dir,
            ctl_path,
            max_ports,
            request_timeout: cfg.request_timeout,
            send_buffer: cfg.send_buffer,
            listener: Some(listener),
            pending: Vec::new(),
            endpoints: Vec::new(),
            active: Vec::new(),
            next_id: 1,
            backlog: SmallVec::new(),
            backlog_since: None,
            rx: RecvBatch::new(FRAMES_PER_WAKEUP, MAX_FRAME),
            fdb: (!cfg.hub).then(|| Fdb::new(fdb::DEFAULT_CAPACITY, cfg.fdb_max_age)),
            capture: None,
            closed_totals: PortCounters::default(),
            requests_accepted: 0,
            requests_rejected: 0,
            ports_closed: 0,
            captured_frames: 0,
            batches: 0,
            events: VecDeque::new(),
            events_lost: 0,
            cleaned_up: false,
        };
        rustix::fs::chmod(&sw.ctl_path, Mode::from_raw_mode(0o600)).map_err(|e| {
            VdeError::Listen {
                path: sw.ctl_path.clone(),
                source: io_err(e),
            }
        })?;
        let token = reactor::token(owner, slot(0, KIND_LISTENER));
        if let Some(l) = sw.listener.as_mut() {
            registry
                .register(l, token, Interest::READABLE)
                .map_err(|source| VdeError::Register { source })?;
        }
        if let Some(path) = cfg.capture {
            sw.start_capture(&path)?;
        }
        Ok(sw)
    }

    /// The VLAN number given at creation.
    pub fn vlan(&self) -> u32 {
        self.vlan
    }

    /// The switch directory (absolute, canonical): what `QEMU_VDE_SOCKET_<vlan>` must name.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `DIR/ctl`.
    pub fn ctl_path(&self) -> &Path {
        &self.ctl_path
    }

    /// Handle one readiness event for a token of this switch's owner.
    pub fn handle_event(&mut self, registry: &Registry, slot: usize, _event: &Event) {
        self.service(registry, slot);
    }

    /// Earliest instant at which [`Switch::on_timer`] must run: request timeouts, capture
    /// flushes, and sockets left unfinished by the per-wake-up cap (then the instant is already
    /// past, meaning "poll with a zero timeout and call on_timer").
    pub fn next_deadline(&self) -> Option<Instant> {
        let pending = self.pending.iter().flatten().map(|p| p.deadline).min();
        let flush = self.capture.as_ref().and_then(|c| c.flush_due);
        [self.backlog_since, pending, flush]
            .into_iter()
            .flatten()
            .min()
    }

    /// Run timers due at `now`: disconnect clients whose request timed out, continue
    /// sockets that hit the per-wake-up cap, flush the capture.
    pub fn on_timer(&mut self, registry: &Registry, now: Instant) {
        for index in 0..self.pending.len() {
            if let Some(p) = &self.pending[index] {
                if p.deadline <= now {
                    let got = p.request.len();
                    let after = self.request_timeout;
                    self.drop_pending(registry, index, VdeError::RequestTimeout { after, got });
                }
            }
        }
        if self.backlog_since.is_some_and(|t| t <= now) {
            let slots = std::mem::take(&mut self.backlog);
            self.backlog_since = None;
            for s in slots {
                self.service(registry, s);
            }
        }
        let flush_due = self
            .capture
            .as_ref()
            .and_then(|c| c.flush_due)
            .is_some_and(|t| t <= now);
        if flush_due {
            self.flush_capture();
        }
    }

    /// Counters of the whole switch.
    pub fn stats(&self) -> SwitchStats {
        let mut sum = self.closed_totals;
        for ep in self.endpoints.iter().flatten() {
            sum.add(&ep.counters);
        }
        SwitchStats {
            vlan: self.vlan,
            ports: self.active.len(),
            frames_in: sum.frames_in,
            bytes_in: sum.bytes_in,
            frames_out: sum.frames_out,
            bytes_out: sum.bytes_out,
            drops: sum.drops,
            requests_accepted: self.requests_accepted,
            requests_rejected: self.requests_rejected,
            ports_closed: self.ports_closed,
            captured_frames: self.captured_frames,
            batches: self.batches,
            events_lost: self.events_lost,
        }
    }

    /// The connected endpoints in connection order.
    pub fn ports(&self) -> Vec<PortInfo> {
        self.active
            .iter()
            .filter_map(|&i| self.endpoints[i].as_ref())
            .map(|ep| PortInfo {
                port: ep.port,
                endpoint: ep.id,
                description: ep.description.clone(),
                data_path: ep.path.clone(),
                client_path: ep.client_path.clone(),
                counters: ep.counters,
            })
            .collect()
    }

    /// Take the events collected since the last call (oldest first).
    pub fn drain_events(&mut self) -> impl Iterator<Item = SwitchEvent> + '_ {
        self.events.drain(..)
    }

    /// Capture every forwarded frame (once per ingress frame) into a new pcap file at `path`,
    /// replacing a running capture.
    pub fn start_capture(&mut self, path: &Path) -> Result<(), VdeError> {
        self.stop_capture();
        let writer = PcapWriter::create(path).map_err(|source| VdeError::Capture {
            path: path.to_path_buf(),
            source,
        })?;
        self.capture = Some(Capture {
            path: path.to_path_buf(),
            writer,
            flush_due: Some(Instant::now()),
        });
        Ok(())
    }

    /// Flush and close the running capture, if any.
    pub fn stop_capture(&mut self) {
        self.flush_capture();
        self.capture = None;
    }

    /// Deregister, close every socket, unlink `NNN.K` and `ctl`, remove the directory.
    /// Returns the final events (ports closed, cleanup problems) for the driver to log.
    pub fn shutdown(mut self, registry: &Registry) -> Vec<SwitchEvent> {
        for index in 0..self.pending.len() {
            if let Some(mut p) = self.pending[index].take() {
                let _ = registry.deregister(&mut p.stream);
            }
        }
        for index in self.active.clone() {
            self.close_endpoint(registry, index, CloseReason::Shutdown);
        }
        if let Some(mut l) = self.listener.take() {
            let _ = registry.deregister(&mut l);
        }
        self.stop_capture();
        self.cleanup();
        self.events.drain(..).collect()
    }

    fn push_event(&mut self, ev: SwitchEvent) {
        if self.events.len() >= EVENT_QUEUE_CAP {
            self.events.pop_front();
            self.events_lost += 1;
        }
        self.events.push_back(ev);
    }

    fn reject(&mut self, reason: VdeError) {
        self.requests_rejected += 1;
        let vlan = self.vlan;
        self.push_event(SwitchEvent::Rejected { vlan, reason });
    }

    fn error(&mut self, error: VdeError) {
        let vlan = self.vlan;
        self.push_event(SwitchEvent::Error { vlan, error });
    }

    fn service(&mut self, registry: &Registry, slot: usize) {
        let (index, kind) = (slot >> KIND_BITS, slot & ((1 << KIND_BITS) - 1));
        let progress = match kind {
            KIND_LISTENER => self.accept_all(registry),
            KIND_PENDING => {
                self.read_pending(registry, index);
                Progress::Drained
            }
            KIND_CTL => self.read_ctl(registry, index),
            _ => self.forward_from(index),
        };
        if progress == Progress::More && !self.backlog.contains(&slot) {
            self.backlog.push(slot);
            self.backlog_since.get_or_insert_with(Instant::now);
        }
    }

    fn accept_all(&mut self, registry: &Registry) -> Progress {
        for _ in 0..ACCEPTS_PER_WAKEUP {
            let Some(listener) = self.listener.as_ref() else {
                return Progress::Drained;
            };
            match listener.accept() {
                Ok((stream, _)) => self.add_pending(registry, stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    // E.g. EMFILE: the connection stays queued; report and retry on the next
                    // wake-up instead of spinning.
                    self.error(VdeError::Accept { source });
                    return Progress::Drained;
                }
            }
        }
        Progress::More
    }

    fn add_pending(&mut self, registry: &Registry, mut stream: UnixStream) {
        let live = self.pending.iter().flatten().count();
        if live >= MAX_PENDING {
            self.reject(VdeError::TooManyPending { max: MAX_PENDING });
            return;
        }
        let index = match self.pending.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.pending.push(None);
                self.pending.len() - 1
            }
        };
        let token = reactor::token(self.owner, slot(index, KIND_PENDING));
        if let Err(source) = registry.register(&mut stream, token, Interest::READABLE) {
            self.error(VdeError::Register { source });
            return;
        }
        let deadline = Instant::now() + self.request_timeout;
        self.pending[index] = Some(Pending {
            stream,
            request: RequestBuffer::new(),
            deadline,
        });
    }

    fn drop_pending(&mut self, registry: &Registry, index: usize, reason: VdeError) {
        if let Some(mut p) = self.pending.get_mut(index).and_then(Option::take) {
            let _ = registry.deregister(&mut p.stream);
            self.reject(reason);
        }
    }

    /// Read what a mid-handshake client sent; once the header is complete, answer it.
    fn read_pending(&mut self, registry: &Registry, index: usize) {
        let Some(p) = self.pending.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        let mut eof = false;
        let mut failure = None;
        loop {
            let spare = p.request.spare();
            if spare.is_empty() {
                break; // overflowed; decided below
            }
            match rustix::net::recv(&p.stream, spare, RecvFlags::DONTWAIT) {
                Ok((_, 0)) => {
                    eof = true;
                    break;
                }
                Ok((_, n)) => p.request.advance(n),
                Err(Errno::AGAIN) => break,
                Err(Errno::INTR) => {}
                Err(e) => {
                    failure = Some(io_err(e));
                    break;
                }
            }
        }
        let got = p.request.len();
        match p.request.state() {
            Assembly::Overflow => {
                self.drop_pending(registry, index, VdeError::RequestTooLong { got })
            }
            Assembly::NeedMore => {
                if let Some(source) = failure {
                    self.drop_pending(registry, index, VdeError::ReadRequest { source });
                } else if eof {
                    self.drop_pending(registry, index, VdeError::ClosedEarly { got });
                }
            }
            Assembly::Ready => {
                let parsed = p.request.parse();
                let Some(p) = self.pending[index].take() else {
                    return;
                };
                let result = match parsed {
                    Ok(request) => self.open_endpoint(registry, p.stream, request),
                    Err(e) => {
                        let mut stream = p.stream;
                        let _ = registry.deregister(&mut stream);
                        Err(VdeError::Request(e))
                    }
                };
                match result {
                    Ok(()) => self.requests_accepted += 1,
                    Err(reason) => self.reject(reason),
                }
            }
        }
    }

    fn port_in_use(&self, port: u32) -> bool {
        self.active
            .iter()
            .filter_map(|&i| self.endpoints[i].as_ref())
            .any(|ep| ep.port == port)
    }

    fn choose_port(&self, want: PortRequest) -> Result<u32, VdeError> {
        let max = self.max_ports - 1;
        match want {
            PortRequest::Management => Ok(0),
            PortRequest::Explicit(p) if p > max => Err(VdeError::PortOutOfRange { port: p, max }),
            PortRequest::Explicit(p) => Ok(p),
            PortRequest::Any => (1..=max)
                .find(|&p| !self.port_in_use(p))
                .ok_or(VdeError::NoFreePort { max }),
        }
    }

    /// Create the endpoint for an accepted request and reply; on failure the control stream
    /// is deregistered and closed (the client sees EOF instead of a reply).
    fn open_endpoint(
        &mut self,
        registry: &Registry,
        mut stream: UnixStream,
        req: Request,
    ) -> Result<(), VdeError> {
        let description = req.description.clone();
        let client_path = req.data_path.clone();
        let new = match self.connect_endpoint(registry, &mut stream, req) {
            Ok(new) => new,
            Err(e) => {
                let _ = registry.deregister(&mut stream);
                return Err(e);
            }
        };
        let vlan = self.vlan;
        let (port, endpoint) = (new.port, new.id);
        self.push_event(SwitchEvent::PortOpened {
            vlan,
            port,
            endpoint,
            description: description.clone(),
        });
        self.endpoints[new.index] = Some(Endpoint {
            port: new.port,
            id: new.id,
            ctl: stream,
            data: new.data,
            path: new.path,
            client_path,
            description,
            counters: PortCounters::default(),
        });
        self.active.push(new.index);
        Ok(())
    }

    /// The handshake proper: choose the port, connect to the client's data socket, bind
    /// `NNN.K`, reply, and register both sockets under the endpoint's tokens.
    fn connect_endpoint(
        &mut self,
        registry: &Registry,
        stream: &mut UnixStream,
        req: Request,
    ) -> Result<NewEndpoint, VdeError> {
        if self.active.len() >= MAX_ENDPOINTS {
            return Err(VdeError::TooManyEndpoints { max: MAX_ENDPOINTS });
        }
        let port = self.choose_port(req.port)?;
        let client_err = |e: Errno| VdeError::ClientSocket {
            path: req.data_path.clone(),
            source: io_err(e),
        };
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| VdeError::DataSocket {
            path: self.dir.clone(),
            source: io_err(e),
        })?;
        // Connect before replying: vdeplug4 unlinks its socket file right after the reply.
        let client_addr = SocketAddrUnix::new(req.data_path.as_path()).map_err(client_err)?;
        rustix::net::connect(&fd, &client_addr).map_err(client_err)?;

        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        let path = self.dir.join(format!("{port:03}.{id}"));
        let data_err = |e: Errno| VdeError::DataSocket {
            path: path.clone(),
            source: io_err(e),
        };
        let _ = std::fs::remove_file(&path); // a stale file from a crashed switch
        let addr = SocketAddrUnix::new(path.as_path()).map_err(data_err)?;
        rustix::net::bind(&fd, &addr).map_err(data_err)?;
        let unlink_on_error = |e: VdeError| {
            let _ = std::fs::remove_file(&path);
            e
        };
        rustix::fs::chmod(&path, Mode::from_raw_mode(0o600))
            .map_err(|e| unlink_on_error(data_err(e)))?;
        if let Some(n) = self.send_buffer {
            // Best effort: FORCE needs CAP_NET_ADMIN, the plain call is capped by wmem_max.
            if rustix::net::sockopt::set_socket_send_buffer_size_force(&fd, n).is_err() {
                let _ = rustix::net::sockopt::set_socket_send_buffer_size(&fd, n);
            }
        }

        let reply =
            wire::encode_sockaddr_un(&path).map_err(|e| unlink_on_error(VdeError::Request(e)))?;
        match rustix::net::send(&*stream, &reply, SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
            Ok(n) if n == reply.len() => {}
            Ok(n) => {
                let source = io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("short write of {n} bytes"),
                );
                return Err(unlink_on_error(VdeError::Reply { source }));
            }
            Err(e) => return Err(unlink_on_error(VdeError::Reply { source: io_err(e) })),
        }

        let index = match self.endpoints.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.endpoints.push(None);
                self.endpoints.len() - 1
            }
        };
        let mut data = UnixDatagram::from_std(std::os::unix::net::UnixDatagram::from(fd));
        let ctl_token = reactor::token(self.owner, slot(index, KIND_CTL));
        let data_token = reactor::token(self.owner, slot(index, KIND_DATA));
        let registered = registry
            .reregister(stream, ctl_token, Interest::READABLE)
            .and_then(|()| registry.register(&mut data, data_token, Interest::READABLE));
        if let Err(source) = registered {
            let _ = registry.deregister(&mut data);
            return Err(unlink_on_error(VdeError::Register { source }));
        }
        Ok(NewEndpoint {
            index,
            port,
            id,
            data,
            path,
        })
    }

    fn read_ctl(&mut self, registry: &Registry, index: usize) -> Progress {
        let Some(ep) = self.endpoints.get(index).and_then(Option::as_ref) else {
            return Progress::Drained;
        };
        let mut scratch = [0u8; 256];
        for _ in 0..CTL_READS_PER_WAKEUP {
            match rustix::net::recv(&ep.ctl, &mut scratch[..], RecvFlags::DONTWAIT) {
                Ok((_, 0)) => {
                    self.close_endpoint(registry, index, CloseReason::ControlClosed);
                    return Progress::Drained;
                }
                Ok(_) => {} // clients never write after the request; ignore
                Err(Errno::AGAIN) => return Progress::Drained,
                Err(Errno::INTR) => {}
                Err(e) => {
                    self.close_endpoint(registry, index, CloseReason::ControlError(io_err(e)));
                    return Progress::Drained;
                }
            }
        }
        Progress::More
    }

    fn close_endpoint(&mut self, registry: &Registry, index: usize, reason: CloseReason) {
        let Some(mut ep) = self.endpoints.get_mut(index).and_then(Option::take) else {
            return;
        };
        let _ = registry.deregister(&mut ep.ctl);
        let _ = registry.deregister(&mut ep.data);
        let _ = std::fs::remove_file(&ep.path);
        self.active.retain(|&i| i != index);
        self.backlog.retain(|s| {
            let (i, k) = (*s >> KIND_BITS, *s & ((1 << KIND_BITS) - 1));
            !(i == index && (k == KIND_CTL || k == KIND_DATA))
        });
        if let Some(fdb) = self.fdb.as_mut() {
            fdb.forget_port(ep.port);
        }
        self.closed_totals.add(&ep.counters);
        self.ports_closed += 1;
        let vlan = self.vlan;
        self.push_event(SwitchEvent::PortClosed {
            vlan,
            port: ep.port,
            endpoint: ep.id,
            description: ep.description,
            reason,
            counters: ep.counters,
        });
    }

    /// The hot path: read a batch of frames from endpoint `index` and forward them.
    fn forward_from(&mut self, index: usize) -> Progress {
        let Switch {
            endpoints,
            active,
            rx,
            fdb,
            capture,
            captured_frames,
            batches,
            ..
        } = self;
        let Some(src) = endpoints.get_mut(index).and_then(Option::as_mut) else {
            return Progress::Drained;
        };
        let src_port = src.port;

        // Phase 1: receive up to a batch with one recvmmsg. A pending socket error (e.g. after
        // the client's socket vanished) is reported once and cleared: count it, try again.
        let mut received = 0;
        for _ in 0..3 {
            match rx.recv(src.data.as_fd(), FRAMES_PER_WAKEUP) {
                Ok(n) => {
                    received = n;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => src.counters.drops.recv_error += 1,
            }
        }
        // A short batch means the queue is empty: the edge-triggered poller will wake us again.
        if received > 0 {
            *batches += 1;
        }
        let progress = if received < FRAMES_PER_WAKEUP {
            Progress::Drained
        } else {
            Progress::More
        };
        let rx: &RecvBatch = rx;
        let mut frames: SmallVec<[&[u8]; FRAMES_PER_WAKEUP]> = SmallVec::new();
        for i in 0..received {
            let len = rx.len(i);
            if rx.truncated(i) || len > MAX_FRAME {
                src.counters.drops.oversize += 1;
            } else if len < MIN_FRAME {
                src.counters.drops.runt += 1;
            } else {
                src.counters.frames_in += 1;
                src.counters.bytes_in += len as u64;
                frames.push(rx.frame(i));
            }
        }
        if frames.is_empty() {
            return progress;
        }
        let count = frames.len();

        // Phase 2: capture, route, send.
        let mut capture_error = None;
        if let Some(cap) = capture.as_mut() {
            let at = SystemTime::now();
            for frame in &frames {
                if let Err(e) = cap.writer.write_frame(at, frame) {
                    capture_error = Some(e);
                    break;
                }
                *captured_frames += 1;
            }
            cap.flush_due
                .get_or_insert_with(|| Instant::now() + CAPTURE_FLUSH_INTERVAL);
        }

        let mut dests = [Destination::Flood; FRAMES_PER_WAKEUP];
        let dests = &mut dests[..count];
        if let Some(fdb) = fdb.as_mut() {
            let now = Instant::now();
            for (d, frame) in dests.iter_mut().zip(&frames) {
                *d = fdb.route(frame, src_port, now);
            }
        }

        forward_batch(endpoints, active, index, src_port, &frames, dests);
        drop(frames);

        if let Some(source) = capture_error {
            if let Some(cap) = self.capture.take() {
                self.error(VdeError::Capture {
                    path: cap.path,
                    source,
                });
            }
        }
        progress
    }

    fn flush_capture(&mut self) {
        let Some(cap) = self.capture.as_mut() else {
            return;
        };
        cap.flush_due = None;
        if let Err(source) = cap.writer.flush() {
            if let Some(cap) = self.capture.take() {
                self.error(VdeError::Capture {
                    path: cap.path,
                    source,
                });
            }
        }
    }

    /// Remove our files and the directory (idempotent; also run on drop).
    fn cleanup(&mut self) {
        if self.cleaned_up {
            return;
        }
        self.cleaned_up = true;
        for ep in self.endpoints.iter().flatten() {
            let _ = std::fs::remove_file(&ep.path);
        }
        self.listener = None;
        let _ = std::fs::remove_file(&self.ctl_path);
        if let Err(source) = std::fs::remove_dir(&self.dir) {
            if source.kind() != io::ErrorKind::NotFound {
                let path = self.dir.clone();
                self.error(VdeError::RemoveDir { path, source });
            }
        }
    }
}

/// Send the frames of one batch from endpoint `src`
/// (on `src_port`) to their destinations, one `sendmmsg` per run of equal destination and
/// target endpoint.
fn forward_batch(
    endpoints: &mut [Option<Endpoint>],
    active: &[usize],
    src: usize,
    src_port: u32,
    frames: &[&[u8]],
    dests: &[Destination],
) {
    let count = frames.len();
    let iovs: SmallVec<[[IoSlice<'_>; 1]; FRAMES_PER_WAKEUP]> =
        frames.iter().map(|frame| [IoSlice::new(frame)]).collect();
    let mut controls: SmallVec<[SendAncillaryBuffer<'_, '_, '_>; FRAMES_PER_WAKEUP]> =
        (0..count).map(|_| SendAncillaryBuffer::default()).collect();
    let mut msgs: SmallVec<[MMsgHdr<'_>; FRAMES_PER_WAKEUP]> = iovs
        .iter()
        .zip(controls.iter_mut())
        .map(|(iov, c)| MMsgHdr::new(iov, c))
        .collect();

    let mut start = 0;
    while start < count {
        let dest = dests[start];
        let end = (start..count).find(|&i| dests[i] != dest).unwrap_or(count);
        if dest == Destination::Filter {
            if let Some(ingress) = endpoints[src].as_mut() {
                ingress.counters.drops.filtered += (end - start) as u64;
            }
        } else {
            for &t in active.iter() {
                let Some(ep) = endpoints[t].as_mut() else {
                    continue;
                };
                let wanted = match dest {
                    Destination::Flood => ep.port != src_port && ep.port != 0,
                    Destination::Port(p) => ep.port == p && p != src_port,
                    Destination::Filter => false,
                };
                if wanted {
                    send_batch(ep, &mut msgs[start..end]);
                }
            }
        }
        start = end;
    }
}

/// Send `msgs` to one endpoint with as few `sendmmsg` calls as possible; whatever the kernel
/// refuses is dropped and counted by reason.
fn send_batch(ep: &mut Endpoint, msgs: &mut [MMsgHdr<'_>]) {
    let mut sent = 0;
    let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
    while sent < msgs.len() {
        match rustix::net::sendmmsg(&ep.data, &mut msgs[sent..], flags) {
            Ok(n) if n > 0 => {
                for m in &msgs[sent..sent + n] {
                    ep.counters.bytes_out += m.bytes_sent() as u64;
                }
                ep.counters.frames_out += n as u64;
                sent += n;
            }
            Err(Errno::INTR) => {}
            result => {
                let rest = (msgs.len() - sent) as u64;
                let drops = &mut ep.counters.drops;
                match result {
                    Err(Errno::AGAIN) => drops.receiver_full += rest,
                    Err(Errno::CONNREFUSED) | Err(Errno::NOTCONN) => drops.receiver_gone += rest,
                    _ => drops.send_error += rest,
                }
                return;
            }
        }
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        if let Some(cap) = self.capture.as_mut() {
            let _ = cap.writer.flush();
        }
        self.cleanup();
    }
}
