//! Boot checkpoints (`--checkpoints DIR`), cold against restored, in the same run.
//!
//! Rows:
//! - **boot to first assert**: `start_all()` then `succeed("true")` on every machine, timed
//!   from the driver's spawn to the last machine's answer (the `(finished: must succeed: true`
//!   log line as it comes out of the driver): the tiny guest with 1 and 2 nodes, the Debian
//!   guest with 1 node (hello-world's start script) and 2 nodes (ping-pair's, on a vlan);
//! - **seed tests end to end**: hello-world, todo-api (PostgREST, 2 nodes), reverse-proxy
//!   (2 nodes) run whole (`ci/run-test --prepare`: the same start scripts every run), wall time
//!   from spawn to exit, cleanup included.
//!
//! Per row: cold runs (no `--checkpoints`) and restored runs (`--checkpoints DIR`, DIR filled
//! by one saving run first, not counted) alternate, so both see the same load; the table gives
//! the medians, the ratio cold/restored, each restored machine's restore time (its log line
//! `restored from checkpoint … in N ms`, QEMU spawn to shell ready) and its checkpoint's size
//! on disk (allocated bytes of its entry: migration stream, disk overlays, console). Goals of
//! issue 21: a restored Debian node answers its first command within 1 s of its QEMU starting;
//! the seed tests run at least twice as fast restored.
//!
//! Usage: `cargo bench --bench checkpoints -- [--reps N] [--rows a,b] [--quick]`
//! (`ci/bench --only checkpoints`). Writes `target/bench-checkpoints.json`.
//! Guests run under TCG on machines without usable KVM: absolute numbers are TCG figures.

// Benches may unwrap and panic: a failing assertion is their report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "scenario/mod.rs"]
mod scenario;

use common::{TestDir, TimedRun};
use ntd::json::Value;
use scenario::Prepared;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(900);
const FIRST_ASSERT: &str = "(finished: must succeed: true";
const BOOT_SCRIPT: &str = "start_all()\nfor m in machines:\n    m.succeed(\"true\")\n";

/// What a row runs.
#[derive(Clone, Copy)]
enum Kind {
    /// Tiny guests, this many, on vlan 1.
    Tiny(usize),
    /// A scenario's start scripts with the boot script (boot to first assert).
    DebianBoot(&'static str),
    /// A scenario run whole.
    Whole(&'static str),
}

const ROWS: &[(&str, Kind)] = &[
    ("tiny-1", Kind::Tiny(1)),
    ("tiny-2", Kind::Tiny(2)),
    ("debian-1", Kind::DebianBoot("hello-world")),
    ("debian-2", Kind::DebianBoot("ping-pair")),
    ("hello-world", Kind::Whole("hello-world")),
    ("todo-api", Kind::Whole("todo-api")),
    ("reverse-proxy", Kind::Whole("reverse-proxy")),
];

struct Args {
    reps: usize,
    rows: Vec<String>,
}

fn parse_args() -> Args {
    let mut a = Args {
        reps: 3,
        rows: ROWS.iter().map(|(n, _)| n.to_string()).collect(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => a.reps = 1,
            "--reps" => a.reps = scenario::reps_arg(it.next()),
            "--rows" => a.rows = scenario::list_arg(it.next()),
            _ => {} // cargo passes --bench
        }
    }
    a
}

fn setup_row(kind: Kind, dir: &TestDir) -> Prepared {
    let boot = dir.write("boot.py", BOOT_SCRIPT);
    match kind {
        Kind::Tiny(n) => {
            let vms: Vec<(String, PathBuf)> = (1..=n)
                .map(|i| {
                    let name = format!("node{i}");
                    let index = i.to_string();
                    let vm = dir.tiny_vm(&name, &["--vlan", "1", "--index", &index]);
                    (name, vm)
                })
                .collect();
            let refs: Vec<(&str, &Path)> =
                vms.iter().map(|(n, p)| (n.as_str(), p.as_path())).collect();
            Prepared {
                config: dir.config(&refs, &[1], 600, BOOT_SCRIPT),
                pythonpath: None,
            }
        }
        Kind::DebianBoot(s) => {
            let prepared = scenario::prepare(s, &dir.path.join("s"));
            scenario::with_script(&prepared, &boot, &dir.path.join("boot.json"))
        }
        Kind::Whole(s) => scenario::prepare(s, &dir.path.join("s")),
    }
}

fn run(dir: &TestDir, setup: &Prepared, ck: Option<&Path>, k: usize) -> TimedRun {
    let runtime = dir.path.join(format!("r{k}"));
    std::fs::create_dir_all(&runtime).unwrap();
    let mut cmd = scenario::driver_command(None, setup, &dir.path, &runtime);
    if let Some(ck) = ck {
        cmd.arg("--checkpoints").arg(ck);
    }
    let r = common::run_timed(cmd, LIMIT);
    assert_eq!(r.code, Some(0), "the run failed\n{}", r.log());
    let _ = std::fs::remove_dir_all(&runtime);
    dir.assert_clean();
    r
}

/// One run's figures: wall, boot to first assert (the last machine's), restore times (ms).
struct Sample {
    wall_s: f64,
    first_assert_s: Option<f64>,
    restores_ms: Vec<(String, f64)>,
}

fn measure(r: &TimedRun) -> Sample {
    let first_assert_s = r
        .lines
        .iter()
        .filter(|l| l.text.contains(FIRST_ASSERT))
        .map(|l| l.at.as_secs_f64())
        .reduce(f64::max);
    let restores_ms = r
        .lines
        .iter()
        .filter_map(|l| {
            let (name, rest) = l.text.split_once(": restored from checkpoint (key ")?;
            let ms = rest
                .rsplit(" in ")
                .next()?
                .strip_suffix(" ms")?
                .parse()
                .ok()?;
            Some((name.to_owned(), ms))
        })
        .collect();
    Sample {
        wall_s: r.elapsed.as_secs_f64(),
        first_assert_s,
        restores_ms,
    }
}

/// Each entry's machine name and size on disk.
fn entry_sizes(ck: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(ck)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let manifest = std::fs::read_to_string(e.path().join("manifest")).ok()?;
            let name = manifest.lines().find_map(|l| l.strip_prefix("name "))?;
            Some((
                name.to_owned(),
                ntd::checkpoint::store::disk_usage(&e.path()),
            ))
        })
        .collect();
    v.sort();
    v
}

