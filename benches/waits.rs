//! Throughput benches of the waits: what waiting costs the guests and the host, beside
//! upstream's schedule run through the same driver, guests and run (the bench knob
//! `NTD_WAIT_SCHEDULE=reference`: upstream's per-attempt guest pipeline once a second).
//! Every figure is a ratio measured alternately in one run (the machine is shared: absolute
//! numbers drift with the load, printed with each section).
//!
//! - **cpu**: the CPU a wait costs per wait kind, minus an idle window of the same machine,
//!   over the whole wait (first second included: issue 18's measure) and per second after
//!   its first second: host side (QEMU's utime+stime, what a builder pays) and guest side
//!   (`/proc/stat`); and the detection latency of a condition that turns true 0.3 s into the
//!   wait (tiny guest: file, port, command; Debian guest: unit). With `--peer CMD` the same
//!   script also runs under that driver (the real upstream driver: its own schedule, its own
//!   guest protocol), beside ntd's reference schedule. Script:
//!   tests/scripts/bench/waits_cpu.py.
//! - **neighbour**: two Debian guests pinned to one host CPU; `server` boots (fresh overlay)
//!   to nginx active while `client` waits for its port 80 (`wait_for_open_port`, or
//!   `wait_until_succeeds("curl …")`, the issue's two seed scenarios): the boot's slowdown
//!   against the same boot while the client idles (both schedules' idle trials pooled: no
//!   wait runs there), ntd's schedule over the reference.
//!   Script: waits_neighbour.py on bench/waits-neighbour.
//! - **parallel**: N = 1, 2, 4 small tiny-guest tests (waits_test.py) started at once, each
//!   its own `ntd`: tests completed per minute, ntd's schedule over the reference.
//! - **todo** (only with `--peer CMD`, and by default then): issue 18's waits row, the
//!   `todo-api` scenario run whole, alternately by ntd and the peer: the client's
//!   `wait_until_succeeds(curl …)` noticing the server's REST service (detection after the
//!   port opened, on the server's and the host's clock) and the test's wall time, with the
//!   issue's verdict (ntd ≤ the peer's median on both). See `benches/scenario/mod.rs`.
//!
//! Prints a table and writes `target/bench-waits.json`.
//!
//! Usage: `cargo bench --bench waits -- [--quick] [--reps N] [--secs S] [--no-debian]
//! [--peer CMD] [--only cpu,neighbour,parallel,todo]`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "scenario/mod.rs"]
mod scenario;

use common::{run_with_limit, test_script, RunResult, TestDir, NTD};
use ntd::json::{obj, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(1200);
/// The schedules compared: (label, value of NTD_WAIT_SCHEDULE).
const SCHEDULES: [(&str, &str); 2] = [("ntd", "budget"), ("ref", "reference")];
/// Kinds of the cpu section on tiny guests and on the Debian guest.
const TINY_KINDS: &[&str] = &[
    "file",
    "port_local",
    "port_remote",
    "closed_port",
    "unix_socket",
    "command",
];
const DEBIAN_KINDS: &[&str] = &["port_local", "unit", "unit_command"];
/// fork+execs before the small test's service listens.
const TEST_WORK: u32 = 100;

struct Args {
    reps: usize,
    secs: u32,
    detect: u32,
    trials: u32,
    parallel: Vec<usize>,
    debian: bool,
    only: Vec<String>,
    /// Another driver command (`--peer`): the cpu section runs under it too, and the todo
    /// section compares with it.
    peer: Option<String>,
}

fn parse_args() -> Args {
    let mut a = Args {
        reps: 3,
        secs: 10,
        detect: 5,
        trials: 3,
        parallel: vec![1, 2, 4],
        debian: true,
        only: Vec::new(),
        peer: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |d: usize| it.next().and_then(|v| v.parse().ok()).unwrap_or(d);
        match arg.as_str() {
            "--quick" => {
                a.reps = 1;
                a.secs = 5;
                a.detect = 3;
                a.trials = 1;
                a.parallel = vec![1, 4];
            }
            "--reps" => a.reps = scenario::reps_arg(it.next()),
            "--secs" => a.secs = num(10) as u32,
            "--no-debian" => a.debian = false,
            "--peer" => a.peer = it.next(),
            "--only" => a.only = scenario::list_arg(it.next()),
            _ => {} // cargo passes --bench
        }
    }
    a
}

/// The schedules in the order of repetition `rep`: alternating, so that a drift of the
/// machine's load favours neither.
fn schedules(rep: usize) -> [(&'static str, &'static str); 2] {
    let mut s = SCHEDULES;
    if rep % 2 == 1 {
        s.reverse();
    }
    s
}

/// The object of the `BENCH {json}` line of a run that must have passed.
fn bench_line(what: &str, r: &RunResult) -> Value {
    if r.code != Some(0) {
        panic!("{what} failed\n{}", r.log());
    }
    let line = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("BENCH "))
        .unwrap_or_else(|| panic!("{what}: no BENCH line\n{}", r.log()));
    Value::parse(line.as_bytes()).unwrap_or_else(|e| panic!("{what}: BENCH line: {e}"))
}

