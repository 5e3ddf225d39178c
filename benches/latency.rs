//! Latency benches on the tiny guest (TCG on this project's machines):
//!
//! - per-command latency: `succeed("true")` ×N, min / median / p95;
//! - wait detection latency: a file appears at a time the guest records → `wait_for_file`
//!   returns (measured on the guest clock, minus nothing: it includes the first half of one
//!   more command, ~2 ms);
//! - boot-to-first-assert for 1, 2, 4 and 8 nodes (`start_all()`, then one command on each)
//!   beside each guest's own boot time to the backdoor sentinel (the floor);
//! - the driver's own peak RSS and CPU time (QEMU and Python excluded).
//!
//! `--peer CMD` runs the same scenarios (plain upstream-API test scripts) through another
//! driver command, e.g. an upstream `nixos-test-driver` you installed, and prints ratios in the
//! same run. Prints a table and writes `target/bench-latency.json`.
//!
//! Usage: `cargo bench --bench latency -- [--quick] [--commands N] [--nodes 1,2,4,8]
//! [--peer CMD]`.

// Tests may unwrap and panic: a failing assertion is their report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::{test_script, RunResult, TestDir, NTD};
use ntd::json::Value;
use std::fmt::Write as _;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(900);

struct Args {
    commands: usize,
    waits: usize,
    nodes: Vec<usize>,
    peer: Option<String>,
}

fn parse_args() -> Args {
    let mut a = Args {
        commands: 200,
        waits: 20,
        nodes: vec![1, 2, 4, 8],
        peer: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => {
                a.commands = 50;
                a.waits = 5;
                a.nodes = vec![1, 2];
            }
            "--commands" => a.commands = it.next().and_then(|v| v.parse().ok()).unwrap_or(200),
            "--nodes" => {
                a.nodes = it
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|n| n.parse().ok())
                    .collect()
            }
            "--peer" => a.peer = it.next(),
            _ => {} // cargo passes --bench
        }
    }
    a
}

/// A test script using only the upstream API (tests/scripts/bench/commands.py); it prints one
/// `BENCH {json}` line.
fn commands_script(n: usize, waits: usize) -> String {
    test_script!("bench/commands.py")
        .replace("@COMMANDS@", &n.to_string())
        .replace("@WAITS@", &waits.to_string())
}

/// `start_all()`, then one command on each machine (tests/scripts/bench/boot.py); prints one
/// `BENCH {json}` line.
fn boot_script(names: &[String]) -> String {
    test_script!("bench/boot.py").replace("@NODES@", &names.join(", "))
}

struct Outcome {
    /// The object of the script's `BENCH {json}` line.
    bench: Value,
    rss_kib: Option<f64>,
    cpu_s: Option<f64>,
}

fn run_scenario(
    dir: &TestDir,
    driver: Option<&str>,
    machines: &[(String, std::path::PathBuf)],
    script: &str,
) -> Outcome {
    let pairs: Vec<(&str, &std::path::Path)> = machines
        .iter()
        .map(|(n, p)| (n.as_str(), p.as_path()))
        .collect();
    let cfg = dir.config(&pairs, &[], 900, script);
    let r: RunResult = match driver {
        None => dir.run(
            &["-c", cfg.to_str().unwrap(), "--log-level", "debug"],
            LIMIT,
        ),
        Some(peer) => common::run_with_limit(dir.peer(peer, &cfg), LIMIT),
    };
    if r.code != Some(0) {
        panic!("bench scenario failed ({:?})\n{}", driver, r.log());
    }
    let line = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("BENCH "))
        .unwrap_or_else(|| panic!("no BENCH line\n{}", r.log()));
    let bench = Value::parse(line.as_bytes())
        .unwrap_or_else(|e| panic!("the BENCH line is not JSON: {e}\n{}", r.log()));
    // The driver reports its own usage only in this log line (at debug level):
    // "driver ran for … s; its own peak RSS N KiB, CPU X s (…)"
    let usage = r.stderr.lines().find(|l| l.contains("its own peak RSS"));
    let num_after = |line: &str, key: &str| -> Option<f64> {
        let rest = &line[line.find(key)? + key.len()..];
        rest.split_whitespace().next()?.parse().ok()
    };
    Outcome {
        bench,
        rss_kib: usage.and_then(|l| num_after(l, "peak RSS ")),
        cpu_s: usage.and_then(|l| num_after(l, "CPU ")),
    }
}

/// The numbers of the array at `key` of a BENCH object.
fn floats(bench: &Value, key: &str) -> Vec<f64> {
    let items = bench.get(key).and_then(Value::as_array).unwrap_or_default();
    items.iter().filter_map(Value::as_f64).collect()
}

/// The (name, number) pairs of the object at `key` of a BENCH object (nulls left out).
fn object(bench: &Value, key: &str) -> Vec<(String, f64)> {
    let fields = bench
        .get(key)
        .and_then(Value::as_object)
        .unwrap_or_default();
    fields
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
        .collect()
}

