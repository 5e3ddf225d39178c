//! The switch side of network faults: the public API ([`Switch::apply`], [`Switch::partition`],
//! [`Switch::heal`], [`Switch::label_endpoint`], stats), forwarding a batch while rules are in
//! force (one decision per delivery by [`super::faults`], copies for later into the receiver's
//! [`super::delay_queue`]), and releasing delayed copies from the timer.
//!
//! It must not change the unimpaired path ([`super::forward`] only calls in here while
//! [`FaultEngine::is_active`]), must never block or sleep (delays are timer deadlines), and
//! never alters a frame: copies are byte-exact, 802.1Q tags included.
//!
//! Capture: with faults in force a frame is captured once, at its first delivery to any
//! endpoint (at once, or when its earliest delayed copy is released, with that time stamp);
//! a frame delivered to nobody is not captured, and a duplicate copy is not captured again.

use std::collections::HashSet;
use std::io::{self, IoSlice};
use std::time::{Instant, SystemTime};

use rustix::net::{MMsgHdr, SendAncillaryBuffer};
use smallvec::SmallVec;

use super::delay_queue::{Queued, SWITCH_QUEUE_MAX_BYTES};
use super::faults::{Decision, Duplicate, FaultEngine, Peer, Release, Route};
use super::fdb::Destination;
use super::impair::{ImpairError, Label, Partition, Rule, Scope};
use super::{
    Capture, Endpoint, FaultCounters, QueueTotals, Switch, VdeError, CAPTURE_FLUSH_INTERVAL,
    FRAMES_PER_WAKEUP,
};

/// Sends to one endpoint from one batch: each frame at most twice (original and duplicate).
const SENDS_PER_TARGET: usize = 2 * FRAMES_PER_WAKEUP;

impl Switch {
    /// Validate `rule` and make it the rule of its scope, replacing the previous one. The most
    /// specific rule of a delivery wins (a pair rule, even an all-zero one, overrides the all
    /// rule); an all-zero all-rule removes the all rule. On error nothing changes.
    pub fn apply(&mut self, rule: Rule) -> Result<(), ImpairError> {
        self.faults.apply(rule)
    }

    /// Validate `groups` and replace the partition: deliveries between labels of different
    /// groups are dropped (labels in no group, and unlabelled endpoints, are unaffected). On
    /// error nothing changes.
    pub fn partition(&mut self, groups: Vec<Vec<Label>>) -> Result<(), ImpairError> {
        self.faults.partition(groups)
    }

    /// Remove every rule and the partition. Copies already delayed are still delivered at
    /// their time; new frames take the unimpaired path.
    pub fn heal(&mut self) {
        self.faults.heal();
    }

    /// The rules in force (all rule first, then pair rules in the order first applied).
    pub fn rules(&self) -> Vec<Rule> {
        self.faults.rules()
    }

    /// The partition in force, if any.
    pub fn current_partition(&self) -> Option<&Partition> {
        self.faults.current_partition()
    }

    /// Counters per rule scope since the switch started (a scope keeps counting across
    /// replacements and heals), and the partition's drops as a last entry with `None`.
    pub fn fault_stats(&self) -> Vec<(Option<Scope>, FaultCounters)> {
        let mut v: Vec<(Option<Scope>, FaultCounters)> = self
            .faults
            .scope_stats()
            .into_iter()
            .map(|(s, c)| (Some(s), c))
            .collect();
        let p = self.faults.partition_stats();
        if !p.is_zero() {
            v.push((None, p));
        }
        v
    }

    /// The run's network-fault seed.
    pub fn net_seed(&self) -> u64 {
        self.faults.seed()
    }

    /// Use another seed: every link restarts its stream (rules stay).
    pub fn set_net_seed(&mut self, seed: u64) {
        self.faults.set_seed(seed);
    }

    /// Attach `label` (the driver's machine id) to endpoint `endpoint` (the id of
    /// [`super::SwitchEvent::PortOpened`]); rules and partitions refer to labels.
    pub fn label_endpoint(&mut self, endpoint: u32, label: Label) -> Result<(), VdeError> {
        let ep = self
            .endpoints
            .iter_mut()
            .flatten()
            .find(|ep| ep.id == endpoint)
            .ok_or(VdeError::UnknownEndpoint { endpoint })?;
        ep.label = Some(label);
        Ok(())
    }

    /// When the earliest delayed copy is due.
    pub(super) fn next_release(&self) -> Option<Instant> {
        if self.queued.frames == 0 {
            return None;
        }
        self.active
            .iter()
            .filter_map(|&i| self.endpoints[i].as_ref()?.queue.next_release())
            .min()
    }

