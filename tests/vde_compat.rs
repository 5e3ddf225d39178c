//! One scenario, one client implementation (`vdecommon::vdeclient`, speaking libvdeplug itself),
//! run against the real `vde_switch --hub` and against `ntd vde-switch`; every observation must
//! be identical except the differences ntd intends, which are asserted explicitly:
//! * frames longer than 1518 bytes: vde_switch truncates them to 1518, ntd forwards them whole;
//! * an explicit port out of range: vde_switch 2.3.x never answers (the client hangs), ntd
//!   closes the connection.
//!
//! Skips with a message only when `vde_switch` is missing.

// Tests may unwrap and panic: a failing assertion is their report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod vdecommon;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use ntd::vde::wire::{self, PortRequest};
use vdecommon::vdeclient::*;
use vdecommon::{require_program, sleepy, Scratch, SwitchKind, SwitchProc};

const T: Duration = Duration::from_millis(1000);
const QUIET: Duration = Duration::from_millis(150);

type Observations = BTreeMap<String, String>;

fn connect(dir: &Path, opts: ClientOptions) -> VdeClient {
    VdeClient::connect(dir, opts, &mut sleepy()).expect("handshake")
}

/// What `to` receives within `window` after a send (plus a short grace after the first frame
/// to catch duplicates), summarised against what was sent.
fn heard(to: &VdeClient, sent: &[u8], window: Duration) -> String {
    let mut got: Vec<Vec<u8>> = to.recv(window, &mut sleepy()).into_iter().collect();
    if !got.is_empty() {
        got.extend(to.collect(Duration::from_millis(30), &mut sleepy()));
    }
    match got.as_slice() {
        [] => "nothing".into(),
        [one] if one == sent => "identical".into(),
        [one] if one.len() < sent.len() && sent.starts_with(one) => {
            format!("truncated to {}", one.len())
        }
        [one] => format!("different ({} bytes)", one.len()),
        many => format!("{} frames", many.len()),
    }
}

/// File names in the switch directory with the per-implementation parts normalised
/// (`NNN.K` → `NNN.*`, client sockets `.PPPPP-NNNNN` → `.client`).
fn listing(dir: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    for n in names.iter_mut() {
        if n.starts_with('.') {
            *n = ".client".into();
        } else if let Some((port, _)) = n.split_once('.') {
            *n = format!("{port}.*");
        }
    }
    names.sort();
    names.join(" ")
}

fn mode(path: &Path) -> String {
    std::fs::metadata(path)
        .map(|m| format!("{:o}", m.permissions().mode() & 0o7777))
        .unwrap_or("missing".into())
}

