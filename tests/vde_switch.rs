//! ntd's switch in-process, on a real mio loop with real sockets, driven by the Rust
//! libvdeplug client of `vdecommon::vdeclient`: handshake, files and modes, every rejection path,
//! forwarding rules, drops, disconnects, learning mode, capture, fairness, shutdown.

// Tests may unwrap and panic: a failing assertion is their report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod vdecommon;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use ntd::vde::wire::{self, PortRequest, WireError};
use ntd::vde::{Switch, SwitchConfig, SwitchEvent, VdeError, FRAMES_PER_WAKEUP};
use vdecommon::vdeclient::*;
use vdecommon::{Harness, Scratch};

const T: Duration = Duration::from_millis(500);
const QUIET: Duration = Duration::from_millis(100);

fn hub(scratch: &Scratch) -> Harness {
    Harness::new(&scratch.join("sw"), SwitchConfig::default())
}

fn connect(h: &mut Harness, descr: &str) -> VdeClient {
    let dir = h.dir.clone();
    VdeClient::connect(&dir, ClientOptions::described(descr), &mut h.pump()).expect("handshake")
}

fn connect_with(h: &mut Harness, opts: ClientOptions) -> VdeClient {
    let dir = h.dir.clone();
    VdeClient::connect(&dir, opts, &mut h.pump()).expect("handshake")
}

fn rejections(h: &Harness) -> Vec<&VdeError> {
    h.log
        .iter()
        .filter_map(|e| match e {
            SwitchEvent::Rejected { reason, .. } => Some(reason),
            _ => None,
        })
        .collect()
}

#[test]
fn create_fresh_dir_has_mode_0700_and_ctl_0600() {
    let s = Scratch::new("modes");
    let h = hub(&s);

    let dir_mode = std::fs::metadata(&h.dir).unwrap().permissions().mode() & 0o7777;
    let ctl_mode = std::fs::metadata(h.dir.join("ctl"))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;

    assert_eq!(dir_mode, 0o700);
    assert_eq!(ctl_mode, 0o600);
    assert_eq!(h.sw().ctl_path(), h.dir.join("ctl"));
}

#[test]
fn create_existing_dir_with_stale_ctl_replaces_it() {
    let s = Scratch::new("stale");
    let dir = s.join("sw");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    drop(UnixListener::bind(dir.join("ctl")).unwrap()); // leaves a socket file nobody answers

    let mut h = Harness::new(&dir, SwitchConfig::default());
    let c = connect(&mut h, "after-stale");

    assert_eq!(c.port_number(), Some(1));
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777,
        0o700
    );
}

#[test]
fn create_while_another_switch_answers_fails_already_running() {
    let s = Scratch::new("twice");
    let h = hub(&s);
    let poll = mio::Poll::new().unwrap();

    let second = Switch::create(2, &h.dir, 9, poll.registry(), SwitchConfig::default());

    assert!(
        matches!(second, Err(VdeError::AlreadyRunning { .. })),
        "{:?}",
        second.err()
    );
    assert!(
        h.dir.join("ctl").exists(),
        "the running switch's ctl must survive"
    );
}

#[test]
fn create_dir_path_too_long_fails_with_sun_path_error() {
    let s = Scratch::new("long");
    let dir = s.path.join("d".repeat(100));
    let poll = mio::Poll::new().unwrap();

    let err = Switch::create(1, &dir, 1, poll.registry(), SwitchConfig::default())
        .err()
        .unwrap();

    assert!(matches!(err, VdeError::DirTooLong { .. }));
    assert!(err.to_string().contains("108-byte sun_path"), "{err}");
    assert!(!dir.exists());
}

#[test]
fn create_on_a_regular_file_fails_not_a_directory() {
    let s = Scratch::new("file");
    let path = s.join("f");
    std::fs::write(&path, b"x").unwrap();
    let poll = mio::Poll::new().unwrap();

    let err = Switch::create(1, &path, 1, poll.registry(), SwitchConfig::default())
        .err()
        .unwrap();

    assert!(matches!(err, VdeError::NotADirectory { .. }), "{err}");
}