/// `x` rounded to `decimals` places, for the JSON summary.
fn rounded(x: f64, decimals: i32) -> Value {
    let scale = 10f64.powi(decimals);
    Value::Float((x * scale).round() / scale)
}

/// min / median / p95 as a JSON object, rounded to `decimals` places.
fn stats_json(s: &Stats, decimals: i32) -> Value {
    ntd::json::obj([
        ("min", rounded(s.min, decimals)),
        ("median", rounded(s.median, decimals)),
        ("p95", rounded(s.p95, decimals)),
    ])
}

struct Stats {
    min: f64,
    median: f64,
    p95: f64,
}

fn stats(mut v: Vec<f64>) -> Stats {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    Stats {
        min: v[0],
        median: at(0.5),
        p95: at(0.95),
    }
}

fn main() {
    let args = parse_args();
    // The summary written to target/bench-latency.json: one object, keys in this order.
    let mut json: Vec<(String, Value)> = Vec::new();
    let mut table = String::new();
    let machine_info = common::machine_description();
    let _ = writeln!(table, "ntd latency bench ({machine_info})");
    json.push(("machine".to_owned(), Value::from(machine_info.as_str())));
    let drivers: Vec<(&str, Option<&str>)> = std::iter::once(("ntd", None))
        .chain(args.peer.as_deref().map(|p| ("peer", Some(p))))
        .collect();

    // Per-command latency and wait detection.
    let dir = TestDir::new("bench");
    let vm = dir.tiny_vm("machine", &[]);
    let machines = vec![("machine".to_owned(), vm)];
    let mut medians = Vec::new();
    for (label, driver) in &drivers {
        let out = run_scenario(
            &dir,
            *driver,
            &machines,
            &commands_script(args.commands, args.waits),
        );
        let lat = stats(
            floats(&out.bench, "latency")
                .into_iter()
                .map(|s| s * 1e3)
                .collect(),
        );
        let det = stats(
            floats(&out.bench, "detection")
                .into_iter()
                .map(|s| s * 1e3)
                .collect(),
        );
        let _ = writeln!(
            table,
            "{label:5} succeed(\"true\") x{}: min {:.2} / median {:.2} / p95 {:.2} ms",
            args.commands, lat.min, lat.median, lat.p95
        );
        let _ = writeln!(
            table,
            "{label:5} wait_for_file detection x{}: min {:.1} / median {:.1} / p95 {:.1} ms",
            args.waits, det.min, det.median, det.p95
        );
        if let (Some(rss), Some(cpu)) = (out.rss_kib, out.cpu_s) {
            let _ = writeln!(
                table,
                "{label:5} driver peak RSS {:.1} MiB, CPU {:.3} s (1 node, {} commands + {} waits)",
                rss / 1024.0,
                cpu,
                args.commands,
                args.waits
            );
            json.push((format!("{label}_rss_kib"), Value::from(rss as i64)));
            json.push((format!("{label}_cpu_s"), Value::from(cpu)));
        }
        json.push((format!("{label}_command_ms"), stats_json(&lat, 3)));
        json.push((format!("{label}_detection_ms"), stats_json(&det, 2)));
        medians.push(lat.median);
    }
    if medians.len() == 2 {
        let _ = writeln!(
            table,
            "      per-command ratio peer/ntd: {:.1}x",
            medians[1] / medians[0]
        );
    }

    // Boot to first assert.
    for &n in &args.nodes {
        let dir = TestDir::new("bootb");
        let names: Vec<String> = (1..=n).map(|i| format!("node{i}")).collect();
        let machines: Vec<(String, std::path::PathBuf)> = names
            .iter()
            .map(|name| (name.clone(), dir.tiny_vm(name, &[])))
            .collect();
        for (label, driver) in &drivers {
            let out = run_scenario(&dir, *driver, &machines, &boot_script(&names));
            let first = object(&out.bench, "first");
            let boot = object(&out.bench, "boot");
            let last_first = first.iter().map(|(_, v)| *v).fold(0.0, f64::max);
            let line = if boot.is_empty() {
                format!(
                    "{label:5} {n} node(s): all first asserts done {:.2} s after start_all",
                    last_first
                )
            } else {
                // The floor: the slowest guest's own boot to the backdoor sentinel. The first
                // asserts run one after another in the script, so the last one is compared
                // with the slowest boot.
                let max_boot = boot.iter().map(|(_, v)| *v).fold(0.0, f64::max);
                format!(
                    "{label:5} {n} node(s): boot-to-first-assert {:.2} s, slowest boot to sentinel {:.2} s (floor), overhead {:+.0} ms, ratio {:.3}",
                    last_first,
                    max_boot,
                    (last_first - max_boot) * 1e3,
                    last_first / max_boot
                )
            };
            let _ = writeln!(table, "{line}");
            json.push((format!("{label}_boot_{n}"), out.bench));
        }
        dir.assert_clean();
    }
    print!("{table}");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-latency.json");
    if std::fs::write(&path, Value::Object(json).to_json()).is_ok() {
        println!("wrote {}", path.display());
    }
    let _ = NTD;
}
