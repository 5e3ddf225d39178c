//! The run's timeline: a Chrome trace-event file (`--trace FILE`, opens in Perfetto or
//! chrome://tracing) and a self-contained HTML/SVG rendering of the same data next to it.
//!
//! One track per machine (QEMU spawn, QMP ready, first serial line, backdoor sentinel, shell
//! ready, every command and wait with its exit status, the log's nested blocks and subtests,
//! shutdown) and one for the driver itself. Timestamps are monotonic microseconds since the
//! driver started. Recording appends to a vector; with tracing off nothing is recorded at all.
//! This module never does I/O before [`Trace::write`].

pub mod timeline;

use crate::json::{obj, Value};
use crate::log::{LogEvent, Sink};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

/// The timeline page and its script.
const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("timeline.js");

/// Track of the driver itself (machines get their own, in order of first appearance).
pub const DRIVER_TRACK: &str = "driver";

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// A span: start and duration.
    Span { dur_us: u64 },
    /// A moment.
    Instant,
}

#[derive(Debug, Clone, PartialEq)]
struct Event {
    track: usize,
    name: String,
    ts_us: u64,
    kind: Kind,
    args: Vec<(String, Value)>,
}

#[derive(Debug)]
struct Data {
    origin: Instant,
    tracks: Vec<String>,
    events: Vec<Event>,
    /// Open log blocks: (track, name, start).
    open: Vec<(usize, String, u64)>,
}

impl Data {
    /// End a log block opened at `ts_us` now.
    fn close_span(&mut self, track: usize, name: String, ts_us: u64, args: Vec<(String, Value)>) {
        let now = Trace::us(self, Instant::now());
        self.events.push(Event {
            track,
            name,
            ts_us,
            kind: Kind::Span {
                dur_us: now.saturating_sub(ts_us),
            },
            args,
        });
    }
}

/// A shared recorder (the driver and the logger sink each hold one handle).
#[derive(Debug, Clone)]
pub struct Trace {
    data: Rc<RefCell<Data>>,
    path: PathBuf,
}

