//! Unit tests of [`super`], byte by byte (kept beside the module to keep it short).

use super::*;

const SEED: u64 = 0x5eed;

/// A session and a twin nonce source that predicts its nonces.
fn session() -> (ShellSession, NonceSource) {
    (
        ShellSession::new(NonceSource::from_seed(SEED)),
        NonceSource::from_seed(SEED),
    )
}

fn marker(kind: char, nonce: &[u8; NONCE_LEN], n: i64) -> Vec<u8> {
    format!("\x01{kind}{} {n}\x01", std::str::from_utf8(nonce).unwrap()).into_bytes()
}

fn frame(body: &[u8], nonce: &[u8; NONCE_LEN], status: i32) -> Vec<u8> {
    let mut v = body.to_vec();
    v.extend_from_slice(&marker('E', nonce, status.into()));
    v
}

/// Boot to Ready: sentinel (nothing sent), then a first request, which goes behind the setup
/// and its check frame and is answered.
fn ready() -> (ShellSession, NonceSource) {
    let (mut s, mut twin) = session();
    let mut notes = Vec::new();
    s.feed(b"booting...\nSpawning backdoor root shell...\n", &mut notes);
    assert!(
        s.take_outbox().is_empty(),
        "nothing is sent before the first request"
    );
    assert!(s.ready() && s.connected() && !s.in_setup());
    s.submit(&run("first")).unwrap();
    let setup = String::from_utf8(s.take_outbox()).unwrap();
    assert!(setup.starts_with(guest::setup_text(SetupPart::Base)));
    assert!(
        !setup.contains("first"),
        "the request waits for the setup's answer"
    );
    assert!(s.in_setup() && s.connected() && !s.ready());
    assert_eq!(s.submit(&run("second")), Err(SessionError::Busy));
    let check = twin.next_nonce();
    s.feed(&frame(b"", &check, 0), &mut notes);
    let line = String::from_utf8(s.take_outbox()).unwrap();
    let first = twin.next_nonce();
    assert!(line.contains("first") && line.contains(std::str::from_utf8(&first).unwrap()));
    s.feed(&frame(b"1\n", &first, 0), &mut notes);
    assert_eq!(s.take_result().map(|r| r.output), Some(b"1\n".to_vec()));
    assert_eq!(
        notes,
        vec![
            SessionNote::Greeting(b"booting...\nSpawning backdoor root shell...\n".to_vec()),
            SessionNote::Sentinel,
            SessionNote::Ready
        ]
    );
    assert!(s.ready() && s.connected());
    (s, twin)
}

/// What the guest spooled during [`ready`]: the setup's check frame and the first request's.
fn spooled_by_ready() -> usize {
    frame(b"", &[b'0'; NONCE_LEN], 0).len() + frame(b"1\n", &[b'0'; NONCE_LEN], 0).len()
}

fn run(cmd: &str) -> ShellRequest {
    ShellRequest::Run {
        command: cmd.into(),
        timeout: None,
    }
}

fn wait_request(command: &str) -> ShellRequest {
    use super::super::waits::{Pacing, Schedule};
    ShellRequest::Wait {
        check: Box::new(GuestCheck {
            guard: String::new(),
            command: command.into(),
            until_success: true,
            fatal_status: 0,
            watch: None,
        }),
        spec: Box::new(WaitSpec {
            budget: std::time::Duration::from_secs(1),
            pacing: Pacing::new(
                Schedule::Budget,
                std::time::Duration::ZERO,
                crate::machine::waits::PaceMode::Budget,
                false,
            ),
        }),
    }
}

#[test]
fn submit_before_sentinel_is_not_connected() {
    let (mut s, _) = session();
    assert_eq!(s.submit(&run("true")), Err(SessionError::NotConnected));
    assert!(s.take_outbox().is_empty());
}

