//! End-to-end tests of named snapshots inside a test (`machine.snapshot`/`restore`,
//! `snapshot_all`/`restore_all`) and of failure capsules (`--keep-failed`, `ntd resume`) on
//! real tiny guests: a restore puts the guest back (its files, ntd's 9p shares, fresh
//! entropy), errors name what is wrong (unknown name, machine not running, a foreign 9p
//! share), `restore_all` brings back every machine and the vlan's partition; a failed test
//! or a global timeout leaves a capsule that `ntd resume` opens (commands through stdin), a
//! passing test leaves nothing; no process or file is left behind.

// Tests may unwrap and panic: a failing assertion is their report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(240);

fn lines_with<'a>(r: &'a RunResult, key: &str) -> Vec<&'a str> {
    r.stdout
        .lines()
        .filter_map(|l| l.strip_prefix(key).map(str::trim))
        .collect()
}

/// No `ntd-snapshots-*` directory is left in the runtime directory.
fn assert_no_snapshot_files(dir: &TestDir) {
    let left: Vec<PathBuf> = std::fs::read_dir(dir.run_dir())
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(
        !left.iter().any(|p| p
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("ntd-snapshots")),
        "snapshot files left behind: {left:?}"
    );
}

#[test]
fn restore_puts_one_machine_back_and_errors_name_the_problem() {
    let dir = TestDir::new("snapone");
    let vm = dir.tiny_vm("machine", &[]);
    let store = dir.path.join("foreign-store");
    std::fs::create_dir_all(&store).unwrap();
    let cfg = dir.config(
        &[("machine", vm.as_path())],
        &[],
        200,
        test_script!("snapshots/one_machine_variants.py"),
    );
    let mut cmd = dir.ntd();
    cmd.args(["-c", cfg.to_str().unwrap()]).env(
        "QEMU_OPTS",
        format!(
            "-virtfs local,path={},security_model=none,mount_tag=nix-store",
            store.display()
        ),
    );
    let r = run_with_limit(cmd, LIMIT);
    r.assert_code(0);
    assert_eq!(lines_with(&r, "state"), ["a base", "b base"], "{}", r.log());
    let randoms = lines_with(&r, "urandom");
    assert_ne!(
        randoms[0],
        randoms[1],
        "two restores read the same bytes\n{}",
        r.log()
    );
    assert_eq!(
        std::fs::read_to_string(dir.run_dir().join("shared-xchg/hello")).unwrap(),
        "from-guest\n",
        "the shared directory is mounted again after a restore"
    );
    let unknown = lines_with(&r, "unknown:").join("");
    assert!(
        unknown.contains("machine 'machine' has no snapshot named 'nope' (it has: 'base')"),
        "{}",
        r.log()
    );
    let ninep = lines_with(&r, "9p:").join("");
    assert!(
        ninep.contains("mounts its Nix store over 9p") && ninep.contains("useNixStoreImage"),
        "{}",
        r.log()
    );
    let stopped = lines_with(&r, "stopped:").join("");
    assert!(stopped.contains("is not running"), "{}", r.log());
    assert_eq!(lines_with(&r, "after-stop"), ["base"], "{}", r.log());
    assert_eq!(
        r.stderr
            .matches("restored from snapshot 'base' in ")
            .count(),
        3,
        "{}",
        r.log()
    );
    assert!(!r.stderr.contains("warning"), "{}", r.log());
    dir.assert_clean();
    assert_no_snapshot_files(&dir);
}

#[test]
fn restore_all_brings_back_every_machine_and_the_partition() {
    let dir = TestDir::new("snapall");
    let vms: Vec<(&str, PathBuf)> = vec![
        (
            "alpha",
            dir.tiny_vm("alpha", &["--vlan", "1", "--index", "1"]),
        ),
        (
            "beta",
            dir.tiny_vm("beta", &["--vlan", "1", "--index", "2"]),
        ),
    ];
    let refs: Vec<(&str, &Path)> = vms.iter().map(|(n, p)| (*n, p.as_path())).collect();
    let cfg = dir.config(&refs, &[1], 200, test_script!("snapshots/pair_all.py"));
    let mut cmd = dir.ntd();
    cmd.args(["-c", cfg.to_str().unwrap()]);
    let r = run_with_limit(cmd, LIMIT);
    r.assert_code(0);
    assert_eq!(lines_with(&r, "alpha"), ["one"], "{}", r.log());
    assert_eq!(lines_with(&r, "beta-up"), ["yes"], "{}", r.log());
    assert!(r.stdout.contains("pinged both ways"), "{}", r.log());
    assert!(
        r.stderr
            .contains("vlan1: network faults as at snapshot 'split'"),
        "{}",
        r.log()
    );
    assert!(
        lines_with(&r, "unknown:")
            .join("")
            .contains("no snapshot_all('nope') was taken (snapshot_all names: 'split')"),
        "{}",
        r.log()
    );
    dir.assert_clean();
    assert_no_snapshot_files(&dir);
}