    /// Send every delayed copy due at `now`, one `sendmmsg` per endpoint and batch.
    pub(super) fn release_due(&mut self, now: Instant) {
        if self.queued.frames == 0 {
            return;
        }
        let Switch {
            endpoints,
            active,
            capture,
            captured_frames,
            capture_pending,
            queued,
            ..
        } = self;
        let mut capture_error = None;
        for &t in active.iter() {
            let Some(ep) = endpoints[t].as_mut() else {
                continue;
            };
            loop {
                let mut due: SmallVec<[Queued; FRAMES_PER_WAKEUP]> = SmallVec::new();
                while due.len() < FRAMES_PER_WAKEUP {
                    match ep.queue.pop_due(now) {
                        Some(q) => due.push(q),
                        None => break,
                    }
                }
                if due.is_empty() {
                    break;
                }
                queued.frames -= due.len();
                queued.bytes -= due.iter().map(|q| q.frame.len()).sum::<usize>();
                if let Some(cap) = capture.as_mut().filter(|_| !capture_pending.is_empty()) {
                    let at = SystemTime::now();
                    for q in &due {
                        if capture_pending.remove(&(ep.id, q.seq)) && capture_error.is_none() {
                            match cap.writer.write_frame(at, &q.frame) {
                                Ok(()) => *captured_frames += 1,
                                Err(e) => capture_error = Some(e),
                            }
                        }
                    }
                    cap.flush_due
                        .get_or_insert_with(|| Instant::now() + CAPTURE_FLUSH_INTERVAL);
                }
                let iovs: SmallVec<[[IoSlice<'_>; 1]; FRAMES_PER_WAKEUP]> =
                    due.iter().map(|q| [IoSlice::new(&q.frame)]).collect();
                send_iovs(ep, &iovs, 0..iovs.len());
                if due.len() < FRAMES_PER_WAKEUP {
                    break;
                }
            }
        }
        if let Some(source) = capture_error {
            self.capture_failed(source);
        }
    }

    fn capture_failed(&mut self, source: io::Error) {
        if let Some(cap) = self.capture.take() {
            self.capture_pending.clear();
            self.error(VdeError::Capture {
                path: cap.path,
                source,
            });
        }
    }
}

/// The first delivery of one frame of a batch (what the capture records).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FirstDelivery {
    /// Not delivered (yet) to anyone.
    None,
    /// Sent at once to at least one endpoint.
    Now,
    /// Its earliest copy waits in endpoint `endpoint`'s queue as `seq`, due `at`.
    Queued {
        endpoint: u32,
        seq: u64,
        at: Instant,
    },
}

impl FirstDelivery {
    fn queued(&mut self, endpoint: u32, seq: u64, at: Instant) {
        let earlier = match *self {
            FirstDelivery::None => true,
            FirstDelivery::Now => false,
            FirstDelivery::Queued { at: known, .. } => at < known,
        };
        if earlier {
            *self = FirstDelivery::Queued { endpoint, seq, at };
        }
    }
}

/// What forwarding one batch under network faults needs from the switch.
pub(super) struct Deliveries<'a> {
    pub(super) endpoints: &'a mut [Option<Endpoint>],
    pub(super) active: &'a [usize],
    pub(super) faults: &'a mut FaultEngine,
    pub(super) queued: &'a mut QueueTotals,
}

