//! End-to-end tests of the waits' guest side (`machine::waits`, the loop in
//! `machine::guest::SETUP_WAITS`): port waits that connect with bash's `/dev/tcp` give
//! `nc -z`'s verdicts for remote and local addresses and never outlive their timeout; file and
//! socket waits keep upstream's shell-word semantics; commands return the output of the
//! attempt that succeeded; unit waits that follow systemd's D-Bus signals raise, wait through
//! restarts and fall back to polling as upstream's polling would decide (Debian guest).
//! Performance (CPU per second of waiting, detection latency) is `benches/waits.rs`' job.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(300);

/// `server` (192.168.1.1) and `client` (192.168.1.2), tiny guests on vlan 1.
fn server_and_client(tag: &str, script: &str) -> (TestDir, RunResult) {
    let dir = TestDir::new(tag);
    let hosts = "server:192.168.1.1,client:192.168.1.2";
    let server = dir.tiny_vm("server", &["--vlan", "1", "--index", "1", "--hosts", hosts]);
    let client = dir.tiny_vm("client", &["--vlan", "1", "--index", "2", "--hosts", hosts]);
    let cfg = dir.config(
        &[("server", &server), ("client", &client)],
        &[1],
        240,
        script,
    );
    let r = dir.run(&["-c", cfg.to_str().unwrap()], LIMIT);
    (dir, r)
}

/// One tiny guest and the file/socket/command wait script: the test directory and its config.
fn file_socket_and_command_waits(tag: &str) -> (TestDir, std::path::PathBuf) {
    let dir = TestDir::new(tag);
    let vm = dir.tiny_vm("machine", &[]);
    let cfg = dir.config(
        &[("machine", &vm)],
        &[],
        240,
        test_script!("waits/files_sockets_and_commands_keep_upstream_semantics.py"),
    );
    (dir, cfg)
}

fn passes(dir: &TestDir, r: &RunResult) {
    r.assert_code(0);
    assert!(r.stderr.contains("test script finished in"), "{}", r.log());
    dir.assert_clean();
}

#[test]
fn port_waits_remote_local_and_late_match_nc() {
    let (dir, r) = server_and_client(
        "wport",
        test_script!("waits/port_waits_remote_local_and_late_match_nc.py"),
    );
    passes(&dir, &r);
    for line in [
        "client: waiting for TCP port 8080 on server",
        "client: waiting for TCP port 8080 on 192.168.1.1",
        "server: waiting for TCP port 8080 on localhost to be closed",
        "client: waiting for TCP port 80 on 192.168.1.99",
    ] {
        assert!(r.stderr.contains(line), "missing {line:?}\n{}", r.log());
    }
}

#[test]
fn files_sockets_and_commands_keep_upstream_semantics() {
    let (dir, cfg) = file_socket_and_command_waits("wfile");
    let r = dir.run(&["-c", cfg.to_str().unwrap()], LIMIT);
    passes(&dir, &r);
    for line in [
        "machine: waiting for file '$(echo /tmp/w)/from-var'",
        "machine: waiting for UNIX-domain stream on '/tmp/w/stale.sock'",
    ] {
        assert!(r.stderr.contains(line), "missing {line:?}\n{}", r.log());
    }
}

#[test]
fn reference_schedule_runs_the_same_waits() {
    // The bench knob: upstream's per-attempt pipeline once a second must keep every verdict.
    let (dir, cfg) = file_socket_and_command_waits("wref");
    let mut cmd = dir.ntd();
    cmd.args(["-c", cfg.to_str().unwrap()])
        .env("NTD_WAIT_SCHEDULE", "reference");
    let r = run_with_limit(cmd, LIMIT);
    passes(&dir, &r);
}

#[test]
fn unit_waits_follow_failures_restarts_aliases_and_poll_without_events() {
    let dir = TestDir::new("wunit");
    let mut cmd = Command::new(repo().join("ci/run-test"));
    cmd.arg(repo().join(
        "tests/scripts/waits/unit_waits_follow_failures_restarts_aliases_and_poll_without_events",
    ))
    .env("NTD", NTD)
    .env("TMPDIR", &dir.path)
    .env("NTD_COLOR", "never")
    .stdin(Stdio::null());
    let r = run_with_limit(cmd, Duration::from_secs(420));
    eprintln!(
        "units: exit {:?} in {:.1} s",
        r.code,
        r.elapsed.as_secs_f64()
    );
    passes(&dir, &r);
    for line in [
        "machine: waiting for unit ntd-fails-later.service",
        "machine: waiting for unit ntd-other-name.service",
        "machine: waiting for unit ntd-late.service to reach state activating",
    ] {
        assert!(r.stderr.contains(line), "missing {line:?}\n{}", r.log());
    }
}