/// Files and directories directly in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_failed_test_leaves_a_capsule_that_resume_opens_through_stdin() {
    let dir = TestDir::new("capsule");
    let vms: Vec<(&str, PathBuf)> = vec![
        (
            "alpha",
            dir.tiny_vm("alpha", &["--vlan", "1", "--index", "1"]),
        ),
        (
            "beta",
            dir.tiny_vm("beta", &["--vlan", "1", "--index", "2"]),
        ),
        (
            "gamma",
            dir.tiny_vm("gamma", &["--vlan", "1", "--index", "3"]),
        ),
    ];
    let refs: Vec<(&str, &Path)> = vms.iter().map(|(n, p)| (*n, p.as_path())).collect();
    let cfg = dir.config(&refs, &[1], 200, test_script!("snapshots/capsule_fails.py"));
    let capsule = dir.path.join("capsule");
    let mut cmd = dir.ntd();
    cmd.args(["-c", cfg.to_str().unwrap(), "--keep-failed"])
        .arg(&capsule);
    let r = run_with_limit(cmd, LIMIT);
    r.assert_code(1);
    assert!(
        r.stderr.contains("failure capsule written to")
            && r.stderr.contains("MB on disk, 2 of 3 machines saved"),
        "{}",
        r.log()
    );
    assert!(
        r.stderr
            .contains("gamma: not in the failure capsule: it was not running"),
        "{}",
        r.log()
    );
    assert_eq!(
        listing(&capsule),
        [
            "capsule",
            "driver.log",
            "machines",
            "test.py",
            "trace.json",
            "trace.json.html"
        ]
    );
    assert_eq!(listing(&capsule.join("machines")), ["alpha", "beta"]);
    let log = std::fs::read_to_string(capsule.join("driver.log")).unwrap();
    assert!(log.contains("the marker is wrong"), "{log}");
    // The stream is compressed (the tiny guest's raw stream is ~80 MB).
    let ram = std::fs::metadata(capsule.join("machines/alpha/ram"))
        .unwrap()
        .len();
    assert!(ram < 60_000_000, "{ram} bytes");
    dir.assert_clean();

    let mut cmd = dir.ntd();
    cmd.arg("resume").arg(&capsule);
    let input = "print('marker:', alpha.succeed('cat /root/marker').strip())\n\
                 beta.succeed('ping -c 1 -W 5 192.168.1.1')\n\
                 print('ping: ok')\n\
                 print('gamma booted:', gamma.booted)\n";
    let r = run_with_input(cmd, LIMIT, Some(input));
    r.assert_code(0);
    assert!(r.stdout.contains("marker: at-failure"), "{}", r.log());
    assert!(r.stdout.contains("ping: ok"), "{}", r.log());
    assert!(r.stdout.contains("gamma booted: False"), "{}", r.log());
    assert!(
        r.stderr.contains("resuming the failure capsule")
            && r.stderr.contains("the test script failed (exit status 1)")
            && r.stderr
                .contains("alpha: restored from the failure capsule in "),
        "{}",
        r.log()
    );
    dir.assert_clean();
}

#[test]
fn a_global_timeout_leaves_a_capsule_and_a_passing_test_leaves_nothing() {
    let dir = TestDir::new("capsulet");
    let vm = dir.tiny_vm("machine", &[]);
    let capsule = dir.path.join("capsule");
    let pass = dir.config(
        &[("machine", vm.as_path())],
        &[],
        200,
        "machine.succeed('true')\n",
    );
    let mut cmd = dir.ntd();
    cmd.args(["-c", pass.to_str().unwrap(), "--keep-failed"])
        .arg(&capsule);
    let r = run_with_limit(cmd, LIMIT);
    r.assert_code(0);
    assert!(
        !capsule.exists(),
        "a passing test leaves no capsule\n{}",
        r.log()
    );
    assert!(
        !listing(&dir.run_dir())
            .iter()
            .any(|n| n.starts_with("ntd-capsule")),
        "{}",
        r.log()
    );

    let timeout = dir.config(
        &[("machine", vm.as_path())],
        &[],
        25,
        test_script!("snapshots/capsule_timeout.py"),
    );
    let mut cmd = dir.ntd();
    cmd.env("NTD_KEEP_FAILED", &capsule)
        .args(["-c", timeout.to_str().unwrap()]);
    let r = run_with_limit(cmd, LIMIT);
    r.assert_code(143);
    assert!(r.stderr.contains("1 of 1 machines saved"), "{}", r.log());
    let desc = std::fs::read_to_string(capsule.join("capsule")).unwrap();
    assert!(desc.contains("global%20timeout"), "{desc}");
    dir.assert_clean();

    let mut cmd = dir.ntd();
    cmd.arg("resume").arg(&capsule);
    let r = run_with_input(
        cmd,
        LIMIT,
        Some("print('marker:', machine.succeed('cat /root/marker').strip())\n"),
    );
    r.assert_code(0);
    assert!(r.stdout.contains("marker: waited"), "{}", r.log());
    dir.assert_clean();
}
