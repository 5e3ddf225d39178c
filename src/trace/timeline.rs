//! The timeline page's layout, computed from the recorded events (pure): per machine a boot
//! row of labelled segments (QEMU start → kernel and init → shell setup, or QEMU start →
//! loading the checkpoint → resuming), a save of the checkpoint, then lanes of commands and
//! waits, then lanes of the log's blocks; the driver's and each vlan's spans; and a summary
//! per machine (boot or restore time, first command, time in commands and waits). The page
//! (`page.html`, `timeline.js`) only draws what this computes.

use super::{Data, Kind};
use crate::json::{obj, Value};
use crate::machine::boot::Milestone;

/// Milestones as the trace names them (instant events on a machine's track).
const SPAWNED: &str = Milestone::Spawned.name();
const QMP_READY: &str = Milestone::QmpReady.name();
const FIRST_SERIAL_LINE: &str = Milestone::FirstSerialLine.name();
const SENTINEL: &str = Milestone::Sentinel.name();
const SETUP_SENT: &str = Milestone::SetupSent.name();
const SHELL_READY: &str = Milestone::ShellReady.name();
const RESTORED: &str = Milestone::Restored.name();
const EXITED: &str = Milestone::Exited.name();

/// The span a checkpoint save leaves on a machine's track.
pub const SAVE_SPAN: &str = "saving checkpoint";

/// One box of a row.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub start_us: u64,
    pub end_us: u64,
    pub label: String,
    /// CSS class: `qemu`, `kernel`, `shell`, `load`, `resume`, `save`, `ok`, `fail`,
    /// `wait`, `waitfail`, `log`, `logfail`, `fault`.
    pub class: &'static str,
    pub title: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// `boot`, `commands` or `log`.
    pub kind: &'static str,
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrackLayout {
    pub name: String,
    pub rows: Vec<Row>,
    /// Moments: (time, name).
    pub marks: Vec<(u64, String)>,
}

/// One machine's line of the summary table.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub machine: String,
    /// Spawn to shell ready of the first boot, and whether it was a restore.
    pub boot_us: Option<u64>,
    pub restored: bool,
    /// When its first command or wait began (since the run started).
    pub first_command_us: Option<u64>,
    pub commands: usize,
    pub command_us: u64,
    pub waits: usize,
    pub wait_us: u64,
    /// Ready to exit (or the run's end), minus commands and waits.
    pub idle_us: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub end_us: u64,
    pub tracks: Vec<TrackLayout>,
    pub summary: Vec<Summary>,
}

fn secs(us: u64) -> String {
    format!("{:.2} s", us as f64 / 1e6)
}

/// Boot segments of one machine from its milestones (in time order).
fn boot_items(milestones: &[(u64, &str)], end_us: u64) -> Vec<Item> {
    let mut items = Vec::new();
    let mut boot: Vec<(u64, &str)> = Vec::new();
    let mut flush = |boot: &mut Vec<(u64, &str)>, stop: u64| {
        if boot.is_empty() {
            return;
        }
        let restored = boot.iter().any(|(_, m)| *m == RESTORED);
        let order: &[(&str, &str, &str)] = if restored {
            &[
                (SPAWNED, "QEMU start", "qemu"),
                (QMP_READY, "loading checkpoint", "load"),
                (RESTORED, "resuming (clock, entropy, shares)", "resume"),
                (SHELL_READY, "", ""),
            ]
        } else {
            &[
                (SPAWNED, "QEMU start", "qemu"),
                (FIRST_SERIAL_LINE, "kernel and init", "kernel"),
                (SENTINEL, "", ""),
                (SETUP_SENT, "shell setup", "shell"),
                (SHELL_READY, "", ""),
            ]
        };
        let at = |name: &str| boot.iter().find(|(_, m)| *m == name).map(|(t, _)| *t);
        let points: Vec<(u64, &str, &str)> = order
            .iter()
            .filter_map(|(m, label, class)| at(m).map(|t| (t, *label, *class)))
            .collect();
        for (i, (t, label, class)) in points.iter().enumerate() {
            if label.is_empty() {
                continue;
            }
            let next = points.get(i + 1).map_or(stop, |p| p.0).max(*t);
            let full = if restored && *class == "qemu" {
                format!("{label} (restoring)")
            } else {
                label.to_string()
            };
            items.push(Item {
                start_us: *t,
                end_us: next,
                title: format!("{full}: {}", secs(next - t)),
                label: full,
                class,
            });
        }
        boot.clear();
    };
    for &(t, m) in milestones {
        match m {
            SPAWNED => {
                flush(&mut boot, t);
                boot.push((t, m));
            }
            EXITED => flush(&mut boot, t),
            _ => boot.push((t, m)),
        }
    }
    flush(&mut boot, end_us);
    items
}

