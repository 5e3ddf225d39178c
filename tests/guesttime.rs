//! Timeouts in guest-available time on real tiny guests: a guest that host CPU hogs (started
//! by the test, pinned to the guest's host CPU) leave a fraction of a core still finishes a
//! job that needs 45 % of its timeout, as a command and as a wait, and a timeout that runs
//! out says how far the host stretched it; on a host that gives the guest its CPU, a command
//! that never returns and a wait that never succeeds fail near their timeouts; without
//! schedstat and PSI, timeouts count wall time and the debug log says so.
//!
//! One starved run is part of the suite; ten runs (issue 18: no spurious failure in ten) are
//! `cargo test --release --test guesttime -- --ignored`.

// Tests may unwrap and panic: a failing assertion is their report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{test_script, RunResult, TestDir};
use std::path::{Path, PathBuf};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(900);
/// The starved jobs' timeout (seconds).
const STARVED_TIMEOUT: f64 = 20.0;
/// CPU hogs beside the guest on its host CPU: it gets about a quarter of that CPU.
const HOGS: u32 = 3;

/// The hogs a script started, killed when the test ends however it ends (the script kills
/// them itself; this covers a script that was killed).
struct Hogs(PathBuf);

impl Drop for Hogs {
    fn drop(&mut self) {
        let Ok(text) = std::fs::read_to_string(&self.0) else {
            return;
        };
        for pid in text
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // Each hog leads its own process group.
            kill_group(-pid);
        }
    }
}

/// SIGKILL a process group by id (only groups this test's script started).
fn kill_group(pgid: i32) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &pgid.to_string()])
        .status();
}

/// The host CPU the starved guest and its hogs share: the last one.
fn pinned_cpu() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()) - 1
}

/// A tiny machine whose QEMU runs on host CPU `cpu` only (a start script that execs
/// `taskset` around ci/mkvm's).
fn pinned_vm(dir: &TestDir, cpu: usize) -> PathBuf {
    let inner = dir.tiny_vm("machine", &["--memory", "256"]);
    let outer = dir.write(
        "run-pinned-vm",
        &format!(
            "#!/bin/sh\nexec taskset -c {cpu} {} \"$@\"\n",
            inner.display()
        ),
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&outer, std::fs::Permissions::from_mode(0o755)).unwrap();
    outer
}

fn run(dir: &TestDir, cfg: &Path, env: &[(&str, &str)]) -> RunResult {
    let mut cmd = dir.ntd();
    cmd.args(["-c", cfg.to_str().unwrap()]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    common::run_with_limit(cmd, LIMIT)
}

/// `(wall, second number)` of the line starting with `tag` (`COMMAND wall 1.0 guest 2.0`).
fn figures(r: &RunResult, tag: &str) -> (f64, f64) {
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with(tag))
        .unwrap_or_else(|| panic!("no {tag} line\n{}", r.log()));
    let w: Vec<f64> = line
        .split_whitespace()
        .filter_map(|x| x.trim_end_matches(':').parse().ok())
        .collect();
    (w[0], w[1])
}

/// One starved run; `Err` with the log when it failed.
fn starved_run(n: usize) -> Result<String, String> {
    let dir = TestDir::new(&format!("gt-starved{n}"));
    let cpu = pinned_cpu();
    let vm = pinned_vm(&dir, cpu);
    let pidfile = dir.path.join("hogs");
    let _hogs = Hogs(pidfile.clone());
    let script = test_script!("guesttime/starved.py")
        .replace("@TIMEOUT@", &format!("{STARVED_TIMEOUT:.1}"))
        .replace("@CPU@", &cpu.to_string())
        .replace("@HOGS@", &HOGS.to_string())
        .replace("@PIDFILE@", &format!("{:?}", pidfile.display().to_string()));
    let cfg = dir.config(&[("machine", &vm)], &[], 900, &script);
    let r = run(&dir, &cfg, &[]);
    drop(_hogs);
    dir.assert_clean();
    if r.code != Some(0) {
        return Err(r.log());
    }
    let (cmd_wall, cmd_guest) = figures(&r, "COMMAND");
    let (wait_wall, wait_guest) = figures(&r, "WAIT");
    // The hogs really starved the guest: more than a third of the job's wall time was
    // withheld (else this run proved nothing).
    for (what, wall, guest) in [
        ("command", cmd_wall, cmd_guest),
        ("wait", wait_wall, wait_guest),
    ] {
        if wall - guest < wall / 3.0 {
            return Err(format!(
                "the {what} was not starved ({wall:.1} s wall, {guest:.1} s of guest time): \
                 are the hogs on the guest's CPU?\n{}",
                r.log()
            ));
        }
    }
    if !(r
        .stderr
        .contains("command `while :; do :; done`: timeout 3.0 s reached after")
        && r.stderr.contains("the host withheld the CPU for"))
    {
        return Err(format!("no stretch in the log\n{}", r.log()));
    }
    Ok(format!(
        "command {cmd_wall:.1} s wall / {cmd_guest:.1} s guest, wait {wait_wall:.1} s wall / \
         {wait_guest:.1} s guest (timeouts {STARVED_TIMEOUT} s)"
    ))
}

