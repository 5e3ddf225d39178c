//! `ntd vde-switch` as a program: several switches in one loop stay isolated, `--capture`
//! writes pcap, SIGTERM and stdin EOF both end it cleanly (directories removed, counters
//! printed), and bad arguments fail with a message and a distinct exit status.

// Tests may unwrap and panic: a failing assertion is their report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod vdecommon;

use std::ffi::OsStr;
use std::process::{Command, Stdio};
use std::time::Duration;

use vdecommon::vdeclient::*;
use vdecommon::{ntd_bin, sleepy, wait_until, Scratch, SwitchKind, SwitchProc};

const T: Duration = Duration::from_millis(800);

#[test]
fn two_vlans_in_one_process_are_isolated_and_sigterm_cleans_up() {
    let s = Scratch::new("two");
    let (d1, d2, pcap) = (s.join("vde1.ctl"), s.join("vde2.ctl"), s.join("v1.pcap"));
    let pcap_arg = pcap.to_str().unwrap().to_string();
    let d2_arg = d2.to_str().unwrap().to_string();
    let sw = SwitchProc::start(
        SwitchKind::Ntd,
        &d1,
        &["--sock", &d2_arg, "--capture", &pcap_arg],
    );
    assert!(wait_until(Duration::from_secs(5), || d2
        .join("ctl")
        .exists()));
    let connect = |d: &std::path::Path, n: &str| {
        VdeClient::connect(d, ClientOptions::described(n), &mut sleepy()).unwrap()
    };
    let (a1, b1) = (connect(&d1, "a1"), connect(&d1, "b1"));
    let (a2, b2) = (connect(&d2, "a2"), connect(&d2, "b2"));

    let f1 = patterned(100, mac(1), 1);
    a1.send(&f1).unwrap();
    let f2 = patterned(200, mac(2), 2);
    a2.send(&f2).unwrap();

    assert_eq!(b1.recv(T, &mut sleepy()), Some(f1.clone()));
    assert_eq!(b2.recv(T, &mut sleepy()), Some(f2));
    assert!(
        b1.collect(Duration::from_millis(150), &mut sleepy())
            .is_empty(),
        "vlan 2 traffic leaked into vlan 1"
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(sw.pid() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let (status, out, _) = sw.stop();
    assert!(status.success(), "{status:?}");
    assert_eq!(
        out.iter().filter(|l| l.contains("stats vlan=")).count(),
        2,
        "{out:?}"
    );
    assert!(!d1.exists() && !d2.exists());
    let bytes = std::fs::read(&pcap).unwrap();
    assert_eq!(
        bytes.len(),
        24 + 16 + f1.len(),
        "exactly vlan 1's one frame"
    );
    assert_eq!(&bytes[40..], &f1[..]);
    drop((a1, b1, a2, b2));
}

#[test]
fn stdin_dev_null_means_eof_and_exits_at_once() {
    let s = Scratch::new("null");
    let dir = s.join("sw");
    let out = Command::new(ntd_bin())
        .args(["vde-switch", "--sock"])
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ready") && stdout.contains("stats vlan=1"),
        "{stdout}"
    );
    assert!(!dir.exists());
}

/// Run `ntd vde-switch FIRST… ARGS…` with stdin at EOF: its exit code and stderr.
fn vde_switch_once(first: &[&OsStr], args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(ntd_bin())
        .arg("vde-switch")
        .args(first)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_arguments_fail_with_a_message() {
    let s = Scratch::new("args");
    let run = |args: &[&str]| vde_switch_once(&[], args);
    let long = s.path.join("x".repeat(100));

    let (code, err) = run(&[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--sock"), "{err}");
    let (code, err) = run(&["--sock", long.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("sun_path"), "{err}");
    let (code, _) = run(&["--bogus"]);
    assert_eq!(code, Some(2));
}

// ---- network faults on the command line and the console ----

fn seq(frame: &[u8]) -> u32 {
    u32::from_be_bytes(frame[14..18].try_into().unwrap())
}

/// Send `n` numbered frames from `tx` in small chunks, draining `rx` meanwhile; returns the
/// sequence numbers `rx` received (from `tx`'s MAC only).
fn exchange(tx: &VdeClient, rx: &VdeClient, n: u32) -> Vec<u32> {
    let mut got = Vec::new();
    let keep = |f: Vec<u8>, got: &mut Vec<u32>| {
        if f[6..12] == mac(1) {
            got.push(seq(&f));
        }
    };
    for i in 0..n {
        while tx.send(&patterned(100, mac(1), i)).is_err() {
            std::thread::sleep(Duration::from_micros(200));
        }
        if i % 25 == 24 {
            std::thread::sleep(Duration::from_millis(1));
            while let Some(f) = rx.try_recv() {
                keep(f, &mut got);
            }
        }
    }
    for f in rx.collect(Duration::from_millis(300), &mut sleepy()) {
        keep(f, &mut got);
    }
    got
}

fn within_binomial_band(count: usize, n: usize, p: f64, sigmas: f64) -> bool {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (count as f64 - mean).abs() <= sigmas * sd
}

/// Survivors of 600 frames a→b through `ntd vde-switch ARGS`, and the switch's stderr.
fn survivors(tag: &str, args: &[&str]) -> (Vec<u32>, Vec<String>) {
    let s = Scratch::new(tag);
    let dir = s.join("sw");
    let sw = SwitchProc::start(SwitchKind::Ntd, &dir, args);
    let a = VdeClient::connect(&dir, ClientOptions::described("a"), &mut sleepy()).unwrap();
    let b = VdeClient::connect(&dir, ClientOptions::described("b"), &mut sleepy()).unwrap();

    let got = exchange(&a, &b, 600);

    drop((a, b));
    let (status, _, err) = sw.stop();
    assert!(status.success(), "{status:?} {err:?}");
    (got, err)
}

#[test]
fn loss_half_drops_about_half_and_logs_the_seed_and_rule() {
    let (got, err) = survivors("sloss", &["--loss", "0.5", "--net-seed", "11"]);

    assert!(
        within_binomial_band(got.len(), 600, 0.5, 5.0),
        "{}",
        got.len()
    );
    assert!(
        err.iter().any(|l| l.contains("net seed 11")),
        "seed logged: {err:?}"
    );
    assert!(err.iter().any(|l| l.contains("vlan1: loss 50%")), "{err:?}");
}

#[test]
fn same_net_seed_replays_the_same_drops_and_another_seed_differs() {
    let (first, _) = survivors("srep1", &["--loss", "30%", "--net-seed", "5"]);
    let (again, _) = survivors("srep2", &["--loss", "30%", "--net-seed", "5"]);
    let (other, _) = survivors("srep3", &["--loss", "30%", "--net-seed", "6"]);

    assert_eq!(first, again);
    assert_ne!(first, other);
}

#[test]
fn delay_shows_in_ping_pong_latency() {
    let s = Scratch::new("sdelay");
    let dir = s.join("sw");
    let sw = SwitchProc::start(SwitchKind::Ntd, &dir, &["--delay", "30ms"]);
    let a = VdeClient::connect(&dir, ClientOptions::described("a"), &mut sleepy()).unwrap();
    let b = VdeClient::connect(&dir, ClientOptions::described("b"), &mut sleepy()).unwrap();

    let mut rtts = Vec::new();
    for i in 0..5 {
        let t = std::time::Instant::now();
        a.send(&patterned(64, mac(1), i)).unwrap();
        assert!(b.recv(Duration::from_secs(2), &mut sleepy()).is_some());
        b.send(&patterned(64, mac(2), i)).unwrap();
        assert!(a.recv(Duration::from_secs(2), &mut sleepy()).is_some());
        rtts.push(t.elapsed());
    }

    assert!(
        rtts.iter().all(|r| *r >= Duration::from_millis(60)),
        "every round trip carries 2 x 30 ms: {rtts:?}"
    );
    drop((a, b, sw));
}

#[test]
fn between_ports_limits_the_impairment_to_that_pair() {
    let s = Scratch::new("sbetw");
    let dir = s.join("sw");
    let sw = SwitchProc::start(SwitchKind::Ntd, &dir, &["--loss", "1", "--between", "1,2"]);
    let connect =
        |n: &str| VdeClient::connect(&dir, ClientOptions::described(n), &mut sleepy()).unwrap();
    let (a, b, c) = (connect("a"), connect("b"), connect("c"));

    a.send(&patterned(64, mac(1), 1)).unwrap();

    assert_eq!(c.recv(T, &mut sleepy()).map(|f| seq(&f)), Some(1));
    assert!(b
        .collect(Duration::from_millis(150), &mut sleepy())
        .is_empty());
    drop((a, b, c));
    let (_, out, _) = sw.stop();
    assert!(
        out.iter().any(|l| l.contains("faults 1<->2: loss=1 ")),
        "{out:?}"
    );
}

#[test]
fn console_partition_and_heal_change_forwarding() {
    let s = Scratch::new("scons");
    let dir = s.join("sw");
    let mut sw = SwitchProc::start(SwitchKind::Ntd, &dir, &[]);
    let connect =
        |n: &str| VdeClient::connect(&dir, ClientOptions::described(n), &mut sleepy()).unwrap();
    let (a, b) = (connect("a"), connect("b"));

    sw.command("partition 1 2");
    assert!(wait_until(Duration::from_secs(5), || sw
        .stdout
        .try_iter()
        .any(|l| l.contains("vlan1: partition port 1 | port 2"))));
    a.send(&patterned(64, mac(1), 1)).unwrap();
    let during = b.collect(Duration::from_millis(150), &mut sleepy());
    sw.command("heal");
    assert!(wait_until(Duration::from_secs(5), || sw
        .stdout
        .try_iter()
        .any(|l| l.contains("vlan1: healed"))));
    a.send(&patterned(64, mac(1), 2)).unwrap();
    let after = b.recv(T, &mut sleepy());

    assert!(during.is_empty(), "partitioned");
    assert_eq!(after.map(|f| seq(&f)), Some(2));
    sw.command("impair loss=2");
    assert!(wait_until(Duration::from_secs(5), || sw
        .stdout
        .try_iter()
        .any(|l| l.contains("error: loss must be a probability"))));
    drop((a, b));
}

#[test]
fn bad_impairment_values_exit_2_naming_the_argument() {
    let s = Scratch::new("sbad");
    let dir = s.join("sw");
    let run = |args: &[&str]| vde_switch_once(&[OsStr::new("--sock"), dir.as_os_str()], args);
    let cases: [(&[&str], &str); 7] = [
        (&["--loss", "1.5"], "loss must be a probability"),
        (
            &["--duplicate", "often"],
            "duplicate \"often\" is not a probability",
        ),
        (&["--delay", "-5ms"], "delay must be a finite, non-negative"),
        (
            &["--delay", "10ms", "--jitter", "20ms"],
            "jitter (20ms) must not exceed",
        ),
        (&["--rate", "fast"], "rate \"fast\" is not a bandwidth"),
        (&["--rate", "10bit"], "rate of 10bit is out of range"),
        (
            &["--loss", "0.1", "--between", "3"],
            "between \"3\" is not two port",
        ),
    ];

    for (args, message) in cases {
        let (code, err) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
    }
    let (code, _) = run(&["--net-seed", "x"]);
    assert_eq!(code, Some(2));
    assert!(!dir.exists(), "nothing was created");
}