/// The median, NaN for none.
fn median(v: Vec<f64>) -> f64 {
    scenario::median(v).unwrap_or(f64::NAN)
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn bench_row(name: &str, kind: Kind, reps: usize, table: &mut String) -> Value {
    let dir = TestDir::new("ckbench");
    let setup = setup_row(kind, &dir);
    let ck = dir.path.join("ck");
    let mut k = 0;
    let mut next = || {
        k += 1;
        k
    };
    let saving = run(&dir, &setup, Some(&ck), next());
    let sizes = entry_sizes(&ck);
    assert!(
        !sizes.is_empty(),
        "{name}: the saving run saved nothing\n{}",
        saving.log()
    );
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for rep in 0..reps {
        let order = if rep % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for restored in order {
            let r = run(&dir, &setup, restored.then_some(ck.as_path()), next());
            let s = measure(&r);
            eprintln!(
                "checkpoints: {name} {} run {}: wall {:.2} s, first assert {:.2} s (load {:.1})",
                if restored { "restored" } else { "cold" },
                rep + 1,
                s.wall_s,
                s.first_assert_s.unwrap_or(f64::NAN),
                load_average()
            );
            if restored {
                assert_eq!(
                    s.restores_ms.len(),
                    sizes.len(),
                    "{name}: not every machine was restored\n{}",
                    r.log()
                );
                warm.push(s);
            } else {
                cold.push(s);
            }
        }
    }
    let metric = |v: &[Sample]| -> Vec<f64> {
        v.iter()
            .map(|s| match kind {
                Kind::Whole(_) => s.wall_s,
                _ => s.first_assert_s.unwrap_or(f64::NAN),
            })
            .collect()
    };
    let (c, w) = (metric(&cold), metric(&warm));
    let (mc, mw) = (median(c.clone()), median(w.clone()));
    let what = match kind {
        Kind::Whole(_) => "wall",
        _ => "boot to first assert",
    };
    let _ = writeln!(
        table,
        "{name:13} {what}: cold {mc:6.1} s  restored {mw:6.2} s  ratio {:5.1}  (cold runs {}; restored runs {})",
        mc / mw,
        scenario::list(&c),
        scenario::list(&w)
    );
    let mut fields = vec![
        ("metric".to_owned(), Value::from(what)),
        ("cold_s".to_owned(), scenario::floats_json(&c)),
        ("restored_s".to_owned(), scenario::floats_json(&w)),
        ("ratio".to_owned(), scenario::floats_json(&[mc / mw])),
    ];
    let mut machines = Vec::new();
    for (machine, size) in &sizes {
        let ms: Vec<f64> = warm
            .iter()
            .flat_map(|s| s.restores_ms.iter())
            .filter(|(n, _)| n == machine)
            .map(|(_, ms)| *ms)
            .collect();
        let _ = writeln!(
            table,
            "{:13}   {machine}: restore median {:.0} ms (runs {}), checkpoint {:.1} MB on disk",
            "",
            median(ms.clone()),
            scenario::list(&ms),
            *size as f64 / 1e6
        );
        machines.push((
            machine.clone(),
            Value::Object(vec![
                ("restore_ms".to_owned(), scenario::floats_json(&ms)),
                ("bytes".to_owned(), Value::from(*size as i64)),
            ]),
        ));
    }
    fields.push(("machines".to_owned(), Value::Object(machines)));
    Value::Object(fields)
}

fn main() {
    let args = parse_args();
    let mut table = String::new();
    let machine = common::machine_description();
    let _ = writeln!(
        table,
        "ntd checkpoint bench ({machine}), {} rep(s)",
        args.reps
    );
    let mut json = vec![("machine".to_owned(), Value::from(machine.as_str()))];
    let load_before = load_average();
    for name in &args.rows {
        let Some((_, kind)) = ROWS.iter().find(|(n, _)| n == name) else {
            panic!(
                "unknown row {name} (rows: {})",
                ROWS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            );
        };
        let row = bench_row(name, *kind, args.reps, &mut table);
        json.push((name.clone(), row));
    }
    let _ = writeln!(
        table,
        "host load average: {load_before:.1} before, {:.1} after",
        load_average()
    );
    print!("{table}");
    let path = common::repo().join("target/bench-checkpoints.json");
    if std::fs::write(&path, Value::Object(json).to_json()).is_ok() {
        println!("wrote {}", path.display());
    }
}
