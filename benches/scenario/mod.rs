//! Whole seed scenarios run by several drivers, shared by `benches/whole.rs` (every
//! scenario) and `benches/waits.rs` (issue 18's waits row, `todo-api`): each scenario is
//! prepared once (`ci/run-test DIR --prepare OUT`: start scripts, node tars, driver.json) and
//! run alternately by ntd and a peer driver (the real upstream `nixos-test-driver` through
//! `ci/upstream-peer`, or any driver taking `--config FILE`), each run in a fresh runtime
//! directory; a run's wall time is driver spawned → driver exited, cleanup included.
//!
//! `todo-api` is issue 18's waits row: the client's `wait_until_succeeds("curl --fail
//! --silent http://server:3000/todos", 55)` while the server boots PostgreSQL and the REST
//! service. Its detection delay is measured twice:
//! - on the server's clock: the first answered `GET /todos` minus the moment the service
//!   listened, both printed by the service on its own CLOCK_MONOTONIC and carried to the
//!   driver's log by the serial console (see `tests/scenarios/todo-api/todo-api.py`). One
//!   clock, so the offset between the two guests' clocks does not enter; the client's last
//!   curl (a few ms) and the driver's reply path are not in it.
//! - on the host's clock: the driver's log line `(finished: waiting for success: curl …)`
//!   minus the arrival of the server's "listening" console line, both time-stamped by the
//!   bench as they come out of the driver (the console line's trip through QEMU and the driver
//!   is the same for both drivers, a few ms). This one includes the whole return path.
//!
//! `benches/checkpoints.rs` uses the preparation and the argument helpers too; not every
//! bench uses every item.
#![allow(dead_code)]

use super::common::{self, TestDir, TimedRun, NTD};
use ntd::json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// One whole test may take this long under TCG on a loaded host before it counts as hung.
pub const LIMIT: Duration = Duration::from_secs(900);
/// The client's wait in the todo-api scenario, as its driver logs it when the wait returns.
pub const WAIT_FINISHED: &str =
    "(finished: waiting for success: curl --fail --silent http://server:3000/todos";

/// A driver configuration and what the driver's environment needs: a scenario's start
/// scripts, node tars and driver.json written by `ci/run-test --prepare`, or a bench's own.
pub struct Prepared {
    pub config: PathBuf,
    pub pythonpath: Option<String>,
}

/// `--reps N`'s value: at least 1; 3 when it is missing or not a number.
pub fn reps_arg(value: Option<String>) -> usize {
    value.and_then(|v| v.parse().ok()).unwrap_or(3).max(1)
}

/// A comma-separated list argument (`--rows a,b`, `--scenarios a,b`, `--only a,b`).
pub fn list_arg(value: Option<String>) -> Vec<String> {
    value
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The same configuration with another test script, written to `out`.
pub fn with_script(prep: &Prepared, script: &Path, out: &Path) -> Prepared {
    let text = std::fs::read(&prep.config).unwrap();
    let Value::Object(fields) = Value::parse(&text).unwrap() else {
        panic!("{} is not a JSON object", prep.config.display());
    };
    let fields = fields
        .into_iter()
        .map(|(k, v)| {
            let v = if k == "test_script" {
                Value::from(script.to_str().unwrap())
            } else {
                v
            };
            (k, v)
        })
        .collect();
    std::fs::write(out, Value::Object(fields).to_json()).unwrap();
    Prepared {
        config: out.to_owned(),
        pythonpath: prep.pythonpath.clone(),
    }
}

pub fn prepare(scenario: &str, out: &Path) -> Prepared {
    let dir = common::repo().join("tests/scenarios").join(scenario);
    let res = Command::new(common::repo().join("ci/run-test"))
        .arg(&dir)
        .arg("--prepare")
        .arg(out)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run ci/run-test --prepare");
    assert!(
        res.status.success(),
        "ci/run-test {scenario} --prepare failed"
    );
    let text = String::from_utf8_lossy(&res.stdout);
    let line = text.lines().last().unwrap_or_default();
    let v = Value::parse(line.as_bytes())
        .unwrap_or_else(|e| panic!("ci/run-test --prepare printed no JSON ({e}): {text}"));
    Prepared {
        config: PathBuf::from(v.get("config").and_then(Value::as_str).unwrap()),
        pythonpath: v
            .get("pythonpath")
            .and_then(Value::as_str)
            .map(str::to_owned),
    }
}

/// The command of one run: ntd (`peer` None) or the peer command line (word-split by sh,
/// given `--config FILE` as `ci/bench --peer` does), with `runtime` as its runtime directory.
pub fn driver_command(peer: Option<&str>, prep: &Prepared, cwd: &Path, runtime: &Path) -> Command {
    let mut cmd = match peer {
        None => {
            let mut c = Command::new(NTD);
            c.arg("-c").arg(&prep.config).env("NTD_COLOR", "never");
            c
        }
        Some(peer) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("exec {peer} --config \"$0\""))
                .arg(&prep.config);
            c
        }
    };
    cmd.current_dir(cwd)
        .env("XDG_RUNTIME_DIR", runtime)
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY");
    if let Some(pp) = &prep.pythonpath {
        cmd.env("PYTHONPATH", pp);
    }
    cmd
}