/// Tiny guests on vlan 1, `names[i]` at 192.168.1.(i+1).
fn tiny_machines(dir: &TestDir, names: &[&str]) -> Vec<(String, PathBuf)> {
    let hosts: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{n}:192.168.1.{}", i + 1))
        .collect();
    let hosts = hosts.join(",");
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let index = (i + 1).to_string();
            let args = ["--vlan", "1", "--index", &index, "--hosts", &hosts];
            (n.to_string(), dir.tiny_vm(n, &args))
        })
        .collect()
}

fn ntd_command(
    dir: &TestDir,
    machines: &[(String, PathBuf)],
    script: &str,
    sched: &str,
) -> Command {
    let pairs: Vec<(&str, &Path)> = machines
        .iter()
        .map(|(n, p)| (n.as_str(), p.as_path()))
        .collect();
    let vlans: &[u32] = if machines.len() > 1 { &[1] } else { &[] };
    let cfg = dir.config(&pairs, vlans, 1200, script);
    let mut cmd = dir.ntd();
    cmd.arg("-c")
        .arg(cfg)
        .env("NTD_WAIT_SCHEDULE", sched)
        .stdin(Stdio::null());
    cmd
}

/// The host's load average (1 min) and a label of the machine.
fn load() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(-1.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn numbers(v: Option<&Value>) -> Vec<f64> {
    v.and_then(Value::as_array)
        .unwrap_or_default()
        .iter()
        .filter_map(Value::as_f64)
        .collect()
}

fn rounded(x: f64, decimals: i32) -> Value {
    let scale = 10f64.powi(decimals);
    Value::Float((x * scale).round() / scale)
}

/// Per kind: values of each repetition (host %, guest % above idle; after the first second
/// and over the whole wait) and detection latencies.
#[derive(Default)]
struct CpuFigures {
    host: Vec<f64>,
    guest: Vec<f64>,
    guest_whole: Vec<f64>,
    detection_ms: Vec<f64>,
}

/// Add one run's BENCH object to `figures[kind]`.
fn collect_cpu(bench: &Value, figures: &mut Vec<(String, CpuFigures)>) {
    let cpu = bench.get("cpu");
    let share = |kind: &str, key: &str| -> f64 {
        cpu.and_then(|c| c.get(kind))
            .and_then(|k| k.get(key))
            .and_then(Value::as_f64)
            .unwrap_or(f64::NAN)
    };
    // Kinds with a CPU window, then detection-only ones (a unit that starts later).
    let detection = bench.get("detection");
    let mut kinds: Vec<String> = Vec::new();
    for source in [cpu, detection] {
        for (k, _) in source.and_then(Value::as_object).unwrap_or_default() {
            if k != "idle" && !kinds.contains(k) {
                kinds.push(k.clone());
            }
        }
    }
    for kind in kinds {
        let slot = match figures.iter().position(|(k, _)| *k == kind) {
            Some(i) => i,
            None => {
                figures.push((kind.clone(), CpuFigures::default()));
                figures.len() - 1
            }
        };
        let f = &mut figures[slot].1;
        let host = share(&kind, "host") - share("idle", "host");
        if !host.is_nan() {
            f.host.push(host);
            f.guest.push(share(&kind, "guest") - share("idle", "guest"));
            f.guest_whole
                .push(share(&kind, "guest_whole") - share("idle", "guest_whole"));
        }
        let det = detection.and_then(|d| d.get(&kind));
        f.detection_ms
            .extend(numbers(det).into_iter().map(|s| s * 1e3));
    }
}

fn cpu_script(kinds: &[&str], secs: u32, detect: u32) -> String {
    let kinds: Vec<String> = kinds.iter().map(|k| format!("\"{k}\"")).collect();
    test_script!("bench/waits_cpu.py")
        .replace("@KINDS@", &kinds.join(", "))
        .replace("@SECS@", &secs.to_string())
        .replace("@DETECT@", &detect.to_string())
}

/// Run `script` as the test.py of a copy of the Debian test directory `nodes` (a directory
/// of tests/scripts/bench with a nodes.toml) through ci/run-test.
fn run_debian(dir: &TestDir, nodes: &str, script: &str, sched: &str) -> RunResult {
    run_debian_with(dir, nodes, script, sched, None)
}

/// [`run_debian`] with another driver command (`ci/run-test --driver`), or ntd's.
fn run_debian_with(
    dir: &TestDir,
    nodes: &str,
    script: &str,
    sched: &str,
    peer: Option<&str>,
) -> RunResult {
    let test = dir.path.join(nodes);
    std::fs::create_dir_all(&test).unwrap();
    let root = common::repo();
    std::fs::copy(
        root.join("tests/scripts/bench")
            .join(nodes)
            .join("nodes.toml"),
        test.join("nodes.toml"),
    )
    .unwrap();
    std::fs::write(test.join("test.py"), script).unwrap();
    let mut cmd = Command::new(root.join("ci/run-test"));
    cmd.arg(&test);
    if let Some(p) = peer {
        cmd.arg("--driver").arg(p);
    }
    cmd.env("NTD", NTD)
        .env("TMPDIR", &dir.path)
        .env("NTD_COLOR", "never")
        .env("NTD_WAIT_SCHEDULE", sched)
        .stdin(Stdio::null());
    run_with_limit(cmd, LIMIT)
}

fn section_cpu(a: &Args, table: &mut String) -> Value {
    let mut json = Vec::new();
    let mut guests: Vec<(&str, Vec<&str>)> = vec![("tiny", TINY_KINDS.to_vec())];
    if a.debian {
        guests.push(("debian", DEBIAN_KINDS.to_vec()));
    }
    for (guest, kinds) in guests {
        let load0 = load();
        let dir = TestDir::new("bwcpu");
        // The Debian guest's start scripts are ci/run-test's.
        let machines = if guest == "tiny" {
            tiny_machines(&dir, &["waiter", "peer"])
        } else {
            Vec::new()
        };
        let script = cpu_script(&kinds, a.secs, a.detect);
        // ntd, the reference schedule, and the peer driver if there is one.
        let mut per: [Vec<(String, CpuFigures)>; 3] = [Vec::new(), Vec::new(), Vec::new()];
        for rep in 0..a.reps {
            let mut runs: Vec<(&str, &str)> = schedules(rep).to_vec();
            if a.peer.is_some() {
                runs.insert(rep % 3, ("peer", "budget"));
            }
            for (label, sched) in runs {
                let peer = a.peer.as_deref().filter(|_| label == "peer");
                let r = match (guest, peer) {
                    ("tiny", None) => {
                        run_with_limit(ntd_command(&dir, &machines, &script, sched), LIMIT)
                    }
                    ("tiny", Some(p)) => {
                        let pairs: Vec<(&str, &Path)> = machines
                            .iter()
                            .map(|(n, p)| (n.as_str(), p.as_path()))
                            .collect();
                        let cfg = dir.config(&pairs, &[1], 1200, &script);
                        let mut cmd = dir.peer(p, &cfg);
                        cmd.stdin(Stdio::null());
                        run_with_limit(cmd, LIMIT)
                    }
                    (_, p) => run_debian_with(&dir, "waits-debian", &script, sched, p),
                };
                let slot = match label {
                    "ntd" => 0,
                    "ref" => 1,
                    _ => 2,
                };
                collect_cpu(
                    &bench_line(&format!("cpu {guest} {label}"), &r),
                    &mut per[slot],
                );
            }
        }
        dir.assert_clean();
        let _ = writeln!(
            table,
            "\ncpu above idle ({guest} guest, {} s waits, {} reps, load {load0:.2}..{:.2}): per \
             second of waiting after the first second (host, guest) and over the whole wait \
             (guest whole: issue 18's measure; ref = ntd's reference schedule{}); detection: \
             condition true 0.3 s into the wait (unit_2s: 2 s)",
            a.secs,
            a.reps,
            load(),
            if a.peer.is_some() {
                ", peer = the --peer driver"
            } else {
                ""
            }
        );
        let _ = writeln!(
            table,
            "  {:13} {:>16} {:>16} {:>7} {:>16} {:>16} {:>16} {:>16} {:>16} {:>18}",
            "kind",
            "host ntd %",
            "host ref %",
            "ratio",
            "guest ntd %",
            "guest ref %",
            "whole ntd %",
            "whole ref %",
            "whole peer %",
            "detect ntd/ref ms"
        );
        let mut kinds_json = Vec::new();
        for (kind, n) in &per[0] {
            let Some((_, r)) = per[1].iter().find(|(k, _)| k == kind) else {
                continue;
            };
            let reps = |v: &[f64]| {
                if v.is_empty() {
                    return "-".to_owned();
                }
                v.iter()
                    .map(|x| format!("{x:.1}"))
                    .collect::<Vec<_>>()
                    .join("/")
            };
            let (hn, hr) = (median(n.host.clone()), median(r.host.clone()));
            let ratio = if hn.is_nan() {
                "-".to_owned()
            } else {
                format!("{:.2}", hn.max(0.05) / hr.max(0.05))
            };
            let det = if n.detection_ms.is_empty() {
                "-".to_owned()
            } else {
                format!(
                    "{:.0} / {:.0}",
                    median(n.detection_ms.clone()),
                    median(r.detection_ms.clone())
                )
            };
            let peer = per[2].iter().find(|(k, _)| k == kind).map(|(_, f)| f);
            let _ = writeln!(
                table,
                "  {kind:13} {:>16} {:>16} {ratio:>7} {:>16} {:>16} {:>16} {:>16} {:>16} {det:>18}",
                reps(&n.host),
                reps(&r.host),
                reps(&n.guest),
                reps(&r.guest),
                reps(&n.guest_whole),
                reps(&r.guest_whole),
                peer.map_or_else(|| "-".to_owned(), |p| reps(&p.guest_whole)),
            );
            let figures = |f: &CpuFigures| {
                obj([
                    (
                        "host_pct",
                        Value::Array(f.host.iter().map(|x| rounded(*x, 2)).collect()),
                    ),
                    (
                        "guest_pct",
                        Value::Array(f.guest.iter().map(|x| rounded(*x, 2)).collect()),
                    ),
                    (
                        "guest_whole_pct",
                        Value::Array(f.guest_whole.iter().map(|x| rounded(*x, 2)).collect()),
                    ),
                    (
                        "detection_ms",
                        Value::Array(f.detection_ms.iter().map(|x| rounded(*x, 1)).collect()),
                    ),
                ])
            };
            let mut entry = vec![
                ("ntd".to_owned(), figures(n)),
                ("ref".to_owned(), figures(r)),
            ];
            if let Some(p) = peer {
                entry.push(("peer".to_owned(), figures(p)));
            }
            kinds_json.push((kind.clone(), Value::Object(entry)));
        }
        json.push((
            guest.to_owned(),
            obj([
                (
                    "load",
                    Value::Array(vec![rounded(load0, 2), rounded(load(), 2)]),
                ),
                ("kinds", Value::Object(kinds_json)),
            ]),
        ));
    }
    Value::Object(json)
}

/// A wait kind of the neighbour section, the neighbour's job times and when the wait noticed.
type NeighbourTrials = (String, Vec<f64>, Vec<f64>);

fn section_neighbour(a: &Args, table: &mut String) -> Value {
    let load0 = load();
    let dir = TestDir::new("bwnb");
    let script = test_script!("bench/waits_neighbour.py")
        .replace("@KINDS@", "\"port\", \"command\"")
        .replace("@TRIALS@", &a.trials.to_string());
    // Per schedule: kind -> (job seconds, noticed seconds) of every trial.
    let mut per: [Vec<NeighbourTrials>; 2] = [Vec::new(), Vec::new()];
    for rep in 0..a.reps {
        for (label, sched) in schedules(rep) {
            let r = run_debian(&dir, "waits-neighbour", &script, sched);
            let bench = bench_line(&format!("neighbour {label}"), &r);
            let slot = usize::from(label != "ntd");
            for (kind, v) in bench.as_object().unwrap_or_default() {
                let entry = match per[slot].iter().position(|(k, _, _)| k == kind) {
                    Some(i) => &mut per[slot][i],
                    None => {
                        per[slot].push((kind.clone(), Vec::new(), Vec::new()));
                        per[slot].last_mut().unwrap()
                    }
                };
                entry.1.extend(numbers(v.get("job")));
                entry.2.extend(numbers(v.get("noticed")));
            }
        }
    }
    dir.assert_clean();
    // The baseline: the boot beside an idle client. No wait runs there, so both schedules'
    // trials measure the same thing and are pooled (a baseline per schedule only added its
    // noise to the ratio: 9 % between two sets of 12 identical trials on 2026-12-07).
    let alone = {
        let trials: Vec<f64> = per
            .iter()
            .flat_map(|slot| slot.iter().filter(|(k, _, _)| k == "alone"))
            .flat_map(|(_, j, _)| j.iter().copied())
            .collect();
        if trials.is_empty() {
            f64::NAN
        } else {
            median(trials)
        }
    };
    let _ = writeln!(
        table,
        "\nneighbour: two Debian guests pinned to one host CPU; the server's boot to nginx \
         active while the client waits for port 80 ({} reps x {} trials, load \
         {load0:.2}..{:.2})",
        a.reps,
        a.trials,
        load()
    );
    let _ = writeln!(
        table,
        "  {:9} {:>14} {:>14} {:>12} {:>14} {:>14}",
        "wait", "slowdown ntd", "slowdown ref", "ratio", "noticed ntd s", "noticed ref s"
    );
    let mut json = Vec::new();
    for (kind, jobs, noticed) in &per[0] {
        let Some((_, rjobs, rnoticed)) = per[1].iter().find(|(k, _, _)| k == kind) else {
            continue;
        };
        let sn = median(jobs.clone()) / alone;
        let sr = median(rjobs.clone()) / alone;
        let (nn, nr) = (median(noticed.clone()), median(rnoticed.clone()));
        let _ = writeln!(
            table,
            "  {kind:9} {sn:>14.3} {sr:>14.3} {:>12.3} {nn:>14.2} {nr:>14.2}",
            sn / sr
        );
        let list = |v: &[f64]| Value::Array(v.iter().map(|x| rounded(*x, 3)).collect());
        json.push((
            kind.clone(),
            obj([
                ("ntd_job_s", list(jobs)),
                ("ref_job_s", list(rjobs)),
                ("ntd_noticed_s", list(noticed)),
                ("ref_noticed_s", list(rnoticed)),
                ("slowdown_ratio", rounded(sn / sr, 3)),
            ]),
        ));
    }
    json.push((
        "load".to_owned(),
        Value::Array(vec![rounded(load0, 2), rounded(load(), 2)]),
    ));
    Value::Object(json)
}

fn section_parallel(a: &Args, table: &mut String) -> Value {
    let load0 = load();
    let script = test_script!("bench/waits_test.py").replace("@WORK@", &TEST_WORK.to_string());
    let _ = writeln!(
        table,
        "\nparallel: N small tiny-guest tests at once, each its own ntd ({} reps, load {load0:.2} at the start)",
        a.reps
    );
    let _ = writeln!(
        table,
        "  {:3} {:>20} {:>20} {:>8}",
        "N", "tests/min ntd", "tests/min ref", "ratio"
    );
    let mut json = Vec::new();
    for &n in &a.parallel {
        let dirs: Vec<TestDir> = (0..n).map(|_| TestDir::new("bwpar")).collect();
        let vms: Vec<Vec<(String, PathBuf)>> = dirs
            .iter()
            .map(|d| vec![("machine".to_owned(), d.tiny_vm("machine", &[]))])
            .collect();
        let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for rep in 0..a.reps {
            for (label, sched) in schedules(rep) {
                let start = Instant::now();
                let handles: Vec<_> = dirs
                    .iter()
                    .zip(&vms)
                    .map(|(d, m)| {
                        let cmd = ntd_command(d, m, &script, sched);
                        std::thread::spawn(move || run_with_limit(cmd, LIMIT))
                    })
                    .collect();
                for h in handles {
                    let r = h.join().unwrap();
                    if r.code != Some(0) {
                        panic!("parallel {label} failed\n{}", r.log());
                    }
                }
                let per_min = n as f64 * 60.0 / start.elapsed().as_secs_f64();
                rates[usize::from(label != "ntd")].push(per_min);
            }
        }
        for d in &dirs {
            d.assert_clean();
        }
        let reps = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.1}"))
                .collect::<Vec<_>>()
                .join("/")
        };
        let ratio = median(rates[0].clone()) / median(rates[1].clone());
        let _ = writeln!(
            table,
            "  {n:<3} {:>20} {:>20} {ratio:>8.3}",
            reps(&rates[0]),
            reps(&rates[1])
        );
        let list = |v: &[f64]| Value::Array(v.iter().map(|x| rounded(*x, 2)).collect());
        json.push((
            n.to_string(),
            obj([
                ("ntd_per_min", list(&rates[0])),
                ("ref_per_min", list(&rates[1])),
                ("ratio", rounded(ratio, 3)),
            ]),
        ));
    }
    let _ = writeln!(table, "  (load {:.2} at the end)", load());
    Value::Object(json)
}

