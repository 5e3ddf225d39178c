//! Logging in the upstream driver's formats: nesting with timings, machine prefixes, serial
//! lines, test errors.
//!
//! The [`Logger`] owns the nesting stack, the level filter and the serial on/off switch and fans
//! every [`LogEvent`] out to its sinks (the terminal always; further sinks such as XML, JUnit
//! and the trace plug in through [`Sink`]). It never decides *what* happens in a test, only how
//! it is written down.

pub mod junit;
pub mod terminal;
pub mod xml;

use std::time::Instant;

/// Upstream log levels (N): DEBUG=1, INFO=2, WARNING=3, ERROR=4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug = 1,
    Info = 2,
    Warning = 3,
    Error = 4,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        match s.to_ascii_lowercase().as_str() {
            "debug" => Some(Level::Debug),
            "info" => Some(Level::Info),
            "warning" | "warn" => Some(Level::Warning),
            "error" => Some(Level::Error),
            _ => None,
        }
    }
}

/// What kind of plain line a [`LogEvent::Line`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// `log()`: never filtered.
    Log,
    Debug,
    Info,
    Warning,
    Error,
    /// `log_test_error`: the red `!!! ` lines of a failure report.
    TestError,
}

/// One thing to write down.
#[derive(Debug)]
pub enum LogEvent<'a> {
    Line {
        kind: LineKind,
        machine: Option<&'a str>,
        msg: &'a str,
    },
    NestBegin {
        machine: Option<&'a str>,
        msg: &'a str,
    },
    NestEnd {
        machine: Option<&'a str>,
        msg: &'a str,
        secs: f64,
        ok: bool,
    },
    Serial {
        machine: &'a str,
        line: &'a str,
    },
}

/// A destination for log events.
pub trait Sink {
    fn event(&mut self, ev: &LogEvent<'_>);
    /// Called once at the end of the run (close XML documents etc.).
    fn finish(&mut self) {}
}

struct Nest {
    machine: Option<String>,
    msg: String,
    start: Instant,
}

pub struct Logger {
    level: Level,
    serial_on: bool,
    nest: Vec<Nest>,
    sinks: Vec<Box<dyn Sink>>,
}

impl Logger {
    pub fn new(level: Level, sinks: Vec<Box<dyn Sink>>) -> Logger {
        Logger {
            level,
            serial_on: true,
            nest: Vec::new(),
            sinks,
        }
    }

    pub fn add_sink(&mut self, sink: Box<dyn Sink>) {
        self.sinks.push(sink);
    }

    pub fn level(&self) -> Level {
        self.level
    }

    pub fn set_level(&mut self, level: Level) {
        self.level = level;
    }

    pub fn set_serial(&mut self, on: bool) {
        self.serial_on = on;
    }

    fn emit(&mut self, ev: LogEvent<'_>) {
        for s in &mut self.sinks {
            s.event(&ev);
        }
    }

    pub fn line(&mut self, kind: LineKind, machine: Option<&str>, msg: &str) {
        let filtered = match kind {
            LineKind::Debug => self.level > Level::Debug,
            LineKind::Info => self.level > Level::Info,
            LineKind::Warning => self.level > Level::Warning,
            _ => false,
        };
        if !filtered {
            self.emit(LogEvent::Line { kind, machine, msg });
        }
    }

    pub fn log(&mut self, msg: &str) {
        self.line(LineKind::Log, None, msg);
    }

    pub fn machine(&mut self, machine: &str, msg: &str) {
        self.line(LineKind::Log, Some(machine), msg);
    }

    pub fn info(&mut self, msg: &str) {
        self.line(LineKind::Info, None, msg);
    }

    pub fn warning(&mut self, machine: Option<&str>, msg: &str) {
        self.line(LineKind::Warning, machine, msg);
    }

    pub fn debug(&mut self, machine: Option<&str>, msg: &str) {
        self.line(LineKind::Debug, machine, msg);
    }

    pub fn error(&mut self, msg: &str) {
        self.line(LineKind::Error, None, msg);
    }

    pub fn test_error(&mut self, msg: &str) {
        self.line(LineKind::TestError, None, msg);
    }

    pub fn serial(&mut self, machine: &str, line: &str) {
        if self.serial_on {
            self.emit(LogEvent::Serial { machine, line });
        }
    }

    /// Open a nested block (`with log.nested(msg):`).
    pub fn begin(&mut self, machine: Option<&str>, msg: &str) {
        self.emit(LogEvent::NestBegin { machine, msg });
        self.nest.push(Nest {
            machine: machine.map(str::to_owned),
            msg: msg.to_owned(),
            start: Instant::now(),
        });
    }

    /// Close the innermost block; `ok = false` when it ended by an exception (upstream then
    /// prints no finish line, other sinks record the failure).
    pub fn end(&mut self, ok: bool) {
        if let Some(n) = self.nest.pop() {
            let secs = n.start.elapsed().as_secs_f64();
            self.emit(LogEvent::NestEnd {
                machine: n.machine.as_deref(),
                msg: &n.msg,
                secs,
                ok,
            });
        }
    }

    /// Nesting depth (the shim's blocks and the driver's own).
    pub fn depth(&self) -> usize {
        self.nest.len()
    }

    /// Close blocks until `depth` remain (after an error unwound the shim's `with` blocks).
    pub fn unwind_to(&mut self, depth: usize) {
        while self.nest.len() > depth {
            self.end(false);
        }
    }

    pub fn finish(&mut self) {
        self.unwind_to(0);
        for s in &mut self.sinks {
            s.finish();
        }
    }
}

/// Python's `repr()` of a bytes object, as upstream logs `Guest shell says: b'…'`.
pub fn py_bytes_repr(b: &[u8]) -> String {
    let quote = if b.contains(&b'\'') && !b.contains(&b'"') {
        b'"'
    } else {
        b'\''
    };
    let mut s = String::with_capacity(b.len() + 3);
    s.push('b');
    s.push(quote as char);
    for &c in b {
        match c {
            b'\\' => s.push_str("\\\\"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push_str("\\t"),
            c if c == quote => {
                s.push('\\');
                s.push(c as char);
            }
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s.push(quote as char);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    struct Capture(Rc<RefCell<Vec<String>>>);
    impl Sink for Capture {
        fn event(&mut self, ev: &LogEvent<'_>) {
            self.0.borrow_mut().push(format!("{ev:?}"));
        }
    }

    #[test]
    fn py_bytes_repr_matches_python() {
        assert_eq!(
            py_bytes_repr(b"Spawning backdoor root shell...\n"),
            "b'Spawning backdoor root shell...\\n'"
        );
        assert_eq!(py_bytes_repr(b"it's"), "b\"it's\"");
        assert_eq!(py_bytes_repr(b"'\"\x00\xff"), "b'\\'\"\\x00\\xff'");
    }

    #[test]
    fn level_filter_drops_info_but_not_log() {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let mut l = Logger::new(Level::Warning, vec![Box::new(Capture(seen.clone()))]);
        l.info("hidden");
        l.log("shown");
        l.warning(None, "warned");
        assert_eq!(seen.borrow().len(), 2);
    }

    #[test]
    fn unwind_closes_open_blocks_as_failed() {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let mut l = Logger::new(Level::Info, vec![Box::new(Capture(seen.clone()))]);
        l.begin(None, "a");
        l.begin(Some("m"), "b");
        l.unwind_to(0);
        assert_eq!(l.depth(), 0);
        assert!(seen.borrow()[3].contains("ok: false"));
    }
}