#[test]
fn setup_check_failure_is_reported_and_not_ready() {
    let (mut s, mut twin) = session();
    let mut notes = Vec::new();
    s.feed(b"Spawning backdoor root shell...\n", &mut notes);
    s.submit(&run("true")).unwrap();
    s.take_outbox();
    s.feed(&frame(b"oops", &twin.next_nonce(), 1), &mut notes);
    assert!(
        matches!(notes.last(), Some(SessionNote::SetupFailed { reason }) if reason.contains("status 1") && reason.contains("oops")),
        "{notes:?}"
    );
    assert!(
        s.take_outbox().is_empty(),
        "the request behind a failed setup is never sent"
    );
    assert!(!s.connected());
    assert!(s.unusable().is_some());
    assert_eq!(s.submit(&run("true")), Err(SessionError::NotConnected));
}

#[test]
fn setup_that_never_answers_fails_when_the_machine_gives_up() {
    let (mut s, _) = session();
    let mut notes = Vec::new();
    s.feed(b"Spawning backdoor root shell...\n", &mut notes);
    assert!(!s.in_setup(), "nothing is sent before the first request");
    s.submit(&run("true")).unwrap();
    assert!(s.in_setup());
    s.fail_setup("no answer".into(), &mut notes);
    assert_eq!(s.unusable(), Some("no answer"));
    assert!(!s.in_setup() && !s.connected());
    s.restart();
    assert_eq!(s.unusable(), None);
}

#[test]
fn request_abandoned_behind_the_setup_is_never_sent() {
    let (mut s, mut twin) = session();
    let mut notes = Vec::new();
    s.feed(b"Spawning backdoor root shell...\n", &mut notes);
    s.submit(&run("late")).unwrap();
    s.take_outbox();
    s.abandon("no answer".into());
    s.feed(&frame(b"", &twin.next_nonce(), 0), &mut notes);
    assert!(s.take_outbox().is_empty() && s.ready() && s.unusable().is_none());
    s.submit(&run("next")).unwrap();
    let line = String::from_utf8(s.take_outbox()).unwrap();
    assert!(line.contains("next") && !line.contains("late"));
}

#[test]
fn unencodable_first_request_is_refused_before_the_setup() {
    let (mut s, _) = session();
    let mut notes = Vec::new();
    s.feed(b"Spawning backdoor root shell...\n", &mut notes);
    let err = s.submit(&run("echo a\0b"));
    assert!(matches!(err, Err(SessionError::Encode(_))));
    assert!(s.take_outbox().is_empty() && s.ready());
}

#[test]
fn abandoned_request_makes_the_shell_unusable_until_its_frame_ends() {
    let (mut s, mut twin) = ready();
    s.submit(&run("hang")).unwrap();
    s.take_outbox();
    let n = twin.next_nonce();
    s.abandon("no answer".into());
    assert_eq!(s.unusable(), Some("no answer"));
    assert_eq!(s.submit(&run("true")), Err(SessionError::NotConnected));
    let mut notes = Vec::new();
    s.feed(&frame(b"late", &n, 0), &mut notes);
    assert!(s.ready() && s.unusable().is_none());
    assert!(
        s.take_result().is_none(),
        "nobody waits for the abandoned result"
    );
}

#[test]
fn guest_without_spool_skips_the_output_check() {
    let (mut s, mut twin) = session();
    let mut notes = Vec::new();
    s.feed(b"Spawning backdoor root shell...\n", &mut notes);
    s.submit(&run("big")).unwrap();
    s.take_outbox();
    s.feed(&frame(b"", &twin.next_nonce(), 3), &mut notes);
    assert!(notes.contains(&SessionNote::NoSpool) && !s.ready());
    assert!(String::from_utf8(s.take_outbox()).unwrap().contains("big"));
    let body = vec![b'q'; 2 * VERIFY_MIN_BYTES as usize];
    s.feed(&frame(&body, &twin.next_nonce(), 0), &mut notes);
    assert!(
        s.take_outbox().is_empty(),
        "no count request without a spool"
    );
    assert_eq!(s.take_result().unwrap().output, body);
}

