//! The forwarding hot path allocates nothing: a counting global allocator watches every call
//! into the switch (`handle_event`, `on_timer`) while frames of many sizes flow, in hub mode,
//! in learning mode with many MACs, with a pcap capture running, and (after the first round
//! has created the link states) with loss and partition rules in force.

// Tests may unwrap and panic: a failing assertion is their report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod vdecommon;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use mio::{Events, Poll};
use ntd::reactor;
use ntd::vde::{Impairment, Rule, Scope, Switch, SwitchConfig};
use vdecommon::vdeclient::*;
use vdecommon::Scratch;

struct Counting;

thread_local! {
    static WATCHING: Cell<bool> = const { Cell::new(false) };
    /// Per thread: the test harness runs tests on parallel threads, each counting its own.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting touches only
// const-initialised thread-local Cells, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if WATCHING.with(Cell::get) {
            ALLOCATIONS.with(|a| a.set(a.get() + 1));
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
            ALLOCATIONS.with(|a| a.set(a.get() + 1));
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

fn forwarding_allocations(cfg: SwitchConfig, setup: fn(&mut Switch), tag: &str) -> (u64, u64) {
    let s = Scratch::new(tag);
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(64);
    let mut sw = Switch::create(1, &s.join("sw"), OWNER, poll.registry(), cfg).unwrap();
    setup(&mut sw);
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
    ALLOCATIONS.with(|a| a.set(0));
    for round in 0..6 {
        if round == 1 {
            ALLOCATIONS.with(|a| a.set(0));
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
    let allocations = ALLOCATIONS.with(Cell::get);
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
        let (allocations, frames) = forwarding_allocations(cfg, |_| {}, tag);
        assert_eq!(
            allocations, 0,
            "{tag}: {allocations} allocations while forwarding {frames} frames"
        );
    }
}

/// Loss on every delivery, a pair rule, and a partition: decisions, counters and sends use
/// only link states created in the warm-up round and stack buffers.
fn lossy_and_partitioned(sw: &mut Switch) {
    sw.apply(Rule {
        scope: Scope::All,
        impairment: Impairment {
            loss: 0.2,
            ..Default::default()
        },
    })
    .unwrap();
    sw.apply(Rule {
        scope: Scope::between(1, 2),
        impairment: Impairment {
            loss: 0.5,
            ..Default::default()
        },
    })
    .unwrap();
    sw.partition(vec![vec![1, 2], vec![3]]).unwrap();
}

#[test]
fn forwarding_with_loss_and_partition_allocates_nothing_after_warm_up() {
    let cfg = SwitchConfig {
        label_by_port: true,
        ..SwitchConfig::default()
    };

    let (allocations, frames) = forwarding_allocations(cfg, lossy_and_partitioned, "allocloss");

    assert_eq!(
        allocations, 0,
        "{allocations} allocations while forwarding {frames} frames under loss"
    );
}
