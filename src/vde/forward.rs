//! The data side of a switch, its hot path: read a batch of frames from one endpoint with one
//! `recvmmsg`, capture them, route them (hub or learning table) and send them to each target
//! with one `sendmmsg` per run. It must not allocate per frame and must never block: a receiver
//! that cannot keep up loses frames (counted), it never slows the loop. While network faults
//! are in force the batch goes to [`super::impaired`] instead, after the same receive step.

use std::io::{self, IoSlice};
use std::time::{Instant, SystemTime};

use rustix::net::{MMsgHdr, SendAncillaryBuffer};
use smallvec::SmallVec;

use super::fdb::Destination;
use super::impaired::{capture_first_deliveries, Deliveries, FirstDelivery};
use super::recv_batch::RecvBatch;
use super::{
    Endpoint, Progress, Switch, VdeError, CAPTURE_FLUSH_INTERVAL, FRAMES_PER_WAKEUP, MAX_FRAME,
    MIN_FRAME,
};

impl Switch {
    /// The hot path: read a batch of frames from endpoint `index` and forward them.
    pub(super) fn forward_from(&mut self, index: usize) -> Progress {
        let Switch {
            endpoints,
            active,
            rx,
            fdb,
            capture,
            captured_frames,
            batches,
            faults,
            queued,
            capture_pending,
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
            match src.data.recv(rx, FRAMES_PER_WAKEUP) {
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

        // Phase 2: capture, route, send. With network faults in force, frames are captured
        // when first delivered instead (see `impaired`).
        let mut capture_error = None;
        let impaired = faults.is_active();
        if let Some(cap) = capture.as_mut().filter(|_| !impaired) {
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

        if impaired {
            let mut firsts = [FirstDelivery::None; FRAMES_PER_WAKEUP];
            let firsts = &mut firsts[..count];
            let deliveries = Deliveries {
                endpoints,
                active,
                faults,
                queued,
            };
            deliveries.forward(index, src_port, &frames, dests, Instant::now(), firsts);
            if let Some(cap) = capture.as_mut() {
                capture_error = capture_first_deliveries(
                    cap,
                    captured_frames,
                    capture_pending,
                    &frames,
                    firsts,
                );
            }
        } else {
            forward_batch(endpoints, active, index, src_port, &frames, dests);
        }
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

    pub(super) fn flush_capture(&mut self) {
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
                    let run = &mut msgs[start..end];
                    ep.data.send(&mut ep.counters, run, &iovs[start..end]);
                }
            }
        }
        start = end;
    }
}
