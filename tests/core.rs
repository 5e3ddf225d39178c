//! End-to-end tests of the core driver: real tiny guests under QEMU (TCG), real Python, the
//! real `ntd` binary. Every test checks that nothing it started survives.

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

const EVERY_METHOD: &str = r#"
import time
machine.start()
assert machine.booted
machine.connect()
assert machine.is_up()
status, out = machine.execute("echo hi; exit 3")
assert (status, out) == (3, "hi\n"), (status, out)
assert machine.succeed("echo a", "echo b") == "a\nb\n"
machine.fail("false", "exit 2")
machine.succeed("(sleep 0.5; touch /tmp/ready) >/dev/null 2>&1 &")
machine.wait_for_file("/tmp/ready", timeout=20)
assert machine.wait_until_succeeds("test -e /tmp/ready && echo there", timeout=20) == "there\n"
machine.succeed("(sleep 0.5; rm /tmp/ready) >/dev/null 2>&1 &")
machine.wait_until_fails("test -e /tmp/ready", timeout=20)
machine.succeed("busybox httpd -p 8080 -h /tmp")
machine.wait_for_open_port(8080)
machine.succeed("kill $(busybox pidof busybox | tr ' ' '\\n' | while read p; do grep -q httpd /proc/$p/cmdline && echo $p; done)")
machine.wait_for_closed_port(8080)
machine.succeed("echo console-marker-42 >&2")
machine.wait_for_console_text("console-marker-4[0-9]")
assert "running" in machine.send_monitor_command("info status")
t0 = time.monotonic()
machine.sleep(1)
assert time.monotonic() - t0 >= 1
machine.log("a log line")
with machine.nested("a nested block"):
    pass
machine.shutdown()
assert not machine.booted
machine.start()
machine.crash()
assert not machine.booted
machine.start()
machine.succeed("(sleep 0.3; poweroff) >/dev/null 2>&1 &")
machine.wait_for_shutdown()
assert not machine.is_up()
"#;

#[test]
fn single_node_every_core_method_passes() {
    let (dir, r) = one_machine("every", EVERY_METHOD, 200);
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
        "start_all()\nmachine.succeed('echo before')\nmachine.succeed('echo doomed; exit 7')\n",
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
        "start_all()\nt.assertEqual(machine.succeed('echo 1'), '2\\n')\n",
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
    let (dir3, r) = one_machine("assert2", "assert 1 == 2, 'plain assert'\n", 200);
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
    let (dir, r) = one_machine("syntax", "start_all()\nif broken\n", 200);
    r.assert_code(1);
    assert!(r.stderr.contains("SyntaxError"), "{}", r.log());
    assert!(!r.stderr.contains("starting vm"), "{}", r.log());
    assert!(r.elapsed < Duration::from_secs(10), "took {:?}", r.elapsed);
    dir.assert_clean();
}

#[test]
fn sys_exit_codes_pass_through() {
    let (dir, r) = one_machine("exit", "import sys\nsys.exit(0)\n", 200);
    r.assert_code(0);
    dir.assert_clean();
    let (dir, r) = one_machine("exit1", "import sys\nstart_all()\nsys.exit(1)\n", 200);
    r.assert_code(1);
    dir.assert_clean();
}

