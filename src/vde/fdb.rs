//! The forwarding database of the switch's optional learning mode: (MAC, 802.1Q VLAN id) →
//! port, with ageing.
//!
//! This module owns the learning rules only (protocols.md §6): never learn group-bit source
//! MACs, flood group and unknown destinations, filter frames whose destination sits on the
//! ingress port, age entries, forget a port's entries when it closes, follow a MAC that
//! moves. Tagged frames are keyed by their VLAN id but never dropped for it. It must not do
//! I/O and must not allocate per frame: the table is sized once and stops learning when full.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// vde_switch's expiry for learned addresses.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(100);
/// Entries the table holds before it stops learning (floods instead).
pub const DEFAULT_CAPACITY: usize = 4096;

/// Where a frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// Every port except the ingress port (and the management port 0).
    Flood,
    /// Only the endpoints of this port.
    Port(u32),
    /// Nowhere: the destination lives on the ingress port.
    Filter,
}

type Mac = [u8; 6];

#[derive(Debug, Clone, Copy)]
struct Entry {
    port: u32,
    seen: Instant,
}

/// The learning table of one switch.
pub struct Fdb {
    table: HashMap<(Mac, u16), Entry>,
    capacity: usize,
    max_age: Duration,
}

/// 802.1Q/802.1ad VLAN id of a frame, 0 for untagged (and priority-tagged) frames.
pub fn vlan_id(frame: &[u8]) -> u16 {
    match frame {
        [_, _, _, _, _, _, _, _, _, _, _, _, 0x81, 0x00, hi, lo, ..]
        | [_, _, _, _, _, _, _, _, _, _, _, _, 0x88, 0xa8, hi, lo, ..] => {
            u16::from_be_bytes([*hi, *lo]) & 0x0fff
        }
        _ => 0,
    }
}

impl Fdb {
    pub fn new(capacity: usize, max_age: Duration) -> Self {
        Fdb {
            table: HashMap::with_capacity(capacity),
            capacity,
            max_age,
        }
    }

    /// Learn the source of `frame` (≥ 14 bytes) arriving on `port`, then decide where it goes.
    pub fn route(&mut self, frame: &[u8], port: u32, now: Instant) -> Destination {
        let (Some(dst), Some(src)) = (frame.get(0..6), frame.get(6..12)) else {
            return Destination::Flood;
        };
        let dst: Mac = dst.try_into().unwrap_or([0xff; 6]);
        let src: Mac = src.try_into().unwrap_or([0xff; 6]);
        let vid = vlan_id(frame);
        if src[0] & 1 == 0 {
            self.learn((src, vid), port, now);
        }
        if dst[0] & 1 != 0 {
            return Destination::Flood;
        }
        match self.table.get(&(dst, vid)) {
            Some(e) if now.saturating_duration_since(e.seen) <= self.max_age => {
                if e.port == port {
                    Destination::Filter
                } else {
                    Destination::Port(e.port)
                }
            }
            Some(_) => {
                self.table.remove(&(dst, vid));
                Destination::Flood
            }
            None => Destination::Flood,
        }
    }

    fn learn(&mut self, key: (Mac, u16), port: u32, now: Instant) {
        if let Some(e) = self.table.get_mut(&key) {
            e.port = port;
            e.seen = now;
            return;
        }
        if self.table.len() >= self.capacity {
            let max_age = self.max_age;
            self.table
                .retain(|_, e| now.saturating_duration_since(e.seen) <= max_age);
            if self.table.len() >= self.capacity {
                return;
            }
        }
        self.table.insert(key, Entry { port, seen: now });
    }

    /// Forget every address learned on `port` (it closed).
    pub fn forget_port(&mut self, port: u32) {
        self.table.retain(|_, e| e.port != port);
    }

    /// Number of learned addresses.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = [0x52, 0x54, 0, 0x12, 1, 1];
    const B: Mac = [0x52, 0x54, 0, 0x12, 1, 2];
    const BCAST: Mac = [0xff; 6];

