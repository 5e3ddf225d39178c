//! JUnit XML (`--junit-xml`) as upstream writes it since nixpkgs PR #556413: the subtests
//! (`with subtest(...)`) are the test cases; a single `main` case only when there are none; all
//! log lines in the suite's `system-out`. A test case fails when an error is logged inside it
//! (its error lines are the failure's text); its time excludes nested subtests.
//!
//! One deliberate difference: a failure outside every subtest when no subtest failed would
//! leave the report green, so then a `main` case carries it. The XML follows the JUnit
//! schema CI reporters read (checked by `tests/common/junit_schema.py`). The file is written
//! once at the end of the run ([`Sink::finish`], on every exit path), so it is complete and
//! well-formed whenever it exists.

use super::xml::escape_into;
use super::{LineKind, LogEvent, Sink};
use std::path::PathBuf;
use std::time::Instant;

const SUBTEST_PREFIX: &str = "subtest: ";

#[derive(Default)]
struct Case {
    name: String,
    err: String,
    failed: bool,
    secs: f64,
}

pub struct Junit {
    path: PathBuf,
    /// `main` (what happens outside subtests) first, then the subtests by first appearance.
    cases: Vec<Case>,
    /// Every log line of the run, for the suite's `system-out`.
    out: String,
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
            out: String::new(),
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

    /// The test cases upstream reports: the subtests, or `main` when there are none (and
    /// `main` too when it alone failed; see the module documentation).
    fn reported(&self) -> Vec<&Case> {
        let subtests = &self.cases[1..];
        let main = &self.cases[0];
        if subtests.is_empty() || (main.failed && !subtests.iter().any(|c| c.failed)) {
            std::iter::once(main).chain(subtests).collect()
        } else {
            subtests.iter().collect()
        }
    }

    fn render(&self) -> String {
        let cases = self.reported();
        let failures = cases.iter().filter(|c| c.failed).count();
        let total = self.started.elapsed().as_secs_f64();
        let mut s = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n");
        s.push_str(&format!(
            "<testsuites tests=\"{n}\" failures=\"{failures}\" errors=\"0\" time=\"{total:.3}\">\n\
             \t<testsuite name=\"NixOS integration test\" tests=\"{n}\" errors=\"0\" failures=\"{failures}\" skipped=\"0\" time=\"{total:.3}\">\n",
            n = cases.len()
        ));
        for c in cases {
            s.push_str("\t\t<testcase name=\"");
            escape_into(&c.name, &mut s);
            s.push_str(&format!("\" time=\"{:.3}\"", c.secs));
            if !c.failed {
                s.push_str("/>\n");
                continue;
            }
            s.push_str(">\n\t\t\t<failure message=\"test case failed\">");
            escape_into(&c.err, &mut s);
            s.push_str("</failure>\n\t\t</testcase>\n");
        }
        if !self.out.is_empty() {
            s.push_str("\t\t<system-out>");
            escape_into(&self.out, &mut s);
            s.push_str("</system-out>\n");
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
                self.out.push_str(&line);
                if matches!(kind, LineKind::Error | LineKind::TestError) {
                    let case = self.current();
                    case.err.push_str(&line);
                    case.failed = true;
                }
            }
            LogEvent::Serial { machine, line } => {
                self.out.push_str(&format!("{machine} # {line}\n"));
            }
            LogEvent::NestBegin { machine, msg } => {
                if let Some(name) = msg.strip_prefix(SUBTEST_PREFIX) {
                    self.out.push_str(&format!("{msg}\n"));
                    let i = self.case_for(name);
                    self.stack.push((i, Instant::now(), 0.0));
                    self.nest_kinds.push(true);
                } else {
                    match machine {
                        Some(m) => self.out.push_str(&format!("{m}: {msg}\n")),
                        None => self.out.push_str(&format!("{msg}\n")),
                    }
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

    fn render(events: impl FnOnce(&mut Logger)) -> String {
        let path = std::env::temp_dir().join(format!(
            "ntd-junit-{}-{:?}.xml",
            std::process::id(),
            std::thread::current().id()
        ));
        let mut l = Logger::new(Level::Info, vec![Box::new(Junit::new(path.clone()))]);
        events(&mut l);
        l.finish();
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        text
    }

    #[test]
    fn subtests_are_the_test_cases_and_every_log_line_is_the_suites() {
        let text = render(|l| {
            l.log("outside");
            l.begin(None, "subtest: my subtest");
            l.machine("m", "Subtest log");
            l.end(true);
            l.begin(None, "subtest: failing subtest");
            l.serial("m", "boot");
            l.test_error("Error occurred");
            l.end(false);
            l.test_error("Traceback outside");
        });
        assert!(
            text.contains("<testsuites tests=\"2\" failures=\"1\""),
            "{text}"
        );
        assert!(
            text.contains("<testcase name=\"my subtest\" time=\""),
            "{text}"
        );
        assert!(!text.contains("name=\"main\""), "{text}");
        assert!(
            text.contains("<failure message=\"test case failed\">Error occurred\n</failure>"),
            "{text}"
        );
        assert!(
            text.contains(
                "<system-out>outside\nsubtest: my subtest\nm: Subtest log\n\
                 subtest: failing subtest\nm # boot\nError occurred\nTraceback outside\n\
                 </system-out>\n\t</testsuite>"
            ),
            "{text}"
        );
        assert_eq!(text.matches("<system-out>").count(), 1, "{text}");
        assert!(!text.contains("system-err"), "{text}");
    }

    #[test]
    fn main_is_the_case_only_without_subtests() {
        let text = render(|l| {
            l.log("hello");
            l.test_error("boom");
        });
        assert!(
            text.contains("<testsuites tests=\"1\" failures=\"1\""),
            "{text}"
        );
        assert!(text.contains("<testcase name=\"main\""), "{text}");
        let green = render(|l| l.log("hello"));
        assert!(green.contains("<testcase name=\"main\" time=\""), "{green}");
        assert!(green.contains("failures=\"0\""), "{green}");
    }

    #[test]
    fn a_failure_outside_passing_subtests_is_not_hidden() {
        let text = render(|l| {
            l.begin(None, "subtest: fine");
            l.end(true);
            l.test_error("failed after the subtests");
        });
        assert!(
            text.contains("<testsuites tests=\"2\" failures=\"1\""),
            "{text}"
        );
        assert!(
            text.contains("<testcase name=\"main\" time=\"") && text.contains("fine"),
            "{text}"
        );
    }
}
