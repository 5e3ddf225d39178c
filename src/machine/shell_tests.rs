//! Unit tests of [`super`]: the framing of every marker kind, fed whole and byte by byte.

use super::*;

const N: &[u8; NONCE_LEN] = b"0123456789abcdef";

fn connected() -> ShellFraming {
    let mut f = ShellFraming::new();
    let mut ev = Vec::new();
    f.feed(b"Spawning backdoor root shell...\n", &mut ev);
    assert_eq!(ev.last(), Some(&ShellEvent::Connected));
    f
}

fn frame(body: &[u8], status: i32) -> Vec<u8> {
    let mut v = body.to_vec();
    v.extend_from_slice(format!("\x01E0123456789abcdef {status}\x01").as_bytes());
    v
}

fn done(events: &[ShellEvent]) -> (i32, Vec<u8>) {
    match events.last() {
        Some(ShellEvent::Done { status, output, .. }) => (*status, output.clone()),
        other => panic!("expected Done, got {other:?}"),
    }
}

#[test]
fn sentinel_split_across_chunks_is_found() {
    let mut f = ShellFraming::new();
    let mut ev = Vec::new();
    f.feed(b"noise noise Spawning back", &mut ev);
    assert!(!f.connected());
    f.feed(b"door root shell...\n", &mut ev);
    assert!(f.connected());
    let greeting: Vec<u8> = ev
        .iter()
        .filter_map(|e| match e {
            ShellEvent::Greeting(g) => Some(g.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(greeting, b"noise noise Spawning backdoor root shell...\n");
}

#[test]
fn frame_in_one_chunk_returns_output_and_status() {
    let mut f = connected();
    f.expect(*N);
    let mut ev = Vec::new();
    f.feed(&frame(b"hello\n", 3), &mut ev);
    assert_eq!(done(&ev), (3, b"hello\n".to_vec()));
    assert!(!f.busy());
}

#[test]
fn frame_fed_byte_by_byte_returns_same_result() {
    let mut f = connected();
    f.expect(*N);
    let mut ev = Vec::new();
    for b in frame(b"a\x01E0123\x01b", 0) {
        f.feed(&[b], &mut ev);
    }
    assert_eq!(done(&ev), (0, b"a\x01E0123\x01b".to_vec()));
}

#[test]
fn output_containing_marker_with_other_nonce_stays_output() {
    let mut f = connected();
    f.expect(*N);
    let body = b"\x01S0123456789abcdef\x01\x01Effffffffffffffff 0\x01\x00\xff";
    let mut ev = Vec::new();
    f.feed(&frame(body, 1), &mut ev);
    assert_eq!(done(&ev), (1, body.to_vec()));
}

#[test]
fn output_containing_nonce_without_marker_prefix_stays_output() {
    let mut f = connected();
    f.expect(*N);
    let body = b"x0123456789abcdefy \x01E0123456789abcdefz";
    let mut ev = Vec::new();
    f.feed(&frame(body, 0), &mut ev);
    assert_eq!(done(&ev), (0, body.to_vec()));
}

#[test]
fn bytes_while_idle_are_stray_and_frame_output_is_not() {
    let mut f = connected();
    let mut ev = Vec::new();
    f.feed(b"late!", &mut ev);
    assert_eq!(ev, vec![ShellEvent::Stray(b"late!".to_vec())]);
    f.expect(*N);
    ev.clear();
    f.feed(&frame(b"ok", 0), &mut ev);
    assert_eq!(done(&ev), (0, b"ok".to_vec()));
}

#[test]
fn bytes_after_end_marker_are_kept_for_later() {
    let mut f = connected();
    f.expect(*N);
    let mut data = frame(b"", 0);
    data.extend_from_slice(b"tail");
    let mut ev = Vec::new();
    f.feed(&data, &mut ev);
    assert!(matches!(ev[0], ShellEvent::Done { status: 0, .. }));
    assert_eq!(ev[1], ShellEvent::Stray(b"tail".to_vec()));
}

#[test]
fn wait_attempts_reset_output_and_loop_status_wins() {
    let mut f = connected();
    f.expect(*N);
    let mut data = b"first".to_vec();
    data.extend_from_slice(b"\x01A0123456789abcdef 1\x01second");
    data.extend_from_slice(b"\x01A0123456789abcdef 2 7000 190000\x01third");
    data.extend_from_slice(b"\x01D0123456789abcdef 0\x01\x01E0123456789abcdef 0\x01");
    let mut ev = Vec::new();
    f.feed(&data, &mut ev);
    assert_eq!(
        ev[0],
        ShellEvent::Attempt {
            status: 1,
            output: b"first".to_vec(),
            cost_us: 0,
            pause_us: 0,
        }
    );
    assert_eq!(
        ev[1],
        ShellEvent::Attempt {
            status: 2,
            output: b"second".to_vec(),
            cost_us: 7000,
            pause_us: 190_000,
        }
    );
    match &ev[2] {
        ShellEvent::Done {
            status,
            output,
            looped,
            ..
        } => assert_eq!(
            (*status, output.as_slice(), *looped),
            (0, &b"third"[..], true)
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn wait_killed_by_wrapper_reports_not_looped() {
    let mut f = connected();
    f.expect(*N);
    let mut ev = Vec::new();
    f.feed(b"x\x01E0123456789abcdef 124\x01", &mut ev);
    assert!(matches!(
        ev[0],
        ShellEvent::Done {
            status: 124,
            looped: false,
            ..
        }
    ));
}

#[test]
fn frame_size_and_spool_count_are_reported() {
    let mut f = connected();
    f.expect(*N);
    let mut ev = Vec::new();
    let frame_data = frame(b"12345", 0);
    f.feed(&frame_data, &mut ev);
    match ev[0] {
        ShellEvent::Done { frame_bytes, .. } => {
            assert_eq!(frame_bytes, frame_data.len() as u64)
        }
        ref other => panic!("{other:?}"),
    }
    f.expect_count(*N);
    ev.clear();
    f.feed(b"late\x01C0123456789abcdef 99\x01", &mut ev);
    assert_eq!(ev[0], ShellEvent::Stray(b"late".to_vec()));
    assert_eq!(ev[1], ShellEvent::Count { spooled: 99 });
    assert!(!f.busy());
}

#[test]
fn spool_parses_output_and_status() {
    let mut spool = b"out\x01E1111111111111111 0\x01put".to_vec();
    spool.extend_from_slice(b"\x01E0123456789abcdef 4\x01");
    assert_eq!(parse_spool(&spool, N), Some((27, 4)));
    assert_eq!(parse_spool(b"truncated\x01E0123", N), None);
}

#[test]
fn negative_and_large_statuses_parse() {
    let mut f = connected();
    f.expect(*N);
    let mut ev = Vec::new();
    f.feed(&frame(b"", -2), &mut ev);
    assert_eq!(done(&ev).0, -2);
}

#[test]
fn malformed_status_is_output_not_marker() {
    let mut f = connected();
    f.expect(*N);
    let mut body = b"\x01E0123456789abcdef x\x01".to_vec();
    body.extend_from_slice(b"\x01E0123456789abcdef 99999999999999\x01");
    // Only an attempt marker carries three numbers; two or four are nobody's.
    body.extend_from_slice(b"\x01E0123456789abcdef 1 2 3\x01");
    body.extend_from_slice(b"\x01E0123456789abcdef 1 2\x01\x01E0123456789abcdef 1  2\x01");
    let mut ev = Vec::new();
    f.feed(&frame(&body, 7), &mut ev);
    assert_eq!(done(&ev), (7, body));
}

#[test]
fn large_output_in_small_chunks_is_byte_exact() {
    let mut f = connected();
    f.expect(*N);
    let body: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let data = frame(&body, 0);
    let mut ev = Vec::new();
    for c in data.chunks(4093) {
        f.feed(c, &mut ev);
    }
    assert_eq!(done(&ev), (0, body));
    assert!(f.buf.is_empty());
}

fn held(report: &[u8]) -> Vec<u8> {
    let mut v = format!("\x01H0123456789abcdef {}\x01", report.len()).into_bytes();
    v.extend_from_slice(report);
    v
}

#[test]
fn held_report_is_an_event_and_the_frame_continues_byte_exact() {
    // Output before and after the report is the command's, in order; the report's
    // bytes (which may hold marker-like bytes, even this nonce) are never output.
    let report = b"412 bash -c x \x01E0123456789abcdef 0\x01\n413 sleep 15\n";
    let mut data = b"ONE\n".to_vec();
    data.extend_from_slice(&held(report));
    data.extend_from_slice(&frame(b"TWO\n", 0));
    for chunk in [data.len(), 1, 2, 7] {
        let mut f = connected();
        f.expect(*N);
        let mut ev = Vec::new();
        for c in data.chunks(chunk) {
            f.feed(c, &mut ev);
        }
        assert_eq!(
            ev[0],
            ShellEvent::Held {
                report: report.to_vec()
            },
            "chunk {chunk}"
        );
        assert_eq!(done(&ev), (0, b"ONE\nTWO\n".to_vec()), "chunk {chunk}");
        assert_eq!(ev.len(), 2, "chunk {chunk}: {ev:?}");
        assert!(f.buf.is_empty());
    }
}

#[test]
fn empty_held_report_is_an_empty_event() {
    let mut f = connected();
    f.expect(*N);
    let mut data = held(b"");
    data.extend_from_slice(&frame(b"x", 3));
    let mut ev = Vec::new();
    f.feed(&data, &mut ev);
    assert_eq!(ev[0], ShellEvent::Held { report: Vec::new() });
    assert_eq!(done(&ev), (3, b"x".to_vec()));
}

#[test]
fn oversized_held_report_is_cut_but_fully_consumed() {
    let mut f = connected();
    f.expect(*N);
    let report = vec![b'p'; MAX_HELD_REPORT + 10];
    let mut data = held(&report);
    data.extend_from_slice(&frame(b"out", 0));
    let mut ev = Vec::new();
    for c in data.chunks(4096) {
        f.feed(c, &mut ev);
    }
    match &ev[0] {
        ShellEvent::Held { report } => assert_eq!(report.len(), MAX_HELD_REPORT),
        other => panic!("{other:?}"),
    }
    assert_eq!(done(&ev), (0, b"out".to_vec()));
}

#[test]
fn held_marker_of_another_nonce_is_output() {
    let mut f = connected();
    f.expect(*N);
    let body = b"\x01Hffffffffffffffff 3\x01abc";
    let mut ev = Vec::new();
    f.feed(&frame(body, 0), &mut ev);
    assert_eq!(ev.len(), 1);
    assert_eq!(done(&ev), (0, body.to_vec()));
}

#[test]
fn nonces_are_hex_and_differ() {
    let mut s = NonceSource::new();
    let a = s.next_nonce();
    let b = s.next_nonce();
    assert_ne!(a, b);
    assert!(a.iter().all(|c| c.is_ascii_hexdigit()));
}
