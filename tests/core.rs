//! End-to-end tests of the core driver: real tiny guests under QEMU (TCG), real Python, the
//! real `ntd` binary. Every test checks that nothing it started survives.

// Tests may unwrap and panic: a failing assertion is their report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::io::BufRead;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(240);

fn one_machine(tag: &str, script: &str, timeout: u32) -> (TestDir, RunResult) {
    let dir = TestDir::new(tag);
    let vm = dir.tiny_vm("machine", &[]);
    let cfg = dir.config(&[("machine", &vm)], &[], timeout, script);
    let r = dir.run(&["-c", cfg.to_str().unwrap()], LIMIT);
    (dir, r)
}

#[test]
fn single_node_every_core_method_passes() {
    let (dir, r) = one_machine(
        "every",
        test_script!("core/single_node_every_core_method_passes.py"),
        200,
    );
    r.assert_code(0);
    for line in [
        "machine: starting vm",
        "machine: connected to guest root shell",
        "machine: must succeed: echo a",
        "machine: must fail: false",
        "machine: waiting for file '/tmp/ready'",
        "machine: waiting for success: test -e /tmp/ready && echo there",
        "machine: waiting for failure: test -e /tmp/ready",
        "machine: waiting for TCP port 8080 on localhost",
        "machine: waiting for TCP port 8080 on localhost to be closed",
        "machine # console-marker-42",
        "machine: waiting for console-marker-4[0-9] to appear on console",
        "machine: a log line",
        "machine: (finished: a nested block, in ",
        "machine: waiting for the VM to power off",
        "machine: forced crash",
        "test script finished in ",
    ] {
        assert!(r.stderr.contains(line), "missing {line:?}\n{}", r.log());
    }
    assert!(r.stdout.contains("additionally exposed symbols:"));
    // generate-driver-symbols (for pyflakes) lists exactly what the shim exposes.
    assert!(
        r.stdout.contains(&ntd::shim::DRIVER_SYMBOLS.join(", ")),
        "{}",
        r.stdout
    );
    dir.assert_clean();
}

#[test]
fn failing_succeed_exits_1_with_upstream_report() {
    let (dir, r) = one_machine(
        "fail",
        test_script!("core/failing_succeed_exits_1_with_upstream_report.py"),
        200,
    );
    r.assert_code(1);
    for line in [
        "machine: output: doomed",
        "!!! Traceback (most recent call last):",
        "!!!   File \"<string>\", line 3, in <module>",
        "!!!     machine.succeed('echo doomed; exit 7')",
        "!!! RequestedAssertionFailed: command `echo doomed; exit 7` failed (exit code 7)",
    ] {
        assert!(r.stderr.contains(line), "missing {line:?}\n{}", r.log());
    }
    dir.assert_clean();
}

#[test]
fn assertion_error_in_script_exits_1() {
    let (dir, r) = one_machine(
        "assert",
        test_script!("core/assertion_error_in_script_exits_1-assert_equal.py"),
        200,
    );
    r.assert_code(1);
    assert!(
        r.stderr
            .contains("!!! RequestedAssertionFailed: '1\\n' != '2\\n'"),
        "{}",
        r.log()
    );
    let dir2 = dir;
    let (dir3, r) = one_machine(
        "assert2",
        test_script!("core/assertion_error_in_script_exits_1-plain_assert.py"),
        200,
    );
    r.assert_code(1);
    assert!(
        r.stderr.contains("AssertionError: plain assert"),
        "{}",
        r.log()
    );
    dir2.assert_clean();
    dir3.assert_clean();
}

#[test]
fn syntax_error_is_reported_before_any_machine_starts() {
    let (dir, r) = one_machine(
        "syntax",
        test_script!("core/syntax_error_is_reported_before_any_machine_starts.py"),
        200,
    );
    r.assert_code(1);
    assert!(r.stderr.contains("SyntaxError"), "{}", r.log());
    assert!(!r.stderr.contains("starting vm"), "{}", r.log());
    assert!(r.elapsed < Duration::from_secs(10), "took {:?}", r.elapsed);
    dir.assert_clean();
}