#[test]
fn handshake_reply_names_switch_socket_and_vdeplug4_client_can_unlink_its_own() {
    let s = Scratch::new("hs");
    let mut h = hub(&s);

    let a = connect(&mut h, "QEMU user=0 pid=1");

    assert_eq!(a.reply.len(), wire::SOCKADDR_UN_LEN);
    assert_eq!(a.switch_path, h.dir.join("001.1"));
    assert!(a.switch_path.exists());
    assert_eq!(
        std::fs::metadata(&a.switch_path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert!(
        !a.my_path.exists(),
        "vdeplug4-style client unlinked its socket; the pair must still work"
    );
    let ports = h.sw().ports();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].description, "QEMU user=0 pid=1");
    assert_eq!(ports[0].data_path, a.switch_path);
    assert!(h
        .log
        .iter()
        .any(|e| matches!(e, SwitchEvent::PortOpened { port: 1, .. })));
}

#[test]
fn handshake_request_in_pieces_is_assembled() {
    let s = Scratch::new("pieces");
    let mut h = hub(&s);
    let (data, my_path) = bind_client_socket(&h.dir).unwrap();
    let req = wire::encode_request(PortRequest::Any, &my_path, "QEMU in pieces").unwrap();
    let mut ctl = UnixStream::connect(h.dir.join("ctl")).unwrap();

    for piece in [&req[..1], &req[1..61], &req[61..121], &req[121..]] {
        ctl.write_all(piece).unwrap();
        h.run_for(Duration::from_millis(20));
    }
    ctl.set_read_timeout(Some(T)).unwrap();
    let mut reply = [0u8; 110];
    std::io::Read::read_exact(&mut ctl, &mut reply).unwrap();

    let path = wire::decode_sockaddr_un(&reply).unwrap();
    data.connect(&path).unwrap();
    assert_eq!(h.sw().ports()[0].description, "QEMU in pieces");
}

/// Recognises the expected rejection reason of one malformed request.
type ReasonCheck = fn(&VdeError) -> bool;

