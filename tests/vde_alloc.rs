//! The forwarding hot path allocates nothing: a counting global allocator watches every call
//! into the switch (`handle_event`, `on_timer`) while frames of many sizes flow, in hub mode,
//! in learning mode with many MACs, and with a pcap capture running.

#[path = "vdecommon/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::vdeclient::*;
use common::Scratch;
use mio::{Events, Poll};
use ntd::reactor;
use ntd::vde::{Switch, SwitchConfig};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static WATCHING: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting touches only an
// atomic and a const-initialised thread-local Cell, neither of which allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if WATCHING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if WATCHING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const OWNER: usize = 1;

/// Poll once and hand everything to the switch, counting allocations made inside it.
fn turn(poll: &mut Poll, events: &mut Events, sw: &mut Switch) {
    poll.poll(events, Some(Duration::from_millis(2))).unwrap();
    WATCHING.with(|w| w.set(true));
    for ev in events.iter() {
        sw.handle_event(poll.registry(), reactor::split(ev.token()).1, ev);
    }
    let now = Instant::now();
    if sw.next_deadline().is_some_and(|d| d <= now) {
        sw.on_timer(poll.registry(), now);
    }
    WATCHING.with(|w| w.set(false));
}

fn forwarding_allocations(cfg: SwitchConfig, tag: &str) -> (u64, u64) {
    let s = Scratch::new(tag);
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(64);
    let mut sw = Switch::create(1, &s.join("sw"), OWNER, poll.registry(), cfg).unwrap();
    let dir = sw.dir().to_path_buf();
    let clients: Vec<VdeClient> = (0..3)
        .map(|i| {
            let mut pump = || turn(&mut poll, &mut events, &mut sw);
            VdeClient::connect(&dir, ClientOptions::described(&format!("c{i}")), &mut pump).unwrap()
        })
        .collect();
    sw.drain_events().for_each(drop);
    let frames: Vec<Vec<u8>> = (0..200u32)
        .map(|i| {
            let mut f = patterned(14 + (i as usize * 97) % 9000, mac((i % 50) as u8), i);
            if i % 3 == 0 {
                f[0..6].copy_from_slice(&mac(((i + 7) % 50) as u8)); // unicast to a learned MAC
            }
            f
        })
        .collect();
    // Warm-up round (first use of every buffer), then the measured rounds.
    let mut measured = 0;
    ALLOCATIONS.store(0, Ordering::Relaxed);
    for round in 0..6 {
        if round == 1 {
            ALLOCATIONS.store(0, Ordering::Relaxed);
        }
        for (i, f) in frames.iter().enumerate() {
            let _ = clients[i % 2].send(f);
            if i % 40 == 39 {
                turn(&mut poll, &mut events, &mut sw);
                for c in &clients {
                    while c.try_recv().is_some() {}
                }
            }
        }
        for _ in 0..5 {
            turn(&mut poll, &mut events, &mut sw);
            for c in &clients {
                while c.try_recv().is_some() {}
            }
        }
        if round > 0 {
            measured += frames.len() as u64;
        }
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    assert!(
        sw.stats().frames_in >= measured,
        "frames really flowed: {:?}",
        sw.stats()
    );
    drop(clients);
    sw.shutdown(poll.registry());
    (allocations, measured)
}

#[test]
fn forwarding_allocates_nothing_in_hub_learning_and_capture_modes() {
    let s = Scratch::new("allocpcap");
    let cases = [
        ("hub", SwitchConfig::default()),
        (
            "learning",
            SwitchConfig {
                hub: false,
                ..SwitchConfig::default()
            },
        ),
        (
            "capture",
            SwitchConfig {
                capture: Some(s.join("c.pcap")),
                ..SwitchConfig::default()
            },
        ),
    ];
    for (tag, cfg) in cases {
        let (allocations, frames) = forwarding_allocations(cfg, tag);
        assert_eq!(
            allocations, 0,
            "{tag}: {allocations} allocations while forwarding {frames} frames"
        );
    }
}
