//! The terminal sink: upstream's stderr format, one `write` per line.
//!
//! Colours (bold green nesting, dim serial lines, red `!!!`, one colour per machine name) are
//! used when stderr is a terminal, or when `NTD_COLOR=always`; `NTD_COLOR=never` or `NO_COLOR`
//! turn them off. Without colour the text is exactly upstream's minus the escape codes.

use super::{LineKind, LogEvent, Sink};
use std::io::Write;

const BOLD_GREEN: &str = "\x1b[1m\x1b[32m";
const DIM: &str = "\x1b[2m";
const RED: &str = "\x1b[31m";
const RESET: &str = "\x1b[0m";
/// Colours cycled through for machine names (never green, red or dim: those carry meaning).
const MACHINE_COLOURS: [&str; 6] = [
    "\x1b[36m", "\x1b[35m", "\x1b[34m", "\x1b[33m", "\x1b[96m", "\x1b[95m",
];

pub struct Terminal {
    colour: bool,
    names: Vec<String>,
    out: Box<dyn Write>,
}

impl Terminal {
    /// Write to stderr, colouring as the environment and the terminal say.
    pub fn stderr() -> Terminal {
        let colour = match std::env::var("NTD_COLOR").as_deref() {
            Ok("always") => true,
            Ok("never") => false,
            _ => {
                std::env::var_os("NO_COLOR").is_none() && rustix::termios::isatty(std::io::stderr())
            }
        };
        Terminal::new(colour, Box::new(std::io::stderr()))
    }

    pub fn new(colour: bool, out: Box<dyn Write>) -> Terminal {
        Terminal {
            colour,
            names: Vec::new(),
            out,
        }
    }

    fn machine_colour(&mut self, name: &str) -> &'static str {
        let i = match self.names.iter().position(|n| n == name) {
            Some(i) => i,
            None => {
                self.names.push(name.to_owned());
                self.names.len() - 1
            }
        };
        MACHINE_COLOURS[i % MACHINE_COLOURS.len()]
    }

    fn prefix(&mut self, line: &mut String, machine: Option<&str>) {
        if let Some(m) = machine {
            if self.colour {
                let c = self.machine_colour(m);
                line.push_str(c);
                line.push_str(m);
                line.push_str(RESET);
            } else {
                line.push_str(m);
            }
            line.push_str(": ");
        }
    }

    fn write_line(&mut self, mut line: String) {
        line.push('\n');
        // A closed stderr must not stop the test; nothing sensible can be done about it here.
        let _ = self.out.write_all(line.as_bytes());
        let _ = self.out.flush();
    }
}

impl Sink for Terminal {
    fn event(&mut self, ev: &LogEvent<'_>) {
        let mut line = String::new();
        match *ev {
            LogEvent::Line { kind, machine, msg } => {
                self.prefix(&mut line, machine);
                match kind {
                    LineKind::TestError if self.colour => {
                        line.push_str(RED);
                        line.push_str("!!! ");
                        line.push_str(RESET);
                    }
                    LineKind::TestError => line.push_str("!!! "),
                    LineKind::Debug if self.colour => {
                        line.push_str(DIM);
                        line.push_str(msg);
                        line.push_str(RESET);
                        return self.write_line(line);
                    }
                    _ => {}
                }
                line.push_str(msg);
            }
            LogEvent::NestBegin { machine, msg } => {
                self.prefix(&mut line, machine);
                if self.colour {
                    line.push_str(BOLD_GREEN);
                    line.push_str(msg);
                    line.push_str(RESET);
                } else {
                    line.push_str(msg);
                }
            }
            LogEvent::NestEnd {
                machine,
                msg,
                secs,
                ok,
            } => {
                if !ok {
                    return;
                }
                self.prefix(&mut line, machine);
                line.push_str(&format!("(finished: {msg}, in {secs:.2} seconds)"));
            }
            LogEvent::Serial {
                machine,
                line: text,
            } => {
                if self.colour {
                    line.push_str(DIM);
                }
                line.push_str(machine);
                line.push_str(" # ");
                line.push_str(text);
                if self.colour {
                    line.push_str(RESET);
                }
            }
        }
        self.write_line(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{Level, Logger};
    use std::cell::RefCell;
    use std::rc::Rc;

    #[derive(Clone, Default)]
    struct Buf(Rc<RefCell<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.borrow_mut().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn plain_format_matches_upstream_lines() {
        let buf = Buf::default();
        let mut l = Logger::new(
            Level::Info,
            vec![Box::new(Terminal::new(false, Box::new(buf.clone())))],
        );
        l.begin(Some("machine"), "must succeed: echo hi");
        l.serial("machine", "[    0.000000] Linux");
        l.end(true);
        l.test_error("Traceback (most recent call last):");
        l.begin(None, "cleanup");
        l.end(false);
        let text = String::from_utf8(buf.0.borrow().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "machine: must succeed: echo hi");
        assert_eq!(lines[1], "machine # [    0.000000] Linux");
        assert!(lines[2].starts_with("machine: (finished: must succeed: echo hi, in 0.0"));
        assert!(lines[2].ends_with(" seconds)"));
        assert_eq!(lines[3], "!!! Traceback (most recent call last):");
        assert_eq!(lines[4], "cleanup");
        assert_eq!(lines.len(), 5);
    }

    #[test]
    fn colour_format_wraps_nesting_in_bold_green() {
        let buf = Buf::default();
        let mut l = Logger::new(
            Level::Info,
            vec![Box::new(Terminal::new(true, Box::new(buf.clone())))],
        );
        l.begin(None, "start all VMs");
        let text = String::from_utf8(buf.0.borrow().clone()).unwrap();
        assert_eq!(text, "\x1b[1m\x1b[32mstart all VMs\x1b[0m\n");
    }
}