#[test]
fn global_timeout_kills_everything_and_exits_143() {
    let (dir, r) = one_machine(
        "timeout",
        "start_all()\nmachine.succeed('true')\nmachine.succeed('sleep 600')\n",
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
        "import time\nstart_all()\nmachine.succeed('echo up')\ntime.sleep(600)\n",
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

const BYTES: &str = r#"
import base64, hashlib
from test_driver import _rpc
start_all()

def raw(cmd):
    r = _rpc.channel().call("execute", machine="machine", command=cmd, timeout=None, check_output=True)
    assert r["status"] == 0, r
    assert r["truncated"] == 0, r
    return base64.b64decode(r["output"])

everything = raw("for i in {0..255}; do printf -v o '%03o' $i; printf \"\\\\$o\"; done")
assert everything == bytes(range(256)), everything
# Marker look-alikes and lone marker bytes are output like anything else.
fake = raw(r"printf '\001S0000000000000000\001x\001E0000000000000000 0\001\001A1 2\001'")
assert fake == b"\x01S0000000000000000\x01x\x01E0000000000000000 0\x01\x01A1 2\x01", fake
# Invalid UTF-8 is replaced like upstream does.
assert machine.succeed(r"printf 'a\377b'") == "a\ufffdb"
machine.succeed("head -c 10000000 /dev/urandom > /tmp/big")
want = machine.succeed("sha256sum /tmp/big").split()[0]
import time
t0 = time.monotonic()
big = raw("cat /tmp/big")
took = time.monotonic() - t0
assert len(big) == 10000000, len(big)
assert hashlib.sha256(big).hexdigest() == want
print(f"10 MB in {took:.2f} s")
"#;

#[test]
fn output_is_byte_exact_for_binary_and_10_megabytes() {
    let (dir, r) = one_machine("bytes", BYTES, 220);
    r.assert_code(0);
    assert!(r.stdout.contains("10 MB in "), "{}", r.log());
    dir.assert_clean();
}

const STALLED_HOST: &str = r#"
import hashlib, os, signal, threading, time
start_all()
machine.succeed("head -c 30000000 /dev/urandom > /tmp/big")
want = machine.succeed("sha256sum /tmp/big").split()[0]

def stall():
    time.sleep(0.5)
    os.kill(os.getppid(), signal.SIGSTOP)
    time.sleep(1.0)
    os.kill(os.getppid(), signal.SIGCONT)

threading.Thread(target=stall).start()
from test_driver import _rpc
import base64
r = _rpc.channel().call("execute", machine="machine", command="cat /tmp/big", timeout=None, check_output=True)
got = base64.b64decode(r["output"])
assert len(got) == 30000000, len(got)
assert hashlib.sha256(got).hexdigest() == want
assert machine.succeed("echo still usable") == "still usable\n"
"#;

/// The virtio console drops output when the host stops reading (QEMU cannot throttle a
/// console port): a driver stopped for a second in the middle of 30 MB of output must notice
/// the loss and fetch the missing bytes again from the guest's spool.
#[test]
fn output_dropped_by_a_stalled_host_is_fetched_again() {
    let (dir, r) = one_machine("stall", STALLED_HOST, 220);
    r.assert_code(0);
    assert!(
        r.stderr.contains("the console dropped") && r.stderr.contains("recovered the full output"),
        "the stall did not cause (or the driver did not report) a recovery\n{}",
        r.log()
    );
    dir.assert_clean();
}

const HARD_CASES: &str = r#"
import time
start_all()
machine.succeed("true")
# A background child that keeps stdout open must not block the command (upstream hangs).
t0 = time.monotonic()
machine.succeed("sleep 30 &")
assert time.monotonic() - t0 < 5, time.monotonic() - t0
# A command reading stdin gets EOF instead of eating the shell's own input.
assert machine.succeed("cat") == ""
assert machine.succeed("read -r x || echo eof") == "eof\n"
# Bytes that arrive after their command finished do not leak into the next result.
machine.succeed("(sleep 0.3; echo late-bytes) &")
time.sleep(1)
assert machine.succeed("echo next") == "next\n"
# stdout is a pipe, never the tty.
assert machine.succeed("test -p /dev/stdout && echo pipe") == "pipe\n"
# Each command runs in its own shell: no state leaks, exit does not kill the backdoor.
machine.execute("cd /; x=1; exit 5")
assert machine.succeed("pwd; echo ${x:-unset}") == "/tmp\nunset\n"
# set -euo pipefail as upstream.
assert machine.execute("false | true")[0] == 1
assert machine.execute("echo $undefined_variable")[0] != 0
# execute() with a timeout kills the command and its children with status 124.
assert machine.execute("sleep 10", timeout=1)[0] == 124
assert machine.execute("sh -c 'sleep 11; echo never' | cat", timeout=1)[0] == 124
assert machine.succeed("echo still here") == "still here\n"
assert machine.execute("ps -o args | grep -c '^sleep 1[01]' || true", timeout=5) == (0, "0\n")
# A command that runs in time keeps its own status, also 143 from a SIGTERM it sent itself.
assert machine.execute("exit 3", timeout=5)[0] == 3
assert machine.execute("kill -TERM $BASHPID", timeout=5)[0] == 143
# Waits stop a hanging attempt at their timeout.
t0 = time.monotonic()
try:
    machine.wait_until_succeeds("sleep 100", timeout=2)
    raise SystemExit("a hanging wait attempt was not stopped")
except AssertionError:
    pass
assert time.monotonic() - t0 < 10, time.monotonic() - t0
"#;

#[test]
fn shell_hard_cases_behave() {
    let (dir, r) = one_machine("hard", HARD_CASES, 200);
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
        "start_all()\nassert legacy is machine\nlegacy.succeed('true')\n",
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
    let cfg = dir.config(&[("bad", &bad)], &[], 60, "start_all()\n");
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
        "start_all()\nwith subtest('one'):\n    machine.succeed('true')\nmachine.execute('exit 3')\nmachine.wait_for_file('/tmp')\n",
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
    assert!(html.contains("<svg") && html.contains("backdoor sentinel"));
    dir.assert_clean();
}
