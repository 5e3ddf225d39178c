//! The fault matrix: what the user sees when something goes wrong, on real tiny guests, and
//! that nothing is ever left behind (no QEMU, start script, shim or switch process, no socket
//! file). Each case checks the exit status upstream would give, the message, and cleanliness.

// Tests may unwrap and panic: a failing assertion is their report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{test_script, RunResult, TestDir, NTD};
use std::io::BufRead;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(300);

/// A test directory with one tiny machine (`extra`: more `ci/mkvm` arguments) and a script.
fn setup(tag: &str, script: &str, global_timeout: u32, extra: &[&str]) -> (TestDir, PathBuf) {
    let dir = TestDir::new(tag);
    let vm = dir.tiny_vm("machine", extra);
    let cfg = dir.config(&[("machine", &vm)], &[], global_timeout, script);
    (dir, cfg)
}

fn run(dir: &TestDir, cfg: &Path, env: &[(&str, &str)]) -> RunResult {
    let mut cmd = dir.ntd();
    cmd.args(["-c", cfg.to_str().unwrap()]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    common::run_with_limit(cmd, LIMIT)
}

/// [`setup`] and [`run`] with no extra VM arguments and no extra environment.
fn run_script(tag: &str, script: &str, global_timeout: u32) -> (TestDir, RunResult) {
    let (dir, cfg) = setup(tag, script, global_timeout, &[]);
    let r = run(&dir, &cfg, &[]);
    (dir, r)
}

/// Every socket file below `root` (the run's runtime directory lives there).
fn sockets_below(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_socket() {
                found.push(e.path());
            }
        }
    }
    found
}

/// No process of this test is alive and no socket file is left.
fn assert_nothing_left(dir: &TestDir) {
    // Process groups end asynchronously after the driver's exit only in the SIGKILL case;
    // everywhere else ntd waits for them. Allow a moment for the kernel to reap.
    let until = Instant::now() + Duration::from_secs(5);
    while !dir.leftovers().is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    dir.assert_clean();
    let socks = sockets_below(&dir.path);
    assert!(socks.is_empty(), "socket files left behind: {socks:#?}");
}

fn expect(r: &RunResult, code: i32, needles: &[&str]) {
    r.assert_code(code);
    let all = format!("{}{}", r.stdout, r.stderr);
    for n in needles {
        assert!(all.contains(n), "missing {n:?}\n{}", r.log());
    }
}

#[test]
fn qemu_killed_between_commands_fails_loudly_and_start_boots_again() {
    let (dir, r) = run_script(
        "f-kill",
        test_script!("faults/killed_between_commands.py"),
        300,
    );
    expect(&r, 0, &["RAISED MachineError"]);
    assert_nothing_left(&dir);
}

#[test]
fn qemu_killed_mid_command_raises_with_how_it_ended() {
    let (dir, r) = run_script(
        "f-killmid",
        test_script!("faults/killed_mid_command.py"),
        300,
    );
    expect(
        &r,
        1,
        &[
            "Shell disconnected while running `sleep 30`",
            "QEMU exited (signal 9)",
        ],
    );
    assert!(r.elapsed < Duration::from_secs(120), "{:?}", r.elapsed);
    assert_nothing_left(&dir);
}

#[test]
fn guest_powering_off_by_itself_fails_the_next_command() {
    let (dir, r) = run_script("f-off", test_script!("faults/powers_off.py"), 300);
    expect(&r, 0, &["RAISED after poweroff"]);
    assert_nothing_left(&dir);
}

#[test]
fn guest_kernel_panic_fails_the_command_and_quotes_the_console() {
    let (dir, r) = run_script("f-panic", test_script!("faults/kernel_panic.py"), 300);
    expect(&r, 0, &["RAISED on panic"]);
    assert_nothing_left(&dir);
}