#[test]
fn run_request_is_one_line_and_its_frame_is_the_result() {
    let (mut s, mut twin) = ready();
    s.submit(&run("echo hi")).unwrap();
    let n = twin.next_nonce();
    assert_eq!(
        s.take_outbox(),
        guest::encode_run(&n, "echo hi", None).unwrap().into_bytes()
    );
    assert_eq!(s.submit(&run("true")), Err(SessionError::Busy));
    let mut notes = Vec::new();
    s.feed(&frame(b"hi\n", &n, 0), &mut notes);
    assert!(notes.is_empty());
    let r = s.take_result().unwrap();
    assert_eq!(
        (r.status, r.output.as_slice(), r.lost),
        (0, &b"hi\n"[..], 0)
    );
    assert!(s.ready());
}

#[test]
fn first_timed_run_and_first_wait_carry_their_setup_once() {
    let (mut s, mut twin) = ready();
    let timed = ShellRequest::Run {
        command: "true".into(),
        timeout: Some(std::time::Duration::from_secs(900)),
    };
    s.submit(&timed).unwrap();
    let out = String::from_utf8(s.take_outbox()).unwrap();
    assert!(out.starts_with(guest::setup_text(SetupPart::Timeouts)));
    let mut notes = Vec::new();
    s.feed(&frame(b"", &twin.next_nonce(), 0), &mut notes);
    s.take_result().unwrap();
    assert_eq!(s.take_outbox(), b"\n", "the watchdog is released");
    s.submit(&timed).unwrap();
    let out = String::from_utf8(s.take_outbox()).unwrap();
    assert!(!out.contains(guest::setup_text(SetupPart::Timeouts)));
    s.feed(&frame(b"", &twin.next_nonce(), 0), &mut notes);
    s.take_result().unwrap();
    assert_eq!(s.take_outbox(), b"\n");
    let wait = wait_request("test -e /x");
    s.submit(&wait).unwrap();
    let out = String::from_utf8(s.take_outbox()).unwrap();
    assert!(out.starts_with(guest::setup_text(SetupPart::Waits)));
    let n = twin.next_nonce();
    let mut data = marker('A', &n, 1);
    data.extend(marker('A', &n, 1));
    data.extend(marker('D', &n, 0));
    data.extend(marker('E', &n, 0));
    s.feed(&data, &mut notes);
    let r = s.take_result().unwrap();
    assert_eq!((r.status, r.attempts, r.looped), (0, 2, true));
    assert_eq!(s.take_outbox(), b"\n");
}

#[test]
fn host_messages_reach_only_a_watched_request_in_flight_and_its_end_releases_the_watchdog() {
    use guest::HostMessage;
    let (mut s, mut twin) = ready();
    let mut notes = Vec::new();
    assert!(!s.tell(HostMessage::Kill), "nothing runs");
    // An untimed command runs without the watchdog: nothing to tell, nothing to release.
    s.submit(&ShellRequest::Run {
        command: "true".into(),
        timeout: None,
    })
    .unwrap();
    s.take_outbox();
    assert!(!s.tell(HostMessage::Kill));
    s.feed(&frame(b"", &twin.next_nonce(), 0), &mut notes);
    s.take_result().unwrap();
    assert!(s.take_outbox().is_empty());
    // A wait hears its pacing and its stop as lines of blanks, in order.
    s.submit(&wait_request("test -e /x")).unwrap();
    s.take_outbox();
    assert!(s.tell(HostMessage::PaceFast));
    assert!(s.tell(HostMessage::Stop));
    assert_eq!(s.take_outbox(), b" \n\t\n");
    let n = twin.next_nonce();
    let mut data = marker('D', &n, 1);
    data.extend(marker('E', &n, 1));
    s.feed(&data, &mut notes);
    assert_eq!(s.take_outbox(), b"\n");
    assert!(
        !s.tell(HostMessage::Kill),
        "ended: released, nothing more to say"
    );
    assert!(s.take_outbox().is_empty());
}

#[test]
fn large_frame_with_nothing_dropped_is_delivered_after_the_count() {
    let (mut s, mut twin) = ready();
    s.submit(&run("big")).unwrap();
    s.take_outbox();
    let n = twin.next_nonce();
    let body = vec![b'x'; VERIFY_MIN_BYTES as usize];
    let data = frame(&body, &n, 0);
    let mut notes = Vec::new();
    s.feed(&data, &mut notes);
    assert!(s.take_result().is_none(), "not before the count");
    let c = twin.next_nonce();
    assert_eq!(s.take_outbox(), guest::encode_count(&c).into_bytes());
    // The guest spooled the setup check frame, then this frame.
    let check_frame = frame(b"", &[b'0'; NONCE_LEN], 0).len() as i64;
    s.feed(
        &marker('C', &c, check_frame + data.len() as i64),
        &mut notes,
    );
    let r = s.take_result().unwrap();
    assert_eq!((r.output.len(), r.lost), (body.len(), 0));
    assert!(notes.is_empty());
}