/// Put items into the fewest lanes without overlap (sorted by start).
fn lanes(mut items: Vec<Item>, kind: &'static str) -> Vec<Row> {
    items.sort_by_key(|i| i.start_us);
    let mut rows: Vec<Row> = Vec::new();
    for it in items {
        let free = rows
            .iter_mut()
            .find(|r| r.items.last().map_or(true, |l| l.end_us <= it.start_us));
        match free {
            Some(r) => r.items.push(it),
            None => rows.push(Row {
                kind,
                items: vec![it],
            }),
        }
    }
    rows
}

fn arg<'a>(args: &'a [(String, Value)], key: &str) -> Option<&'a Value> {
    args.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

const MILESTONES: &[&str] = &[
    SPAWNED,
    QMP_READY,
    FIRST_SERIAL_LINE,
    SENTINEL,
    SETUP_SENT,
    SHELL_READY,
    RESTORED,
    EXITED,
];

pub(super) fn layout(d: &Data) -> Layout {
    let end_us = d
        .events
        .iter()
        .map(|e| match e.kind {
            Kind::Span { dur_us } => e.ts_us + dur_us,
            Kind::Instant => e.ts_us,
        })
        .max()
        .unwrap_or(1)
        .max(1);
    let mut tracks = Vec::new();
    let mut summary = Vec::new();
    for (ti, name) in d.tracks.iter().enumerate() {
        let events: Vec<&super::Event> = d.events.iter().filter(|e| e.track == ti).collect();
        let mut milestones: Vec<(u64, &str)> = Vec::new();
        let mut marks = Vec::new();
        let (mut boot_extra, mut commands, mut logs) = (Vec::new(), Vec::new(), Vec::new());
        for e in &events {
            let dur = match e.kind {
                Kind::Span { dur_us } => dur_us,
                Kind::Instant => {
                    match MILESTONES.iter().find(|m| **m == e.name) {
                        Some(m) => milestones.push((e.ts_us, m)),
                        None => marks.push((e.ts_us, e.name.clone())),
                    }
                    continue;
                }
            };
            let end = e.ts_us + dur;
            let status = arg(&e.args, "status").and_then(Value::as_i64);
            let failed = arg(&e.args, "failed").and_then(Value::as_bool) == Some(true);
            let mut title = format!("{} at {} for {}", e.name, secs(e.ts_us), secs(dur));
            for (k, v) in &e.args {
                title.push_str(&format!(", {k}={}", v.to_json()));
            }
            let item = |label: String, class| Item {
                start_us: e.ts_us,
                end_us: end,
                label,
                class,
                title: title.clone(),
            };
            match e.name.as_str() {
                SAVE_SPAN => boot_extra.push(item(e.name.clone(), "save")),
                "command" | "wait" => {
                    let cmd = arg(&e.args, "command")
                        .and_then(Value::as_str)
                        .unwrap_or(&e.name)
                        .to_owned();
                    let class = match (e.name == "wait", status.unwrap_or(0) == 0) {
                        (false, true) => "ok",
                        (false, false) => "fail",
                        (true, true) => "wait",
                        (true, false) => "waitfail",
                    };
                    commands.push(item(cmd, class));
                }
                _ if name.starts_with("vlan") => logs.push(item(e.name.clone(), "fault")),
                _ => logs.push(item(e.name.clone(), if failed { "logfail" } else { "log" })),
            }
        }
        milestones.sort_by_key(|(t, _)| *t);
        let mut boot = boot_items(&milestones, end_us);
        let machine = !boot.is_empty();
        if machine {
            summary.push(summarize(name, &milestones, &commands, end_us));
        }
        boot.extend(boot_extra);
        let mut rows = Vec::new();
        if !boot.is_empty() {
            rows.extend(lanes(boot, "boot"));
        }
        rows.extend(lanes(commands, "commands"));
        rows.extend(lanes(logs, "log"));
        for (t, m) in &milestones {
            marks.push((*t, m.to_string()));
        }
        if rows.is_empty() && marks.is_empty() {
            continue;
        }
        tracks.push(TrackLayout {
            name: name.clone(),
            rows,
            marks,
        });
    }
    Layout {
        end_us,
        tracks,
        summary,
    }
}

