//! Unit tests of the save rule ([`super`]): components, the choice of cut, the gate's decision.

use super::*;
use std::time::Duration;

fn cand(cut: &str, age_secs: u64) -> Candidate {
    Candidate {
        cut: cut.into(),
        last_used: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 - age_secs),
    }
}

fn ready(cut: Option<&str>) -> Boot {
    Boot::Ready {
        restored: cut.map(str::to_owned),
    }
}

#[test]
fn components_join_machines_sharing_a_vlan_transitively() {
    // 0-1 share vlan 1, 1-2 share vlan 2, 3 is alone, 4 has no vlan.
    let c = components(&[vec![1], vec![1, 2], vec![2], vec![3], vec![]]);
    assert_eq!(c, [0, 0, 0, 3, 4]);
}

#[test]
fn choose_cuts_takes_the_cut_most_members_share() {
    let comp = [0, 0, 0];
    let cands = vec![
        vec![cand("x", 10), cand("y", 1)],
        vec![cand("x", 10)],
        vec![cand("y", 1)],
    ];
    // x covers two members, y (newer) only two as well: the tie goes to the newer one.
    let chosen = choose_cuts(&comp, &cands);
    assert_eq!(chosen, [Some("y".into()), None, Some("y".into())]);
    let cands = vec![vec![cand("x", 10)], vec![cand("x", 10)], vec![cand("y", 1)]];
    assert_eq!(
        choose_cuts(&comp, &cands),
        [Some("x".into()), Some("x".into()), None]
    );
}

#[test]
fn choose_cuts_is_independent_per_component() {
    let comp = [0, 1];
    let cands = vec![vec![cand("a", 5)], vec![cand("b", 5)]];
    assert_eq!(
        choose_cuts(&comp, &cands),
        [Some("a".into()), Some("b".into())]
    );
    assert_eq!(choose_cuts(&comp, &[vec![], vec![]]), [None, None]);
}

#[test]
fn decide_waits_for_every_started_machine() {
    let d = decide(&[0, 1], &[ready(None), Boot::Starting], &[true, true]);
    assert_eq!(d, Decision::Wait);
}

#[test]
fn decide_saves_cold_booted_machines_and_their_started_peers() {
    // 0 and 1 share a vlan: 0 restored, 1 booted cold: both are saved (a new cut).
    let d = decide(
        &[0, 0, 2],
        &[ready(Some("x")), ready(None), Boot::Idle],
        &[true; 3],
    );
    assert_eq!(d, Decision::Save(vec![0, 1]));
}

#[test]
fn decide_releases_when_a_component_came_from_one_cut() {
    let d = decide(
        &[0, 0],
        &[ready(Some("x")), ready(Some("x"))],
        &[true, true],
    );
    assert_eq!(d, Decision::Release);
    // Two cuts in one component: saved again.
    let d = decide(
        &[0, 0],
        &[ready(Some("x")), ready(Some("y"))],
        &[true, true],
    );
    assert_eq!(d, Decision::Save(vec![0, 1]));
}

#[test]
fn decide_skips_components_with_a_failed_or_unkeyed_machine() {
    let d = decide(
        &[0, 0, 2],
        &[ready(None), Boot::Failed, ready(None)],
        &[true; 3],
    );
    assert_eq!(d, Decision::Save(vec![2]));
    let d = decide(&[0, 0], &[ready(None), Boot::Idle], &[true, false]);
    assert_eq!(d, Decision::Release);
    // Nothing started at all.
    assert_eq!(decide(&[0], &[Boot::Idle], &[true]), Decision::Release);
}

#[test]
fn decide_releases_at_once_while_a_whole_component_is_restoring() {
    let restoring = |c: &str| Boot::Restoring(c.into());
    let d = decide(
        &[0, 0, 2],
        &[restoring("x"), ready(Some("x")), Boot::Idle],
        &[true; 3],
    );
    assert_eq!(d, Decision::Release);
    // A cold boot beside it: wait for everybody, then save.
    let d = decide(&[0, 0], &[restoring("x"), Boot::Starting], &[true, true]);
    assert_eq!(d, Decision::Wait);
    // Two cuts in one component: wait, then save again.
    let d = decide(&[0, 0], &[restoring("x"), restoring("y")], &[true, true]);
    assert_eq!(d, Decision::Wait);
}