/// Every malformed request: the switch closes the stream without a reply, reports why,
/// creates no file, and keeps serving good clients.
#[test]
fn handshake_malformed_requests_are_closed_with_reason() {
    let s = Scratch::new("bad");
    let mut h = Harness::new(
        &s.join("sw"),
        SwitchConfig {
            max_ports: 32,
            ..SwitchConfig::default()
        },
    );
    let dir = h.dir.clone();
    let (_data, client) = bind_client_socket(&dir).unwrap();
    let good = wire::encode_request(PortRequest::Any, &client, "x").unwrap();
    let with = |at: usize, bytes: &[u8]| {
        let mut r = good.clone();
        r[at..at + bytes.len()].copy_from_slice(bytes);
        r
    };
    let regular_file = dir.join("plain");
    std::fs::write(&regular_file, b"").unwrap();
    let cases: Vec<(&str, Vec<u8>, ReasonCheck)> = vec![
        ("bad magic", with(0, &0xdeadbeefu32.to_ne_bytes()), |e| {
            matches!(e, VdeError::Request(WireError::BadMagic(0xdeadbeef)))
        }),
        ("version 2", with(4, &2u32.to_ne_bytes()), |e| {
            matches!(e, VdeError::Request(WireError::BadVersion(2)))
        }),
        ("version 4", with(4, &4u32.to_ne_bytes()), |e| {
            matches!(e, VdeError::Request(WireError::BadVersion(4)))
        }),
        ("type 2", with(8, &[2]), |e| {
            matches!(e, VdeError::Request(WireError::UnknownType(2)))
        }),
        ("relative path", with(14, b"rel/sock\0"), |e| {
            matches!(e, VdeError::Request(WireError::RelativePath(_)))
        }),
        ("abstract path", with(14, b"\0"), |e| {
            matches!(e, VdeError::Request(WireError::EmptyPath))
        }),
        (
            "unreachable path",
            wire::encode_request(PortRequest::Any, &dir.join("nope"), "x").unwrap(),
            |e| matches!(e, VdeError::ClientSocket { .. }),
        ),
        (
            "path is not a socket",
            wire::encode_request(PortRequest::Any, &regular_file, "x").unwrap(),
            |e| matches!(e, VdeError::ClientSocket { .. }),
        ),
        (
            "251 bytes",
            [good.clone(), vec![b'd'; 251 - good.len()]].concat(),
            |e| matches!(e, VdeError::RequestTooLong { .. }),
        ),
        ("4 KiB garbage", vec![0x41; 4096], |e| {
            matches!(e, VdeError::RequestTooLong { .. })
        }),
        (
            "port 32",
            wire::encode_request(PortRequest::Explicit(32), &client, "x").unwrap(),
            |e| matches!(e, VdeError::PortOutOfRange { port: 32, max: 31 }),
        ),
        (
            "port 2^24-1",
            wire::encode_request(PortRequest::Explicit(wire::MAX_PORT_FIELD), &client, "x")
                .unwrap(),
            |e| matches!(e, VdeError::PortOutOfRange { .. }),
        ),
    ];

    for (label, bytes, expected) in &cases {
        let before = h.log.len();
        let outcome = raw_request(&dir, bytes, T, &mut h.pump()).unwrap();
        assert_eq!(outcome, RawOutcome::Closed, "{label}");
        let reasons: Vec<_> = h.log[before..]
            .iter()
            .filter_map(|e| {
                if let SwitchEvent::Rejected { reason, .. } = e {
                    Some(reason)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(reasons.len(), 1, "{label}: {reasons:?}");
        assert!(
            expected(reasons[0]),
            "{label}: unexpected reason {:?}",
            reasons[0]
        );
        assert!(!reasons[0].to_string().is_empty());
    }

    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert!(
        names
            .iter()
            .all(|n| n == "ctl" || n == "plain" || n.to_string_lossy().starts_with('.')),
        "no NNN.K file may be left by a refused client: {names:?}"
    );
    assert_eq!(h.sw().stats().requests_rejected, cases.len() as u64);
    let c = connect(&mut h, "still works");
    assert_eq!(c.port_number(), Some(1));
}

#[test]
fn handshake_client_closing_early_is_reported() {
    let s = Scratch::new("early");
    let mut h = hub(&s);
    let mut ctl = UnixStream::connect(h.dir.join("ctl")).unwrap();

    ctl.write_all(&[0xce, 0xfa, 0xed, 0xfe, 3]).unwrap();
    drop(ctl);
    h.run_for(QUIET);

    assert!(
        matches!(rejections(&h)[..], [VdeError::ClosedEarly { got: 5 }]),
        "{:?}",
        h.log
    );
}

#[test]
fn handshake_client_that_never_finishes_times_out() {
    let s = Scratch::new("slow");
    let cfg = SwitchConfig {
        request_timeout: Duration::from_millis(200),
        ..SwitchConfig::default()
    };
    let mut h = Harness::new(&s.join("sw"), cfg);
    let mut ctl = UnixStream::connect(h.dir.join("ctl")).unwrap();
    ctl.write_all(&[0xce, 0xfa]).unwrap();

    let start = Instant::now();
    let outcome = raw_request(
        &h.dir.clone(),
        &[0xce],
        Duration::from_secs(2),
        &mut h.pump(),
    )
    .unwrap();
    h.run_for(Duration::from_millis(50));

    assert_eq!(outcome, RawOutcome::Closed);
    assert!(start.elapsed() < Duration::from_secs(1));
    let r = rejections(&h);
    assert_eq!(r.len(), 2, "{r:?}");
    assert!(r
        .iter()
        .all(|e| matches!(e, VdeError::RequestTimeout { .. })));
    ctl.set_read_timeout(Some(T)).unwrap();
    assert_eq!(
        std::io::Read::read(&mut ctl, &mut [0u8; 8]).unwrap(),
        0,
        "stream closed, no reply"
    );
}

#[test]
fn handshake_too_many_pending_clients_are_refused() {
    let s = Scratch::new("pending");
    let mut h = hub(&s);
    let idle: Vec<UnixStream> = (0..ntd::vde::MAX_PENDING)
        .map(|_| UnixStream::connect(h.dir.join("ctl")).unwrap())
        .collect();
    h.run_for(QUIET);

    let extra = raw_request(&h.dir.clone(), &[1, 2, 3], T, &mut h.pump()).unwrap();

    assert_eq!(extra, RawOutcome::Closed);
    assert!(rejections(&h)
        .iter()
        .any(|e| matches!(e, VdeError::TooManyPending { .. })));
    drop(idle);
}

#[test]
fn ports_any_take_lowest_free_and_run_out() {
    let s = Scratch::new("ports");
    let mut h = Harness::new(
        &s.join("sw"),
        SwitchConfig {
            max_ports: 4,
            ..SwitchConfig::default()
        },
    );
    let a = connect(&mut h, "a");
    let b = connect(&mut h, "b");
    let c = connect(&mut h, "c");
    assert_eq!(
        [a.port_number(), b.port_number(), c.port_number()],
        [Some(1), Some(2), Some(3)]
    );

    let dir = h.dir.clone();
    let full = VdeClient::connect(&dir, ClientOptions::described("d"), &mut h.pump());
    assert!(matches!(full, Err(HandshakeError::Closed { got: 0 })));
    assert!(matches!(
        rejections(&h)[..],
        [VdeError::NoFreePort { max: 3 }]
    ));

    drop(b);
    h.run_for(QUIET);
    let d = connect(&mut h, "d");
    assert_eq!(d.port_number(), Some(2), "a freed port is reused");
}

#[test]
fn hub_floods_every_other_port_never_source_or_port0() {
    let s = Scratch::new("flood");
    let mut h = hub(&s);
    let a = connect(&mut h, "a");
    let b = connect(&mut h, "b");
    let c = connect_with(
        &mut h,
        ClientOptions::described("c").port(PortRequest::Explicit(5)),
    );
    let c2 = connect_with(
        &mut h,
        ClientOptions::described("c2").port(PortRequest::Explicit(5)),
    );
    let m = connect_with(
        &mut h,
        ClientOptions::described("mgmt").port(PortRequest::Management),
    );
    assert_eq!(c.port_number(), Some(5));
    assert_eq!(c2.port_number(), Some(5));
    assert_eq!(m.port_number(), Some(0));
    let unicast_to_b = eth(mac(2), mac(1), 0x0800, &[0x55; 100]);

    a.send(&unicast_to_b).unwrap();
    let got: Vec<_> = [&b, &c, &c2]
        .iter()
        .map(|x| x.recv(T, &mut h.pump()))
        .collect();
    assert!(
        got.iter().all(|g| g.as_deref() == Some(&unicast_to_b[..])),
        "hub floods unicast to all"
    );
    assert!(
        a.collect(QUIET, &mut h.pump()).is_empty(),
        "never back to the source"
    );
    assert!(
        m.collect(QUIET, &mut h.pump()).is_empty(),
        "port 0 gets no flood"
    );

    let from_c = patterned(60, mac(5), 1);
    c.send(&from_c).unwrap();
    assert_eq!(a.recv(T, &mut h.pump()).as_deref(), Some(&from_c[..]));
    assert_eq!(b.recv(T, &mut h.pump()).as_deref(), Some(&from_c[..]));
    assert!(
        c2.collect(QUIET, &mut h.pump()).is_empty(),
        "endpoints of the same port do not hear each other"
    );

    let from_m = patterned(60, mac(9), 2);
    m.send(&from_m).unwrap();
    for x in [&a, &b, &c, &c2] {
        assert_eq!(
            x.recv(T, &mut h.pump()).as_deref(),
            Some(&from_m[..]),
            "port 0 traffic is flooded"
        );
    }
}

#[test]
fn frames_forwarded_byte_identical_any_size_and_tags() {
    let s = Scratch::new("sizes");
    let mut h = hub(&s);
    let a = connect(&mut h, "a");
    let b = connect(&mut h, "b");
    let mut frames: Vec<Vec<u8>> = [14usize, 42, 60, 64, 1514, 1518, 1519, 9000, 65535, 65536]
        .iter()
        .map(|&n| patterned(n, mac(1), n as u32))
        .collect();
    frames.push(tagged(mac(1), 10));
    let mut qinq = tagged(mac(1), 20);
    qinq[12..14].copy_from_slice(&[0x88, 0xa8]);
    frames.push(qinq);

    for f in &frames {
        a.send(f).unwrap();
        let got = b
            .recv(T, &mut h.pump())
            .unwrap_or_else(|| panic!("{}-byte frame lost", f.len()));
        assert_eq!(got.len(), f.len());
        assert_eq!(&got, f);
    }
    let st = h.sw().stats();
    assert_eq!(st.frames_in, frames.len() as u64);
    assert_eq!(st.frames_out, frames.len() as u64);
    assert_eq!(
        st.bytes_in,
        frames.iter().map(|f| f.len() as u64).sum::<u64>()
    );
    assert_eq!(st.drops.total(), 0);
}

#[test]
fn runts_and_oversize_are_dropped_and_counted() {
    let s = Scratch::new("runt");
    let mut h = hub(&s);
    let a = connect(&mut h, "a");
    let b = connect(&mut h, "b");

    for n in [0usize, 1, 13] {
        a.send(&vec![0xff; n]).unwrap();
    }
    a.send(&vec![0xff; 65537]).unwrap();
    a.send(&vec![0xff; 100_000]).unwrap();
    let ok = patterned(64, mac(1), 7);
    a.send(&ok).unwrap();

    assert_eq!(
        b.recv(T, &mut h.pump()),
        Some(ok),
        "the good frame after the bad ones still flows"
    );
    assert!(b.collect(QUIET, &mut h.pump()).is_empty());
    let d = h.sw().stats().drops;
    assert_eq!((d.runt, d.oversize), (3, 2));
    let pa = &h.sw().ports()[0];
    assert_eq!((pa.counters.drops.runt, pa.counters.frames_in), (3, 1));
}

#[test]
fn slow_receiver_loses_frames_counted_others_get_all_and_loop_never_blocks() {
    let s = Scratch::new("slow");
    let mut h = hub(&s);
    let a = connect(&mut h, "sender");
    let sleepy = connect(&mut h, "never reads");
    let c = connect(&mut h, "reader");
    let total = 4000u32;
    let mut received = 0u32;

    let start = Instant::now();
    let mut seq = 0;
    while seq < total {
        for _ in 0..50 {
            if a.send(&patterned(1514, mac(1), seq)).is_err() {
                break; // our own send buffer is full; let the switch drain it
            }
            seq += 1;
        }
        h.turn(Duration::from_millis(1), true);
        while let Some(f) = c.try_recv() {
            assert_eq!(
                &f[14..18],
                &received.to_be_bytes(),
                "in order, none missing"
            );
            received += 1;
        }
    }
    let end = Instant::now() + Duration::from_secs(2);
    while received < total && Instant::now() < end {
        h.turn(Duration::from_millis(1), true);
        while c.try_recv().is_some() {
            received += 1;
        }
    }

    assert_eq!(received, total, "a reader that keeps up loses nothing");
    assert!(start.elapsed() < Duration::from_secs(10));
    let ports = h.sw().ports();
    let slow = ports
        .iter()
        .find(|p| p.description == "never reads")
        .unwrap();
    assert!(slow.counters.drops.receiver_full > 0, "{:?}", slow.counters);
    assert_eq!(
        slow.counters.frames_out + slow.counters.drops.receiver_full,
        u64::from(total)
    );
    let queued = sleepy.collect(QUIET, &mut || {}).len() as u64;
    assert_eq!(
        queued, slow.counters.frames_out,
        "what was counted as sent is what is queued"
    );
}

#[test]
fn dead_receiver_data_socket_counts_receiver_gone_and_keeps_port() {
    let s = Scratch::new("dead");
    let mut h = hub(&s);
    let a = connect(&mut h, "a");
    let mut b = connect(&mut h, "b");
    let c = connect(&mut h, "c");

    b.close_data();
    for i in 0..3 {
        a.send(&patterned(64, mac(1), i)).unwrap();
        assert!(c.recv(T, &mut h.pump()).is_some());
    }

    let ports = h.sw().ports();
    assert_eq!(ports.len(), 3, "control stream still open: the port stays");
    let pb = ports.iter().find(|p| p.description == "b").unwrap();
    assert_eq!(pb.counters.drops.receiver_gone, 3);
    assert!(b.switch_path.exists());
}

#[test]
fn control_eof_closes_port_unlinks_file_and_data_send_is_refused() {
    let s = Scratch::new("eof");
    let mut h = hub(&s);
    let a = connect(&mut h, "a");
    let mut b = connect(&mut h, "b");
    let path = b.switch_path.clone();

    b.close_ctl();
    h.run_for(QUIET);

    assert!(!path.exists());
    assert_eq!(h.sw().ports().len(), 1);
    assert!(h
        .log
        .iter()
        .any(|e| matches!(e, SwitchEvent::PortClosed { port: 2, .. })));
    let err = b.send(&patterned(64, mac(2), 0)).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(111),
        "ECONNREFUSED, as with vde_switch"
    );
    a.send(&patterned(64, mac(1), 0)).unwrap();
    h.run_for(QUIET);
    assert_eq!(
        h.sw().stats().drops.total(),
        0,
        "no send is attempted to a closed port"
    );
}

#[test]
fn vde2_close_sends_zero_length_datagram_which_is_ignored() {
    let s = Scratch::new("vde2");
    let mut h = hub(&s);
    let a = connect_with(
        &mut h,
        ClientOptions::described("vde2").flavour(Flavour::Vde2),
    );
    let b = connect(&mut h, "b");
    assert!(a.my_path.exists(), "vde2 keeps its socket file until close");

    a.close();
    h.run_for(QUIET);

    assert!(b.collect(QUIET, &mut h.pump()).is_empty());
    let st = h.sw().stats();
    assert_eq!((st.drops.runt, st.ports, st.ports_closed), (1, 1, 1));
}

#[test]
fn batches_larger_than_the_wakeup_cap_are_finished_via_next_deadline() {
    let s = Scratch::new("fair");
    let mut h = hub(&s);
    let a = connect(&mut h, "a");
    let b = connect(&mut h, "b");
    let c = connect(&mut h, "c");
    let n = 3 * FRAMES_PER_WAKEUP as u32 + 5;
    for i in 0..n {
        a.send(&patterned(64, mac(1), i)).unwrap();
        b.send(&patterned(64, mac(2), i)).unwrap();
    }

    // One poll round without timers: each sender gets one batch only.
    h.turn(Duration::from_millis(50), false);
    let first = c.collect(Duration::ZERO, &mut || {});
    assert_eq!(
        first.len(),
        2 * FRAMES_PER_WAKEUP,
        "one batch per sender per wake-up"
    );
    let due = h
        .sw()
        .next_deadline()
        .expect("unfinished sockets must ask for a timer");
    assert!(due <= Instant::now());

    let rest = c.collect(Duration::from_millis(200), &mut h.pump());
    assert_eq!(
        first.len() + rest.len(),
        2 * n as usize,
        "edge-triggered leftovers are not stranded"
    );
    assert!(h.sw().next_deadline().is_none_or(|d| d > Instant::now()));
    let from_a: Vec<_> = first
        .iter()
        .chain(&rest)
        .filter(|f| f[6..12] == mac(1))
        .map(|f| f[14..18].to_vec())
        .collect();
    assert_eq!(
        from_a,
        (0..n).map(|i| i.to_be_bytes().to_vec()).collect::<Vec<_>>(),
        "per-source order kept"
    );
}

#[test]
fn learning_mode_floods_unknown_then_unicasts_and_keeps_tagged() {
    let s = Scratch::new("learn");
    let mut h = Harness::new(
        &s.join("sw"),
        SwitchConfig {
            hub: false,
            ..SwitchConfig::default()
        },
    );
    let x = connect(&mut h, "x");
    let y = connect(&mut h, "y");
    let z = connect(&mut h, "z");

    x.send(&eth(mac(2), mac(1), 0x0800, &[1; 50])).unwrap();
    assert!(
        y.recv(T, &mut h.pump()).is_some() && z.recv(T, &mut h.pump()).is_some(),
        "unknown: flood"
    );
    y.send(&eth(mac(1), mac(2), 0x0800, &[2; 50])).unwrap();
    assert!(x.recv(T, &mut h.pump()).is_some());
    assert!(
        z.collect(QUIET, &mut h.pump()).is_empty(),
        "learned: only x"
    );
    x.send(&eth(mac(2), mac(1), 0x0800, &[3; 50])).unwrap();
    assert!(y.recv(T, &mut h.pump()).is_some());
    assert!(
        z.collect(QUIET, &mut h.pump()).is_empty(),
        "learned: only y"
    );
    x.send(&tagged(mac(1), 10)).unwrap();
    assert!(
        y.recv(T, &mut h.pump()).is_some() && z.recv(T, &mut h.pump()).is_some(),
        "802.1Q not dropped"
    );
    x.send(&eth(mac(1), mac(7), 0x0800, &[4; 50])).unwrap(); // to a MAC that lives on x itself
    h.run_for(QUIET);
    assert_eq!(h.sw().stats().drops.filtered, 1);
    assert!(
        y.collect(QUIET, &mut h.pump()).is_empty() && z.collect(QUIET, &mut h.pump()).is_empty()
    );

    drop(y);
    h.run_for(QUIET);
    x.send(&eth(mac(2), mac(1), 0x0800, &[5; 50])).unwrap();
    assert!(
        z.recv(T, &mut h.pump()).is_some(),
        "entries of a closed port are forgotten: flood"
    );
}

fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[0..4], &0xa1b2c3d4u32.to_ne_bytes());
    assert_eq!(
        u32::from_ne_bytes(bytes[20..24].try_into().unwrap()),
        1,
        "LINKTYPE_ETHERNET"
    );
    let mut at = 24;
    let mut out = Vec::new();
    while at < bytes.len() {
        let incl = u32::from_ne_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        let orig = u32::from_ne_bytes(bytes[at + 12..at + 16].try_into().unwrap()) as usize;
        assert_eq!(incl, orig);
        out.push(bytes[at + 16..at + 16 + incl].to_vec());
        at += 16 + incl;
    }
    out
}

