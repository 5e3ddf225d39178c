//! Network faults in ntd's switch, in-process on a real mio loop with real sockets: loss within
//! a binomial band, replay by seed, partitions and heal, pair rules, delay released by the
//! switch's own deadlines, order and bytes kept, duplicate, reorder, rate limiting, queue
//! bounds, labels and peer pids, capture of what was delivered. Time bounds here are lower
//! bounds ("never early") with generous upper bounds; performance lives in the bench.

// Tests may unwrap and panic: a failing assertion is their report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod vdecommon;

use std::time::{Duration, Instant};

use ntd::vde::delay_queue::QUEUE_MAX_FRAMES;
use ntd::vde::{
    FaultCounters, ImpairError, Impairment, Rule, Scope, SwitchConfig, SwitchEvent, VdeError,
};
use vdecommon::vdeclient::*;
use vdecommon::{Harness, Scratch};

const QUIET: Duration = Duration::from_millis(100);

/// A hub whose endpoints are labelled by port number, like the standalone switch.
fn hub(s: &Scratch, seed: u64) -> Harness {
    Harness::new(
        &s.join("sw"),
        SwitchConfig {
            net_seed: seed,
            label_by_port: true,
            ..SwitchConfig::default()
        },
    )
}

fn connect(h: &mut Harness, descr: &str) -> VdeClient {
    let dir = h.dir.clone();
    VdeClient::connect(&dir, ClientOptions::described(descr), &mut h.pump()).expect("handshake")
}

fn all(impairment: Impairment) -> Rule {
    Rule {
        scope: Scope::All,
        impairment,
    }
}

fn between(a: u32, b: u32, impairment: Impairment) -> Rule {
    Rule {
        scope: Scope::between(a, b),
        impairment,
    }
}

fn loss(p: f64) -> Impairment {
    Impairment {
        loss: p,
        ..Default::default()
    }
}

fn delay(ms: u64) -> Impairment {
    Impairment {
        delay: Duration::from_millis(ms),
        ..Default::default()
    }
}

fn seq(frame: &[u8]) -> u32 {
    u32::from_be_bytes(frame[14..18].try_into().unwrap())
}

/// Send `frames` from `tx` in small chunks, running the switch and draining `rx` in between,
/// then collect what still arrives within `window`. Returns what `rx` received.
fn exchange(
    h: &mut Harness,
    tx: &VdeClient,
    rx: &VdeClient,
    frames: &[Vec<u8>],
    window: Duration,
) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    for chunk in frames.chunks(16) {
        for f in chunk {
            while tx.send(f).is_err() {
                h.turn(Duration::from_millis(1), true);
            }
        }
        h.turn(Duration::ZERO, true);
        while let Some(f) = rx.try_recv() {
            got.push(f);
        }
    }
    got.extend(rx.collect(window, &mut h.pump()));
    got
}

fn numbered(n: u32, len: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| patterned(len, mac(1), i)).collect()
}

fn within_binomial_band(count: usize, n: usize, p: f64, sigmas: f64) -> bool {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (count as f64 - mean).abs() <= sigmas * sd
}

#[test]
fn loss_half_drops_about_half_and_counts_them() {
    let s = Scratch::new("loss");
    let mut h = hub(&s, 1);
    let a = connect(&mut h, "a");
    let b = connect(&mut h, "b");
    h.sw_mut().apply(all(loss(0.5))).unwrap();
    let n = 2000;

    let got = exchange(&mut h, &a, &b, &numbered(n, 100), QUIET);

    assert!(
        within_binomial_band(got.len(), n as usize, 0.5, 5.0),
        "{}",
        got.len()
    );
    let st = h.sw().stats();
    assert_eq!(st.faults.dropped_loss, u64::from(n) - got.len() as u64);
    assert_eq!(st.drops.total(), 0);
    let ports = h.sw().ports();
    assert_eq!(
        ports[1].counters.faults.dropped_loss,
        st.faults.dropped_loss
    );
    assert_eq!(
        h.sw().fault_stats(),
        vec![(
            Some(Scope::All),
            FaultCounters {
                dropped_loss: st.faults.dropped_loss,
                ..Default::default()
            }
        )]
    );
}

