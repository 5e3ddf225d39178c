//! End-to-end tests of the testScript API on tiny guests (real QEMU under TCG, the real `ntd`
//! binary and Python shim): every Machine method and global that needs no systemd (those are
//! in tests/api_debian.rs), with the argument forms of all three upstream generations, the
//! XML and JUnit logs on success, failure and timeout, and the interactive driver.
//!
//! The guests are the tiny guest with a framebuffer console (`screen_guest`), so screenshots
//! and OCR see tty1.

// Tests may unwrap and panic: a failing assertion is their report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

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

#[test]
fn keyboard_screenshots_ocr_and_ttys() {
    ensure_host_tool("tesseract", "tesseract-ocr");
    let (dir, r) = one_machine(
        "keys",
        test_script!("api/keyboard_screenshots_ocr_and_ttys.py"),
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
    assert_junit_valid(&out.join("junit.xml"));
    let cases = xml_probe(&out.join("junit.xml"), JUNIT_CASES);
    assert_eq!(
        cases.lines().collect::<Vec<_>>(),
        [
            "send_chars and send_key reach tty1 with upstream's key mapping ok",
            "screenshot, OCR ok",
            "OCR without tesseract is upstream's MachineError ok",
            "tty text ok",
        ]
    );
    dir.assert_clean();
}

#[test]
fn console_monitor_and_qmp() {
    let dir = TestDir::new("console");
    let vm = dir.vm_with(screen_guest(), "machine", &[]);
    let cfg = dir.config(
        &[("machine", &vm)],
        &[],
        200,
        test_script!("api/console_monitor_and_qmp.py"),
    );
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

#[test]
fn files_are_copied_both_ways() {
    let (dir, r) = one_machine(
        "files",
        test_script!("api/files_are_copied_both_ways.py"),
        200,
        &["-o", "out"],
    );
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

#[test]
fn lifecycle_attributes_reboot_and_create_machine() {
    let dir = TestDir::new("life");
    let vm = dir.vm_with(screen_guest(), "machine", &[]);
    let extra = dir.vm_with(screen_guest(), "extra", &[]);
    let third = dir.vm_with(screen_guest(), "third", &[]);
    let script = test_script!("api/lifecycle_attributes_reboot_and_create_machine.py")
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
    let script =
        test_script!("api/block_unblock_and_forward_port.py").replace("@PORT@", &port.to_string());
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

#[test]
fn globals_polling_conditions_retry_durations_and_logs() {
    let dir = TestDir::new("globals");
    std::fs::create_dir_all(dir.path.join("out")).unwrap();
    let vm = dir.vm_with(screen_guest(), "machine", &["--vlan", "1"]);
    let cfg = dir.config(
        &[("machine", &vm)],
        &[1],
        240,
        test_script!("api/globals_polling_conditions_retry_durations_and_logs.py"),
    );
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
    assert_junit_valid(&dir.path.join("out/junit.xml"));
    let cases = xml_probe(&dir.path.join("out/junit.xml"), JUNIT_CASES);
    assert_eq!(
        cases.lines().collect::<Vec<_>>(),
        [
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

#[test]
fn failing_assertion_exits_1_with_report_and_well_formed_logs() {
    let (dir, r, log, junit) = with_logs(
        "failing",
        test_script!("api/failing_assertion_exits_1_with_report_and_well_formed_logs.py"),
        200,
    );
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
    assert_junit_valid(&junit);
    let cases = xml_probe(&junit, JUNIT_CASES);
    assert_eq!(
        cases.lines().collect::<Vec<_>>(),
        ["passes ok", "fails failed"],
        "{cases}"
    );
    dir.assert_clean();
}

#[test]
fn global_timeout_exits_143_with_well_formed_logs() {
    let (dir, r, log, junit) = with_logs(
        "hangs",
        test_script!("api/global_timeout_exits_143_with_well_formed_logs.py"),
        12,
    );
    r.assert_code(143);
    assert_lines(&r, &["timeout reached; test terminating..."]);
    let probe = xml_probe(
        &log,
        "print(any('timeout reached' in (h.text or '') for h in root.iter('head')))",
    );
    assert_eq!(probe.trim(), "True", "{probe}");
    assert_junit_valid(&junit);
    let cases = xml_probe(&junit, JUNIT_CASES);
    assert_eq!(
        cases.lines().collect::<Vec<_>>(),
        ["before ok", "hangs failed"],
        "{cases}"
    );
    dir.assert_clean();
}

#[test]
fn interactive_repl_breakpoint_and_shell_interact() {
    let dir = TestDir::new("repl");
    let vm = dir.vm_with(screen_guest(), "machine", &[]);
    let cfg = dir.config(
        &[("machine", &vm)],
        &[],
        200,
        test_script!("api/interactive_repl_breakpoint_and_shell_interact.py"),
    );
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
