//! nixpkgs' own driver test suite (`nixos/tests/nixos-test-driver/`), adapted to the lab
//! guests, and the 2026 contracts it checks: `retry`'s remaining-time argument (retry.nix,
//! old `fn(last_try)` callbacks too), a command whose background process keeps stdout open
//! (succeed-stdout-warning.nix, with the log checks its Nix side does), duration warnings,
//! OCR timeouts, `forceAccel`, JUnit, EFI variables and the SSH backdoor flags.
//!
//! Scripts without systemd run on the tiny guest (`tests/scripts/upstream_suite/`); those
//! that wait for `multi-user.target` run on the Debian guest through `ci/run-test`
//! (`tests/upstream-suite/<name>/`). The testScripts taken from nixpkgs are unchanged.

// Tests may unwrap and panic: a failing assertion is their report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(300);

/// A run of `script` with no machines (nixpkgs' `nodes = { }`).
fn no_machines(tag: &str, script: &str) -> (TestDir, RunResult) {
    let dir = TestDir::new(tag);
    let cfg = dir.config(&[], &[], 120, script);
    let r = dir.run(&["-c", cfg.to_str().unwrap()], LIMIT);
    (dir, r)
}

/// A run of `script` with one tiny-guest machine called `machine`.
fn one_machine(tag: &str, script: &str, args: &[&str]) -> (TestDir, RunResult) {
    let dir = TestDir::new(tag);
    let vm = dir.tiny_vm("machine", &[]);
    let cfg = dir.config(&[("machine", &vm)], &[], 240, script);
    let mut all = vec!["-c", cfg.to_str().unwrap()];
    all.extend_from_slice(args);
    let r = dir.run(&all, LIMIT);
    (dir, r)
}

/// A `ci/run-test` directory of `tests/upstream-suite` on the Debian guest.
fn debian_test(name: &str, extra: &[&str]) -> (TestDir, RunResult) {
    let dir = TestDir::new(name);
    let mut cmd = Command::new(repo().join("ci/run-test"));
    cmd.arg(repo().join("tests/upstream-suite").join(name));
    if !extra.is_empty() {
        cmd.arg("--").args(extra);
    }
    cmd.env("NTD", NTD)
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

/// The text of `log` between the first line containing `from` and the next containing `to`.
fn between<'a>(log: &'a str, from: &str, to: &str) -> &'a str {
    let start = log
        .find(from)
        .unwrap_or_else(|| panic!("{from:?} not in the log\n{log}"));
    let rest = &log[start..];
    let end = rest
        .find(to)
        .unwrap_or_else(|| panic!("{to:?} not after {from:?}\n{log}"));
    &rest[..end]
}

#[test]
fn retry_nix_passes_unchanged() {
    let (dir, r) = no_machines("u-retry", test_script!("upstream_suite/retry.py"));
    r.assert_code(0);
    assert!(r.stderr.contains("test script finished in"), "{}", r.log());
    dir.assert_clean();
}

#[test]
fn retry_old_last_try_callbacks_keep_working() {
    let (dir, r) = no_machines(
        "u-lasttry",
        test_script!("upstream_suite/retry_old_last_try_callbacks.py"),
    );
    r.assert_code(0);
    for line in [
        "last chance diagnostics ran",
        "old and new retry callbacks behave",
    ] {
        assert!(r.stdout.contains(line), "missing {line:?}\n{}", r.log());
    }
    assert_eq!(
        r.stdout.matches("last chance diagnostics ran").count(),
        1,
        "{}",
        r.log()
    );
    // retry(fn, timeout_seconds=…) is upstream's deprecated form: warned, with its text.
    assert!(
        r.stderr.contains(
            "??? Warning (DeprecationWarning): The 'timeout_seconds' argument is deprecated. \
             Use 'timeout' instead."
        ),
        "{}",
        r.log()
    );
    dir.assert_clean();
}

