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
    cmd.env(ntd::driver::vsock::PROGRAM_ENV, vhost_device_vsock());
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
    assert!(
        r.stdout.contains("old and new retry callbacks behave"),
        "{}",
        r.log()
    );
    assert!(
        r.stdout.matches("last chance diagnostics ran").count() <= 1,
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

#[test]
fn force_accel_fails_a_machine_that_runs_under_tcg() {
    let (dir, r) = one_machine(
        "u-accel",
        test_script!("upstream_suite/force_accel_fails_a_machine_under_tcg.py"),
        &["--force-accel"],
    );
    r.assert_code(0);
    assert!(
        r.stdout.contains("START ERROR: ") && r.stdout.contains("forceAccel is enabled but "),
        "{}",
        r.log()
    );
    assert!(
        r.stdout.contains("QEMU runs machine 'machine' under TCG")
            || r.stdout.contains("/dev/kvm is not accessible"),
        "{}",
        r.log()
    );
    dir.assert_clean();
}

#[test]
fn qemu_that_cannot_open_kvm_fails_with_upstreams_force_accel_message() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TestDir::new("u-nokvm");
    // What QEMU prints with `-machine accel=kvm` when /dev/kvm cannot be opened (nixpkgs PR
    // #509553 quotes it), then it exits.
    let vm = dir.write(
        "run-machine-vm",
        "#!/bin/sh\n\
         echo 'qemu-system-x86_64: Could not access KVM kernel module: Permission denied' >&2\n\
         echo 'qemu-system-x86_64: failed to initialize kvm: Permission denied' >&2\n\
         exit 1\n",
    );
    std::fs::set_permissions(&vm, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = dir.config(
        &[("machine", &vm)],
        &[],
        120,
        test_script!("upstream_suite/kvm_that_cannot_be_opened_is_upstreams_message.py"),
    );
    let r = dir.run(&["-c", cfg.to_str().unwrap()], LIMIT);
    r.assert_code(0);
    assert!(
        r.stdout.contains(
            "forceAccel is enabled but /dev/kvm is not accessible (permission denied).\n\
             Check that your user is in the 'kvm' group or that /dev/kvm has the correct \
             permissions."
        ),
        "{}",
        r.log()
    );
    assert!(
        r.stdout
            .contains("qemu-system-x86_64: failed to initialize kvm: Permission denied"),
        "QEMU's own output is kept\n{}",
        r.log()
    );
    dir.assert_clean();
}

#[test]
fn junit_schema_checker_judges_its_witnesses() {
    let out = Command::new("python3")
        .arg(repo().join("tests/common/junit_schema.py"))
        .arg("--self-test")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn junit_nix_writes_upstreams_report_valid_by_the_junit_schema() {
    let out = TestDir::new("u-junit-out");
    let out_dir = out.path.to_str().unwrap().to_owned();
    // upstream's extraDriverArgs: `--junit=junit.xml` (an argparse prefix of --junit-xml).
    let (dir, r) = debian_test("junit", &["-o", &out_dir, "--junit=junit.xml"]);
    r.assert_code(0);
    let junit = out.path.join("junit.xml");
    assert_junit_valid(&junit);
    let text = std::fs::read_to_string(&junit).unwrap();
    // The subtests are the test cases (no "main"), both passed; every log line is the
    // suite's system-out.
    let names: Vec<&str> = text
        .split("<testcase name=\"")
        .skip(1)
        .map(|s| s.split('"').next().unwrap())
        .collect();
    assert_eq!(
        names,
        ["systemd-networkd is started", "/etc is populated correctly"],
        "{text}"
    );
    assert!(!text.contains("<failure"), "{text}");
    assert_eq!(text.matches("<system-out>").count(), 1, "{text}");
    for line in [
        "machine: waiting for unit multi-user.target",
        "machine: must succeed: cat /etc/something",
        "subtest: /etc is populated correctly",
    ] {
        assert!(text.contains(line), "missing {line:?}\n{text}");
    }
    dir.assert_clean();
}

#[test]
fn efivars_nix_edits_the_variable_store_of_an_ovmf_guest() {
    let (dir, r) = debian_test("efivars", &[]);
    r.assert_code(0);
    for line in [
        "/sys/firmware/efi/efivars/Demo-a19f72f8-b554-4bd7-a0c2-2762bd854691: 0x2a -> 0x2b",
        "Congrats!",
    ] {
        assert!(r.stdout.contains(line), "missing {line:?}\n{}", r.log());
    }
    dir.assert_clean();
}

#[test]
fn efi_vars_outside_a_running_machine_are_refused_or_written() {
    let (dir, r) = one_machine(
        "u-efi",
        test_script!("upstream_suite/efi_vars_store_rules.py"),
        &[],
    );
    r.assert_code(0);
    assert!(r.stdout.contains("efi store rules hold"), "{}", r.log());
    dir.assert_clean();
}

#[test]
fn ssh_backdoor_nix_reaches_the_guest_through_ntds_vsock_mux_socket() {
    let (dir, r) = debian_test("ssh-backdoor", &[]);
    r.assert_code(0);
    assert!(
        r.stdout
            .contains("vsock-mux: echoed b'hello over vsock\\n'"),
        "{}",
        r.log()
    );
    // Printed at start and by dump_machine_ssh(), in upstream's words.
    assert_eq!(
        r.stdout
            .matches("SSH backdoor enabled, the machines can be accessed like this:")
            .count(),
        2,
        "{}",
        r.log()
    );
    assert!(
        r.stdout.contains(
            "\x1b[1mNote:\x1b[0m this requires \x1b[1msystemd-ssh-proxy(1)\x1b[0m to be \
             enabled (default on NixOS 25.05 and newer)."
        ),
        "{}",
        r.log()
    );
    assert!(
        r.stdout
            .contains("    machine:  \x1b[1mssh -o User=root vsock-mux/")
            && r.stdout.contains("/machine_host.socket\x1b[0m"),
        "{}",
        r.log()
    );
    assert!(r.stderr.contains("start vhost-device-vsock"), "{}", r.log());
    dir.assert_clean();
}

#[test]
fn dump_vsocks_prints_the_mid_generations_instructions() {
    let (dir, r) = one_machine(
        "u-vsocks",
        test_script!("upstream_suite/dump_vsocks.py"),
        &["--dump-vsocks", "2"],
    );
    r.assert_code(0);
    assert!(
        r.stdout
            .contains("SSH backdoor enabled, the machines can be accessed like this:"),
        "{}",
        r.log()
    );
    assert!(
        r.stdout
            .contains("    machine:  \x1b[1mssh -o User=root vsock/3\x1b[0m"),
        "{}",
        r.log()
    );
    assert!(r.stdout.contains("dump_vsocks checked"), "{}", r.log());
    dir.assert_clean();
}

#[test]
fn retry_schedule_on_a_fake_clock() {
    // The shim's retry loop on a fake clock, every step asked from this driver: remaining
    // time, no attempt after the deadline, the wait schedule's pauses, and the `last_try`
    // truth on the final attempt only, also when pauses oversleep.
    // Without PSI the host counts as contended: the pauses are the CPU budget's, whatever
    // the host's load (an idle host would pace by the fast rule).
    let dir = TestDir::new("u-retry-unit");
    let blind = dir.path.join("no-proc");
    std::fs::create_dir_all(&blind).unwrap();
    let cfg = dir.config(
        &[],
        &[],
        120,
        test_script!("upstream_suite/retry_schedule_fake_clock.py"),
    );
    let mut cmd = dir.ntd();
    cmd.args(["-c", cfg.to_str().unwrap()])
        .env("NTD_PROC_ROOT", &blind);
    let r = common::run_with_limit(cmd, LIMIT);
    r.assert_code(0);
    assert!(
        r.stdout.contains("retry schedule: 8 tests passed"),
        "{}",
        r.log()
    );
    dir.assert_clean();
}