/// The sequence numbers `b` receives from `a` through a fresh switch seeded with `seed`.
fn survivors(seed: u64, tag: &str) -> Vec<u32> {
    let s = Scratch::new(tag);
    let mut h = hub(&s, seed);
    let a = connect(&mut h, "a");
    let b = connect(&mut h, "b");
    let c = connect(&mut h, "c"); // other traffic in between must not shift a→b
    h.sw_mut().apply(all(loss(0.3))).unwrap();
    let mut got = Vec::new();
    for f in numbered(500, 80) {
        a.send(&f).unwrap();
        c.send(&patterned(60, mac(3), 0)).unwrap();
        h.turn(Duration::ZERO, true);
        while let Some(f) = b.try_recv() {
            if f[11] == 1 {
                got.push(seq(&f));
            }
        }
        while a.try_recv().is_some() {}
    }
    got.extend(
        b.collect(QUIET, &mut h.pump())
            .iter()
            .filter(|f| f[11] == 1)
            .map(|f| seq(f)),
    );
    got
}

#[test]
fn same_seed_drops_the_same_frames_end_to_end_and_another_seed_does_not() {
    let first = survivors(77, "seedA");
    let again = survivors(77, "seedB");
    let other = survivors(78, "seedC");

    assert_eq!(first, again);
    assert_ne!(first, other);
}

#[test]
fn partition_drops_both_ways_and_heal_restores() {
    let s = Scratch::new("part");
    let mut h = hub(&s, 0);
    let a = connect(&mut h, "a");
    let b = connect(&mut h, "b");
    let c = connect(&mut h, "c");
    let (pa, pc) = (a.port_number().unwrap(), c.port_number().unwrap());
    let pb = b.port_number().unwrap();
    h.sw_mut().partition(vec![vec![pa, pb], vec![pc]]).unwrap();

    a.send(&patterned(60, mac(1), 1)).unwrap();
    c.send(&patterned(60, mac(3), 2)).unwrap();
    let at_b = b.collect(QUIET, &mut h.pump());
    let at_c = c.collect(Duration::ZERO, &mut h.pump());
    let at_a = a.collect(Duration::ZERO, &mut h.pump());

    assert_eq!(at_b.iter().map(|f| seq(f)).collect::<Vec<_>>(), vec![1]);
    assert!(at_c.is_empty() && at_a.is_empty(), "{at_c:?} {at_a:?}");
    assert_eq!(h.sw().stats().faults.dropped_partition, 3);

    h.sw_mut().heal();
    c.send(&patterned(60, mac(3), 3)).unwrap();
    assert!(a.recv(QUIET, &mut h.pump()).is_some(), "healed");
    assert!(h.sw().rules().is_empty() && h.sw().current_partition().is_none());
}

#[test]
fn between_rule_leaves_a_third_port_unaffected() {
    let s = Scratch::new("betw");
    let mut h = hub(&s, 0);
    let a = connect(&mut h, "a");
    let b = connect(&mut h, "b");
    let c = connect(&mut h, "c");
    let (pa, pb) = (a.port_number().unwrap(), b.port_number().unwrap());
    h.sw_mut().apply(between(pb, pa, loss(1.0))).unwrap();

    for i in 0..50 {
        a.send(&patterned(70, mac(1), i)).unwrap();
    }
    let at_c = c.collect(QUIET, &mut h.pump());
    let at_b = b.collect(Duration::ZERO, &mut h.pump());

    assert_eq!(at_c.len(), 50);
    assert!(at_b.is_empty());
    let ports = h.sw().ports();
    assert_eq!(ports[1].counters.faults.dropped_loss, 50);
    assert!(ports[2].counters.faults.is_zero());
}