impl Trace {
    pub fn new(path: PathBuf, origin: Instant) -> Trace {
        Trace {
            data: Rc::new(RefCell::new(Data {
                origin,
                tracks: vec![DRIVER_TRACK.to_owned()],
                events: Vec::new(),
                open: Vec::new(),
            })),
            path,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn us(data: &Data, at: Instant) -> u64 {
        at.saturating_duration_since(data.origin).as_micros() as u64
    }

    fn track(data: &mut Data, name: &str) -> usize {
        match data.tracks.iter().position(|t| t == name) {
            Some(i) => i,
            None => {
                data.tracks.push(name.to_owned());
                data.tracks.len() - 1
            }
        }
    }

    /// A moment on `track` (e.g. "backdoor sentinel" on a machine).
    pub fn instant(&self, track: &str, name: &str, at: Instant) {
        let mut d = self.data.borrow_mut();
        let ts_us = Self::us(&d, at);
        let track = Self::track(&mut d, track);
        d.events.push(Event {
            track,
            name: name.to_owned(),
            ts_us,
            kind: Kind::Instant,
            args: Vec::new(),
        });
    }

    /// A span on `track` from `start` to `end`, with arguments (exit status, bytes, …).
    pub fn span(
        &self,
        track: &str,
        name: &str,
        start: Instant,
        end: Instant,
        args: Vec<(String, Value)>,
    ) {
        let mut d = self.data.borrow_mut();
        let ts_us = Self::us(&d, start);
        let dur_us = Self::us(&d, end).saturating_sub(ts_us);
        let track = Self::track(&mut d, track);
        d.events.push(Event {
            track,
            name: name.to_owned(),
            ts_us,
            kind: Kind::Span { dur_us },
            args,
        });
    }

    /// The log sink that turns nested blocks and subtests into spans.
    pub fn sink(&self) -> TraceSink {
        TraceSink(self.clone())
    }

    /// Chrome trace-event JSON (the "JSON object format" with `traceEvents`).
    pub fn to_json(&self) -> String {
        let d = self.data.borrow();
        let mut events = Vec::with_capacity(d.events.len() + d.tracks.len());
        for (i, name) in d.tracks.iter().enumerate() {
            events.push(obj([
                ("name", Value::from("thread_name")),
                ("ph", Value::from("M")),
                ("pid", Value::Int(1)),
                ("tid", Value::Int(i as i64)),
                ("args", obj([("name", Value::from(name.as_str()))])),
            ]));
        }
        for e in &d.events {
            let mut fields = vec![
                ("name".to_owned(), Value::from(e.name.as_str())),
                ("pid".to_owned(), Value::Int(1)),
                ("tid".to_owned(), Value::Int(e.track as i64)),
                ("ts".to_owned(), Value::Int(e.ts_us as i64)),
            ];
            match e.kind {
                Kind::Span { dur_us } => {
                    fields.push(("ph".to_owned(), Value::from("X")));
                    fields.push(("dur".to_owned(), Value::Int(dur_us as i64)));
                }
                Kind::Instant => {
                    fields.push(("ph".to_owned(), Value::from("i")));
                    fields.push(("s".to_owned(), Value::from("t")));
                }
            }
            if !e.args.is_empty() {
                fields.push(("args".to_owned(), Value::Object(e.args.clone())));
            }
            events.push(Value::Object(fields));
        }
        obj([
            ("traceEvents", Value::Array(events)),
            ("displayTimeUnit", Value::from("ms")),
        ])
        .to_json()
    }

    /// A self-contained HTML page with the same events as a timeline that fits the window
    /// (zoomable; drawn by `timeline.js` from the layout of `timeline::layout`) and a
    /// summary per machine.
    pub fn to_html(&self) -> String {
        let d = self.data.borrow();
        let layout = timeline::layout(&d);
        let mut summary = String::new();
        layout.summary_html(&mut summary);
        let mut trace = String::new();
        xml_text(&self.path.display().to_string(), &mut trace);
        // Inside <script>, "</" or "<!--" in a string could end or confuse the element: JSON
        // has '<' only inside strings, where \u003c means the same.
        let data = layout.to_value().to_json().replace('<', "\\u003c");
        PAGE.replace("<!--SUMMARY-->", &summary)
            .replace("<!--TRACE-->", &trace)
            .replace("<!--SCRIPT-->", SCRIPT)
            .replace("<!--DATA-->", &data)
    }

    /// Write the trace JSON and the HTML timeline (`<file>.html`).
    pub fn write(&self) -> std::io::Result<PathBuf> {
        {
            // Blocks still open (the run was cut short) end now.
            let mut d = self.data.borrow_mut();
            while let Some((track, name, ts)) = d.open.pop() {
                d.close_span(
                    track,
                    name,
                    ts,
                    vec![("unfinished".to_owned(), Value::Bool(true))],
                );
            }
        }
        std::fs::write(&self.path, self.to_json())?;
        let mut html = self.path.clone().into_os_string();
        html.push(".html");
        let html = PathBuf::from(html);
        std::fs::write(&html, self.to_html())?;
        Ok(html)
    }
}

fn xml_text(s: &str, out: &mut String) {
    crate::log::xml::escape_into(s, out);
}

/// Turns the log's nested blocks (and so subtests, `must succeed:` and `waiting for …`)
/// into spans on the machine's track (or the driver's).
pub struct TraceSink(Trace);

impl Sink for TraceSink {
    fn event(&mut self, ev: &LogEvent<'_>) {
        match *ev {
            LogEvent::NestBegin { machine, msg } => {
                let mut d = self.0.data.borrow_mut();
                let now = Trace::us(&d, Instant::now());
                let track = Trace::track(&mut d, machine.unwrap_or(DRIVER_TRACK));
                d.open.push((track, msg.to_owned(), now));
            }
            LogEvent::NestEnd { ok, .. } => {
                let mut d = self.0.data.borrow_mut();
                if let Some((track, name, ts)) = d.open.pop() {
                    let args = if ok {
                        Vec::new()
                    } else {
                        vec![("failed".to_owned(), Value::Bool(true))]
                    };
                    d.close_span(track, name, ts, args);
                }
            }
            LogEvent::Line {
                kind: crate::log::LineKind::TestError,
                msg,
                ..
            } => {
                let mut d = self.0.data.borrow_mut();
                let now = Trace::us(&d, Instant::now());
                d.events.push(Event {
                    track: 0,
                    name: format!("!!! {msg}"),
                    ts_us: now,
                    kind: Kind::Instant,
                    args: Vec::new(),
                });
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{Level, Logger};
    use std::time::Duration;

    #[test]
    fn trace_json_has_tracks_spans_and_instants() {
        let origin = Instant::now();
        let t = Trace::new(PathBuf::from("/dev/null"), origin);
        t.instant(
            "server",
            "backdoor sentinel",
            origin + Duration::from_millis(5),
        );
        t.span(
            "server",
            "exec",
            origin + Duration::from_millis(6),
            origin + Duration::from_millis(9),
            vec![("status".into(), Value::Int(1))],
        );
        let mut log = Logger::new(Level::Info, vec![Box::new(t.sink())]);
        log.begin(Some("client"), "subtest: login");
        log.end(true);
        let v = Value::parse(t.to_json().as_bytes()).unwrap();
        let events = v.get("traceEvents").unwrap().as_array().unwrap();
        let names: Vec<&str> = events
            .iter()
            .filter(|e| e.get("ph").and_then(Value::as_str) == Some("M"))
            .map(|e| {
                e.get("args")
                    .unwrap()
                    .get("name")
                    .unwrap()
                    .as_str()
                    .unwrap()
            })
            .collect();
        assert_eq!(names, vec!["driver", "server", "client"]);
        let exec = events
            .iter()
            .find(|e| e.get("name").and_then(Value::as_str) == Some("exec"))
            .unwrap();
        assert_eq!(exec.get("dur").unwrap().as_i64(), Some(3000));
        assert_eq!(exec.get("ts").unwrap().as_i64(), Some(6000));
        assert!(events
            .iter()
            .any(|e| e.get("name").and_then(Value::as_str) == Some("subtest: login")));
        let html = t.to_html();
        assert!(html.contains("id=\"timeline\"") && html.contains("backdoor sentinel"));
        assert!(
            html.contains("\"exec\",\"log\""),
            "the span is laid out: {html}"
        );
    }
}