#[test]
fn succeed_stdout_warning_nix_passes_with_its_log_checks() {
    let (dir, r) = debian_test("succeed-stdout-warning", &[]);
    // The script fails on purpose at its end (for testBuildFailure's log checks).
    r.assert_code(1);
    assert!(
        r.stderr
            .contains("Test script done and successful so far. Intentionally failing"),
        "{}",
        r.log()
    );
    // Every subtest before the intentional failure passed.
    assert!(!r.stderr.contains("failed with error"), "{}", r.log());
    let fast = between(
        &r.stderr,
        "MARKER: before fast command",
        "MARKER: after fast command",
    );
    assert!(!fast.contains("stdout is still open"), "{fast}");
    let slow = between(
        &r.stderr,
        "MARKER: before slow command",
        "MARKER: after slow command",
    );
    // One warning, naming the command, the processes holding stdout and the fix.
    assert_eq!(slow.matches("stdout is still open").count(), 1, "{slow}");
    for part in [
        "command `(echo ONE; sleep 15; echo TWO) &` exited more than 10 seconds ago",
        ": sleep 15",
        "`cmd >&2 &`",
        "setsid -f",
    ] {
        assert!(slow.contains(part), "missing {part:?}\n{slow}");
    }
    assert!(
        r.stderr.lines().any(|l| l.starts_with("machine # ")
            && l.contains("STDERR_TEST_MARKER: user command stderr output")),
        "user command stderr did not reach the console log\n{}",
        r.log()
    );
    dir.assert_clean();
}

#[test]
fn durations_warn_with_upstreams_text_once_per_call_site() {
    let (dir, r) = one_machine(
        "u-durations",
        test_script!("upstream_suite/durations_warn_with_upstreams_text.py"),
        &[],
    );
    r.assert_code(0);
    assert!(r.stdout.contains("durations checked"), "{}", r.log());
    let warning = |f: &str| {
        format!(
            "??? Warning (UserWarning): {f}(): passing a bare int/float as a duration is \
             deprecated. Use datetime.timedelta instead."
        )
    };
    for f in ["succeed", "wait_for_file", "sleep", "retry"] {
        assert!(
            r.stderr.contains(&warning(f)),
            "no warning for {f}\n{}",
            r.log()
        );
    }
    // Once per place in the script, although the loop ran three times.
    assert_eq!(
        r.stderr.matches(&warning("succeed")).count(),
        1,
        "{}",
        r.log()
    );
    // sleep(0.1) and sleep(secs=0.1) are two places.
    assert_eq!(
        r.stderr.matches(&warning("sleep")).count(),
        2,
        "{}",
        r.log()
    );
    // Calls the shim makes itself are not the script's.
    for f in ["execute", "wait_until_succeeds"] {
        assert!(!r.stderr.contains(&warning(f)), "{f} warned\n{}", r.log());
    }
    assert!(
        r.stderr.contains(
            "??? Warning (DeprecationWarning): The 'secs' argument is deprecated. Use \
             'duration' instead."
        ),
        "{}",
        r.log()
    );
    // The place is the script's line, as Python shows it.
    assert!(r.stderr.contains("File \"<string>\", line "), "{}", r.log());
    assert!(
        r.stderr.contains("machine.succeed(\"true\", timeout=10)"),
        "{}",
        r.log()
    );
    dir.assert_clean();
}

#[test]
fn ocr_timeout_error_shows_the_last_recognised_text() {
    ensure_host_tool("tesseract", "tesseract-ocr");
    let dir = TestDir::new("u-ocr");
    let vm = dir.vm_with(screen_guest(), "machine", &[]);
    let cfg = dir.config(
        &[("machine", &vm)],
        &[],
        240,
        test_script!("upstream_suite/ocr_timeout_shows_the_last_text.py"),
    );
    let r = dir.run(&["-c", cfg.to_str().unwrap()], LIMIT);
    r.assert_code(0);
    assert!(
        r.stdout.contains("OCR ERROR: action timed out after"),
        "{}",
        r.log()
    );
    assert!(
        r.stderr
            .contains("machine: Last OCR attempt failed. Text was: ["),
        "{}",
        r.log()
    );
    dir.assert_clean();
}
