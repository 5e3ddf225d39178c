//! The frames that network faults hold back for one receiving endpoint (delay, jitter, rate,
//! reorder hold), ordered by release time and, for equal times, by arrival.
//!
//! This module owns the queue and its per-endpoint bounds only. It must not send, look at
//! clocks or decide release times ([`super::faults`] does); the switch pops what is due from
//! its timer and enforces the switch-wide bound [`SWITCH_QUEUE_MAX_BYTES`].
//!
//! Memory: each queued copy is one exactly-sized heap allocation plus a 48-byte entry, so a
//! switch holds at most [`QUEUE_MAX_FRAMES`] entries and [`QUEUE_MAX_BYTES`] of frames per
//! endpoint, and at most [`SWITCH_QUEUE_MAX_BYTES`] of frames in all; an empty queue holds no
//! memory beyond its (retained) entry array. Without impairments nothing is ever queued.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Instant;

/// Copies waiting for one endpoint, at most.
pub const QUEUE_MAX_FRAMES: usize = 4096;
/// Frame bytes waiting for one endpoint, at most.
pub const QUEUE_MAX_BYTES: usize = 8 << 20;
/// Frame bytes waiting in all the delay queues of one switch, at most.
pub const SWITCH_QUEUE_MAX_BYTES: usize = 64 << 20;

/// One held-back copy.
#[derive(Debug)]
pub struct Queued {
    pub at: Instant,
    /// Arrival order within the queue (ties on `at` keep it).
    pub seq: u64,
    pub frame: Box<[u8]>,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Queued {}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Queued {
    /// Reversed, so that the max-heap pops the earliest release first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Why a copy was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

/// The delay queue of one endpoint.
#[derive(Debug, Default)]
pub struct DelayQueue {
    heap: BinaryHeap<Queued>,
    bytes: usize,
    next_seq: u64,
}

impl DelayQueue {
    pub fn new() -> DelayQueue {
        DelayQueue::default()
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Frame bytes queued.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// When the next copy is due.
    pub fn next_release(&self) -> Option<Instant> {
        self.heap.peek().map(|q| q.at)
    }

    /// Queue a copy of `frame` for release at `at`; returns its sequence number, or
    /// [`Overflow`] if the frame or byte bound would be exceeded (nothing queued).
    pub fn push(&mut self, at: Instant, frame: &[u8]) -> Result<u64, Overflow> {
        if self.heap.len() >= QUEUE_MAX_FRAMES || self.bytes + frame.len() > QUEUE_MAX_BYTES {
            return Err(Overflow);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += frame.len();
        self.heap.push(Queued {
            at,
            seq,
            frame: frame.into(),
        });
        Ok(seq)
    }

    /// Remove and return the earliest copy if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Queued> {
        if self.heap.peek()?.at > now {
            return None;
        }
        let q = self.heap.pop()?;
        self.bytes -= q.frame.len();
        Some(q)
    }

    /// Drop everything; returns (copies, bytes) discarded.
    pub fn clear(&mut self) -> (usize, usize) {
        let dropped = (self.heap.len(), self.bytes);
        self.heap.clear();
        self.bytes = 0;
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pop_due_releases_in_time_order_and_fifo_on_ties() {
        let t0 = Instant::now();
        let mut q = DelayQueue::new();
        q.push(t0 + Duration::from_millis(5), b"late").unwrap();
        q.push(t0 + Duration::from_millis(1), b"tie-a").unwrap();
        q.push(t0 + Duration::from_millis(1), b"tie-b").unwrap();

        assert!(q.pop_due(t0).is_none(), "nothing due yet");
        let due: Vec<Box<[u8]>> = std::iter::from_fn(|| q.pop_due(t0 + Duration::from_millis(2)))
            .map(|x| x.frame)
            .collect();

        assert_eq!(due, vec![b"tie-a"[..].into(), b"tie-b"[..].into()]);
        assert_eq!(q.next_release(), Some(t0 + Duration::from_millis(5)));
        assert_eq!((q.len(), q.bytes()), (1, 4));
    }

    #[test]
    fn push_beyond_frame_bound_overflows_and_queues_nothing() {
        let t0 = Instant::now();
        let mut q = DelayQueue::new();
        for _ in 0..QUEUE_MAX_FRAMES {
            q.push(t0, &[0u8; 14]).unwrap();
        }

        assert_eq!(q.push(t0, &[0u8; 14]), Err(Overflow));
        assert_eq!(q.len(), QUEUE_MAX_FRAMES);
    }

    #[test]
    fn push_beyond_byte_bound_overflows_and_clear_empties() {
        let t0 = Instant::now();
        let mut q = DelayQueue::new();
        let big = vec![0u8; 65536];
        for _ in 0..QUEUE_MAX_BYTES / big.len() {
            q.push(t0, &big).unwrap();
        }

        assert_eq!(q.push(t0, &[0u8; 14]), Err(Overflow));
        assert_eq!(q.bytes(), QUEUE_MAX_BYTES);
        assert_eq!(q.clear(), (QUEUE_MAX_BYTES / 65536, QUEUE_MAX_BYTES));
        assert!(q.is_empty() && q.bytes() == 0);
    }
}
