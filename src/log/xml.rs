//! The XML log upstream writes when `LOGFILE` is set: `<logfile>` with `<line>`s, `<nest>`s
//! (`<head>` + contents + a finish line) and serial lines (`type="serial"`).
//!
//! Unlike upstream, the document is always closed, also when the test fails, times out or is
//! interrupted: cleanup calls [`Sink::finish`]. Writes go through a buffer flushed per event, so
//! a crash loses at most the last event. This sink never decides what is logged.

use super::{LogEvent, Sink};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

pub struct XmlLog {
    out: BufWriter<File>,
    open_nests: usize,
    finished: bool,
}

impl XmlLog {
    pub fn create(path: &Path) -> std::io::Result<XmlLog> {
        let mut out = BufWriter::new(File::create(path)?);
        out.write_all(b"<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<logfile>")?;
        Ok(XmlLog {
            out,
            open_nests: 0,
            finished: false,
        })
    }

    fn element(&mut self, tag: &str, attrs: &[(&str, &str)], text: &str) {
        let mut s = String::with_capacity(text.len() + 32);
        s.push('<');
        s.push_str(tag);
        for (k, v) in attrs {
            s.push(' ');
            s.push_str(k);
            s.push_str("=\"");
            escape_into(v, &mut s);
            s.push('"');
        }
        s.push('>');
        escape_into(text, &mut s);
        s.push_str("</");
        s.push_str(tag);
        s.push('>');
        let _ = self.out.write_all(s.as_bytes());
    }
}

/// Escape for XML text and attribute values; characters XML 1.0 cannot carry are dropped.
pub fn escape_into(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
}

impl Sink for XmlLog {
    fn event(&mut self, ev: &LogEvent<'_>) {
        if self.finished {
            return;
        }
        match *ev {
            LogEvent::Line { machine, msg, .. } => match machine {
                Some(m) => self.element("line", &[("machine", m)], msg),
                None => self.element("line", &[], msg),
            },
            LogEvent::NestBegin { machine, msg } => {
                let _ = self.out.write_all(b"<nest>");
                self.open_nests += 1;
                match machine {
                    Some(m) => self.element("head", &[("machine", m)], msg),
                    None => self.element("head", &[], msg),
                }
            }
            LogEvent::NestEnd { msg, secs, ok, .. } => {
                if self.open_nests > 0 {
                    // A block left by an exception gets no finish line (as on the terminal);
                    // it is still closed, so the document stays well-formed.
                    if ok {
                        self.element(
                            "line",
                            &[],
                            &format!("(finished: {msg}, in {secs:.2} seconds)"),
                        );
                    }
                    let _ = self.out.write_all(b"</nest>");
                    self.open_nests -= 1;
                }
            }
            LogEvent::Serial { machine, line } => {
                let cleaned: String = line.chars().filter(|c| !c.is_control()).collect();
                self.element(
                    "line",
                    &[("machine", machine), ("type", "serial")],
                    &cleaned,
                );
            }
        }
        let _ = self.out.flush();
    }

    fn finish(&mut self) {
        if self.finished {
            return;
        }
        for _ in 0..self.open_nests {
            let _ = self.out.write_all(b"</nest>");
        }
        self.open_nests = 0;
        let _ = self.out.write_all(b"</logfile>\n");
        let _ = self.out.flush();
        self.finished = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{Level, Logger};

    #[test]
    fn document_is_closed_even_with_open_nests() {
        let path = std::env::temp_dir().join(format!("ntd-xml-{}.xml", std::process::id()));
        let mut l = Logger::new(Level::Info, vec![Box::new(XmlLog::create(&path).unwrap())]);
        l.begin(Some("m"), "outer <&>");
        l.serial("m", "boot\u{1b}[0m \"ok\"");
        l.begin(None, "inner");
        l.machine("m", "a line");
        l.end(true);
        // The outer nest is never ended: the document must still be well-formed.
        l.finish();
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(text.starts_with("<?xml"));
        assert!(text.contains("<head machine=\"m\">outer &lt;&amp;&gt;</head>"));
        assert!(text.contains("<line machine=\"m\" type=\"serial\">boot[0m &quot;ok&quot;</line>"));
        assert!(text.contains("<line>(finished: inner, in 0.00 seconds)</line></nest>"));
        assert_eq!(
            text.matches("<nest>").count(),
            text.matches("</nest>").count()
        );
        assert!(text.trim_end().ends_with("</logfile>"));
    }

    #[test]
    fn failed_block_is_closed_without_a_finish_line() {
        let path = std::env::temp_dir().join(format!("ntd-xml-fail-{}.xml", std::process::id()));
        let mut l = Logger::new(Level::Info, vec![Box::new(XmlLog::create(&path).unwrap())]);
        l.begin(None, "must succeed: false");
        l.end(false);
        l.begin(None, "must succeed: true");
        l.end(true);
        l.finish();
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(!text.contains("(finished: must succeed: false"), "{text}");
        assert!(
            text.contains("<head>must succeed: false</head></nest>"),
            "{text}"
        );
        assert!(
            text.contains("<line>(finished: must succeed: true, in "),
            "{text}"
        );
    }
}