#[test]
fn delay_holds_frames_until_the_switch_deadline_then_delivers_in_order() {
    let s = Scratch::new("delay");
    let mut h = hub(&s, 0);
    let a = connect(&mut h, "a");
    let b = connect(&mut h, "b");
    h.sw_mut()
        .apply(all(Impairment {
            delay: Duration::from_millis(250),
            jitter: Duration::from_millis(50),
            ..Default::default()
        }))
        .unwrap();
    let frames = numbered(200, 300);
    let sent_at = Instant::now();
    for f in &frames {
        a.send(f).unwrap();
        h.turn(Duration::ZERO, true);
    }
    h.turn(Duration::ZERO, true);

    let deadline = h.sw().next_deadline().expect("a release is scheduled");
    let early = b.try_recv();
    let got = b.collect(Duration::from_millis(800), &mut h.pump());

    assert!(early.is_none(), "nothing before the delay");
    assert!(deadline >= sent_at + Duration::from_millis(200));
    assert_eq!(
        got, frames,
        "all, byte-exact, in order (jitter never reorders)"
    );
    let st = h.sw().stats();
    assert_eq!((st.faults.delayed, st.queued_frames), (200, 0));
}

#[test]
fn delayed_frames_arrive_no_earlier_than_the_delay() {
    let s = Scratch::new("dmin");
    let mut h = hub(&s, 0);
    let a = connect(&mut h, "a");
    let b = connect(&mut h, "b");
    h.sw_mut().apply(all(delay(50))).unwrap();

    let t0 = Instant::now();
    a.send(&patterned(60, mac(1), 1)).unwrap();
    let got = b.recv(Duration::from_secs(2), &mut h.pump());
    let took = t0.elapsed();

    assert!(got.is_some());
    assert!(took >= Duration::from_millis(50), "{took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[test]
fn tagged_and_jumbo_frames_stay_byte_exact_through_the_delay_queue() {
    let s = Scratch::new("exact");
    let mut h = hub(&s, 0);
    let a = connect(&mut h, "a");
    let b = connect(&mut h, "b");
    h.sw_mut().apply(all(delay(5))).unwrap();
    let frames = vec![
        tagged(mac(1), 10),
        patterned(9000, mac(1), 2),
        patterned(14, mac(1), 3),
    ];

    let got = exchange(&mut h, &a, &b, &frames, QUIET);

    assert_eq!(got, frames);
}

#[test]
fn duplicate_one_delivers_every_frame_twice_in_a_row() {
    let s = Scratch::new("dup");
    let mut h = hub(&s, 0);
    let a = connect(&mut h, "a");
    let b = connect(&mut h, "b");
    h.sw_mut()
        .apply(all(Impairment {
            duplicate: 1.0,
            ..Default::default()
        }))
        .unwrap();
    let frames = numbered(20, 64);

    let got = exchange(&mut h, &a, &b, &frames, QUIET);

    let want: Vec<Vec<u8>> = frames.iter().flat_map(|f| [f.clone(), f.clone()]).collect();
    assert_eq!(got, want);
    assert_eq!(h.sw().stats().faults.duplicated, 20);
}

#[test]
fn reorder_with_delay_lets_chosen_frames_overtake_and_loses_none() {
    let s = Scratch::new("reord");
    let mut h = hub(&s, 5);
    let a = connect(&mut h, "a");
    let b = connect(&mut h, "b");
    h.sw_mut()
        .apply(all(Impairment {
            delay: Duration::from_millis(20),
            reorder: 0.3,
            ..Default::default()
        }))
        .unwrap();

    let got = exchange(
        &mut h,
        &a,
        &b,
        &numbered(100, 64),
        Duration::from_millis(200),
    );

    let order: Vec<u32> = got.iter().map(|f| seq(f)).collect();
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..100).collect::<Vec<_>>(), "every frame once");
    assert_ne!(order, sorted, "some frames overtook");
    let reordered = h.sw().stats().faults.reordered;
    assert!((1..100).contains(&reordered), "{reordered}");
}

