//! `ntd vde-switch` as a program: several switches in one loop stay isolated, `--capture`
//! writes pcap, SIGTERM and stdin EOF both end it cleanly (directories removed, counters
//! printed), and bad arguments fail with a message and a distinct exit status.

#[path = "vdecommon/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::vdeclient::*;
use common::{ntd_bin, sleepy, wait_until, Scratch, SwitchKind, SwitchProc};

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

#[test]
fn bad_arguments_fail_with_a_message() {
    let s = Scratch::new("args");
    let run = |args: &[&str]| {
        let out = Command::new(ntd_bin())
            .arg("vde-switch")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
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
