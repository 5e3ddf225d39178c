//! Whole tests, ntd against a peer driver: the seed scenarios of `tests/scenarios` (Debian
//! guests) run from start to exit, alternating ntd and the peer (the real upstream
//! `nixos-test-driver` through `ci/upstream-peer`, or any driver taking `--config FILE`), each
//! run with a fresh runtime directory, the same start scripts and the same driver.json
//! (`ci/run-test DIR --prepare OUT`). Reported per scenario: every run's wall time (driver
//! spawned → driver exited, cleanup included), the medians and the ratio peer/ntd.
//!
//! The `todo-api` scenario is also issue 18's waits row (detection delay after the REST
//! service's port opened; see `benches/scenario/mod.rs`), which `benches/waits.rs` runs as
//! its `todo` section too.
//!
//! Usage: `cargo bench --bench whole -- [--peer CMD] [--reps N] [--scenarios a,b] [--quick]`
//! (`ci/bench --whole`). Without `--peer` only ntd runs. Writes `target/bench-whole.json`.
//! Guests run under TCG on machines without usable KVM: absolute numbers are TCG figures.

// Tests may unwrap and panic: a failing assertion is their report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "scenario/mod.rs"]
mod scenario;

use ntd::json::Value;
use scenario::{issue_18_verdict, report_scenario, rounded, run_scenario};
use std::fmt::Write as _;

const SCENARIOS: &[&str] = &["hello-world", "todo-api", "reverse-proxy", "ping-pair"];

struct Args {
    peer: Option<String>,
    reps: usize,
    scenarios: Vec<String>,
}

fn parse_args() -> Args {
    let mut a = Args {
        peer: None,
        reps: 3,
        scenarios: SCENARIOS.iter().map(|s| s.to_string()).collect(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => {
                a.reps = 1;
                a.scenarios = vec!["hello-world".into(), "todo-api".into()];
            }
            "--reps" => a.reps = scenario::reps_arg(it.next()),
            "--scenarios" => a.scenarios = scenario::list_arg(it.next()),
            "--peer" => a.peer = it.next(),
            _ => {} // cargo passes --bench
        }
    }
    a
}

fn main() {
    let args = parse_args();
    let mut table = String::new();
    let mut json: Vec<(String, Value)> = Vec::new();
    let machine = common::machine_description();
    let _ = writeln!(table, "ntd whole-test bench ({machine})");
    json.push(("machine".into(), Value::from(machine.as_str())));
    let drivers: Vec<(&str, Option<&str>)> = std::iter::once(("ntd", None))
        .chain(args.peer.as_deref().map(|p| ("peer", Some(p))))
        .collect();
    if args.peer.is_none() {
        let _ = writeln!(table, "no --peer given: ntd alone, no ratios");
    }
    let mut loads = Vec::new();
    for scenario in &args.scenarios {
        let samples = run_scenario(scenario, &drivers, args.reps);
        loads.extend(samples.iter().flatten().map(|s| s.load));
        let (fields, _) = report_scenario(scenario, &drivers, &samples, &mut table);
        json.push((scenario.clone(), Value::Object(fields)));
    }
    if let (Some(lo), Some(hi)) = (
        loads.iter().copied().reduce(f64::min),
        loads.iter().copied().reduce(f64::max),
    ) {
        let _ = writeln!(
            table,
            "host load average after the runs: {lo:.1} .. {hi:.1}"
        );
        json.push(("load_min".into(), rounded(lo)));
        json.push(("load_max".into(), rounded(hi)));
    }
    issue_18_verdict(&json, &mut table);
    print!("{table}");
    let path = common::repo().join("target/bench-whole.json");
    if std::fs::write(&path, Value::Object(json).to_json()).is_ok() {
        println!("wrote {}", path.display());
    }
}