#[test]
fn rate_limit_paces_a_burst_and_drops_beyond_the_backlog() {
    // 1 Mbit/s, 1250-byte frames (10 ms each): 54 of an 80-frame burst fit in the bucket
    // (3028 bytes) plus the backlog (64 KiB); the last of them leaves (54·1250−3028)·8 µs =
    // 515.8 ms later. A slow machine refills the bucket a little while the burst is read.
    let s = Scratch::new("rate");
    let mut h = hub(&s, 0);
    let a = connect(&mut h, "a");
    let b = connect(&mut h, "b");
    h.sw_mut()
        .apply(all(Impairment {
            rate: Some(1_000_000),
            ..Default::default()
        }))
        .unwrap();
    let t0 = Instant::now();
    for f in numbered(80, 1250) {
        a.send(&f).unwrap();
    }

    let mut got = Vec::new();
    let mut last = t0;
    while t0.elapsed() < Duration::from_millis(1500) {
        h.turn(Duration::from_millis(2), true);
        while let Some(f) = b.try_recv() {
            got.push(f);
            last = Instant::now();
        }
    }

    assert!((54..=58).contains(&got.len()), "{}", got.len());
    assert_eq!(h.sw().stats().faults.dropped_rate, 80 - got.len() as u64);
    assert!(last - t0 >= Duration::from_millis(515), "{:?}", last - t0);
    let seqs: Vec<u32> = got.iter().map(|f| seq(f)).collect();
    assert_eq!(
        seqs,
        (0..got.len() as u32).collect::<Vec<_>>(),
        "a prefix, in order"
    );
}

#[test]
fn delay_queue_full_drops_and_counts_overflow() {
    let s = Scratch::new("ovfl");
    let mut h = hub(&s, 0);
    let a = connect(&mut h, "a");
    let b = connect(&mut h, "b");
    h.sw_mut().apply(all(delay(60_000))).unwrap();
    let n = QUEUE_MAX_FRAMES + 100;

    for chunk in numbered(n as u32, 20).chunks(50) {
        for f in chunk {
            while a.send(f).is_err() {
                h.turn(Duration::from_millis(1), true);
            }
        }
        h.turn(Duration::ZERO, true);
    }
    h.run_for(QUIET);

    let st = h.sw().stats();
    assert_eq!(st.queued_frames, QUEUE_MAX_FRAMES);
    assert_eq!(st.faults.dropped_overflow, 100);
    assert_eq!(st.faults.delayed, QUEUE_MAX_FRAMES as u64);
    assert!(b.try_recv().is_none());
    drop(b);
    h.run_for(QUIET);
    let st = h.sw().stats();
    assert_eq!(
        st.queued_frames, 0,
        "a closed endpoint's queue is discarded"
    );
    assert_eq!(st.drops.receiver_gone, QUEUE_MAX_FRAMES as u64);
}

#[test]
fn heal_keeps_already_delayed_frames_and_new_frames_pass_at_once() {
    let s = Scratch::new("heal");
    let mut h = hub(&s, 0);
    let a = connect(&mut h, "a");
    let b = connect(&mut h, "b");
    h.sw_mut().apply(all(delay(500))).unwrap();
    a.send(&patterned(60, mac(1), 1)).unwrap();
    h.run_for(Duration::from_millis(10));

    h.sw_mut().heal();
    let queued = h.sw().stats().queued_frames;
    a.send(&patterned(60, mac(1), 2)).unwrap();
    let got = b.collect(Duration::from_millis(1000), &mut h.pump());

    assert_eq!(queued, 1, "frame 1 still waits after heal");
    assert_eq!(got.iter().map(|f| seq(f)).collect::<Vec<_>>(), vec![2, 1]);
}

