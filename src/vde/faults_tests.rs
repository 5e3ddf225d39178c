//! Unit tests of the fault engine: determinism, statistics within binomial bands, rate math,
//! ordering, scoping and atomic application. Time is simulated (`t0 + n ms`), never measured.

use std::time::{Duration, Instant};

use super::*;
use crate::vde::impair::Impairment;

fn peer(label: Label) -> Peer {
    Peer {
        label: Some(label),
        endpoint: label + 100,
    }
}

fn unlabelled(endpoint: u32) -> Peer {
    Peer {
        label: None,
        endpoint,
    }
}

fn engine_with(scope: Scope, impairment: Impairment, seed: u64) -> FaultEngine {
    let mut e = FaultEngine::new(1, seed);
    e.apply(Rule { scope, impairment }).unwrap();
    e
}

fn lossy(p: f64) -> Impairment {
    Impairment {
        loss: p,
        ..Default::default()
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Indices (among `n` deliveries on `src → dst`) that were dropped.
fn dropped_indices(e: &mut FaultEngine, src: Peer, dst: Peer, n: usize) -> Vec<usize> {
    let t0 = Instant::now();
    (0..n)
        .filter(|&i| {
            let Route::Impaired { link, rule } = e.route(src, dst) else {
                panic!("not impaired");
            };
            matches!(
                e.decide(link, rule, 100, t0 + ms(i as u64)),
                Decision::Drop(_)
            )
        })
        .collect()
}

/// Within `sigmas` standard deviations of a binomial(n, p) mean.
fn within_binomial_band(count: usize, n: usize, p: f64, sigmas: f64) -> bool {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (count as f64 - mean).abs() <= sigmas * sd
}

#[test]
fn decide_same_seed_drops_the_same_frame_indices() {
    let mut a = engine_with(Scope::All, lossy(0.3), 42);
    let mut b = engine_with(Scope::All, lossy(0.3), 42);

    let da = dropped_indices(&mut a, peer(1), peer(2), 2000);
    let db = dropped_indices(&mut b, peer(1), peer(2), 2000);

    assert_eq!(da, db);
    assert!(!da.is_empty());
}

#[test]
fn decide_different_seeds_drop_different_indices() {
    let mut a = engine_with(Scope::All, lossy(0.3), 42);
    let mut b = engine_with(Scope::All, lossy(0.3), 43);

    let da = dropped_indices(&mut a, peer(1), peer(2), 2000);
    let db = dropped_indices(&mut b, peer(1), peer(2), 2000);

    assert_ne!(da, db);
}

#[test]
fn decide_traffic_on_other_links_does_not_shift_a_links_decisions() {
    let mut quiet = engine_with(Scope::All, lossy(0.3), 7);
    let mut busy = engine_with(Scope::All, lossy(0.3), 7);
    let t0 = Instant::now();

    let alone = dropped_indices(&mut quiet, peer(1), peer(2), 500);
    let mut interleaved = Vec::new();
    for i in 0..500 {
        for (s, d) in [
            (peer(2), peer(1)),
            (peer(1), peer(3)),
            (unlabelled(9), peer(2)),
        ] {
            if let Route::Impaired { link, rule } = busy.route(s, d) {
                busy.decide(link, rule, 60, t0);
            }
        }
        let Route::Impaired { link, rule } = busy.route(peer(1), peer(2)) else {
            panic!("not impaired");
        };
        if matches!(busy.decide(link, rule, 100, t0), Decision::Drop(_)) {
            interleaved.push(i);
        }
    }

    assert_eq!(alone, interleaved);
}

#[test]
fn decide_loss_rate_is_within_a_binomial_band() {
    for p in [0.01, 0.1, 0.5, 0.9] {
        let mut e = engine_with(Scope::All, lossy(p), 1234);
        let n = 100_000;

        let dropped = dropped_indices(&mut e, peer(1), peer(2), n).len();

        assert!(
            within_binomial_band(dropped, n, p, 5.0),
            "loss {p}: {dropped} of {n} dropped"
        );
    }
}

#[test]
fn decide_loss_zero_and_one_are_exact() {
    let mut none = engine_with(Scope::All, lossy(0.0), 1);
    none.apply(Rule {
        scope: Scope::between(1, 2),
        impairment: Impairment {
            delay: ms(1),
            ..Default::default()
        },
    })
    .unwrap();
    let mut all = engine_with(Scope::All, lossy(1.0), 1);

    assert_eq!(
        dropped_indices(&mut none, peer(1), peer(2), 10_000).len(),
        0
    );
    assert_eq!(
        dropped_indices(&mut all, peer(1), peer(2), 10_000).len(),
        10_000
    );
}

#[test]
fn decide_delay_with_jitter_stays_in_band_and_keeps_link_order() {
    let imp = Impairment {
        delay: ms(50),
        jitter: ms(10),
        ..Default::default()
    };
    let mut e = engine_with(Scope::All, imp, 5);
    let t0 = Instant::now();
    let Route::Impaired { link, rule } = e.route(peer(1), peer(2)) else {
        panic!("not impaired");
    };
    let mut previous = t0;
    let mut offsets = Vec::new();

    for i in 0..2000u64 {
        let now = t0 + Duration::from_millis(i * 20);
        let Decision::Deliver {
            first: Release::At(at),
            ..
        } = e.decide(link, rule, 100, now)
        else {
            panic!("frame {i} not delayed");
        };
        assert!(at >= previous, "frame {i} overtook its predecessor");
        previous = at;
        offsets.push(at - now);
    }

    let min = *offsets.iter().min().unwrap();
    let max = *offsets.iter().max().unwrap();
    assert!(min >= ms(40) && max <= ms(60), "{min:?}..{max:?}");
    assert!(
        min < ms(42) && max > ms(58),
        "jitter spread {min:?}..{max:?}"
    );
}

#[test]
fn decide_reorder_with_delay_sends_chosen_frames_at_once() {
    let imp = Impairment {
        delay: ms(10),
        reorder: 0.25,
        ..Default::default()
    };
    let mut e = engine_with(Scope::All, imp, 9);
    let t0 = Instant::now();
    let Route::Impaired { link, rule } = e.route(peer(1), peer(2)) else {
        panic!("not impaired");
    };
    let n = 20_000;

    let mut now_count = 0;
    for i in 0..n {
        match e.decide(link, rule, 100, t0 + ms(i as u64)) {
            Decision::Deliver {
                first: Release::Now,
                reordered: true,
                ..
            } => now_count += 1,
            Decision::Deliver {
                first: Release::At(_),
                reordered: false,
                ..
            } => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    assert!(within_binomial_band(now_count, n, 0.25, 5.0), "{now_count}");
}

#[test]
fn decide_reorder_without_delay_holds_a_frame_that_the_next_overtakes() {
    let imp = Impairment {
        reorder: 1.0,
        ..Default::default()
    };
    let mut e = engine_with(Scope::All, imp, 9);
    let t0 = Instant::now();
    let Route::Impaired { link, rule } = e.route(peer(1), peer(2)) else {
        panic!("not impaired");
    };

    let first = e.decide(link, rule, 100, t0);
    e.apply(Rule {
        scope: Scope::All,
        impairment: Impairment {
            loss: 0.0,
            rate: Some(MAX_RATE_FOR_TEST),
            ..Default::default()
        },
    })
    .unwrap();
    let second = e.decide(link, RuleId::All, 100, t0 + Duration::from_micros(10));

    assert_eq!(
        first,
        Decision::Deliver {
            first: Release::At(t0 + REORDER_HOLD),
            duplicate: Duplicate::None,
            reordered: true
        }
    );
    assert!(
        matches!(
            second,
            Decision::Deliver {
                first: Release::Now,
                ..
            }
        ),
        "the next frame overtakes: {second:?}"
    );
}

const MAX_RATE_FOR_TEST: u64 = crate::vde::impair::MAX_RATE;

#[test]
fn decide_duplicate_rate_is_within_a_binomial_band_and_copy_follows() {
    let imp = Impairment {
        duplicate: 0.2,
        delay: ms(5),
        jitter: ms(5),
        ..Default::default()
    };
    let mut e = engine_with(Scope::All, imp, 11);
    let t0 = Instant::now();
    let Route::Impaired { link, rule } = e.route(peer(1), peer(2)) else {
        panic!("not impaired");
    };
    let n = 20_000;

    let mut dups = 0;
    for i in 0..n {
        if let Decision::Deliver {
            first: Release::At(a),
            duplicate: Duplicate::Copy(Release::At(b)),
            ..
        } = e.decide(link, rule, 100, t0 + ms(i as u64 * 20))
        {
            assert!(b >= a, "copy before original");
            dups += 1;
        }
    }

    assert!(within_binomial_band(dups, n, 0.2, 5.0), "{dups}");
}

#[test]
fn decide_rate_burst_then_paced_then_dropped_when_backlog_full() {
    // 1 Mbit/s and 1250-byte frames: 10 ms each. The bucket holds RATE_BURST_BYTES (3028):
    // two frames pass at once; then frame k leaves at (1250 k - 3028) * 8 µs; a frame is
    // dropped once more than RATE_QUEUE_BYTES (65536) would wait, i.e. from the 55th frame.
    let imp = Impairment {
        rate: Some(1_000_000),
        ..Default::default()
    };
    let mut e = engine_with(Scope::All, imp, 1);
    let t0 = Instant::now();
    let Route::Impaired { link, rule } = e.route(peer(1), peer(2)) else {
        panic!("not impaired");
    };

    let decisions: Vec<Decision> = (0..100).map(|_| e.decide(link, rule, 1250, t0)).collect();

    let releases: Vec<Release> = decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Deliver { first, .. } => Some(*first),
            Decision::Drop(_) => None,
        })
        .collect();
    assert_eq!(releases.len(), 54);
    assert_eq!(&releases[..2], &[Release::Now, Release::Now]);
    assert_eq!(
        releases[2],
        Release::At(t0 + Duration::from_micros((3 * 1250 - 3028) * 8))
    );
    assert_eq!(
        releases[53],
        Release::At(t0 + Duration::from_micros((54 * 1250 - 3028) * 8))
    );
    assert!(decisions[54..]
        .iter()
        .all(|d| *d == Decision::Drop(Cause::Rate)));
}

#[test]
fn decide_rate_long_run_delivers_the_configured_bandwidth() {
    // Offer 2 Mbit/s (one 1000-byte frame per 4 ms) to a 500 kbit/s link for 100 s.
    let imp = Impairment {
        rate: Some(500_000),
        ..Default::default()
    };
    let mut e = engine_with(Scope::All, imp, 1);
    let t0 = Instant::now();
    let Route::Impaired { link, rule } = e.route(peer(1), peer(2)) else {
        panic!("not impaired");
    };

    let mut last = t0;
    let mut delivered_bits = 0u64;
    for i in 0..25_000u64 {
        let now = t0 + ms(i * 4);
        if let Decision::Deliver { first, .. } = e.decide(link, rule, 1000, now) {
            delivered_bits += 8000;
            last = match first {
                Release::Now => now,
                Release::At(at) => at,
            };
        }
    }

    let secs = (last - t0).as_secs_f64();
    let bps = (delivered_bits - RATE_BURST_BYTES * 8) as f64 / secs;
    assert!((bps - 500_000.0).abs() < 500.0, "{bps} bit/s over {secs} s");
}

#[test]
fn route_partition_drops_between_groups_only() {
    let mut e = FaultEngine::new(1, 0);
    e.partition(vec![vec![1, 2], vec![3]]).unwrap();

    assert_eq!(e.route(peer(1), peer(3)), Route::Partitioned);
    assert_eq!(e.route(peer(3), peer(2)), Route::Partitioned);
    assert_eq!(e.route(peer(1), peer(2)), Route::Clear);
    assert_eq!(e.route(peer(4), peer(3)), Route::Clear, "ungrouped label");
    assert_eq!(e.route(unlabelled(7), peer(3)), Route::Clear);
    e.heal();
    assert_eq!(e.route(peer(1), peer(3)), Route::Clear);
    assert!(!e.is_active());
}

#[test]
fn route_pair_rule_overrides_all_rule_and_zero_pair_rule_exempts() {
    let mut e = engine_with(Scope::All, lossy(1.0), 3);
    e.apply(Rule {
        scope: Scope::between(2, 1),
        impairment: lossy(0.5),
    })
    .unwrap();
    e.apply(Rule {
        scope: Scope::between(1, 3),
        impairment: Impairment::default(),
    })
    .unwrap();

    assert!(matches!(
        e.route(peer(2), peer(1)),
        Route::Impaired {
            rule: RuleId::Pair(0),
            ..
        }
    ));
    assert!(matches!(
        e.route(peer(2), peer(3)),
        Route::Impaired {
            rule: RuleId::All,
            ..
        }
    ));
    assert_eq!(e.route(peer(3), peer(1)), Route::Clear);
    assert!(matches!(
        e.route(unlabelled(5), peer(1)),
        Route::Impaired {
            rule: RuleId::All,
            ..
        }
    ));
}

#[test]
fn apply_same_scope_replaces_and_zero_all_rule_removes() {
    let mut e = engine_with(Scope::between(1, 2), lossy(0.5), 3);

    e.apply(Rule {
        scope: Scope::between(2, 1),
        impairment: lossy(0.2),
    })
    .unwrap();
    e.apply(Rule {
        scope: Scope::All,
        impairment: lossy(0.1),
    })
    .unwrap();
    e.apply(Rule {
        scope: Scope::All,
        impairment: Impairment::default(),
    })
    .unwrap();

    assert_eq!(
        e.rules(),
        vec![Rule {
            scope: Scope::Between(1, 2),
            impairment: lossy(0.2)
        }]
    );
    assert_eq!(e.route(unlabelled(1), unlabelled(2)), Route::Clear);
}

#[test]
fn apply_invalid_rule_changes_nothing() {
    let mut e = engine_with(Scope::All, lossy(0.1), 3);
    e.partition(vec![vec![1], vec![2]]).unwrap();
    let before = e.rules();

    let bad_rule = e.apply(Rule {
        scope: Scope::All,
        impairment: lossy(2.0),
    });
    let bad_partition = e.partition(vec![vec![1, 3], vec![3]]);

    assert!(bad_rule.is_err() && bad_partition.is_err());
    assert_eq!(e.rules(), before);
    assert_eq!(e.current_partition().unwrap().groups(), &[vec![1], vec![2]]);
}

#[test]
fn apply_beyond_max_pair_rules_is_refused() {
    let mut e = FaultEngine::new(1, 0);
    for i in 0..MAX_PAIR_RULES as u32 {
        e.apply(Rule {
            scope: Scope::between(0, i + 1),
            impairment: lossy(0.1),
        })
        .unwrap();
    }

    let err = e.apply(Rule {
        scope: Scope::between(0, 999_999),
        impairment: lossy(0.1),
    });
    let replace = e.apply(Rule {
        scope: Scope::between(0, 1),
        impairment: lossy(0.2),
    });

    assert_eq!(
        err,
        Err(ImpairError::TooManyRules {
            max: MAX_PAIR_RULES
        })
    );
    assert_eq!(replace, Ok(()), "replacing an existing pair is still fine");
}

#[test]
fn route_link_states_are_bounded_by_max_links() {
    let mut e = engine_with(Scope::All, lossy(0.5), 0);

    for i in 0..(MAX_LINKS as u32 + 100) {
        e.route(unlabelled(i), unlabelled(u32::MAX));
    }

    assert_eq!(e.link_count(), MAX_LINKS);
}

#[test]
fn record_counts_per_scope_and_survives_heal() {
    let mut e = engine_with(Scope::between(1, 2), lossy(1.0), 0);
    let t0 = Instant::now();
    let Route::Impaired { link, rule } = e.route(peer(1), peer(2)) else {
        panic!("not impaired");
    };
    let mut delta = FaultCounters::default();
    for _ in 0..3 {
        e.decide(link, rule, 60, t0).count(&mut delta);
    }

    e.record(rule, &delta);
    e.heal();

    assert_eq!(
        e.scope_stats(),
        vec![(
            Scope::Between(1, 2),
            FaultCounters {
                dropped_loss: 3,
                ..Default::default()
            }
        )]
    );
}