/// Issue 18's waits row: `todo-api` whole, ntd against the peer driver, alternating.
fn section_todo(a: &Args, table: &mut String) -> Value {
    let Some(peer) = a.peer.as_deref() else {
        panic!(
            "the todo section compares with the real upstream driver: give --peer CMD \
             (ci/bench --peer \"$PWD/ci/upstream-peer\", see the README)"
        );
    };
    let drivers = [("ntd", None), ("peer", Some(peer))];
    let reps = a.reps.max(3);
    let samples = scenario::run_scenario("todo-api", &drivers, reps);
    let loads: Vec<f64> = samples.iter().flatten().map(|s| s.load).collect();
    let _ = writeln!(
        table,
        "\ntodo: issue 18's waits row, the todo-api scenario whole, ntd and the peer alternating \
         ({reps} runs each, load {:.1}..{:.1} after the runs)",
        loads.iter().copied().fold(f64::INFINITY, f64::min),
        loads.iter().copied().fold(0.0, f64::max)
    );
    let (fields, _) = scenario::report_scenario("todo-api", &drivers, &samples, table);
    let json = vec![("todo-api".to_owned(), Value::Object(fields))];
    scenario::issue_18_verdict(&json, table);
    Value::Object(json)
}

fn main() {
    let args = parse_args();
    let wanted = |s: &str| {
        if args.only.is_empty() {
            s != "todo" || args.peer.is_some()
        } else {
            args.only.iter().any(|o| o == s)
        }
    };
    let machine = common::machine_description();
    let mut table = format!("ntd waits bench ({machine}; ratios are ntd / reference)\n");
    let mut json = vec![("machine".to_owned(), Value::from(machine.as_str()))];
    type Section = fn(&Args, &mut String) -> Value;
    let sections: [(&str, Section); 4] = [
        ("cpu", section_cpu),
        ("neighbour", section_neighbour),
        ("parallel", section_parallel),
        ("todo", section_todo),
    ];
    for (name, section) in sections {
        if wanted(name) {
            // Each section's table as soon as it is done (a long run shows progress).
            let mut part = String::new();
            json.push((name.to_owned(), section(&args, &mut part)));
            eprint!("{part}");
            table.push_str(&part);
        }
    }
    print!("{table}");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-waits.json");
    if std::fs::write(&path, Value::Object(json).to_json()).is_ok() {
        println!("wrote {}", path.display());
    }
}