#[test]
fn unlabelled_endpoints_see_only_the_all_rule_until_labelled() {
    let s = Scratch::new("label");
    let mut h = Harness::new(&s.join("sw"), SwitchConfig::default());
    let a = connect(&mut h, "a");
    let b = connect(&mut h, "b");
    h.sw_mut().apply(between(10, 20, loss(1.0))).unwrap();

    a.send(&patterned(60, mac(1), 1)).unwrap();
    let before = b.collect(QUIET, &mut h.pump());
    let ids: Vec<u32> = h.sw().ports().iter().map(|p| p.endpoint).collect();
    h.sw_mut().label_endpoint(ids[0], 10).unwrap();
    h.sw_mut().label_endpoint(ids[1], 20).unwrap();
    a.send(&patterned(60, mac(1), 2)).unwrap();
    let after = b.collect(QUIET, &mut h.pump());

    assert_eq!(before.len(), 1, "unlabelled: pair rule does not apply");
    assert!(after.is_empty(), "labelled: pair rule applies");
    assert_eq!(h.sw().ports()[1].label, Some(20));
    assert!(matches!(
        h.sw_mut().label_endpoint(9999, 1),
        Err(VdeError::UnknownEndpoint { endpoint: 9999 })
    ));
}

#[test]
fn port_opened_reports_the_peer_pid() {
    let s = Scratch::new("pid");
    let mut h = hub(&s, 0);
    let _a = connect(&mut h, "no pid in this description");

    let pid = h.log.iter().find_map(|e| match e {
        SwitchEvent::PortOpened { pid, .. } => Some(*pid),
        _ => None,
    });

    assert_eq!(pid, Some(Some(std::process::id())));
    assert_eq!(h.sw().ports()[0].pid, Some(std::process::id()));
}

#[test]
fn apply_bad_rule_is_refused_and_changes_nothing() {
    let s = Scratch::new("bad");
    let mut h = hub(&s, 0);
    h.sw_mut().apply(all(loss(0.1))).unwrap();

    let err = h.sw_mut().apply(all(loss(1.5))).unwrap_err();
    let part = h.sw_mut().partition(vec![vec![1, 2], vec![2]]).unwrap_err();

    assert!(err.to_string().starts_with("loss"), "{err}");
    assert_eq!(part, ImpairError::LabelInTwoGroups { label: 2 });
    assert_eq!(h.sw().rules(), vec![all(loss(0.1))]);
    assert!(h.sw().current_partition().is_none());
}

fn read_pcap(path: &std::path::Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let mut at = 24;
    let mut out = Vec::new();
    while at < bytes.len() {
        let incl = u32::from_ne_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        out.push(bytes[at + 16..at + 16 + incl].to_vec());
        at += 16 + incl;
    }
    out
}

#[test]
fn capture_under_faults_records_each_delivered_frame_once_at_first_delivery() {
    let s = Scratch::new("fcap");
    let pcap = s.join("f.pcap");
    let mut h = Harness::new(
        &s.join("sw"),
        SwitchConfig {
            capture: Some(pcap.clone()),
            label_by_port: true,
            ..SwitchConfig::default()
        },
    );
    let a = connect(&mut h, "a");
    let b = connect(&mut h, "b");
    let c = connect(&mut h, "c");
    let (pa, pb, pc) = (
        a.port_number().unwrap(),
        b.port_number().unwrap(),
        c.port_number().unwrap(),
    );
    h.sw_mut().apply(between(pa, pb, delay(30))).unwrap();
    h.sw_mut().apply(between(pa, pc, delay(60))).unwrap();
    h.sw_mut().apply(all(loss(1.0))).unwrap(); // b<->c: nothing gets through
    let (f1, f2) = (patterned(80, mac(1), 1), patterned(80, mac(2), 2));

    a.send(&f1).unwrap(); // delayed to b (30 ms) and c (60 ms): captured once
    b.send(&f2).unwrap(); // delayed to a, lost to c
    c.send(&patterned(80, mac(3), 3)).unwrap(); // to a (delayed), lost to b
    h.run_for(Duration::from_millis(5));
    h.sw_mut().partition(vec![vec![pa], vec![pb, pc]]).unwrap();
    let f4 = patterned(80, mac(1), 4);
    a.send(&f4).unwrap(); // partitioned from both: delivered to nobody, not captured
    h.run_for(Duration::from_millis(200));
    h.shutdown();

    let mut captured: Vec<u32> = read_pcap(&pcap).iter().map(|f| seq(f)).collect();
    captured.sort_unstable();
    assert_eq!(captured, vec![1, 2, 3]);
    drop((a, b, c));
}
