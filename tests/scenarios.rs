//! The real-world scenarios (tests/scenarios/*, Debian systemd guests): every testScript runs
//! unchanged through `ci/run-test`; each must pass and its broken twin must fail with the
//! upstream failure report. Also the interactive flow (`-I`) on such a guest.

// Tests may unwrap and panic: a failing assertion is their report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(420);

fn run_test(
    tag: &str,
    scenario: &str,
    extra: &[&str],
    stdin: Option<&str>,
) -> (TestDir, RunResult) {
    let dir = TestDir::new(tag);
    let mut cmd = Command::new(repo().join("ci/run-test"));
    cmd.arg(repo().join("tests/scenarios").join(scenario))
        .env("NTD", NTD)
        .env("TMPDIR", &dir.path)
        .env("NTD_COLOR", "never")
        // termcolor colours only terminals unless asked to.
        .env("FORCE_COLOR", "1");
    if !extra.is_empty() {
        cmd.arg("--").args(extra);
    }
    if stdin.is_none() {
        cmd.stdin(Stdio::null());
    }
    let r = run_with_input(cmd, LIMIT, stdin);
    eprintln!(
        "{scenario}: exit {:?} in {:.1} s",
        r.code,
        r.elapsed.as_secs_f64()
    );
    (dir, r)
}

fn passes(scenario: &str) {
    let (dir, r) = run_test(scenario, scenario, &[], None);
    r.assert_code(0);
    assert!(r.stderr.contains("test script finished in"), "{}", r.log());
    dir.assert_clean();
}

fn fails_with_report(scenario: &str, report: &str) {
    let (dir, r) = run_test(scenario, scenario, &[], None);
    assert_ne!(r.code, Some(0), "broken twin passed\n{}", r.log());
    assert!(
        r.stderr.contains(report) || r.stdout.contains(report),
        "missing {report:?}\n{}",
        r.log()
    );
    assert!(r.stderr.contains("kill QemuMachine"), "{}", r.log());
    dir.assert_clean();
}

#[test]
fn hello_world() {
    passes("hello-world");
}

#[test]
fn hello_world_broken() {
    fails_with_report(
        "hello-world-broken",
        "!!! RequestedAssertionFailed: unit \"hello-world-server\" is inactive and there are no pending jobs",
    );
}

#[test]
fn todo_api() {
    passes("todo-api");
}

#[test]
fn todo_api_broken() {
    fails_with_report("todo-api-broken", "AssertionError");
}

#[test]
fn todo_api_open_port() {
    passes("todo-api-open-port");
}

#[test]
fn todo_api_open_port_broken() {
    fails_with_report("todo-api-open-port-broken", "AssertionError");
}

#[test]
fn reverse_proxy() {
    passes("reverse-proxy");
}

#[test]
fn reverse_proxy_broken() {
    // The script prints a red message with termcolor and calls sys.exit(1).
    fails_with_report(
        "reverse-proxy-broken",
        "\x1b[31munexpected answer from the proxy",
    );
}

#[test]
fn ping_pair() {
    passes("ping-pair");
}

#[test]
fn ping_pair_broken() {
    fails_with_report(
        "ping-pair-broken",
        "!!! RequestedAssertionFailed: command `ping -c 1 machine2` failed",
    );
}

#[test]
fn interactive_flow_on_a_debian_guest() {
    let input = "serial_stdout_off()\nstart_all()\nnode1.succeed('echo \"Hello, world!\"')\nnode1.shell_interact()\necho from-the-guest $((6*7))\n";
    let (dir, r) = run_test("interactive", "hello-world", &["-I"], Some(input));
    r.assert_code(0);
    assert!(r.stdout.contains("'Hello, world!\\n'"), "{}", r.log());
    assert!(r.stdout.contains("from-the-guest 42"), "{}", r.log());
    assert!(
        !r.stderr.contains("node1 # "),
        "serial lines shown after serial_stdout_off()\n{}",
        r.log()
    );
    dir.assert_clean();
}