#[test]
fn shell_exiting_mid_command_is_reported_instead_of_hanging() {
    let (dir, r) = run_script("f-shexit", test_script!("faults/shell_exits.py"), 300);
    expect(&r, 1, &["did not answer `kill -9 $$`", "stuck"]);
    assert!(r.elapsed < Duration::from_secs(90), "{:?}", r.elapsed);
    assert_nothing_left(&dir);
}

#[test]
fn late_output_of_background_processes_is_returned_or_logged() {
    let (dir, cfg) = setup("f-late", test_script!("faults/late_output.py"), 300, &[]);
    let r = run(&dir, &cfg, &[("logLevel", "debug")]);
    expect(&r, 0, &["DURING-WAIT"]);
    // The command returns once its background child closed stdout: both lines are its own.
    assert!(
        r.stdout.contains("RESULT 'ONE\\nTWO\\n'"),
        "the output was not returned whole\n{}",
        r.log()
    );
    assert_nothing_left(&dir);
}

#[test]
fn command_that_never_returns_ends_with_its_timeout() {
    let (dir, r) = run_script("f-never", test_script!("faults/never_returns.py"), 300);
    expect(&r, 1, &["command `sleep infinity` failed (exit code 124)"]);
    assert_nothing_left(&dir);
}

#[test]
fn guest_that_never_prints_the_sentinel_fails_with_the_shell_timeout() {
    let dir = TestDir::new("f-nosentinel");
    let vm = dir.write(
        "run-machine-vm",
        "#!/bin/sh\n# A machine without a guest: firmware only, no backdoor ever.\n\
         exec qemu-system-x86_64 -machine accel=tcg -m 64 -nodefaults \"$@\"\n",
    );
    std::fs::set_permissions(&vm, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = dir.config(
        &[("machine", &vm)],
        &[],
        300,
        test_script!("faults/plain.py"),
    );
    let r = run(&dir, &cfg, &[("NTD_SHELL_TIMEOUT", "5")]);
    expect(
        &r,
        1,
        &["Shell did not start in time (5 s)", "backdoor.service"],
    );
    assert_nothing_left(&dir);
}

#[test]
fn guest_without_dev_fd_runs_without_a_spool_and_says_so() {
    let (dir, cfg) = setup("f-nodevfd", test_script!("faults/plain.py"), 300, &[]);
    let r = run(&dir, &cfg, &[("QEMU_KERNEL_PARAMS", "ntd.nodevfd")]);
    expect(&r, 0, &["the guest has no /dev/fd or no tee"]);
    assert_nothing_left(&dir);
}

#[test]
fn shell_that_never_answers_its_setup_fails_within_seconds() {
    let (dir, cfg) = setup("f-mute", test_script!("faults/plain.py"), 300, &[]);
    let r = run(&dir, &cfg, &[("QEMU_KERNEL_PARAMS", "ntd.mute-backdoor")]);
    expect(&r, 1, &["did not answer ntd's setup within 20 s"]);
    assert!(r.elapsed < Duration::from_secs(90), "{:?}", r.elapsed);
    assert_nothing_left(&dir);
}

#[test]
fn global_timeout_while_booting_exits_143() {
    let (dir, r) = run_script(
        "f-gt-boot",
        test_script!("faults/global_timeout_booting.py"),
        1,
    );
    expect(&r, 143, &["timeout reached; test terminating..."]);
    assert_nothing_left(&dir);
}

#[test]
fn global_timeout_while_a_command_runs_exits_143() {
    let (dir, r) = run_script(
        "f-gt-cmd",
        test_script!("faults/global_timeout_command.py"),
        20,
    );
    expect(&r, 143, &["timeout reached; test terminating..."]);
    assert!(r.elapsed < Duration::from_secs(60), "{:?}", r.elapsed);
    assert_nothing_left(&dir);
}

#[test]
fn global_timeout_while_python_sleeps_exits_143() {
    let (dir, r) = run_script(
        "f-gt-py",
        test_script!("faults/global_timeout_python.py"),
        20,
    );
    expect(&r, 143, &["timeout reached; test terminating..."]);
    assert!(r.elapsed < Duration::from_secs(60), "{:?}", r.elapsed);
    assert_nothing_left(&dir);
}

/// Start ntd, wait for a stderr line containing `marker`, send `signal`, return the status.
fn signal_when(tag: &str, script: &str, marker: &str, signal: &str) -> (Option<i32>, String) {
    let (dir, cfg) = setup(tag, script, 600, &[]);
    let mut child = dir
        .ntd()
        .args(["-c", cfg.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let mut lines = stderr.lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(marker) {
            break;
        }
    }
    let sent = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    for line in lines {
        seen.push_str(&line.unwrap_or_default());
        seen.push('\n');
    }
    let status = child.wait().unwrap();
    assert_nothing_left(&dir);
    (status.code(), seen)
}

#[test]
fn termination_signals_in_every_phase_clean_up_with_upstream_statuses() {
    let long_command = test_script!("faults/long_command.py");
    let phases = [
        (
            "before any machine",
            test_script!("faults/sleep_first.py"),
            "Test will time out",
        ),
        ("while booting", long_command, "starting vm"),
        ("during a command", long_command, "must succeed: sleep 600"),
        (
            "while Python sleeps",
            test_script!("faults/boot_then_sleep.py"),
            "finished: must succeed: true",
        ),
    ];
    for (i, (phase, script, marker)) in phases.iter().enumerate() {
        for (sig, code) in [("-TERM", 143), ("-INT", 130)] {
            let (status, log) = signal_when(&format!("f-sig{i}{sig}"), script, marker, sig);
            assert_eq!(status, Some(code), "{sig} {phase}:\n{log}");
            assert!(log.contains("stopping the test and cleaning up"), "{log}");
        }
    }
}

#[test]
fn driver_killed_with_sigkill_takes_its_guests_along() {
    let (dir, cfg) = setup(
        "f-sigkill",
        test_script!("faults/boot_then_sleep.py"),
        600,
        &[],
    );
    let mut child = dir
        .ntd()
        .args(["-c", cfg.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    for line in stderr.lines() {
        if line.unwrap().contains("finished: must succeed: true") {
            break;
        }
    }
    assert!(!dir.leftovers().is_empty(), "a guest runs before the kill");
    child.kill().unwrap(); // SIGKILL: no cleanup of ntd's own can run
    child.wait().unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while !dir.leftovers().is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    dir.assert_clean();
}

#[test]
fn internal_error_in_the_driver_still_ends_every_guest() {
    let (dir, cfg) = setup("f-bug", test_script!("faults/plain.py"), 300, &[]);
    let r = run(&dir, &cfg, &[("NTD_TEST_PANIC", "execute")]);
    expect(
        &r,
        1,
        &[
            "internal error",
            "ntd stopped the test after an internal error",
        ],
    );
    assert_nothing_left(&dir);
}

#[test]
fn script_errors_exit_1_and_clean_up() {
    for (tag, script, needle) in [
        (
            "f-nameerr",
            test_script!("faults/name_error.py"),
            "NameError",
        ),
        (
            "f-pollerr",
            test_script!("faults/polling_condition_raises.py"),
            "Polling condition failed: broken",
        ),
    ] {
        let (dir, r) = run_script(tag, script, 300);
        expect(&r, 1, &[needle]);
        assert_nothing_left(&dir);
    }
}

#[test]
fn broken_start_scripts_are_machine_errors() {
    let cases: [(&str, Option<&str>, u32, &str); 3] = [
        ("f-nostart", None, 0o755, "cannot start"),
        (
            "f-noexec",
            Some("#!/bin/sh\nexit 0\n"),
            0o644,
            "Permission denied",
        ),
        (
            "f-failstart",
            Some("#!/bin/sh\necho 'qemu: broken configuration' >&2\nexit 3\n"),
            0o755,
            "qemu: broken configuration",
        ),
    ];
    for (tag, body, mode, needle) in cases {
        let dir = TestDir::new(tag);
        let vm = dir.path.join("run-machine-vm");
        if let Some(b) = body {
            std::fs::write(&vm, b).unwrap();
            std::fs::set_permissions(&vm, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let cfg = dir.config(
            &[("machine", &vm)],
            &[],
            120,
            test_script!("faults/plain.py"),
        );
        let r = run(&dir, &cfg, &[]);
        expect(&r, 1, &["MachineError", needle]);
        assert_nothing_left(&dir);
    }
}

#[test]
fn out_of_range_timeouts_and_malformed_requests_get_clear_errors() {
    let (dir, r) = run_script("f-timeouts", test_script!("faults/timeouts.py"), 600);
    expect(
        &r,
        0,
        &["every bad timeout refused", "malformed requests answered"],
    );
    assert_nothing_left(&dir);
}

#[test]
fn bad_command_lines_exit_2_without_starting_anything() {
    use std::os::unix::ffi::OsStrExt;
    let dir = TestDir::new("f-cli");
    let bad: [&std::ffi::OsStr; 4] = [
        std::ffi::OsStr::new("--frobnicate"),
        std::ffi::OsStr::new("-é"),
        std::ffi::OsStr::from_bytes(b"--config=\xff\xfe"),
        std::ffi::OsStr::new("--global-timeout=1e300"),
    ];
    for arg in bad {
        let out = Command::new(NTD)
            .arg(arg)
            .arg("t.py")
            .current_dir(&dir.path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{arg:?}: {err}");
        assert!(err.contains("error:"), "{arg:?}: {err}");
        assert!(!err.contains("panicked"), "{arg:?}: {err}");
    }
}

#[test]
fn long_runtime_directory_moves_sockets_to_a_short_private_one() {
    let dir = TestDir::new("f-longdir");
    let vm = dir.tiny_vm("machine", &["--vlan", "1"]);
    let cfg = dir.config(
        &[("machine", &vm)],
        &[1],
        300,
        test_script!("faults/long_runtime_dir.py"),
    );
    let long = dir.path.join("r".repeat(100));
    assert!(long.as_os_str().len() > 120);
    let mut cmd = dir.ntd();
    cmd.env("XDG_RUNTIME_DIR", &long)
        .args(["-c", cfg.to_str().unwrap(), "--log-level", "debug"]);
    let r = common::run_with_limit(cmd, LIMIT);
    expect(&r, 0, &["too long for unix socket paths"]);
    let short = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("SOCKETS "))
        .expect("the script prints the socket directory");
    assert!(!Path::new(short).exists(), "{short} was not removed");
    assert_nothing_left(&dir);
}

#[test]
fn huge_output_nul_bytes_and_long_console_lines_are_handled() {
    let (dir, cfg) = setup("f-big", test_script!("faults/big_output.py"), 600, &[]);
    let r = run(&dir, &cfg, &[("logLevel", "debug")]);
    expect(&r, 0, &["big output ok"]);
    assert_nothing_left(&dir);
}

#[test]
fn concurrent_calls_from_threads_each_get_their_reply() {
    let (dir, r) = run_script("f-threads", test_script!("faults/threads.py"), 300);
    expect(&r, 0, &["threads ok"]);
    assert_nothing_left(&dir);
}

#[test]
fn odd_machine_names_never_reach_a_shell_and_files_are_private() {
    let dir = TestDir::new("f-security");
    let name = "evil $(touch pwned) name";
    let vm = dir.tiny_vm("evil", &[]);
    // A start command that is not a plain path runs through `sh -c` (as upstream does).
    let start = format!("env NTD_UNUSED=1 {}", vm.display());
    let script = dir.write("test.py", test_script!("faults/security.py"));
    let cfg = dir.write(
        "driver.json",
        &format!(
            "{{\"vms\": {{\"{name}\": {{\"name\": \"{name}\", \"start_script\": \"{start}\"}}}}, \
             \"vlans\": [], \"global_timeout\": 300, \"test_script\": \"{}\"}}",
            script.display()
        ),
    );
    let r = run(&dir, &cfg, &[]);
    expect(&r, 0, &["security ok"]);
    assert!(!dir.path.join("pwned").exists());
    assert_nothing_left(&dir);
}

/// Entries of a checkpoint or capsule directory (`.tmp-*` ones included), sorted.
fn entries_of(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A run whose saves crawl (1 MB/s: a tiny guest's stream takes over a minute), `args` added;
/// SIGTERM once stderr shows `marker` (`None`: let it end by itself). The status and the log.
fn slow_save(
    dir: &TestDir,
    cfg: &Path,
    args: &[&str],
    marker: Option<&str>,
) -> (Option<i32>, String) {
    let mut child = dir
        .ntd()
        .args(["-c", cfg.to_str().unwrap()])
        .args(args)
        .env("NTD_TEST_MIGRATION_BANDWIDTH", "1000000")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = String::new();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    if let Some(marker) = marker {
        for line in lines.by_ref() {
            let line = line.unwrap();
            seen.push_str(&line);
            seen.push('\n');
            if line.contains(marker) {
                break;
            }
        }
        // Into the migration (the guest shell's round trips before it take milliseconds).
        std::thread::sleep(Duration::from_secs(2));
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }
    for line in lines {
        seen.push_str(&line.unwrap_or_default());
        seen.push('\n');
    }
    let status = child.wait().unwrap();
    assert_nothing_left(dir);
    (status.code(), seen)
}

#[test]
fn sigterm_or_the_global_timeout_during_a_checkpoint_save_leave_no_entry_and_no_qemu() {
    let (dir, cfg) = setup(
        "f-cksig",
        test_script!("faults/boot_then_sleep.py"),
        600,
        &[],
    );
    let ck = dir.path.join("ck");
    let ck_arg = ck.to_str().unwrap();
    let (status, log) = slow_save(
        &dir,
        &cfg,
        &["--checkpoints", ck_arg],
        Some("saving a checkpoint (key"),
    );
    assert_eq!(status, Some(143), "{log}");
    assert!(
        !log.contains("checkpoint saved"),
        "the save was not interrupted\n{log}"
    );
    assert_eq!(entries_of(&ck), Vec::<String>::new(), "{log}");

    let (dir, cfg) = setup("f-ckgt", test_script!("faults/boot_then_sleep.py"), 30, &[]);
    let ck = dir.path.join("ck");
    let (status, log) = slow_save(&dir, &cfg, &["--checkpoints", ck.to_str().unwrap()], None);
    assert_eq!(status, Some(143), "{log}");
    assert!(log.contains("saving a checkpoint (key"), "{log}");
    assert!(log.contains("timeout reached"), "{log}");
    assert!(!log.contains("checkpoint saved"), "{log}");
    assert_eq!(entries_of(&ck), Vec::<String>::new(), "{log}");
}

#[test]
fn sigterm_during_a_failure_capsule_save_leaves_no_capsule_and_no_qemu() {
    let (dir, cfg) = setup(
        "f-capsig",
        test_script!("faults/fails_after_boot.py"),
        600,
        &[],
    );
    let capsule = dir.path.join("capsule");
    let (status, log) = slow_save(
        &dir,
        &cfg,
        &["--keep-failed", capsule.to_str().unwrap()],
        Some("saving the failure capsule"),
    );
    assert_eq!(status, Some(1), "the test's own failure status\n{log}");
    assert!(log.contains("received SIGTERM"), "{log}");
    assert!(!log.contains("failure capsule written"), "{log}");
    assert!(!capsule.exists(), "{:?}\n{log}", entries_of(&capsule));
    let staging: Vec<String> = entries_of(&dir.run_dir())
        .into_iter()
        .filter(|n| n.starts_with("ntd-capsule"))
        .collect();
    assert!(staging.is_empty(), "{staging:?}");
}