#[test]
fn dropped_output_is_fetched_again_in_pieces_and_recovered_byte_exact() {
    let (mut s, mut twin) = ready();
    s.submit(&run("big")).unwrap();
    s.take_outbox();
    let n = twin.next_nonce();
    let body: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let full = frame(&body, &n, 3);
    // The console dropped 70,000 bytes in the middle.
    let mut arrived = full[..50_000].to_vec();
    arrived.extend_from_slice(&full[120_000..]);
    let mut notes = Vec::new();
    s.feed(&arrived, &mut notes);
    let c = twin.next_nonce();
    assert_eq!(s.take_outbox(), guest::encode_count(&c).into_bytes());
    let check_len = spooled_by_ready();
    s.feed(
        &marker('C', &c, (check_len + full.len()) as i64),
        &mut notes,
    );
    assert_eq!(notes, vec![SessionNote::Dropped { bytes: 70_000 }]);
    // The guest answers each fetch with the next piece of its spool, from the frame start.
    let mut offset = 0;
    let mut first = true;
    loop {
        let f = twin.next_nonce();
        let start = first.then_some(check_len as u64);
        first = false;
        assert_eq!(
            s.take_outbox(),
            guest::encode_fetch(&f, start, guest::FETCH_PIECE).into_bytes()
        );
        let end = (offset + guest::FETCH_PIECE).min(full.len());
        s.feed(&frame(&full[offset..end], &f, 0), &mut notes);
        offset = end;
        if let Some(r) = s.take_result() {
            assert_eq!(r.status, 3, "the status of the frame that arrived");
            assert_eq!(r.output, body);
            assert_eq!(r.lost, 0);
            break;
        }
        assert!(offset < full.len() + guest::FETCH_PIECE, "runaway fetch");
    }
    assert_eq!(s.take_outbox(), guest::FETCH_DONE.as_bytes());
    assert_eq!(
        notes.last(),
        Some(&SessionNote::Recovered { bytes: body.len() })
    );
    assert!(s.ready());
}

#[test]
fn dropped_output_of_a_wait_is_reported_as_lost() {
    let (mut s, mut twin) = ready();
    let wait = wait_request("noisy");
    s.submit(&wait).unwrap();
    s.take_outbox();
    let n = twin.next_nonce();
    let mut data = vec![b'y'; 100_000];
    data.extend(marker('D', &n, 0));
    data.extend(marker('E', &n, 0));
    let mut notes = Vec::new();
    s.feed(&data, &mut notes);
    let c = twin.next_nonce();
    s.take_outbox();
    let check_len = spooled_by_ready();
    s.feed(
        &marker('C', &c, (check_len + data.len() + 500) as i64),
        &mut notes,
    );
    let r = s.take_result().unwrap();
    assert_eq!(r.lost, 500);
}

#[test]
fn spool_is_truncated_in_front_of_a_command_once_over_the_limit() {
    let (mut s, mut twin) = ready();
    let mut notes = Vec::new();
    let body = vec![b'z'; (SPOOL_LIMIT / 4) as usize];
    for _ in 0..5 {
        s.submit(&run("chunk")).unwrap();
        let line = String::from_utf8(s.take_outbox()).unwrap();
        assert!(!line.starts_with(guest::TRUNCATE_SPOOL));
        let data = frame(&body, &twin.next_nonce(), 0);
        s.feed(&data, &mut notes);
        let c = twin.next_nonce();
        s.take_outbox();
        s.feed(&marker('C', &c, -1), &mut notes);
        s.take_result().unwrap();
        if s.framing.consumed() > SPOOL_LIMIT {
            break;
        }
    }
    s.submit(&run("next")).unwrap();
    let line = String::from_utf8(s.take_outbox()).unwrap();
    assert!(line.starts_with(guest::TRUNCATE_SPOOL), "{line:.40}");
}