fn summarize(name: &str, milestones: &[(u64, &str)], commands: &[Item], end_us: u64) -> Summary {
    let first = |m: &str| milestones.iter().find(|(_, n)| *n == m).map(|(t, _)| *t);
    let spawned = first(SPAWNED);
    // A fresh boot is up at the sentinel (ntd's setup goes with the first command); a
    // restored one when its shell answers again.
    let ready = if first(RESTORED).is_some() {
        first(SHELL_READY)
    } else {
        first(SENTINEL)
    };
    let exited = milestones
        .iter()
        .rev()
        .find(|(_, n)| *n == EXITED)
        .map_or(end_us, |(t, _)| *t);
    let sum = |class: &[&str]| {
        let v: Vec<&Item> = commands
            .iter()
            .filter(|i| class.contains(&i.class))
            .collect();
        (
            v.len(),
            v.iter().map(|i| i.end_us - i.start_us).sum::<u64>(),
        )
    };
    let (n_cmd, cmd_us) = sum(&["ok", "fail"]);
    let (n_wait, wait_us) = sum(&["wait", "waitfail"]);
    let alive = ready.map_or(0, |r| exited.saturating_sub(r));
    Summary {
        machine: name.to_owned(),
        boot_us: spawned.zip(ready).map(|(s, r)| r.saturating_sub(s)),
        restored: first(RESTORED).is_some(),
        first_command_us: commands.iter().map(|i| i.start_us).min(),
        commands: n_cmd,
        command_us: cmd_us,
        waits: n_wait,
        wait_us,
        idle_us: alive.saturating_sub(cmd_us + wait_us),
    }
}

impl Layout {
    /// The data the page's script draws.
    pub fn to_value(&self) -> Value {
        let tracks = self
            .tracks
            .iter()
            .map(|t| {
                let rows = t
                    .rows
                    .iter()
                    .map(|r| {
                        let items = r
                            .items
                            .iter()
                            .map(|i| {
                                Value::Array(vec![
                                    Value::Int(i.start_us as i64),
                                    Value::Int(i.end_us as i64),
                                    Value::from(i.label.as_str()),
                                    Value::from(i.class),
                                    Value::from(i.title.as_str()),
                                ])
                            })
                            .collect();
                        obj([
                            ("kind", Value::from(r.kind)),
                            ("items", Value::Array(items)),
                        ])
                    })
                    .collect();
                let marks = t
                    .marks
                    .iter()
                    .map(|(ts, n)| {
                        Value::Array(vec![Value::Int(*ts as i64), Value::from(n.as_str())])
                    })
                    .collect();
                obj([
                    ("name", Value::from(t.name.as_str())),
                    ("rows", Value::Array(rows)),
                    ("marks", Value::Array(marks)),
                ])
            })
            .collect();
        obj([
            ("end", Value::Int(self.end_us as i64)),
            ("tracks", Value::Array(tracks)),
        ])
    }

    /// The summary as an HTML table.
    pub fn summary_html(&self, out: &mut String) {
        if self.summary.is_empty() {
            return;
        }
        out.push_str(
            "<table class=\"summary\"><tr><th>machine</th><th>boot</th><th>first command at</th>\
             <th>commands (busy)</th><th>waits</th><th>idle after boot</th></tr>\n",
        );
        for s in &self.summary {
            let boot = match (s.boot_us, s.restored) {
                (Some(us), true) => format!("{} (restored from checkpoint)", secs(us)),
                (Some(us), false) => secs(us),
                (None, _) => "did not finish".into(),
            };
            let first = s.first_command_us.map_or("—".into(), secs);
            out.push_str("<tr><td>");
            crate::log::xml::escape_into(&s.machine, out);
            out.push_str(&format!(
                "</td><td>{boot}</td><td>{first}</td><td>{} in {}</td><td>{} in {}</td><td>{}</td></tr>\n",
                secs(s.command_us),
                plural(s.commands, "command"),
                secs(s.wait_us),
                plural(s.waits, "wait"),
                secs(s.idle_us)
            ));
        }
        out.push_str("</table>\n");
    }
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

#[cfg(test)]
#[path = "timeline_tests.rs"]
mod tests;