impl Deliveries<'_> {
    /// Forward the frames of one batch from endpoint `src` (on `src_port`): per target, one
    /// route, then one decision per frame; immediate copies go out with one `sendmmsg` per
    /// target, later ones into the target's delay queue. `firsts` (one per frame) learns each
    /// frame's first delivery.
    pub(super) fn forward(
        self,
        src: usize,
        src_port: u32,
        frames: &[&[u8]],
        dests: &[Destination],
        now: Instant,
        firsts: &mut [FirstDelivery],
    ) {
        let Deliveries {
            endpoints,
            active,
            faults,
            queued,
        } = self;
        let Some(ingress) = endpoints[src].as_mut() else {
            return;
        };
        let from = Peer {
            label: ingress.label,
            endpoint: ingress.id,
        };
        ingress.counters.drops.filtered +=
            dests.iter().filter(|d| **d == Destination::Filter).count() as u64;
        let iovs: SmallVec<[[IoSlice<'_>; 1]; FRAMES_PER_WAKEUP]> =
            frames.iter().map(|f| [IoSlice::new(f)]).collect();

        for &t in active {
            let Some(ep) = endpoints[t].as_mut() else {
                continue;
            };
            let port = ep.port;
            let wanted = |d: Destination| match d {
                Destination::Flood => port != src_port && port != 0,
                Destination::Port(p) => port == p && p != src_port,
                Destination::Filter => false,
            };
            if !dests.iter().any(|&d| wanted(d)) {
                continue;
            }
            let to = Peer {
                label: ep.label,
                endpoint: ep.id,
            };
            let route = faults.route(from, to);
            let mut now_list: SmallVec<[usize; SENDS_PER_TARGET]> = SmallVec::new();
            let mut delta = FaultCounters::default();
            for (i, frame) in frames.iter().enumerate() {
                if !wanted(dests[i]) {
                    continue;
                }
                let (first, duplicate) = match route {
                    Route::Clear => (Release::Now, None),
                    Route::Partitioned => {
                        delta.dropped_partition += 1;
                        continue;
                    }
                    Route::Impaired { link, rule } => {
                        let decision = faults.decide(link, rule, frame.len(), now);
                        decision.count(&mut delta);
                        match decision {
                            Decision::Drop(_) => continue,
                            Decision::Deliver {
                                first, duplicate, ..
                            } => match duplicate {
                                Duplicate::Copy(r) => (first, Some(r)),
                                Duplicate::None | Duplicate::RateLimited => (first, None),
                            },
                        }
                    }
                };
                for release in std::iter::once(first).chain(duplicate) {
                    match release {
                        Release::Now => {
                            now_list.push(i);
                            firsts[i] = FirstDelivery::Now;
                        }
                        Release::At(at) => {
                            let room = queued.bytes + frame.len() <= SWITCH_QUEUE_MAX_BYTES;
                            match ep.queue.push(at, frame).ok().filter(|_| room) {
                                Some(seq) => {
                                    queued.frames += 1;
                                    queued.bytes += frame.len();
                                    firsts[i].queued(ep.id, seq, at);
                                }
                                None => {
                                    delta.dropped_overflow += 1;
                                    delta.delayed = delta.delayed.saturating_sub(1);
                                }
                            }
                        }
                    }
                }
            }
            send_iovs(ep, &iovs, now_list.iter().copied());
            ep.counters.faults.add(&delta);
            match route {
                Route::Impaired { rule, .. } => faults.record(rule, &delta),
                Route::Partitioned => faults.record_partition(delta.dropped_partition),
                Route::Clear => {}
            }
        }
    }
}

/// Send the frames `iovs[i]` for each `i` of `which` (in that order) to `ep`.
fn send_iovs(ep: &mut Endpoint, iovs: &[[IoSlice<'_>; 1]], which: impl Iterator<Item = usize>) {
    let which: SmallVec<[usize; SENDS_PER_TARGET]> = which.collect();
    if which.is_empty() {
        return;
    }
    let mut controls: SmallVec<[SendAncillaryBuffer<'_, '_, '_>; SENDS_PER_TARGET]> = which
        .iter()
        .map(|_| SendAncillaryBuffer::default())
        .collect();
    let mut msgs: SmallVec<[MMsgHdr<'_>; SENDS_PER_TARGET]> = which
        .iter()
        .zip(controls.iter_mut())
        .map(|(&i, c)| MMsgHdr::new(&iovs[i], c))
        .collect();
    let frames: SmallVec<[[IoSlice<'_>; 1]; SENDS_PER_TARGET]> =
        which.iter().map(|&i| iovs[i]).collect();
    ep.data.send(&mut ep.counters, &mut msgs, &frames);
}

/// Capture each frame of a batch that was delivered at once; remember the earliest delayed
/// copy of the others (captured by [`Switch::release_due`]). Returns a write error.
pub(super) fn capture_first_deliveries(
    cap: &mut Capture,
    captured_frames: &mut u64,
    capture_pending: &mut HashSet<(u32, u64)>,
    frames: &[&[u8]],
    firsts: &[FirstDelivery],
) -> Option<io::Error> {
    let at = SystemTime::now();
    let mut wrote = false;
    for (frame, first) in frames.iter().zip(firsts) {
        match *first {
            FirstDelivery::None => {}
            FirstDelivery::Now => {
                if let Err(e) = cap.writer.write_frame(at, frame) {
                    return Some(e);
                }
                *captured_frames += 1;
                wrote = true;
            }
            FirstDelivery::Queued { endpoint, seq, .. } => {
                capture_pending.insert((endpoint, seq));
            }
        }
    }
    if wrote {
        cap.flush_due
            .get_or_insert_with(|| Instant::now() + CAPTURE_FLUSH_INTERVAL);
    }
    None
}