/// The number after " at " in the first line containing `needle` (a todo-api probe line).
fn probe_time(run: &TimedRun, needle: &str) -> Option<f64> {
    let line = run.first(needle)?;
    line.text.rsplit(" at ").next()?.trim().parse().ok()
}

/// One run's figures.
pub struct Sample {
    pub wall_s: f64,
    /// todo-api only: detection on the server's clock, and on the host's clock.
    pub detect_guest_s: Option<f64>,
    pub detect_host_s: Option<f64>,
    /// todo-api only: where the wall time went, on the host's clock from the driver's spawn:
    /// the server's "listening" line (boot), and the wait's finished line.
    pub listen_at_s: Option<f64>,
    pub done_at_s: Option<f64>,
    pub load: f64,
}

pub fn measure(run: &TimedRun) -> Sample {
    let listening = probe_time(run, "todo-api: listening at ");
    let answered = probe_time(run, "todo-api: GET /todos 200 at ");
    let open_line = run.first("todo-api: listening at ");
    let done_line = run.first(WAIT_FINISHED);
    let detect_host = match (open_line, done_line) {
        (Some(open), Some(done)) => Some((done.at.as_secs_f64() - open.at.as_secs_f64()).max(0.0)),
        _ => None,
    };
    Sample {
        wall_s: run.elapsed.as_secs_f64(),
        detect_guest_s: listening.zip(answered).map(|(l, a)| a - l),
        detect_host_s: detect_host,
        listen_at_s: open_line.map(|l| l.at.as_secs_f64()),
        done_at_s: done_line.map(|l| l.at.as_secs_f64()),
        load: load_average(),
    }
}

/// The host's 1-minute load average (the benches' machines are shared: say how loaded).
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

pub fn list(v: &[f64]) -> String {
    let items: Vec<String> = v.iter().map(|x| format!("{x:.1}")).collect();
    items.join(", ")
}

pub fn rounded(x: f64) -> Value {
    Value::Float((x * 1000.0).round() / 1000.0)
}

pub fn floats_json(v: &[f64]) -> Value {
    Value::Array(v.iter().map(|x| rounded(*x)).collect())
}

/// Run one scenario `reps` times per driver, alternating which driver goes first.
pub fn run_scenario(
    scenario: &str,
    drivers: &[(&str, Option<&str>)],
    reps: usize,
) -> Vec<Vec<Sample>> {
    let dir = TestDir::new("whole");
    let prep = prepare(scenario, &dir.path.join("s"));
    let mut samples: Vec<Vec<Sample>> = drivers.iter().map(|_| Vec::new()).collect();
    let mut k = 0;
    for rep in 0..reps {
        let mut order: Vec<usize> = (0..drivers.len()).collect();
        if rep % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (label, peer) = drivers[i];
            k += 1;
            let runtime = dir.path.join(format!("r{k}"));
            std::fs::create_dir_all(&runtime).unwrap();
            let run = common::run_timed(driver_command(peer, &prep, &dir.path, &runtime), LIMIT);
            if run.code != Some(0) {
                panic!(
                    "{scenario} failed under {label} (exit status {:?})\n{}",
                    run.code,
                    run.log()
                );
            }
            let sample = measure(&run);
            eprintln!(
                "whole: {scenario} {label} run {}: {:.2} s (load {:.1})",
                rep + 1,
                sample.wall_s,
                sample.load
            );
            samples[i].push(sample);
            let _ = std::fs::remove_dir_all(&runtime);
            dir.assert_clean();
        }
    }
    samples
}

