//! End-to-end tests of the testScript API on tiny guests (real QEMU under TCG, the real `ntd`
//! binary and Python shim): every Machine method and global that needs no systemd (those are
//! in tests/api_debian.rs), with the argument forms of all three upstream generations, the
//! XML and JUnit logs on success, failure and timeout, and the interactive driver.
//!
//! The guests are the tiny guest with a framebuffer console (`screen_guest`), so screenshots
//! and OCR see tty1.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(300);

/// One machine called `machine`; `args` are extra driver arguments.
fn one_machine(tag: &str, script: &str, timeout: u32, args: &[&str]) -> (TestDir, RunResult) {
    let dir = TestDir::new(tag);
    std::fs::create_dir_all(dir.path.join("out")).unwrap();
    let vm = dir.vm_with(screen_guest(), "machine", &[]);
    let cfg = dir.config(&[("machine", &vm)], &[], timeout, script);
    let mut all = vec!["-c", cfg.to_str().unwrap()];
    all.extend_from_slice(args);
    let r = dir.run(&all, LIMIT);
    (dir, r)
}

fn assert_lines(r: &RunResult, lines: &[&str]) {
    for line in lines {
        assert!(r.stderr.contains(line), "missing {line:?}\n{}", r.log());
    }
}

/// Parse an XML file with python3's xml.etree; returns what `probe` (Python code using `root`)
/// prints.
fn xml_probe(path: &Path, probe: &str) -> String {
    let code = format!(
        "import sys, xml.etree.ElementTree as ET\nroot = ET.parse(sys.argv[1]).getroot()\n{probe}\n"
    );
    let out = Command::new("python3")
        .args(["-c", &code])
        .arg(path)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{} is not well-formed XML or the probe failed: {}\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(path).unwrap_or_default()
    );
    String::from_utf8(out.stdout).unwrap()
}

/// JUnit test cases as "name failed|ok" lines.
const JUNIT_CASES: &str = "for c in root.iter('testcase'):\n    print(c.get('name'), 'failed' if c.find('failure') is not None else 'ok')";

const KEYBOARD_SCREEN_TTY: &str = r#"
import os, re, string
from datetime import timedelta
from test_driver.errors import MachineError

start_all()
machine.wait_for_file("/tmp")

with subtest("send_chars and send_key reach tty1 with upstream's key mapping"):
    machine.succeed("(cat /dev/tty1 > /tmp/typed) >/dev/null 2>&1 &")
    machine.wait_until_succeeds("busybox pidof cat", timeout=10)
    printable = "".join(c for c in string.printable if c not in string.whitespace)
    machine.send_chars("Hello, World! " + printable + "\n")
    machine.wait_until_succeeds("grep -q World /tmp/typed", timeout=30)
    typed = machine.succeed("cat /tmp/typed")
    assert typed == "Hello, World! " + printable + "\n", repr(typed)
    # Every delay form; log=False sends without a log line.
    machine.send_key("A", delay=0.05)
    machine.send_key("b", delay=timedelta(milliseconds=5))
    machine.send_key("c", None)
    machine.send_key("spc", 0)
    machine.send_key("shift-d", log=False)
    machine.send_chars("_~|\n", delay=0.01)
    machine.send_chars("Z\n", timedelta(milliseconds=1))
    machine.wait_until_succeeds("grep -q '^Z$' /tmp/typed", timeout=30)
    lines = machine.succeed("cat /tmp/typed").splitlines()
    assert lines[1:] == ["Abc D_~|", "Z"], lines

with subtest("screenshot, OCR"):
    machine.succeed("printf '\\033[2J\\033[HNTD SCREEN PROBE 4711\\n' > /dev/tty1")
    machine.screenshot("probe")
    machine.screenshot("second.png")
    machine.screenshot(str(driver.out_dir / "absolute"))
    assert (driver.out_dir / "probe.png").exists()
    text = machine.get_screen_text()
    assert "SCREEN PROBE" in text, text
    variants = machine.get_screen_text_variants()
    assert isinstance(variants, list) and any("4711" in v for v in variants), variants
    machine.wait_for_text("SCREEN PROBE", timeout=30)
    machine.succeed("(sleep 1; echo LATER ARRIVAL > /dev/tty1) >/dev/null 2>&1 &")
    machine.wait_for_text(r"LATER\s+ARRIVAL", timeout=timedelta(seconds=60))
    try:
        machine.wait_for_text("NOT ON THE SCREEN", timeout=1)
        raise Exception("wait_for_text did not time out")
    except AssertionError as e:
        assert "action timed out" in str(e), e

