//! End-to-end tests of named snapshots inside a test (`machine.snapshot`/`restore`,
//! `snapshot_all`/`restore_all`) on real tiny guests: a restore puts the guest back (its
//! files, ntd's 9p shares, fresh entropy), errors name what is wrong (unknown name, machine
//! not running, a foreign 9p share), `restore_all` brings back every machine and the vlan's
//! partition, and nothing is left behind (no process, no snapshot file).

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
