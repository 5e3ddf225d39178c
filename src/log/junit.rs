//! JUnit XML (`--junit-xml`): one test case per subtest (`with subtest(...)`), plus `main` for
//! what happens outside subtests; a test case fails when an error is logged inside it.
//!
//! Each test case collects its log lines as `system-out` and its error lines as `system-err`;
//! its time excludes nested subtests. The file is written once at the end of the run
//! ([`Sink::finish`], on every exit path), so it is complete and well-formed whenever it exists.

use super::xml::escape_into;
use super::{LineKind, LogEvent, Sink};
use std::path::PathBuf;
use std::time::Instant;

const SUBTEST_PREFIX: &str = "subtest: ";

#[derive(Default)]
struct Case {
    name: String,
    out: String,
    err: String,
    failed: bool,
    secs: f64,
}

pub struct Junit {
    path: PathBuf,
    cases: Vec<Case>,
    /// Indices into `cases` of the open subtests, innermost last, with their start times and
    /// the time spent in nested subtests.
    stack: Vec<(usize, Instant, f64)>,
    started: Instant,
    /// Nesting depth of non-subtest blocks (ends must pair with their begins).
    nest_kinds: Vec<bool>,
    written: bool,
}

impl Junit {
    pub fn new(path: PathBuf) -> Junit {
        Junit {
            path,
            cases: vec![Case {
                name: "main".into(),
                ..Case::default()
            }],
            stack: Vec::new(),
            started: Instant::now(),
            nest_kinds: Vec::new(),
            written: false,
        }
    }

    fn current(&mut self) -> &mut Case {
        let i = self.stack.last().map(|(i, _, _)| *i).unwrap_or(0);
        &mut self.cases[i]
    }

    fn case_for(&mut self, name: &str) -> usize {
        // Repeated names merge into one test case, as upstream's logger does.
        match self.cases.iter().position(|c| c.name == name) {
            Some(i) => i,
            None => {
                self.cases.push(Case {
                    name: name.to_owned(),
                    ..Case::default()
                });
                self.cases.len() - 1
            }
        }
    }

    fn render(&self) -> String {
        let failures = self.cases.iter().filter(|c| c.failed).count();
        let total: f64 = self.cases.iter().map(|c| c.secs).sum();
        let mut s = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n");
        s.push_str(&format!(
            "<testsuites tests=\"{n}\" failures=\"{failures}\" errors=\"0\" skipped=\"0\" time=\"{total:.3}\">\n\
             \t<testsuite name=\"NixOS integration test\" tests=\"{n}\" errors=\"0\" failures=\"{failures}\" skipped=\"0\" time=\"{total:.3}\">\n",
            n = self.cases.len()
        ));
        for c in &self.cases {
            s.push_str("\t\t<testcase name=\"");
            escape_into(&c.name, &mut s);
            s.push_str(&format!("\" time=\"{:.3}\"", c.secs));
            if !c.failed && c.out.is_empty() && c.err.is_empty() {
                s.push_str("/>\n");
                continue;
            }
            s.push_str(">\n");
            if c.failed {
                s.push_str("\t\t\t<failure message=\"test case failed\"/>\n");
            }
            for (tag, text) in [("system-out", &c.out), ("system-err", &c.err)] {
                if !text.is_empty() {
                    s.push_str(&format!("\t\t\t<{tag}>"));
                    escape_into(text, &mut s);
                    s.push_str(&format!("</{tag}>\n"));
                }
            }
            s.push_str("\t\t</testcase>\n");
        }
        s.push_str("\t</testsuite>\n</testsuites>\n");
        s
    }
}

impl Sink for Junit {
    fn event(&mut self, ev: &LogEvent<'_>) {
        match *ev {
            LogEvent::Line { kind, machine, msg } => {
                let line = match machine {
                    Some(m) => format!("{m}: {msg}\n"),
                    None => format!("{msg}\n"),
                };
                let case = self.current();
                match kind {
                    LineKind::Error | LineKind::TestError => {
                        case.err.push_str(&line);
                        case.failed = true;
                    }
                    _ => case.out.push_str(&line),
                }
            }
            LogEvent::Serial { machine, line } => {
                let text = format!("{machine} # {line}\n");
                self.current().out.push_str(&text);
            }
            LogEvent::NestBegin { machine, msg } => {
                if let Some(name) = msg.strip_prefix(SUBTEST_PREFIX) {
                    let i = self.case_for(name);
                    self.stack.push((i, Instant::now(), 0.0));
                    self.nest_kinds.push(true);
                } else {
                    let line = match machine {
                        Some(m) => format!("{m}: {msg}\n"),
                        None => format!("{msg}\n"),
                    };
                    self.current().out.push_str(&line);
                    self.nest_kinds.push(false);
                }
            }
            LogEvent::NestEnd { ok, .. } => {
                if self.nest_kinds.pop() == Some(true) {
                    if let Some((i, start, nested)) = self.stack.pop() {
                        let secs = start.elapsed().as_secs_f64();
                        let case = &mut self.cases[i];
                        case.secs += (secs - nested).max(0.0);
                        if !ok {
                            case.failed = true;
                        }
                        if let Some(parent) = self.stack.last_mut() {
                            parent.2 += secs;
                        }
                    }
                }
            }
        }
    }

    fn finish(&mut self) {
        if self.written {
            return;
        }
        while let Some((i, start, nested)) = self.stack.pop() {
            self.cases[i].secs += (start.elapsed().as_secs_f64() - nested).max(0.0);
            self.cases[i].failed = true;
        }
        let in_subtests: f64 = self.cases[1..].iter().map(|c| c.secs).sum();
        self.cases[0].secs = (self.started.elapsed().as_secs_f64() - in_subtests).max(0.0);
        if let Some(parent) = self.path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        if let Err(e) = std::fs::write(&self.path, self.render()) {
            eprintln!(
                "ntd: cannot write JUnit XML to {}: {e}",
                self.path.display()
            );
        }
        self.written = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{Level, Logger};

    #[test]
    fn subtests_become_test_cases_and_errors_fail_them() {
        let path = std::env::temp_dir().join(format!("ntd-junit-{}.xml", std::process::id()));
        let mut l = Logger::new(Level::Info, vec![Box::new(Junit::new(path.clone()))]);
        l.log("outside");
        l.begin(None, "subtest: my subtest");
        l.machine("m", "Subtest log");
        l.end(true);
        l.begin(None, "subtest: failing subtest");
        l.serial("m", "boot");
        l.test_error("Error occurred");
        l.end(false);
        l.finish();
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(
            text.contains("<testsuites tests=\"3\" failures=\"1\""),
            "{text}"
        );
        assert!(text.contains("<testcase name=\"my subtest\""));
        assert!(text.contains("<system-out>m: Subtest log\n</system-out>"));
        assert!(text.contains("<failure message=\"test case failed\"/>"));
        assert!(text.contains("<system-err>Error occurred\n</system-err>"));
        assert!(text.contains("<system-out>m # boot\n</system-out>"));
        assert!(text.contains("<testcase name=\"main\""));
    }
}
