//! Unit tests of guest time in the pending-op controller: timeouts that the host stretches
//! by the time it withheld from the machine, waits stopped and killed by the host, and the
//! pacing verdicts told to a running wait. Same scripted machine as [`super`].

use super::*;

#[test]
fn a_starved_command_gets_its_timeout_in_guest_time_and_the_log_says_how_far_it_was_stretched() {
    let mut w = World::new(vec![Fake::new("m")]);
    let op = run(&w, "make", Some(Duration::from_secs(60)), true);
    let op = waiting(w.poll_at(op, 0.0));
    // By 60 s of wall time the host had withheld 20 s: 20 s to go.
    w.machines[0].withheld = Duration::from_secs(20);
    let op = waiting(w.poll_at(op, 60.0));
    assert!(w.machines[0].told.is_empty());
    assert_eq!(op.wake_at(), Some(w.at(80.0)));
    w.machines[0].withheld = Duration::from_secs(35);
    let op = waiting(w.poll_at(op, 80.0));
    assert!(w.machines[0].told.is_empty());
    let op = waiting(w.poll_at(op, 95.0));
    assert_eq!(w.machines[0].told, vec![HostMessage::Kill]);
    assert!(
        w.lines.contains(
            "command `make`: timeout 60.0 s reached after 95.0 s wall; the host withheld the CPU for 35.0 s"
        ),
        "{:?}",
        w.lines.0.borrow()
    );
    w.machines[0].result = Some(result(124, b""));
    assert!(line(w.poll_at(op, 95.1)).contains("\"status\":124"));
}

#[test]
fn a_wait_is_stopped_when_its_guest_time_is_spent_then_killed() {
    let mut w = World::new(vec![Fake::new("m")]);
    let last = WaitLimits {
        timeout: Some(Duration::from_secs(10)),
        age: Duration::from_secs(2),
        withheld: Duration::from_secs(1),
        slice: None,
    };
    let op = waiting(w.poll_at(wait_op(&w, last), 0.0));
    w.machines[0].withheld = Duration::from_secs(4);
    let op = waiting(w.poll_at(op, 8.0));
    assert!(
        w.machines[0].told.is_empty(),
        "8 s wall, 4 s of it withheld"
    );
    let op = waiting(w.poll_at(op, 12.0));
    assert_eq!(w.machines[0].told, vec![HostMessage::Stop]);
    assert_eq!(op.wake_at(), Some(w.at(12.5)));
    let op = waiting(w.poll_at(op, 12.5));
    assert_eq!(
        w.machines[0].told,
        vec![HostMessage::Stop, HostMessage::Kill]
    );
    w.machines[0].result = Some(ShellResult {
        looped: false,
        ..result(124, b"")
    });
    let reply = line(w.poll_at(op, 12.6));
    // 2 s before, 8 s now; 1 s withheld before, 4 s now; 13 s wall in all (12.6 + the 1 s
    // withheld before; the age of 2 s was guest time).
    assert!(
        reply.contains("action timed out after 10.60 seconds (timeout=10.0); timeout 10.0 s reached after 15.6 s wall; the host withheld the CPU for 5.0 s"),
        "{reply}"
    );
}

#[test]
fn a_wait_is_told_when_the_hosts_verdict_changes_and_only_then() {
    let mut w = World::new(vec![Fake::new("m")]);
    let sliced = WaitLimits {
        timeout: None,
        age: Duration::ZERO,
        withheld: Duration::ZERO,
        slice: None,
    };
    let op = waiting(w.poll_at(wait_op(&w, sliced), 0.0));
    assert_eq!(op.wake_at(), Some(w.at(0.5)), "the next look at the host");
    let op = waiting(w.poll_at(op, 0.5));
    assert!(w.machines[0].told.is_empty(), "still contended");
    w.machines[0].verdict = Verdict::Idle;
    let op = waiting(w.poll_at(op, 0.7));
    assert!(w.machines[0].told.is_empty(), "not due yet");
    let op = waiting(w.poll_at(op, 1.0));
    assert_eq!(w.machines[0].told, vec![HostMessage::PaceFast]);
    assert!(w.lines.contains("pacing the wait for `[ -e '/x' ]` fast"));
    let op = waiting(w.poll_at(op, 1.5));
    w.machines[0].verdict = Verdict::Contended;
    let _ = waiting(w.poll_at(op, 2.0));
    assert_eq!(
        w.machines[0].told,
        vec![HostMessage::PaceFast, HostMessage::PaceBudget]
    );
}
