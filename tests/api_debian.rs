//! The systemd half of the Machine API on Debian guests (tests/api-debian/*: nodes.toml +
//! test.py, run unchanged through `ci/run-test`): `wait_for_unit` (system and `user=`),
//! `get_unit_info`, `get_unit_property`, `systemctl`, `require_unit_state`, `start_job`,
//! `stop_job`, `wait_for_open_unix_socket`, `wait_for_job`, `wait_for_unit_active_state`,
//! `dump_tty_contents`.

// Tests may unwrap and panic: a failing assertion is their report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(300);

fn run_scenario(name: &str) -> (TestDir, RunResult) {
    let dir = TestDir::new(name);
    let mut cmd = Command::new(repo().join("ci/run-test"));
    cmd.arg(repo().join("tests/api-debian").join(name))
        .env("NTD", NTD)
        .env("TMPDIR", &dir.path)
        .env("NTD_COLOR", "never")
        .stdin(Stdio::null());
    let r = run_with_limit(cmd, LIMIT);
    eprintln!(
        "{name}: exit {:?} in {:.1} s",
        r.code,
        r.elapsed.as_secs_f64()
    );
    (dir, r)
}

#[test]
fn systemd_methods_system_and_user_manager() {
    let (dir, r) = run_scenario("systemd");
    r.assert_code(0);
    for line in [
        "machine: waiting for unit multi-user.target",
        "machine: checking if unit 'multi-user.target' has reached state 'active'",
        "machine: waiting for UNIX-domain stream on '/run/ntd-stream.sock'",
        "machine: waiting for UNIX-domain datagram on '/run/ntd-dgram.sock'",
        "machine: waiting for unit default.target with user alice",
        "machine: waiting for unit ntd-user-demo.service with user alice",
        "test script finished in",
    ] {
        assert!(r.stderr.contains(line), "missing {line:?}\n{}", r.log());
    }
    // dump_tty_contents sends the screen to the journal, which journald copies to the console.
    assert!(
        r.stderr
            .lines()
            .any(|l| l.starts_with("machine # ") && l.contains("ntd-tty-dump-marker")),
        "the tty dump did not reach the journal\n{}",
        r.log()
    );
    dir.assert_clean();
}