#[test]
fn capture_records_each_forwarded_frame_once() {
    let s = Scratch::new("pcap");
    let pcap = s.join("cap.pcap");
    let mut h = Harness::new(
        &s.join("sw"),
        SwitchConfig {
            capture: Some(pcap.clone()),
            ..SwitchConfig::default()
        },
    );
    let a = connect(&mut h, "a");
    let b = connect(&mut h, "b");
    let c = connect(&mut h, "c");
    let f1 = patterned(64, mac(1), 1);
    let f2 = patterned(9000, mac(2), 2);

    a.send(&f1).unwrap();
    a.send(&[0u8; 5]).unwrap(); // runt: not forwarded, not captured
    b.send(&f2).unwrap();
    assert!(c.collect(QUIET, &mut h.pump()).len() == 2);
    h.run_for(ntd::vde::CAPTURE_FLUSH_INTERVAL + QUIET);

    assert_eq!(
        read_pcap(&pcap),
        vec![f1.clone(), f2.clone()],
        "flushed by the timer while running"
    );
    h.sw_mut().stop_capture();
    let pcap2 = s.join("second.pcap");
    h.sw_mut().start_capture(&pcap2).unwrap();
    a.send(&f1).unwrap();
    h.run_for(QUIET);
    h.shutdown();
    assert_eq!(read_pcap(&pcap2), vec![f1]);
    assert_eq!(read_pcap(&pcap).len(), 2);
}