#[test]
fn sys_exit_codes_pass_through() {
    let (dir, r) = one_machine(
        "exit",
        test_script!("core/sys_exit_codes_pass_through-exit_0.py"),
        200,
    );
    r.assert_code(0);
    dir.assert_clean();
    let (dir, r) = one_machine(
        "exit1",
        test_script!("core/sys_exit_codes_pass_through-exit_1.py"),
        200,
    );
    r.assert_code(1);
    dir.assert_clean();
}

#[test]
fn global_timeout_kills_everything_and_exits_143() {
    let (dir, r) = one_machine(
        "timeout",
        test_script!("core/global_timeout_kills_everything_and_exits_143.py"),
        8,
    );
    r.assert_code(143);
    assert!(
        r.stderr.contains("timeout reached; test terminating..."),
        "{}",
        r.log()
    );
    assert!(r
        .stderr
        .contains("Test will time out and terminate in 8.0 seconds"));
    assert!(r.elapsed < Duration::from_secs(30), "took {:?}", r.elapsed);
    dir.assert_clean();
}

#[test]
fn sigterm_during_a_test_cleans_up_and_exits_143() {
    let dir = TestDir::new("sigterm");
    let vm = dir.tiny_vm("machine", &[]);
    let cfg = dir.config(
        &[("machine", &vm)],
        &[],
        600,
        test_script!("core/sigterm_during_a_test_cleans_up_and_exits_143.py"),
    );
    let mut child = dir
        .ntd()
        .args(["-c", cfg.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        let done = line.contains("finished: must succeed: echo up");
        seen.push(line);
        if done {
            break;
        }
    }
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143), "{seen:#?}");
    dir.assert_clean();
}

#[test]
fn output_is_byte_exact_for_binary_and_10_megabytes() {
    let (dir, r) = one_machine(
        "bytes",
        test_script!("core/output_is_byte_exact_for_binary_and_10_megabytes.py"),
        220,
    );
    r.assert_code(0);
    assert!(r.stdout.contains("10 MB in "), "{}", r.log());
    dir.assert_clean();
}

/// The virtio console drops output when the host stops reading (QEMU cannot throttle a
/// console port): a driver stopped for a second in the middle of 30 MB of output must notice
/// the loss and fetch the missing bytes again from the guest's spool.
#[test]
fn output_dropped_by_a_stalled_host_is_fetched_again() {
    let (dir, r) = one_machine(
        "stall",
        test_script!("core/output_dropped_by_a_stalled_host_is_fetched_again.py"),
        220,
    );
    r.assert_code(0);
    assert!(
        r.stderr.contains("the console dropped") && r.stderr.contains("recovered the full output"),
        "the stall did not cause (or the driver did not report) a recovery\n{}",
        r.log()
    );
    dir.assert_clean();
}

#[test]
fn shell_hard_cases_behave() {
    let (dir, r) = one_machine("hard", test_script!("core/shell_hard_cases_behave.py"), 200);
    r.assert_code(0);
    assert!(
        r.stderr.contains("output after its command finished"),
        "late bytes were not reported\n{}",
        r.log()
    );
    dir.assert_clean();
}

#[test]
fn mid_and_legacy_command_lines_run_scripts() {
    let dir = TestDir::new("cli");
    let vm = dir.tiny_vm("legacy", &[]);
    let script = dir.write(
        "s.py",
        test_script!("core/mid_and_legacy_command_lines_run_scripts.py"),
    );
    let vm_s = vm.to_str().unwrap();
    let s = script.to_str().unwrap();
    let r = dir.run(
        &[
            "--vm-names",
            "legacy",
            "--vm-start-scripts",
            vm_s,
            "--global-timeout",
            "200",
            "--",
            s,
        ],
        LIMIT,
    );
    r.assert_code(0);
    let mut cmd = dir.ntd();
    cmd.env("startScripts", vm_s)
        .env("testScript", s)
        .env("globalTimeout", "200")
        .env("vlans", "");
    let r = run_with_limit(cmd, LIMIT);
    r.assert_code(0);
    assert!(
        r.stderr.contains("To keep it, pass --keep-vm-state"),
        "{}",
        r.log()
    );
    dir.assert_clean();
}