#[test]
fn late_output_is_stray_and_eof_loses_the_connection() {
    let (mut s, _) = ready();
    let mut notes = Vec::new();
    s.feed(b"TWO\n", &mut notes);
    assert_eq!(notes, vec![SessionNote::Stray(b"TWO\n".to_vec())]);
    s.connection_lost();
    assert!(s.lost() && !s.connected());
    s.restart();
    assert!(!s.lost() && !s.connected());
}

#[test]
fn await_sentinel_needs_a_new_setup_before_requests() {
    let (mut s, mut twin) = ready();
    s.await_sentinel();
    assert_eq!(s.submit(&run("true")), Err(SessionError::NotConnected));
    let mut notes = Vec::new();
    s.feed(b"Spawning backdoor root shell...\n", &mut notes);
    assert!(s.take_outbox().is_empty() && s.ready());
    s.submit(&run("true")).unwrap();
    let setup = String::from_utf8(s.take_outbox()).unwrap();
    assert!(setup.starts_with(guest::setup_text(SetupPart::Base)));
    s.feed(&frame(b"", &twin.next_nonce(), 0), &mut notes);
    assert!(String::from_utf8(s.take_outbox()).unwrap().contains("true") && !s.ready());
}

#[test]
fn held_stdout_report_is_a_note_naming_the_command() {
    let (mut s, mut twin) = ready();
    s.submit(&run("(echo ONE; sleep 15; echo TWO) &")).unwrap();
    let _ = s.take_outbox();
    let nonce = twin.next_nonce();
    let mut data = b"ONE\n".to_vec();
    data.extend_from_slice(&marker('H', &nonce, 17));
    data.extend_from_slice(b"77 sleep 15\n78 x\n");
    data.extend_from_slice(&frame(b"TWO\n", &nonce, 0));
    let mut notes = Vec::new();
    for b in &data {
        s.feed(std::slice::from_ref(b), &mut notes);
    }
    assert_eq!(
        notes,
        vec![SessionNote::StdoutHeld {
            command: "(echo ONE; sleep 15; echo TWO) &".into(),
            report: b"77 sleep 15\n78 x\n".to_vec(),
        }]
    );
    let result = s.take_result().unwrap();
    assert_eq!((result.status, result.output), (0, b"ONE\nTWO\n".to_vec()));
}

#[test]
fn saved_session_resumes_with_the_same_spool_offsets() {
    let (mut s, mut twin) = ready();
    s.submit(&run("echo hi")).unwrap();
    s.take_outbox();
    let n = twin.next_nonce();
    let first = frame(b"hi\n", &n, 0);
    let mut notes = Vec::new();
    s.feed(&first, &mut notes);
    assert!(s.take_result().is_some());
    let saved = s.saved().expect("an idle ready shell can be saved");
    let check_len = spooled_by_ready();
    assert_eq!(saved.spool_used, (check_len + first.len()) as u64);
    // Busy shells cannot be saved.
    s.submit(&run("sleep 1")).unwrap();
    assert_eq!(s.saved(), None);

    // The restored machine: a fresh session (new connection, no sentinel) resumed.
    let (mut r, mut twin) = session();
    r.resume(saved);
    assert!(r.ready() && r.connected());
    r.submit(&run("big")).unwrap();
    r.take_outbox();
    let n = twin.next_nonce();
    let body = vec![b'z'; 100_000];
    let full = frame(&body, &n, 0);
    r.feed(&full[..70_000], &mut notes);
    r.feed(&full[90_000..], &mut notes);
    let c = twin.next_nonce();
    r.take_outbox();
    r.feed(
        &marker('C', &c, (saved.spool_used as usize + full.len()) as i64),
        &mut notes,
    );
    // The first fetch starts where this frame starts in the guest's spool.
    let f = twin.next_nonce();
    assert_eq!(
        r.take_outbox(),
        guest::encode_fetch(&f, Some(saved.spool_used), guest::FETCH_PIECE).into_bytes()
    );
}