    fn frame(dst: Mac, src: Mac) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[0; 46]);
        f
    }

    fn tagged(dst: Mac, src: Mac, vid: u16) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&vid.to_be_bytes());
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[0; 46]);
        f
    }

    #[test]
    fn route_unknown_unicast_floods_then_learned_goes_to_its_port() {
        let mut fdb = Fdb::new(16, DEFAULT_MAX_AGE);
        let now = Instant::now();
        assert_eq!(fdb.route(&frame(B, A), 1, now), Destination::Flood);
        assert_eq!(fdb.route(&frame(A, B), 2, now), Destination::Port(1));
        assert_eq!(fdb.route(&frame(B, A), 1, now), Destination::Port(2));
    }

    #[test]
    fn route_broadcast_and_multicast_always_flood() {
        let mut fdb = Fdb::new(16, DEFAULT_MAX_AGE);
        let now = Instant::now();
        fdb.route(&frame(BCAST, A), 1, now);
        assert_eq!(fdb.route(&frame(BCAST, B), 2, now), Destination::Flood);
        assert_eq!(
            fdb.route(&frame([0x01, 0, 0x5e, 0, 0, 1], B), 2, now),
            Destination::Flood
        );
    }

    #[test]
    fn route_group_bit_source_is_not_learned() {
        let mut fdb = Fdb::new(16, DEFAULT_MAX_AGE);
        let now = Instant::now();
        let group_src = [0x53, 0, 0, 0, 0, 1];
        fdb.route(&frame(B, group_src), 1, now);
        assert!(fdb.is_empty());
        let mut dst_group_as_unicast = group_src;
        dst_group_as_unicast[0] &= !1;
        assert_eq!(
            fdb.route(&frame(dst_group_as_unicast, B), 2, now),
            Destination::Flood
        );
    }

    #[test]
    fn route_destination_on_ingress_port_is_filtered() {
        let mut fdb = Fdb::new(16, DEFAULT_MAX_AGE);
        let now = Instant::now();
        fdb.route(&frame(BCAST, A), 1, now);
        assert_eq!(fdb.route(&frame(A, B), 1, now), Destination::Filter);
    }

    #[test]
    fn route_entry_older_than_max_age_floods_again() {
        let mut fdb = Fdb::new(16, Duration::from_secs(100));
        let t0 = Instant::now();
        fdb.route(&frame(BCAST, A), 1, t0);
        assert_eq!(
            fdb.route(&frame(A, B), 2, t0 + Duration::from_secs(100)),
            Destination::Port(1)
        );
        assert_eq!(
            fdb.route(&frame(A, B), 2, t0 + Duration::from_secs(101)),
            Destination::Flood
        );
    }

    #[test]
    fn route_mac_that_moves_follows_it() {
        let mut fdb = Fdb::new(16, DEFAULT_MAX_AGE);
        let now = Instant::now();
        fdb.route(&frame(BCAST, A), 1, now);
        fdb.route(&frame(BCAST, A), 3, now);
        assert_eq!(fdb.route(&frame(A, B), 2, now), Destination::Port(3));
    }

    #[test]
    fn forget_port_drops_only_that_ports_entries() {
        let mut fdb = Fdb::new(16, DEFAULT_MAX_AGE);
        let now = Instant::now();
        fdb.route(&frame(BCAST, A), 1, now);
        fdb.route(&frame(BCAST, B), 2, now);
        fdb.forget_port(1);
        assert_eq!(fdb.len(), 1);
        assert_eq!(fdb.route(&frame(A, B), 2, now), Destination::Flood);
    }

    #[test]
    fn route_tagged_frames_are_keyed_by_vlan_and_never_filtered_for_it() {
        let mut fdb = Fdb::new(16, DEFAULT_MAX_AGE);
        let now = Instant::now();
        fdb.route(&tagged(BCAST, A, 10), 1, now);
        assert_eq!(fdb.route(&tagged(A, B, 10), 2, now), Destination::Port(1));
        // Same MAC on another VLAN is unknown there: flooded, not dropped.
        assert_eq!(fdb.route(&tagged(A, B, 20), 2, now), Destination::Flood);
        assert_eq!(fdb.route(&frame(A, B), 2, now), Destination::Flood);
        assert_eq!(vlan_id(&tagged(A, B, 0x0abc)), 0x0abc);
    }

    #[test]
    fn learn_full_table_stops_learning_and_keeps_flooding() {
        let mut fdb = Fdb::new(2, DEFAULT_MAX_AGE);
        let now = Instant::now();
        for i in 0..10u8 {
            fdb.route(&frame(BCAST, [0x52, 0, 0, 0, 0, i]), 1, now);
        }
        assert_eq!(fdb.len(), 2);
        assert_eq!(
            fdb.route(&frame([0x52, 0, 0, 0, 0, 9], B), 2, now),
            Destination::Flood
        );
    }

    #[test]
    fn learn_full_table_evicts_expired_entries_first() {
        let mut fdb = Fdb::new(1, Duration::from_secs(1));
        let t0 = Instant::now();
        fdb.route(&frame(BCAST, A), 1, t0);
        fdb.route(&frame(BCAST, B), 2, t0 + Duration::from_secs(5));
        assert_eq!(
            fdb.route(&frame(B, A), 1, t0 + Duration::from_secs(5)),
            Destination::Port(2)
        );
    }
}
