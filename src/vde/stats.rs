//! What a switch reports: counters per endpoint and per switch ([`Drops`], [`PortCounters`],
//! [`SwitchStats`]), the endpoint list ([`PortInfo`]) and the events for the driver's log
//! ([`SwitchEvent`]). This module owns these plain data types and their log renderings; it must
//! not do I/O or hold switch state.

use std::fmt;
use std::io;
use std::path::PathBuf;

use super::impair::Label;
use super::VdeError;

/// Frames that were not delivered, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drops {
    /// Ingress: datagrams shorter than 14 bytes (incl. vde2's zero-length close marker).
    pub runt: u64,
    /// Ingress: datagrams longer than [`MAX_FRAME`](super::MAX_FRAME).
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

    pub(super) fn add(&mut self, o: &Drops) {
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

/// Deliveries changed by network faults ([`super::faults`]), counted per delivery (one frame
/// towards one receiving endpoint), on the receiving endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounters {
    /// Dropped by `loss`.
    pub dropped_loss: u64,
    /// Dropped because sender and receiver are in different partition groups.
    pub dropped_partition: u64,
    /// Dropped by the rate limiter (its backlog was full).
    pub dropped_rate: u64,
    /// Dropped because the receiver's delay queue was full (frames or bytes, see
    /// [`super::delay_queue`]).
    pub dropped_overflow: u64,
    /// Copies scheduled for a later release (delay, jitter, rate, reorder hold).
    pub delayed: u64,
    /// Extra copies delivered by `duplicate`.
    pub duplicated: u64,
    /// Frames chosen by `reorder`.
    pub reordered: u64,
}

impl FaultCounters {
    /// Deliveries dropped on purpose, all causes.
    pub fn dropped(&self) -> u64 {
        self.dropped_loss + self.dropped_partition + self.dropped_rate + self.dropped_overflow
    }

    pub fn is_zero(&self) -> bool {
        *self == FaultCounters::default()
    }

    pub(super) fn add(&mut self, o: &FaultCounters) {
        self.dropped_loss += o.dropped_loss;
        self.dropped_partition += o.dropped_partition;
        self.dropped_rate += o.dropped_rate;
        self.dropped_overflow += o.dropped_overflow;
        self.delayed += o.delayed;
        self.duplicated += o.duplicated;
        self.reordered += o.reordered;
    }

    /// The cleanup line's wording: `dropped 12 by loss, 40 by partition, 0 by rate, 0 by queue
    /// overflow; 88 delayed, 3 duplicated, 1 reordered`.
    pub fn summary(&self) -> String {
        format!(
            "dropped {} by loss, {} by partition, {} by rate, {} by queue overflow; \
             {} delayed, {} duplicated, {} reordered",
            self.dropped_loss,
            self.dropped_partition,
            self.dropped_rate,
            self.dropped_overflow,
            self.delayed,
            self.duplicated,
            self.reordered
        )
    }
}

impl fmt::Display for FaultCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "loss={} partition={} rate={} overflow={} delayed={} duplicated={} reordered={}",
            self.dropped_loss,
            self.dropped_partition,
            self.dropped_rate,
            self.dropped_overflow,
            self.delayed,
            self.duplicated,
            self.reordered
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
    /// Frames lost by accident (runts, full receivers, …).
    pub drops: Drops,
    /// Deliveries to this endpoint changed on purpose by network faults.
    pub faults: FaultCounters,
}

impl PortCounters {
    pub(super) fn add(&mut self, o: &PortCounters) {
        self.frames_in += o.frames_in;
        self.bytes_in += o.bytes_in;
        self.frames_out += o.frames_out;
        self.bytes_out += o.bytes_out;
        self.drops.add(&o.drops);
        self.faults.add(&o.faults);
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
    /// Deliveries changed by network faults (loss, partition, rate, delay, …).
    pub faults: FaultCounters,
    /// Frames waiting in delay queues now.
    pub queued_frames: usize,
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
             accepted={} rejected={} closed={} captured={} drops: {} faults: {} queued={}",
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
            self.drops,
            self.faults,
            self.queued_frames
        )
    }
}

/// One connected endpoint, as reported by [`Switch::ports`](super::Switch::ports).
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
    /// The client's process id: SO_PEERCRED of the control stream, else the `pid=`/`PID=` of
    /// the description.
    pub pid: Option<u32>,
    /// The label given by [`super::Switch::label_endpoint`] (the port number in a switch
    /// created with [`super::SwitchConfig::label_by_port`]).
    pub label: Option<Label>,
    /// Frames waiting in this endpoint's delay queue now.
    pub queued_frames: usize,
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
        /// The client's process id (see [`PortInfo::pid`]): the driver maps it to a machine
        /// and calls [`super::Switch::label_endpoint`].
        pid: Option<u32>,
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
            SwitchEvent::PortOpened { vlan, port, endpoint, description, pid } => {
                write!(f, "vde vlan {vlan}: port {port} opened (endpoint {endpoint}, ")?;
                if let Some(pid) = pid {
                    write!(f, "pid {pid}, ")?;
                }
                write!(f, "\"{description}\")")
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
            )
            .and_then(|()| {
                if counters.faults.is_zero() {
                    Ok(())
                } else {
                    write!(f, "; network faults: {}", counters.faults.summary())
                }
            }),
            SwitchEvent::Rejected { vlan, reason } => write!(f, "vde vlan {vlan}: client refused: {reason}"),
            SwitchEvent::Error { vlan, error } => write!(f, "vde vlan {vlan}: {error}"),
        }
    }
}
