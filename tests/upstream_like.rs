//! `ci/upstream-like-driver`, the stand-in for the upstream Python driver that
//! `ci/bench --peer` measures ntd against, runs the latency bench's scripts
//! (tests/scripts/bench) on tiny guests the way the bench runs a peer, so that the comparison
//! cannot rot. Its vlans are Debian's `vde_switch --hub`, as upstream's.

// Tests may unwrap and panic: a failing assertion is their report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use ntd::json::Value;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(300);

/// Run `script` on `machines` under ci/upstream-like-driver; returns its BENCH object.
/// TMPDIR is the test directory, so that the driver's own state (and its switches) is
/// covered by `assert_clean`.
fn run_peer(
    dir: &TestDir,
    machines: &[(&str, &std::path::Path)],
    vlans: &[u32],
    script: &str,
) -> Value {
    let cfg = dir.config(machines, vlans, 300, script);
    let peer = repo().join("ci/upstream-like-driver");
    let mut cmd = dir.peer(peer.to_str().unwrap(), &cfg);
    cmd.env("TMPDIR", &dir.path);
    let r = run_with_limit(cmd, LIMIT);
    r.assert_code(0);
    assert!(r.stderr.contains("test script finished in"), "{}", r.log());
    let line = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("BENCH "))
        .unwrap_or_else(|| panic!("no BENCH line\n{}", r.log()));
    Value::parse(line.as_bytes()).unwrap_or_else(|e| panic!("BENCH line: {e}\n{}", r.log()))
}

/// The numbers of the array at `key`.
fn numbers(bench: &Value, key: &str) -> Vec<f64> {
    let items = bench.get(key).and_then(Value::as_array).unwrap_or_default();
    items.iter().filter_map(Value::as_f64).collect()
}

#[test]
fn upstream_like_driver_runs_the_command_latency_bench_script() {
    let dir = TestDir::new("peerc");
    let vm = dir.tiny_vm("machine", &[]);
    let script = test_script!("bench/commands.py")
        .replace("@COMMANDS@", "3")
        .replace("@WAITS@", "1");
    let bench = run_peer(&dir, &[("machine", &vm)], &[], &script);
    let latency = numbers(&bench, "latency");
    let detection = numbers(&bench, "detection");
    assert_eq!(latency.len(), 3, "{}", bench.to_json());
    assert_eq!(detection.len(), 1, "{}", bench.to_json());
    assert!(latency
        .iter()
        .chain(&detection)
        .all(|&s| s > 0.0 && s < 60.0));
    dir.assert_clean();
}

#[test]
fn upstream_like_driver_runs_the_boot_bench_script_on_a_vde_switch_vlan() {
    let dir = TestDir::new("peerb");
    let names = ["node1", "node2"];
    let hosts = "node1:192.168.1.1,node2:192.168.1.2";
    let vms: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let index = (i + 1).to_string();
            let args = ["--vlan", "1", "--index", index.as_str(), "--hosts", hosts];
            dir.tiny_vm(name, &args)
        })
        .collect();
    let machines: Vec<(&str, &std::path::Path)> = names
        .iter()
        .copied()
        .zip(vms.iter().map(|p| p.as_path()))
        .collect();
    let script = test_script!("bench/boot.py").replace("@NODES@", &names.join(", "));
    let bench = run_peer(&dir, &machines, &[1], &script);
    let first = bench
        .get("first")
        .and_then(Value::as_object)
        .unwrap_or_default();
    let booted: Vec<&str> = first.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(booted, names, "{}", bench.to_json());
    assert!(first
        .iter()
        .all(|(_, v)| v.as_f64().is_some_and(|s| s > 0.0)));
    // The boot times to the sentinel come from ntd's own machine state only.
    assert_eq!(bench.get("boot"), Some(&Value::Object(Vec::new())));
    dir.assert_clean();
}