/// The table lines and JSON fields of one scenario's runs (`drivers[i]` ran `samples[i]`):
/// wall times per driver and, for `todo-api`, the detection delays; the wall medians.
pub fn report_scenario(
    scenario: &str,
    drivers: &[(&str, Option<&str>)],
    samples: &[Vec<Sample>],
    table: &mut String,
) -> (Vec<(String, Value)>, Vec<f64>) {
    let mut fields: Vec<(String, Value)> = Vec::new();
    let mut medians = Vec::new();
    for ((label, _), runs) in drivers.iter().zip(samples) {
        let walls: Vec<f64> = runs.iter().map(|s| s.wall_s).collect();
        let m = median(walls.clone()).unwrap();
        medians.push(m);
        let _ = writeln!(
            table,
            "{scenario:13} {label:4} wall median {m:6.1} s  (runs {})",
            list(&walls)
        );
        fields.push((format!("{label}_wall_s"), floats_json(&walls)));
        if scenario == "todo-api" {
            let guest: Vec<f64> = runs.iter().filter_map(|s| s.detect_guest_s).collect();
            let host: Vec<f64> = runs.iter().filter_map(|s| s.detect_host_s).collect();
            assert!(
                guest.len() == runs.len() && host.len() == runs.len(),
                "todo-api under {label}: the probe lines or the wait's finished line are \
                 missing from the driver's log"
            );
            let _ = writeln!(
                table,
                "{:13} {label:4} wait detection after the port opened: server clock median {:.2} s (runs {}), host clock median {:.2} s (runs {})",
                "",
                median(guest.clone()).unwrap(),
                list(&guest),
                median(host.clone()).unwrap(),
                list(&host)
            );
            let listen: Vec<f64> = runs.iter().filter_map(|s| s.listen_at_s).collect();
            let after: Vec<f64> = runs
                .iter()
                .filter_map(|s| Some(s.wall_s - s.done_at_s?))
                .collect();
            let _ = writeln!(
                table,
                "{:13} {label:4} spawn to the server listening: median {:.2} s (runs {}); wait's end to the driver's exit: median {:.2} s (runs {})",
                "",
                median(listen.clone()).unwrap_or(f64::NAN),
                list(&listen),
                median(after.clone()).unwrap_or(f64::NAN),
                list(&after)
            );
            fields.push((format!("{label}_listen_at_s"), floats_json(&listen)));
            fields.push((format!("{label}_exit_after_wait_s"), floats_json(&after)));
            fields.push((format!("{label}_detect_guest_s"), floats_json(&guest)));
            fields.push((format!("{label}_detect_host_s"), floats_json(&host)));
        }
    }
    if medians.len() == 2 {
        let _ = writeln!(
            table,
            "{scenario:13} ratio peer/ntd (wall medians): {:.2}",
            medians[1] / medians[0]
        );
    }
    (fields, medians)
}

/// Issue 18's "Done means" for this row: ntd ≤ the peer's median on both detection and wall.
pub fn issue_18_verdict(json: &[(String, Value)], table: &mut String) {
    let Some((_, todo)) = json.iter().find(|(k, _)| k == "todo-api") else {
        return;
    };
    let med = |key: &str| -> Option<f64> {
        let arr = todo.get(key)?.as_array()?;
        median(arr.iter().filter_map(Value::as_f64).collect())
    };
    let (Some(nd), Some(pd), Some(nw), Some(pw)) = (
        med("ntd_detect_host_s"),
        med("peer_detect_host_s"),
        med("ntd_wall_s"),
        med("peer_wall_s"),
    ) else {
        return;
    };
    let ok = nd <= pd && nw <= pw;
    let _ = writeln!(
        table,
        "issue 18 waits row (todo-api): detection {nd:.2} vs {pd:.2} s, wall {nw:.1} vs {pw:.1} s (ntd vs peer medians): ntd <= peer on both: {}",
        if ok { "yes" } else { "NO" }
    );
}