#[test]
fn bad_arguments_exit_2_with_a_message() {
    let dir = TestDir::new("args");
    for args in [
        &["--no-such-flag"][..],
        &["--config"][..],
        &["-c", "/nonexistent.json"][..],
        &["--vm-names", "a", "b", "--vm-start-scripts", "x"][..],
        &[
            "-o",
            "/nonexistent-dir",
            "--vm-names",
            "a",
            "--vm-start-scripts",
            "x",
        ][..],
    ] {
        let r = dir.run(args, Duration::from_secs(10));
        r.assert_code(2);
        assert!(r.stderr.contains("error:"), "{args:?}: {}", r.log());
    }
}

#[test]
fn a_machine_that_cannot_start_is_a_machine_error() {
    let dir = TestDir::new("nostart");
    let bad = dir.write(
        "run-bad-vm",
        "#!/bin/sh\necho 'cannot start: no kernel' >&2\nexit 3\n",
    );
    std::process::Command::new("chmod")
        .args(["+x", bad.to_str().unwrap()])
        .status()
        .unwrap();
    let cfg = dir.config(
        &[("bad", &bad)],
        &[],
        60,
        test_script!("core/a_machine_that_cannot_start_is_a_machine_error.py"),
    );
    let r = dir.run(&["-c", cfg.to_str().unwrap()], LIMIT);
    r.assert_code(1);
    assert!(
        r.stderr
            .contains("MachineError: Failed to start the following machines:"),
        "{}",
        r.log()
    );
    assert!(r.stderr.contains("cannot start: no kernel"), "{}", r.log());
    dir.assert_clean();
}

#[test]
fn trace_records_milestones_commands_and_a_timeline() {
    let dir = TestDir::new("trace");
    let vm = dir.tiny_vm("machine", &[]);
    let cfg = dir.config(
        &[("machine", &vm)],
        &[],
        200,
        test_script!("core/trace_records_milestones_commands_and_a_timeline.py"),
    );
    let trace = dir.path.join("t.json");
    let r = dir.run(
        &[
            "-c",
            cfg.to_str().unwrap(),
            "--trace",
            trace.to_str().unwrap(),
        ],
        LIMIT,
    );
    r.assert_code(0);
    assert!(
        r.stderr.contains("machine: boot phases: QMP ready +"),
        "{}",
        r.log()
    );
    assert!(r.stderr.contains("its own peak RSS"), "{}", r.log());
    let text = std::fs::read_to_string(&trace).unwrap();
    let v = ntd::json::Value::parse(text.as_bytes()).expect("trace is JSON");
    let events = v.get("traceEvents").unwrap().as_array().unwrap();
    let named = |n: &'static str| {
        events
            .iter()
            .filter(move |e| e.get("name").and_then(|x| x.as_str()) == Some(n))
    };
    for m in [
        "QEMU spawned",
        "QMP ready",
        "first serial line",
        "backdoor sentinel",
        "shell ready",
    ] {
        assert_eq!(named(m).count(), 1, "milestone {m}: {text}");
    }
    let failed = named("command").find(|e| {
        e.get("args")
            .and_then(|a| a.get("status"))
            .and_then(|s| s.as_i64())
            == Some(3)
    });
    assert!(
        failed.is_some(),
        "the failed command with its status: {text}"
    );
    assert_eq!(named("wait").count(), 1);
    assert_eq!(named("subtest: one").count(), 1);
    // Monotonic timestamps: milestones in boot order.
    let ts = |n: &'static str| {
        named(n)
            .next()
            .unwrap()
            .get("ts")
            .unwrap()
            .as_i64()
            .unwrap()
    };
    assert!(ts("QEMU spawned") < ts("QMP ready") && ts("backdoor sentinel") < ts("shell ready"));
    let html = std::fs::read_to_string(dir.path.join("t.json.html")).unwrap();
    assert!(html.contains("id=\"timeline\"") && html.contains("backdoor sentinel"));
    dir.assert_clean();
}
