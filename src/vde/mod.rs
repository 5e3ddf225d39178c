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
//! Network faults ([`impair`], [`faults`]): while a rule or partition is in force, every
//! delivery (frame × receiving endpoint) is decided separately and delayed copies wait in the
//! receiver's bounded [`delay_queue`], released by [`Switch::on_timer`]; without rules the
//! forwarding path above is taken unchanged. Rules name hosts by [`Label`]s that the driver
//! attaches to endpoints ([`Switch::label_endpoint`]), because a rebooted machine reconnects on
//! a new port.
//!
//! Driver integration, in order: [`Switch::create`] before spawning any QEMU (QEMU aborts if
//! `ctl` is not listening) and export `QEMU_VDE_SOCKET_<vlan>` = [`Switch::dir`]; route every
//! event whose token owner is the switch's to [`Switch::handle_event`]; bound the poll timeout
//! by [`Switch::next_deadline`] and call [`Switch::on_timer`] once it has passed; log what
//! [`Switch::drain_events`] yields and label each [`SwitchEvent::PortOpened`] endpoint by its
//! `pid`; apply [`Switch::apply`], [`Switch::partition`], [`Switch::heal`] when the test asks;
//! call [`Switch::shutdown`] only after every QEMU attached to it has exited (QEMU never
//! reconnects to a switch).

pub mod delay_queue;
mod error;
pub mod faults;
pub mod fdb;
mod forward;
mod handshake;
pub mod impair;
mod impaired;
pub mod pcap;
mod recv_batch;
mod rng;
mod send;
pub mod standalone;
mod stats;
pub mod tap;
pub mod wire;

pub use error::VdeError;
pub use impair::{ImpairError, Impairment, Label, Partition, Rule, Scope};
pub use stats::{
    CloseReason, Drops, FaultCounters, PortCounters, PortInfo, SwitchEvent, SwitchStats,
};

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry};
use rustix::fs::Mode;
use rustix::io::Errno;
use smallvec::SmallVec;

use crate::reactor;
use delay_queue::DelayQueue;
use faults::FaultEngine;
use fdb::Fdb;
use handshake::Pending;
use pcap::PcapWriter;
use recv_batch::RecvBatch;
use wire::SUN_PATH_LEN;

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
    /// The run's network-fault seed (`--net-seed`); each directed link draws from its own
    /// stream derived from (seed, vlan, sender label, receiver label).
    pub net_seed: u64,
    /// Label every endpoint with its port number when it connects (the standalone switch,
    /// where `--between 1,2` names ports); the driver leaves this off and labels by machine.
    pub label_by_port: bool,
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
            net_seed: 0,
            label_by_port: false,
        }
    }
}

/// Whether a socket was read until it would block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    Drained,
    More,
}

struct Endpoint {
    port: u32,
    id: u32,
    /// The client's control stream; `None` for the tap port, which has none.
    ctl: Option<UnixStream>,
    data: tap::DataPort,
    path: PathBuf,
    client_path: PathBuf,
    description: String,
    /// Client process id (SO_PEERCRED, else the description's `pid=`).
    pid: Option<u32>,
    label: Option<Label>,
    /// Copies held back by network faults for this endpoint.
    queue: DelayQueue,
    counters: PortCounters,
}

/// Copies waiting in all delay queues of a switch.
#[derive(Debug, Default, Clone, Copy)]
struct QueueTotals {
    frames: usize,
    bytes: usize,
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
    /// Network-fault rules and link states.
    faults: FaultEngine,
    label_by_port: bool,
    queued: QueueTotals,
    /// Delayed copies (endpoint id, queue sequence) to capture when released: the earliest
    /// delivery of their frame.
    capture_pending: HashSet<(u32, u64)>,
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
            faults: FaultEngine::new(vlan, cfg.net_seed),
            label_by_port: cfg.label_by_port,
            queued: QueueTotals::default(),
            capture_pending: HashSet::new(),
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
    /// flushes, delayed frames due, and sockets left unfinished by the per-wake-up cap (then
    /// the instant is already past, meaning "poll with a zero timeout and call on_timer").
    pub fn next_deadline(&self) -> Option<Instant> {
        let pending = self.pending.iter().flatten().map(|p| p.deadline).min();
        let flush = self.capture.as_ref().and_then(|c| c.flush_due);
        let release = self.next_release();
        [self.backlog_since, pending, flush, release]
            .into_iter()
            .flatten()
            .min()
    }

    /// Run timers due at `now`: send delayed frames that are due, disconnect clients whose
    /// request timed out, continue sockets that hit the per-wake-up cap, flush the capture.
    pub fn on_timer(&mut self, registry: &Registry, now: Instant) {
        self.release_due(now);
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
            faults: sum.faults,
            queued_frames: self.queued.frames,
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
                pid: ep.pid,
                label: ep.label,
                queued_frames: ep.queue.len(),
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
        self.capture_pending.clear();
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

    /// Remove our files and the directory (idempotent; also run on drop).
    fn cleanup(&mut self) {
        if self.cleaned_up {
            return;
        }
        self.cleaned_up = true;
        for ep in self.endpoints.iter().flatten() {
            if !ep.path.as_os_str().is_empty() {
                let _ = std::fs::remove_file(&ep.path);
            }
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

impl Drop for Switch {
    fn drop(&mut self) {
        if let Some(cap) = self.capture.as_mut() {
            let _ = cap.writer.flush();
        }
        self.cleanup();
    }
}
