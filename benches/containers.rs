//! Containers beside a VM, same run (issue 20): from `start()` to the first command's answer
//! for a systemd-nspawn container (its first start, which populates the root directory, and
//! restarts) and for the tiny TCG guest, and per-command latency `succeed("true")` in each.
//! Needs root and systemd-container (as `tests/containers.rs`). Prints a table and writes
//! `target/bench-containers.json`. The figures are indicative on a loaded host.
//!
//! Usage: `cargo bench --bench containers -- [--quick] [--commands N] [--starts N]`.

// Tests may unwrap and panic: a failing assertion is their report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::{test_script, TestDir};
use ntd::json::Value;
use std::fmt::Write as _;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(900);

fn main() {
    let (mut commands, mut starts) = (200usize, 5usize);
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => (commands, starts) = (50, 2),
            "--commands" => commands = it.next().and_then(|v| v.parse().ok()).unwrap_or(200),
            "--starts" => starts = it.next().and_then(|v| v.parse().ok()).unwrap_or(5),
            _ => {} // cargo passes --bench
        }
    }
    common::require_containers();
    let dir = TestDir::new("bench-ct");
    let c = dir.container("c", &[], 2, "");
    let vm = dir.tiny_vm("vm", &[]);
    let script = test_script!("bench/containers.py")
        .replace("@COMMANDS@", &commands.to_string())
        .replace("@STARTS@", &starts.to_string());
    let cfg = dir.config_with(&[("vm", &vm)], &[("c", &c)], &[], 900, &script);
    let r = dir.run(&["-c", cfg.to_str().unwrap()], LIMIT);
    if r.code != Some(0) {
        panic!("the containers bench failed\n{}", r.log());
    }
    let line = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("BENCH "))
        .unwrap_or_else(|| panic!("no BENCH line\n{}", r.log()));
    let bench = Value::parse(line.as_bytes()).expect("the BENCH line is JSON");
    let num = |k: &str| bench.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let list = |k: &str| -> Vec<f64> {
        let items = bench.get(k).and_then(Value::as_array).unwrap_or_default();
        let mut v: Vec<f64> = items.iter().filter_map(Value::as_f64).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v
    };
    let median = |v: &[f64]| v.get(v.len() / 2).copied().unwrap_or(f64::NAN);
    let p95 = |v: &[f64]| {
        v.get(((v.len() as f64 - 1.0) * 0.95).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let (restarts, cc, vc) = (
        list("container_restarts"),
        list("container_command"),
        list("vm_command"),
    );
    let mut table = String::new();
    let _ = writeln!(
        table,
        "ntd containers bench ({}; indicative only)",
        common::machine_description()
    );
    let _ = writeln!(
        table,
        "start() to first command: container {:.2} s first start, {:.2} s median of {} restarts; \
         VM {:.2} s (boot)",
        num("container_first_start"),
        median(&restarts),
        restarts.len(),
        num("vm_boot")
    );
    for (label, v) in [("container", &cc), ("VM", &vc)] {
        let _ = writeln!(
            table,
            "succeed(\"true\") x{} in the {label}: min {:.1} / median {:.1} / p95 {:.1} ms",
            v.len(),
            v.first().copied().unwrap_or(f64::NAN) * 1e3,
            median(v) * 1e3,
            p95(v) * 1e3
        );
    }
    print!("{table}");
    let summary = ntd::json::obj([
        (
            "machine",
            Value::from(common::machine_description().as_str()),
        ),
        (
            "container_first_start_s",
            Value::from(num("container_first_start")),
        ),
        ("container_restart_median_s", Value::from(median(&restarts))),
        ("vm_boot_s", Value::from(num("vm_boot"))),
        (
            "container_command_median_ms",
            Value::from(median(&cc) * 1e3),
        ),
        ("vm_command_median_ms", Value::from(median(&vc) * 1e3)),
    ]);
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-containers.json");
    if std::fs::write(&path, summary.to_json()).is_ok() {
        println!("wrote {}", path.display());
    }
    dir.assert_clean();
}