#[test]
fn shutdown_closes_ports_unlinks_files_and_removes_dir() {
    let s = Scratch::new("down");
    let mut h = hub(&s);
    let a = connect(&mut h, "a");
    let b = connect(&mut h, "b");
    let dir = h.dir.clone();

    let events = h.shutdown();

    assert!(!dir.exists(), "directory removed");
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, SwitchEvent::PortClosed { .. }))
            .count(),
        2
    );
    assert!(a.send(&patterned(64, mac(1), 0)).is_err());
    drop(b);
}

#[test]
fn events_render_as_log_lines() {
    let s = Scratch::new("log");
    let mut h = hub(&s);
    let a = connect(&mut h, "QEMU user=root pid=42");
    drop(a);
    h.run_for(QUIET);

    let lines: Vec<String> = h.log.iter().map(ToString::to_string).collect();

    assert!(
        lines[0].contains("port 1 opened") && lines[0].contains("QEMU user=root pid=42"),
        "{lines:?}"
    );
    assert!(
        lines[1].contains("port 1 closed") && lines[1].contains("control stream closed"),
        "{lines:?}"
    );
}

/// Random bursts from three senders (sizes 1..=200, some larger than the per-wake-up cap),
/// with and without timers between them: once the senders stop, every frame still arrives at
/// every receiver. A socket stranded by the edge-triggered poller would make this stall.
#[test]
fn random_bursts_from_several_senders_are_never_stranded() {
    let s = Scratch::new("burst");
    let mut h = hub(&s);
    let senders: Vec<VdeClient> = (0..3).map(|i| connect(&mut h, &format!("s{i}"))).collect();
    let sink = connect(&mut h, "sink");
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut sent = [0u32; 3];
    let mut got = [0u32; 3];
    let drain = |sink: &VdeClient, got: &mut [u32; 3]| {
        while let Some(f) = sink.try_recv() {
            let who = f[11] as usize - 1;
            assert_eq!(&f[14..18], &got[who].to_be_bytes(), "order kept per sender");
            got[who] += 1;
        }
    };

    for round in 0..60 {
        for (i, tx) in senders.iter().enumerate() {
            for _ in 0..1 + next(200) {
                if tx
                    .send(&patterned(
                        60 + next(1400) as usize,
                        mac(i as u8 + 1),
                        sent[i],
                    ))
                    .is_err()
                {
                    break;
                }
                sent[i] += 1;
            }
        }
        h.turn(Duration::from_millis(next(3)), round % 3 != 0);
        drain(&sink, &mut got);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while got != sent && Instant::now() < deadline {
        h.turn(Duration::from_millis(5), true);
        drain(&sink, &mut got);
    }

    assert_eq!(got, sent, "frames stranded in the switch");
    assert!(sent.iter().sum::<u32>() > 5000);
    let ports = h.sw().ports();
    let sink_port = ports.iter().find(|p| p.description == "sink").unwrap();
    assert_eq!(sink_port.counters.drops.total(), 0);
    assert_eq!(
        sink_port.counters.frames_out,
        u64::from(sent.iter().sum::<u32>())
    );
    // The senders never read what the others flood to them: those copies are dropped, counted.
    let dropped: u64 = ports.iter().map(|p| p.counters.drops.receiver_full).sum();
    assert_eq!(dropped, h.sw().stats().drops.total());
    drop(senders);
}