with subtest("OCR without tesseract is upstream's MachineError"):
    path = os.environ["PATH"]
    os.environ["PATH"] = "/nonexistent"
    try:
        for call in (machine.get_screen_text, machine.get_screen_text_variants,
                     lambda: machine.wait_for_text("x", timeout=30)):
            try:
                call()
                raise Exception("OCR worked without tesseract")
            except MachineError as e:
                assert str(e) == "OCR requested but enableOCR is false", e
    finally:
        os.environ["PATH"] = path

with subtest("tty text"):
    machine.succeed("echo tty-probe-1234 > /dev/tty1")
    assert "tty-probe-1234" in machine.get_tty_text("1")
    assert "tty-probe-1234" in machine.get_tty_text(1)  # legacy: tty as an int
    machine.wait_until_tty_matches("1", r"tty-probe-\d+")
    machine.wait_until_tty_matches(1, "tty-probe", timeout=5)
    machine.succeed("(sleep 1; echo tty-later > /dev/tty1) >/dev/null 2>&1 &")
    machine.wait_until_tty_matches("1", "tty-later", timeout=timedelta(seconds=20))
    try:
        machine.wait_until_tty_matches("1", "never-there", timeout=1)
        raise Exception("wait_until_tty_matches did not time out")
    except AssertionError as e:
        assert "action timed out" in str(e), e
    # The tiny guest has no systemd-cat: the command fails, and (as upstream) nothing raises.
    machine.dump_tty_contents("1")
"#;