#[test]
fn a_starved_guest_finishes_within_its_guest_time_and_the_log_says_how_far_it_was_stretched() {
    match starved_run(0) {
        Ok(summary) => eprintln!("starved run: {summary}"),
        Err(log) => panic!("{log}"),
    }
}

#[test]
#[ignore = "ten starved runs (~20 minutes): cargo test --release --test guesttime -- --ignored"]
fn ten_starved_runs_have_no_spurious_failure() {
    let mut failures = Vec::new();
    for n in 1..=10 {
        match starved_run(n) {
            Ok(summary) => eprintln!("starved run {n}: {summary}"),
            Err(log) => {
                eprintln!("starved run {n} FAILED");
                failures.push(log);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 10 starved runs failed:\n{}",
        failures.len(),
        failures.join("\n=====\n")
    );
}

#[test]
fn a_command_that_never_returns_and_a_wait_that_never_succeeds_fail_near_their_timeouts() {
    const T: f64 = 5.0;
    let dir = TestDir::new("gt-never");
    let vm = dir.tiny_vm("machine", &["--memory", "256"]);
    let script = test_script!("guesttime/never.py").replace("@TIMEOUT@", &format!("{T:.1}"));
    let cfg = dir.config(&[("machine", &vm)], &[], 300, &script);
    let r = run(&dir, &cfg, &[]);
    assert_eq!(r.code, Some(0), "{}", r.log());
    for tag in ["COMMAND", "WAIT"] {
        let (wall, withheld) = figures(&r, tag);
        // 1.2 × the timeout, plus what the host withheld (a loaded CI host does).
        assert!(
            wall >= T && wall <= 1.2 * T + withheld.max(0.0) + 0.5,
            "{tag}: {wall:.2} s wall, {withheld:.2} s withheld, timeout {T} s\n{}",
            r.log()
        );
    }
    assert!(r.stdout.contains("action timed out after"), "{}", r.log());
    dir.assert_clean();
}

#[test]
fn without_schedstat_or_psi_timeouts_count_wall_time_and_the_debug_log_says_so() {
    let dir = TestDir::new("gt-blind");
    let vm = dir.tiny_vm("machine", &["--memory", "256"]);
    let empty = dir.path.join("no-proc");
    std::fs::create_dir_all(&empty).unwrap();
    let cfg = dir.config(
        &[("machine", &vm)],
        &[],
        300,
        test_script!("guesttime/blind.py"),
    );
    let r = run(
        &dir,
        &cfg,
        &[
            ("NTD_PROC_ROOT", empty.to_str().unwrap()),
            ("logLevel", "debug"),
        ],
    );
    assert_eq!(r.code, Some(0), "{}", r.log());
    assert!(r.stdout.contains("BLIND OK"), "{}", r.log());
    for said in [
        "no run-queue statistics for this machine's vCPU threads",
        "its timeouts count wall time",
        "no CPU pressure information",
    ] {
        assert_eq!(r.stderr.matches(said).count(), 1, "{said}\n{}", r.log());
    }
    assert!(
        !r.stderr.contains("pacing the wait"),
        "blind: the budget, never a change"
    );
    dir.assert_clean();
}