/// Traffic between well-behaved clients, disconnects, a non-reading client, cleanup.
fn traffic(kind: SwitchKind, scratch: &Scratch) -> Observations {
    let dir = scratch.join("sw");
    let sw = SwitchProc::start(kind, &dir, &[]);
    let mut o = Observations::new();
    let mut note = |k: &str, v: String| {
        o.insert(k.to_string(), v);
    };
    note("01 dir mode", mode(&dir));
    note("01 ctl mode", mode(&dir.join("ctl")));

    let a = connect(
        &dir,
        ClientOptions::described("A vde2").flavour(Flavour::Vde2),
    );
    let b = connect(&dir, ClientOptions::described("B vdeplug4"));
    let c = connect(
        &dir,
        ClientOptions::described("C port 5").port(PortRequest::Explicit(5)),
    );
    note(
        "02 ports A B C",
        format!(
            "{:?} {:?} {:?}",
            a.port_number(),
            b.port_number(),
            c.port_number()
        ),
    );
    note(
        "02 reply",
        format!("{} bytes, family {:?}", a.reply.len(), &a.reply[..2]),
    );
    note(
        "02 reply names a socket in dir",
        (a.switch_path.parent() == Some(dir.canonicalize().unwrap().as_path())).to_string(),
    );
    note("02 listing", listing(&dir));

    let me = mac(1);
    let arp = arp_request(me, [10, 0, 0, 1], [10, 0, 0, 2]);
    a.send(&arp).unwrap();
    note("03 broadcast ARP: B", heard(&b, &arp, T));
    note("03 broadcast ARP: C", heard(&c, &arp, T));
    note("03 broadcast ARP: A (sender)", heard(&a, &arp, QUIET));
    let uni = eth(mac(2), me, 0x0800, &[0x58; 100]);
    a.send(&uni).unwrap();
    note("04 unicast to B's MAC: B", heard(&b, &uni, T));
    note("04 unicast to B's MAC: C", heard(&c, &uni, T));
    let tag = tagged(me, 10);
    a.send(&tag).unwrap();
    note("05 802.1Q VLAN 10: B", heard(&b, &tag, T));
    note("05 802.1Q VLAN 10: C", heard(&c, &tag, T));

    for size in [14usize, 42, 60, 1514, 1518, 1519, 1600, 9000] {
        let f = patterned(size, me, size as u32);
        a.send(&f).unwrap();
        note(&format!("06 size {size:5}: B"), heard(&b, &f, T));
        let _ = c.collect(Duration::ZERO, &mut || {});
    }

    for i in 0..100u32 {
        a.send(&patterned(64, me, i)).unwrap();
    }
    let got = b.collect(Duration::from_millis(300), &mut sleepy());
    let in_order = got
        .iter()
        .map(|f| u32::from_be_bytes(f[14..18].try_into().unwrap()))
        .eq(0..100);
    note(
        "07 100 frames: B in order and complete",
        in_order.to_string(),
    );
    let _ = c.collect(Duration::ZERO, &mut || {});

    let d = connect(
        &dir,
        ClientOptions::described("D port 5").port(PortRequest::Explicit(5)),
    );
    note(
        "08 second client on port 5",
        format!("{:?}", d.port_number()),
    );
    let f = patterned(64, me, 800);
    a.send(&f).unwrap();
    note("08 A -> shared port: C", heard(&c, &f, T));
    note("08 A -> shared port: D", heard(&d, &f, T));
    let fd = patterned(64, mac(4), 801);
    d.send(&fd).unwrap();
    note("08 D -> same port C", heard(&c, &fd, QUIET));
    note("08 D -> A", heard(&a, &fd, T));

    let m = connect(
        &dir,
        ClientOptions::described("mgmt").port(PortRequest::Management),
    );
    note("10 management port", format!("{:?}", m.port_number()));
    let f = patterned(64, me, 1000);
    a.send(&f).unwrap();
    note("10 A -> management port", heard(&m, &f, QUIET));
    let _ = b.collect(QUIET, &mut sleepy());
    let _ = c.collect(Duration::ZERO, &mut || {});
    let _ = d.collect(Duration::ZERO, &mut || {});
    let fm = patterned(64, mac(9), 1001);
    m.send(&fm).unwrap();
    note("10 management port -> B", heard(&b, &fm, T));
    m.close();
    std::thread::sleep(QUIET);
    note("10 listing after management port closed", listing(&dir));
    let _ = c.collect(Duration::ZERO, &mut || {});
    let _ = d.collect(Duration::ZERO, &mut || {});

    let mut b = b;
    let b_path = b.switch_path.clone();
    b.close_ctl();
    std::thread::sleep(QUIET);
    note(
        "13 B ctl closed: switch socket file",
        b_path.exists().to_string(),
    );
    let err = b
        .send(&patterned(64, mac(2), 0))
        .err()
        .and_then(|e| e.raw_os_error());
    note("13 B ctl closed: B's send error", format!("{err:?}"));
    let f = patterned(64, me, 1300);
    a.send(&f).unwrap();
    note("13 B ctl closed: A -> C still", heard(&c, &f, T));
    note("13 B ctl closed: A -> B", heard(&b, &f, QUIET));
    let _ = d.collect(Duration::ZERO, &mut || {});

    let mut c = c;
    c.close_data();
    let f = patterned(64, me, 1400);
    a.send(&f).unwrap();
    note("14 C data closed: A -> D still", heard(&d, &f, T));
    std::thread::sleep(QUIET);
    note(
        "14 C data closed: switch socket file kept",
        c.switch_path.exists().to_string(),
    );
    let f2 = patterned(64, me, 1401);
    a.send(&f2).unwrap();
    note("14 C data closed: second frame -> D", heard(&d, &f2, T));

    note("14 listing", listing(&dir));
    let t15 = std::time::Instant::now();
    let slow = connect(&dir, ClientOptions::described("never reads"));
    let mut sent = 0;
    while sent < 2000u32 {
        match a.send(&patterned(1514, me, sent)) {
            Ok(_) => sent += 1,
            Err(_) => std::thread::sleep(Duration::from_micros(200)),
        }
        if sent % 64 == 0 {
            let _ = d.collect(Duration::ZERO, &mut || {});
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let queued = slow.collect(Duration::ZERO, &mut || {}).len();
    note(
        "15 non-reading client: lost some of 2000 (bounded queue)",
        (queued < 2000 && queued > 0).to_string(),
    );
    o.insert(
        "15 non-reading client: queued (informational)".into(),
        queued.to_string(),
    );
    o.insert(
        "15 non-reading client: seconds (informational)".into(),
        format!("{:.2}", t15.elapsed().as_secs_f64()),
    );

    drop((a, b, c, d, slow));
    // vde_switch may still be working off the blast above: wait (bounded) for the closes.
    let t16 = std::time::Instant::now();
    vdecommon::wait_until(Duration::from_secs(3), || listing(&dir) == "ctl");
    o.insert("16 listing after every client closed".into(), listing(&dir));
    o.insert(
        "16 seconds until closed (informational)".into(),
        format!("{:.2}", t16.elapsed().as_secs_f64()),
    );
    let (status, _, _) = sw.stop();
    o.insert(
        "17 exit status on stdin EOF".into(),
        format!("{:?}", status.code()),
    );
    o.insert("17 dir removed".into(), (!dir.exists()).to_string());
    o
}

/// Refused requests and runts on a fresh switch; the out-of-range port comes last because the
/// request vde_switch 2.3.x leaves hanging corrupts its fd bookkeeping (strace: a later
/// endpoint reusing that fd number is never fully closed), which must not leak into the
/// traffic observations.
fn refusals(kind: SwitchKind, scratch: &Scratch) -> Observations {
    let dir = scratch.join("sw");
    let sw = SwitchProc::start(kind, &dir, &[]);
    let mut o = Observations::new();
    let mut note = |k: &str, v: String| {
        o.insert(k.to_string(), v);
    };
    let a = connect(&dir, ClientOptions::described("A"));
    let b = connect(&dir, ClientOptions::described("B"));
    let me = mac(1);
    for size in [0usize, 1, 13] {
        let f = vec![0xffu8; size];
        a.send(&f).unwrap();
        note(&format!("R1 runt {size:2}: B"), heard(&b, &f, QUIET));
    }
    let ok = patterned(60, me, 1);
    a.send(&ok).unwrap();
    note("R1 frame after runts: B", heard(&b, &ok, T));

    let (_sx, px) = bind_client_socket(&dir).unwrap();
    let good = wire::encode_request(PortRequest::Any, &px, "x").unwrap();
    let mut bad_magic = good.clone();
    bad_magic[..4].copy_from_slice(&0xdeadbeefu32.to_ne_bytes());
    let mut v2 = good.clone();
    v2[4] = 2;
    let missing = wire::encode_request(PortRequest::Any, &dir.join("nope"), "x").unwrap();
    for (label, req) in [
        ("bad magic", bad_magic),
        ("version 2", v2),
        ("missing data socket", missing),
    ] {
        let outcome = raw_request(&dir, &req, T, &mut sleepy()).unwrap();
        note(&format!("R2 malformed: {label}"), format!("{outcome:?}"));
    }
    let _ = std::fs::remove_file(&px);
    std::thread::sleep(QUIET);
    note("R2 listing after malformed requests", listing(&dir));

    let e = connect(
        &dir,
        ClientOptions::described("E vde2 closes").flavour(Flavour::Vde2),
    );
    let e_path = e.switch_path.clone();
    e.close();
    note(
        "R3 vde2 close: B hears the zero-length datagram",
        heard(&b, &[], QUIET),
    );
    std::thread::sleep(QUIET);
    note(
        "R3 vde2 close: switch socket file",
        e_path.exists().to_string(),
    );

    let p31 = connect(
        &dir,
        ClientOptions::described("port 31").port(PortRequest::Explicit(31)),
    );
    note("R4 port 31", format!("{:?}", p31.port_number()));
    p31.close();
    std::thread::sleep(QUIET);
    note("R4 listing", listing(&dir));
    let (_s32, p32) = bind_client_socket(&dir).unwrap();
    let req32 = wire::encode_request(PortRequest::Explicit(32), &p32, "port 32").unwrap();
    note(
        "R5 port 32",
        format!(
            "{:?}",
            raw_request(&dir, &req32, Duration::from_millis(700), &mut sleepy()).unwrap()
        ),
    );
    let _ = std::fs::remove_file(&p32);
    drop((a, b));
    let (status, _, _) = sw.stop();
    o.insert(
        "R6 exit status on stdin EOF".into(),
        format!("{:?}", status.code()),
    );
    o.insert("R6 dir removed".into(), (!dir.exists()).to_string());
    o
}

fn scenario(kind: SwitchKind, scratch: &Scratch) -> Observations {
    let mut o = traffic(kind, scratch);
    let second = Scratch::new(if kind == SwitchKind::Ntd {
        "refn"
    } else {
        "refv"
    });
    o.extend(refusals(kind, &second));
    o
}

#[test]
fn same_client_same_results_on_vde_switch_and_ntd() {
    let Some(_) = require_program("vde_switch") else {
        return;
    };
    let s1 = Scratch::new("cmpv");
    let s2 = Scratch::new("cmpn");

    let theirs = scenario(SwitchKind::VdeSwitch, &s1);
    let ours = scenario(SwitchKind::Ntd, &s2);

    let intended: BTreeMap<&str, (&str, &str)> = [
        ("06 size  1519: B", ("truncated to 1518", "identical")),
        ("06 size  1600: B", ("truncated to 1518", "identical")),
        ("06 size  9000: B", ("truncated to 1518", "identical")),
        ("R5 port 32", ("Hung", "Closed")),
        ("15 non-reading client: queued (informational)", ("", "")),
        ("15 non-reading client: seconds (informational)", ("", "")),
        ("16 seconds until closed (informational)", ("", "")),
    ]
    .into_iter()
    .collect();
    let mut report = String::new();
    for (k, v) in &theirs {
        report += &format!(
            "{k:58} vde_switch={v:24} ntd={}\n",
            ours.get(k).map_or("<missing>", String::as_str)
        );
    }
    eprintln!("{report}");
    assert_eq!(
        theirs.keys().collect::<Vec<_>>(),
        ours.keys().collect::<Vec<_>>()
    );
    for (k, v) in &theirs {
        let mine = &ours[k];
        match intended.get(k.as_str()) {
            Some(("", "")) => {}
            Some((expect_theirs, expect_ours)) => {
                assert_eq!(
                    v, expect_theirs,
                    "vde_switch changed behaviour at {k}\n{report}"
                );
                assert_eq!(
                    mine, expect_ours,
                    "intended difference missing at {k}\n{report}"
                );
            }
            None => assert_eq!(v, mine, "behaviour differs at {k}\n{report}"),
        }
    }
    // Sanity: the scenario observed what it is meant to, not just two equal failures.
    assert_eq!(ours["03 broadcast ARP: B"], "identical");
    assert_eq!(ours["03 broadcast ARP: A (sender)"], "nothing");
    assert_eq!(ours["05 802.1Q VLAN 10: B"], "identical");
    assert_eq!(ours["07 100 frames: B in order and complete"], "true");
    assert_eq!(ours["13 B ctl closed: B's send error"], "Some(111)");
    assert_eq!(ours["17 dir removed"], "true");
    assert_eq!(ours["16 listing after every client closed"], "ctl");
    assert_eq!(ours["R1 runt  0: B"], "nothing");
    assert_eq!(ours["R1 frame after runts: B"], "identical");
    assert_eq!(ours["R2 malformed: bad magic"], "Closed");
}