#[test]
fn keyboard_screenshots_ocr_and_ttys() {
    ensure_host_tool("tesseract", "tesseract-ocr");
    let (dir, r) = one_machine(
        "keys",
        KEYBOARD_SCREEN_TTY,
        240,
        &["-o", "out", "--junit-xml", "junit.xml"],
    );
    r.assert_code(0);
    assert_lines(
        &r,
        &[
            "machine: sending keys 'Hello, World! 0123",
            "machine: sending key 'shift-a'",
            "machine: sending key 'spc'",
            "machine: making screenshot ",
            "machine: waiting for SCREEN PROBE to appear on screen",
            "machine: Last OCR attempt failed. Text was: ",
            "machine: waiting for tty-probe to appear on tty 1",
            "machine: Last chance to match /never-there/ on TTY1, which currently contains: ",
            "machine: tesseract is not on PATH",
        ],
    );
    assert!(
        !r.stderr.contains("sending key 'shift-d'"),
        "send_key(log=False) logged\n{}",
        r.log()
    );
    let out = dir.path.join("out");
    for name in ["probe.png", "second.png", "absolute.png"] {
        let png = std::fs::read(out.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{name} is not a PNG");
        assert_eq!(&png[12..16], b"IHDR");
        let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
        let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
        assert!(width >= 640 && height >= 400, "{name}: {width}x{height}");
    }
    let cases = xml_probe(&out.join("junit.xml"), JUNIT_CASES);
    assert_eq!(
        cases.lines().collect::<Vec<_>>(),
        [
            "main ok",
            "send_chars and send_key reach tty1 with upstream's key mapping ok",
            "screenshot, OCR ok",
            "OCR without tesseract is upstream's MachineError ok",
            "tty text ok",
        ]
    );
    dir.assert_clean();
}

const CONSOLE_MONITOR_QMP: &str = r#"
import time
from datetime import timedelta
from test_driver.machine.qmp import QMPAPIError

start_all()
machine.wait_for_file("/tmp")

with subtest("send_console and console_interact reach the guest's ttyS0"):
    machine.succeed("(head -n 2 /dev/ttyS0 > /tmp/serial-in) >/dev/null 2>&1 &")
    machine.wait_until_succeeds("busybox pidof head", timeout=10)
    machine.send_console("from the host 42\n")
    machine.console_interact()  # stdin of the driver: one line, then EOF
    machine.wait_until_succeeds("[ $(wc -l < /tmp/serial-in) = 2 ]", timeout=10)
    assert machine.succeed("cat /tmp/serial-in") == "from the host 42\ntyped on stdin\n"

with subtest("the serial console"):
    machine.succeed("echo console-marker-1 >&2")
    machine.wait_for_console_text("console-marker-1")
    machine.succeed("(sleep 0.5; echo console-marker-2 > /dev/ttyS0) >/dev/null 2>&1 &")
    machine.wait_for_console_text(r"console-marker-\d", timeout=20)
    machine.succeed("echo console-marker-3 >&2")
    machine.wait_for_console_text("marker-3", timeout=timedelta(seconds=20))
    try:
        machine.wait_for_console_text("never-printed", timeout=1)
        raise Exception("wait_for_console_text did not time out")
    except AssertionError as e:
        assert "action timed out" in str(e), e
    log = machine.get_console_log()
    assert "console-marker-1" in log and "from the host 42" in log, log[-500:]
    assert "console-marker-3" in machine.full_console_log

with subtest("the monitor and QMP"):
    r = machine.send_monitor_command("info status")
    assert r.startswith("info status\r\n") and "running" in r and r.endswith("(qemu) "), repr(r)
    r = machine.send_monitor_command("help")
    assert "balloon" in r and "(qemu)" in r
    assert machine.qmp_client.send("query-status")["return"]["running"] is True
    machine.send_monitor_command("stop")
    event = machine.wait_for_qmp_event(lambda e: e["event"] == "STOP")
    assert event["event"] == "STOP", event
    machine.qmp_client.send("cont")
    event = machine.wait_for_qmp_event(lambda e: e["event"] == "RESUME", timeout=timedelta(seconds=10))
    t0 = time.monotonic()
    try:
        machine.wait_for_qmp_event(lambda e: False, timeout=1)
        raise Exception("wait_for_qmp_event did not time out")
    except TimeoutError:
        pass
    assert time.monotonic() - t0 < 10
    try:
        machine.qmp_client.send("this-command-does-not-exist")
        raise Exception("no QMPAPIError")
    except QMPAPIError as e:
        assert e.class_name == "CommandNotFound" and e.description and e.transaction_id is None
    assert machine.succeed("echo still running") == "still running\n"
"#;

#[test]
fn console_monitor_and_qmp() {
    let dir = TestDir::new("console");
    let vm = dir.vm_with(screen_guest(), "machine", &[]);
    let cfg = dir.config(&[("machine", &vm)], &[], 200, CONSOLE_MONITOR_QMP);
    let mut cmd = dir.ntd();
    cmd.args(["-c", cfg.to_str().unwrap()]);
    let r = run_with_input(cmd, LIMIT, Some("typed on stdin\n"));
    r.assert_code(0);
    assert_lines(
        &r,
        &[
            "machine: Terminal is ready (there is no prompt):",
            "machine: Closing connection to the console",
            "machine # console-marker-2",
            "machine: waiting for console-marker-\\d to appear on console",
        ],
    );
    dir.assert_clean();
}

const FILES: &str = r#"
import os, stat, tempfile
from pathlib import Path

start_all()
host = Path(tempfile.mkdtemp())
(host / "f.txt").write_text("file content\n")
(host / "f.txt").chmod(0o751)
(host / "tree" / "sub").mkdir(parents=True)
(host / "tree" / "a").write_text("A")
(host / "tree" / "sub" / "b").write_bytes(bytes(range(256)))

with subtest("copy_from_host: files (mode kept), directories, str and Path arguments"):
    machine.copy_from_host(str(host / "f.txt"), "/root/new/f.txt")
    assert machine.succeed("cat /root/new/f.txt; stat -c %a /root/new/f.txt") == "file content\n751\n"
    machine.copy_from_host(host / "tree", Path("/root/tree"))
    assert machine.succeed("cd /root/tree && find . | sort") == ".\n./a\n./sub\n./sub/b\n"
    assert machine.succeed("od -An -tx1 /root/tree/sub/b | tr -d ' \\n'") == bytes(range(256)).hex()

with subtest("copy_from_host_via_shell"):
    machine.copy_from_host_via_shell(str(host / "tree" / "sub" / "b"), "/root/via/shell/b")
    assert machine.succeed("sha256sum < /root/via/shell/b") == machine.succeed("sha256sum < /root/tree/sub/b")

with subtest("copy_from_machine and copy_from_vm"):
    machine.succeed("mkdir -p /tmp/gdir/x && echo g > /tmp/gdir/x/g && echo top > /tmp/gfile")
    machine.copy_from_machine("/tmp/gfile")
    machine.copy_from_machine("/tmp/gdir", "sub")
    machine.copy_from_vm("/tmp/gfile", "legacy")
    with tempfile.TemporaryDirectory() as absolute:
        machine.copy_from_vm("/tmp/gdir", absolute)
        assert (Path(absolute) / "gdir" / "x" / "g").read_text() == "g\n"
    out = driver.out_dir
    assert (out / "gfile").read_text() == "top\n"
    assert (out / "sub" / "gdir" / "x" / "g").read_text() == "g\n"
    assert (out / "legacy" / "gfile").read_text() == "top\n"
    # The intermediate copies in the shared directory are gone again.
    assert os.listdir(machine.shared_dir) == [], os.listdir(machine.shared_dir)
"#;

#[test]
fn files_are_copied_both_ways() {
    let (dir, r) = one_machine("files", FILES, 200, &["-o", "out"]);
    r.assert_code(0);
    let out = dir.path.join("out");
    assert_eq!(std::fs::read_to_string(out.join("gfile")).unwrap(), "top\n");
    assert_eq!(
        std::fs::read_to_string(out.join("sub/gdir/x/g")).unwrap(),
        "g\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("legacy/gfile")).unwrap(),
        "top\n"
    );
    assert_lines(
        &r,
        &["machine: must succeed: cp -r /tmp/gfile /tmp/shared/tmp"],
    );
    dir.assert_clean();
}

const LIFECYCLE: &str = r#"
import os, time
from pathlib import Path

run_dir = Path(os.environ["XDG_RUNTIME_DIR"])

with subtest("attributes before and after start"):
    assert machine.name == "machine" and repr(machine) == "<QemuMachine 'machine'>"
    assert machine.state_dir == run_dir / "vm-state-machine", machine.state_dir
    assert machine.shared_dir == run_dir / "shared-xchg", machine.shared_dir
    assert not machine.booted and not machine.connected and machine.pid is None
    assert not machine.is_up()
    machine.start(allow_reboot=True)
    assert machine.booted and machine.pid is not None
    os.kill(machine.pid, 0)  # the QEMU process
    machine.connect()
    assert machine.connected and machine.is_up()
    assert machine in machines and machines == [machine]

with subtest("reboot with allow_reboot, and the connected = False idiom"):
    pid = machine.pid
    boot1 = machine.succeed("cat /proc/sys/kernel/random/boot_id")
    machine.reboot()
    assert not machine.connected
    boot2 = machine.succeed("cat /proc/sys/kernel/random/boot_id")
    assert boot1 != boot2 and machine.pid == pid, (boot1, boot2)
    machine.execute("(sleep 0.5; reboot) >/dev/null 2>&1 &")
    machine.connected = False
    machine.connect()
    assert machine.succeed("cat /proc/sys/kernel/random/boot_id") not in (boot1, boot2)

with subtest("X11 waits fail as upstream's do without X"):
    t0 = time.monotonic()
    try:
        machine.wait_for_x(timeout=1)
        raise Exception("wait_for_x succeeded")
    except AssertionError as e:
        assert "action timed out after" in str(e), e
    assert time.monotonic() - t0 < 15
    for call in (lambda: machine.wait_for_window("xterm", timeout=1), machine.get_window_names):
        try:
            call()
            raise Exception("window query succeeded")
        except AssertionError as e:
            assert "xwininfo" in str(e) and "failed (exit code 127)" in str(e), e

with subtest("crash, start again, shutdown"):
    machine.crash()
    assert not machine.booted and machine.pid is None
    machine.start()
    machine.succeed("true")
    machine.shutdown()
    assert not machine.booted
    machine.booted = False  # scripts assign it; harmless here
    machine.pid = None

with subtest("create_machine"):
    extra = create_machine("@EXTRA@", keep_vm_state=True)  # legacy keyword
    assert extra.name == "extra" and extra not in machines
    assert extra.state_dir == run_dir / "vm-state-extra"
    try:
        extra.wait_for_qmp_event(lambda e: True, timeout=1)
        raise Exception("QMP answered before start")
    except RuntimeError as e:
        assert str(e) == "QMP API is not ready yet, is the VM ready?", e
    renamed = create_machine("@THIRD@", name="renamed", keep_machine_state=True)
    assert renamed.name == "renamed"
    extra.start()
    renamed.start()
    extra.succeed("echo from-extra > /tmp/xchg/kept")
    assert renamed.succeed("hostname") == "third\n"
    extra.shutdown()
    renamed.shutdown()
    assert (extra.state_dir / "xchg" / "kept").read_text() == "from-extra\n"
"#;

#[test]
fn lifecycle_attributes_reboot_and_create_machine() {
    let dir = TestDir::new("life");
    let vm = dir.vm_with(screen_guest(), "machine", &[]);
    let extra = dir.vm_with(screen_guest(), "extra", &[]);
    let third = dir.vm_with(screen_guest(), "third", &[]);
    let script = LIFECYCLE
        .replace("@EXTRA@", extra.to_str().unwrap())
        .replace("@THIRD@", third.to_str().unwrap());
    let cfg = dir.config(&[("machine", &vm)], &[], 300, &script);
    let r = dir.run(&["-c", cfg.to_str().unwrap()], LIMIT);
    r.assert_code(0);
    assert_lines(
        &r,
        &[
            "machine: sending key 'ctrl-alt-delete'",
            "machine: waiting for the X11 server",
            "machine: forced crash",
            "extra: starting vm",
            "renamed: starting vm",
        ],
    );
    // keep_vm_state / keep_machine_state: the state survives the run.
    let run = dir.run_dir();
    assert!(run.join("vm-state-extra/xchg/kept").exists(), "{}", r.log());
    assert!(run.join("vm-state-renamed").is_dir(), "{}", r.log());
    dir.assert_clean();
}

#[test]
fn block_unblock_and_forward_port() {
    let dir = TestDir::new("net");
    let hosts = "client:192.168.1.1,server:192.168.1.2";
    let client = dir.vm_with(
        screen_guest(),
        "client",
        &["--vlan", "1", "--index", "1", "--hosts", hosts],
    );
    let server = dir.vm_with(
        screen_guest(),
        "server",
        &["--vlan", "1", "--index", "2", "--hosts", hosts],
    );
    // A free host port for forward_port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script = r#"
import urllib.request
start_all()
server.succeed("mkdir -p /srv && echo Hello > /srv/file && busybox httpd -p 8080 -h /srv")
server.wait_for_open_port(8080)
client.wait_until_succeeds("wget -q -O - http://server:8080/file | grep Hello", timeout=30)
server.block()
client.fail("timeout 3 wget -q -O - http://server:8080/file")
server.unblock()
client.wait_until_succeeds("timeout 3 wget -q -O - http://server:8080/file", timeout=30)
# The user-mode NIC (device 0) carries forwarded ports; the tiny guest leaves it unconfigured.
server.succeed("ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up")
server.forward_port(@PORT@, 8080)
response = urllib.request.urlopen("http://127.0.0.1:@PORT@/file", timeout=20).read()
assert response == b"Hello\n", response
"#
    .replace("@PORT@", &port.to_string());
    let cfg = dir.config(
        &[("client", &client), ("server", &server)],
        &[1],
        200,
        &script,
    );
    let r = dir.run(&["-c", cfg.to_str().unwrap()], LIMIT);
    r.assert_code(0);
    dir.assert_clean();
}

const GLOBALS: &str = r#"
import time
from datetime import timedelta
from test_driver.driver import Driver
from test_driver.machine import retry as imported_retry
from test_driver.polling_condition import PollingConditionError
from test_driver.errors import RequestedAssertionFailed

with subtest("names scripts import from the package"):
    from test_driver import logger
    from test_driver.debug import Debug, DebugAbstract, DebugNop
    from test_driver.duration import Duration, as_seconds, as_timedelta
    from test_driver.efi import EfiVariable
    from test_driver.errors import MachineError, TestScriptError
    from test_driver.logger import (
        AbstractLogger, CompositeLogger, JunitXMLLogger, Logger, LogLevel, TerminalLogger,
        XMLLogger, rootlog,
    )
    from test_driver.machine import (
        BaseMachine as B, Machine as M, NspawnMachine as N, QemuMachine as Q, QemuStartCommand,
    )
    from test_driver.machine.qmp import QMPAPIError, QMPSession
    from test_driver.polling_condition import PollingCondition
    from test_driver.vlan import VLan
    assert M is Q and issubclass(RequestedAssertionFailed, (AssertionError, TestScriptError))
    assert logger.rootlog is rootlog and rootlog.sanitise("a\x1bb") == "ab"
    assert as_seconds(timedelta(minutes=1)) == 60.0 and as_timedelta(2) == timedelta(seconds=2)

with subtest("names of the namespace"):
    assert isinstance(driver, Driver) and driver.machines == machines == [machine]
    assert [v.nr for v in vlans] == [1] and vlan1 is vlans[0]
    assert Machine is QemuMachine and issubclass(QemuMachine, BaseMachine)
    assert isinstance(machine, QemuMachine) and isinstance(machine, BaseMachine)
    assert callable(run_tests) and callable(test_script) and callable(join_all)
    assert type(debug).__name__ == "DebugNop"
    debug.breakpoint()  # a no-op without --debug-hook-attach
    dump_machine_ssh()
    assert imported_retry is retry

start_all()
machine.succeed("touch /tmp/ok")

with subtest("polling_condition, every form"):
    @polling_condition
    def ok_exists():
        machine.succeed("test -e /tmp/ok")

    @polling_condition(seconds_interval=0.5, description="ok file present")
    def ok_with_args():
        return machine.execute("test -e /tmp/ok")[0] == 0

    @polling_condition(interval=timedelta(milliseconds=300))
    def ok_docstring():
        "the docstring describes it"
        machine.succeed("test -e /tmp/ok")

    called = polling_condition(lambda: True, description="a plain call")
    assert ok_exists.condition.description == "ok_exists"
    assert ok_with_args.condition.description == "ok file present"
    assert ok_docstring.condition.description == "the docstring describes it"
    with ok_exists, ok_with_args, ok_docstring, called:
        machine.succeed("true")
        ok_exists.wait(5)
        ok_with_args.wait(timedelta(seconds=5))
        ok_docstring.wait(timeout=5)
        ok_docstring.wait(timeout_seconds=timedelta(seconds=5))
        called.wait()

    flag = {"ok": True}

    @polling_condition(seconds_interval=0)
    def flaky():
        return flag["ok"]

    with flaky:
        machine.succeed("true")
        flag["ok"] = False
        try:
            machine.succeed("true")
            raise Exception("the failing condition did not raise")
        except PollingConditionError as e:
            assert str(e) == "Polling condition failed: flaky", e
    machine.succeed("true")  # not active any more
    machine.succeed("(sleep 0.3; touch /tmp/later) >/dev/null 2>&1 &")
    late_cond = polling_condition(lambda: machine.execute("test -e /tmp/later")[0] == 0,
                                  description="later file")
    late_cond.wait(timedelta(seconds=20))

with subtest("retry, all three signatures"):
    calls = []

    def third_time(last_try):
        calls.append(last_try)
        return len(calls) >= 3

    for args, kwargs in [((30,), {}), ((), {"timeout_seconds": 30}), ((), {"timeout": 30}),
                         ((timedelta(seconds=30),), {}), ((), {"timeout": timedelta(seconds=30)}),
                         ((), {"timeout_seconds": timedelta(seconds=30)}), ((2.5,), {})]:
        calls.clear()
        retry(third_time, *args, **kwargs)
        assert calls == [False, False, False], (args, kwargs, calls)
    calls.clear()
    try:
        retry(lambda last: calls.append(last) or False, timeout=0.3)
        raise Exception("retry did not time out")
    except RequestedAssertionFailed as e:
        assert "action timed out after" in str(e), e
    assert calls[-1] is True and all(c is False for c in calls[:-1]), calls

with subtest("durations and legacy argument forms"):
    machine.succeed("true", timeout=10)
    machine.succeed("true", timeout=10.5)
    machine.succeed("true", timeout=timedelta(seconds=10))
    assert machine.execute("sleep 5", timeout=timedelta(seconds=1))[0] == 124
    assert machine.execute("sleep 5", timeout=1.0)[0] == 124
    machine.wait_until_succeeds("true", timeout=timedelta(minutes=1))
    machine.wait_until_fails("false", 60)
    machine.wait_for_file("/tmp/ok", 60.0)
    machine.succeed("busybox httpd -p 8081 -h /tmp")
    machine.wait_for_open_port("8081", timeout=60)  # legacy: the port as a string
    machine.wait_for_open_port(8081, "127.0.0.1", timedelta(seconds=60))
    t0 = time.monotonic()
    machine.sleep(1)  # positional seconds
    machine.sleep(duration=timedelta(milliseconds=500))
    machine.sleep(0.5)
    assert time.monotonic() - t0 >= 2
    machine.wait_until_succeeds("true", timeout=30, attempt_timeout=5)

with subtest("logging"):
    log.info("an info line")
    log.warning("a warning line")
    log.log("a plain line")
    machine.log("a machine line")
    with log.nested("a nested block"):
        log.info("inside the block")
    with machine.nested("a machine block"):
        pass
    with log.subtest("via log.subtest"):
        pass
    serial_stdout_off()
    machine.succeed("echo hidden-serial-marker >&2")
    machine.wait_for_console_text("hidden-serial-marker")
    serial_stdout_on()
    machine.succeed("echo shown-serial-marker >&2")
    machine.wait_for_console_text("shown-serial-marker")
    t.assertEqual(1, 1)
    t.assertIn("b", "abc")
    t.assertRegex("abc", "^a")
    with t.assertRaises(RequestedAssertionFailed):
        t.assertEqual(1, 2)

with subtest("join_all"):
    machine.succeed("(sleep 0.3; poweroff) >/dev/null 2>&1 &")
    join_all()
    assert not machine.booted
"#;

#[test]
fn globals_polling_conditions_retry_durations_and_logs() {
    let dir = TestDir::new("globals");
    std::fs::create_dir_all(dir.path.join("out")).unwrap();
    let vm = dir.vm_with(screen_guest(), "machine", &["--vlan", "1"]);
    let cfg = dir.config(&[("machine", &vm)], &[1], 240, GLOBALS);
    let log = dir.path.join("log.xml");
    let mut cmd = dir.ntd();
    cmd.env("LOGFILE", &log).args([
        "-c",
        cfg.to_str().unwrap(),
        "-o",
        "out",
        "--junit-xml",
        "junit.xml",
    ]);
    let r = run_with_limit(cmd, LIMIT);
    r.assert_code(0);
    assert_lines(
        &r,
        &[
            "Checking polling condition 'ok_exists'",
            "Polling condition succeeded: ok file present",
            "waiting for the docstring describes it",
            "Polling condition failed: flaky",
            "an info line",
            "a warning line",
            "machine: a machine line",
            "(finished: a nested block, in ",
            "subtest: via log.subtest",
            "machine # shown-serial-marker",
            "wait for all VMs to finish",
        ],
    );
    assert!(
        !r.stderr.contains("machine # hidden-serial-marker"),
        "serial output shown after serial_stdout_off()\n{}",
        r.log()
    );
    // The XML log: well-formed, serial lines typed, nesting closed.
    let probe = xml_probe(
        &log,
        "print(root.tag)\n\
         print(sum(1 for l in root.iter('line') if l.get('type') == 'serial' and 'shown-serial-marker' in (l.text or '')))\n\
         print(any('hidden-serial-marker' in (l.text or '') for l in root.iter('line') if l.get('type') == 'serial'))\n\
         print(any((h.text or '') == 'subtest: logging' for h in root.iter('head')))",
    );
    assert_eq!(
        probe.lines().collect::<Vec<_>>(),
        ["logfile", "1", "False", "True"],
        "{probe}"
    );
    let cases = xml_probe(&dir.path.join("out/junit.xml"), JUNIT_CASES);
    assert_eq!(
        cases.lines().collect::<Vec<_>>(),
        [
            "main ok",
            "names scripts import from the package ok",
            "names of the namespace ok",
            "polling_condition, every form ok",
            "retry, all three signatures ok",
            "durations and legacy argument forms ok",
            "logging ok",
            "via log.subtest ok",
            "join_all ok",
        ]
    );
    dir.assert_clean();
}

/// Run `script` on one machine with LOGFILE and --junit-xml; returns the dir, the result and
/// the two log paths.
fn with_logs(tag: &str, script: &str, timeout: u32) -> (TestDir, RunResult, PathBuf, PathBuf) {
    let dir = TestDir::new(tag);
    std::fs::create_dir_all(dir.path.join("out")).unwrap();
    let vm = dir.vm_with(screen_guest(), "machine", &[]);
    let cfg = dir.config(&[("machine", &vm)], &[], timeout, script);
    let log = dir.path.join("log.xml");
    let mut cmd = dir.ntd();
    cmd.env("LOGFILE", &log).args([
        "-c",
        cfg.to_str().unwrap(),
        "-o",
        "out",
        "--junit-xml",
        "junit.xml",
    ]);
    let r = run_with_limit(cmd, LIMIT);
    let junit = dir.path.join("out/junit.xml");
    (dir, r, log, junit)
}

const FAILING: &str = r#"
start_all()
with subtest("passes"):
    machine.succeed("echo '<fine & dandy>'")
with subtest("fails"):
    output = machine.succeed("echo abc")
    t.assertIn("xyz", output)
machine.succeed("echo never reached")
"#;

#[test]
fn failing_assertion_exits_1_with_report_and_well_formed_logs() {
    let (dir, r, log, junit) = with_logs("failing", FAILING, 200);
    r.assert_code(1);
    assert_lines(
        &r,
        &[
            "!!! Test \"fails\" failed with error: \"'xyz' not found in 'abc\\n'\"",
            "!!! Traceback (most recent call last):",
            "!!!   File \"<string>\", line 7, in <module>",
            "!!!     t.assertIn(\"xyz\", output)",
            "!!! RequestedAssertionFailed: 'xyz' not found in 'abc\\n'",
        ],
    );
    assert!(!r.stderr.contains("never reached"), "{}", r.log());
    let probe = xml_probe(
        &log,
        "print(sum(1 for h in root.iter('head') if (h.text or '').startswith('subtest: ')))\n\
         print(any('RequestedAssertionFailed' in (l.text or '') for l in root.iter('line')))",
    );
    assert_eq!(probe.lines().collect::<Vec<_>>(), ["2", "True"], "{probe}");
    let cases = xml_probe(&junit, JUNIT_CASES);
    assert_eq!(
        cases.lines().collect::<Vec<_>>(),
        ["main failed", "passes ok", "fails failed"],
        "{cases}"
    );
    dir.assert_clean();
}

const HANGS: &str = r#"
start_all()
with subtest("before"):
    machine.succeed("true")
with subtest("hangs"):
    machine.succeed("sleep 600")
"#;

#[test]
fn global_timeout_exits_143_with_well_formed_logs() {
    let (dir, r, log, junit) = with_logs("hangs", HANGS, 12);
    r.assert_code(143);
    assert_lines(&r, &["timeout reached; test terminating..."]);
    let probe = xml_probe(
        &log,
        "print(any('timeout reached' in (h.text or '') for h in root.iter('head')))",
    );
    assert_eq!(probe.trim(), "True", "{probe}");
    let cases = xml_probe(&junit, JUNIT_CASES);
    assert_eq!(
        cases.lines().collect::<Vec<_>>(),
        ["main ok", "before ok", "hangs failed"],
        "{cases}"
    );
    dir.assert_clean();
}

const INTERACTIVE: &str = r#"
start_all()
machine.succeed("echo from-the-script > /tmp/f")
x = 41
breakpoint()
machine.succeed("echo after-the-breakpoint")
"#;

#[test]
fn interactive_repl_breakpoint_and_shell_interact() {
    let dir = TestDir::new("repl");
    let vm = dir.vm_with(screen_guest(), "machine", &[]);
    let cfg = dir.config(&[("machine", &vm)], &[], 200, INTERACTIVE);
    let mut cmd = dir.ntd();
    cmd.args(["-I", "-c", cfg.to_str().unwrap()]);
    let input = "print('repl-alive', 6 * 7)\n\
                 test_script()\n\
                 p x + 1\n\
                 c\n\
                 print('back:', machine.succeed('cat /tmp/f').strip())\n\
                 run_tests()\n\
                 c\n\
                 machine.shell_interact()\n\
                 echo from-the-guest $((6*7))\n";
    let r = run_with_input(cmd, LIMIT, Some(input));
    r.assert_code(0);
    for text in [
        "repl-alive 42",
        "(Pdb) 42",
        "back: from-the-script",
        "from-the-guest 42",
    ] {
        assert!(r.stdout.contains(text), "missing {text:?}\n{}", r.log());
    }
    assert_lines(
        &r,
        &[
            "machine: must succeed: echo after-the-breakpoint",
            "machine: Terminal is ready (there is no initial prompt):",
            "Test will time out and terminate in 200.0 seconds",
        ],
    );
    assert_eq!(
        r.stderr
            .matches("machine: must succeed: echo after-the-breakpoint")
            .count(),
        2,
        "test_script() and run_tests() should each run the script once\n{}",
        r.log()
    );
    dir.assert_clean();
}
