//! The serial console: splits QEMU's stdout (`-serial stdio`, stderr merged) into lines and
//! keeps them for `get_console_log` and `wait_for_console_text`.
//!
//! Lines are decoded like upstream (UTF-8 with invalid bytes dropped, `\r` removed, trailing
//! whitespace stripped). The line queue has upstream's consumption semantics: lines read by
//! one `wait_for_console_text` are not seen by the next. This module never does I/O and never
//! decides whether a line is logged.

/// A line longer than this is cut (a guest printing without newlines must not grow memory).
pub const MAX_LINE: usize = 64 * 1024;

/// Lines kept for `get_console_log`; older ones are dropped (counted).
pub const MAX_LINES: usize = 200_000;

#[derive(Debug, Default)]
pub struct Console {
    partial: Vec<u8>,
    lines: std::collections::VecDeque<String>,
    /// Number of lines dropped from the front of `lines`.
    dropped: usize,
    /// Absolute index of the first line not yet consumed by a console wait.
    consumed: usize,
}

impl Console {
    /// Forget everything (upstream resets the queue and the log at every start).
    pub fn reset(&mut self) {
        *self = Console::default();
    }

    /// Feed raw bytes; complete lines are appended to `out` (and kept).
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<String>) {
        let mut rest = data;
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            self.partial.extend_from_slice(&rest[..nl]);
            rest = &rest[nl + 1..];
            self.finish_line(out);
        }
        self.partial.extend_from_slice(rest);
        while self.partial.len() > MAX_LINE {
            let tail = self.partial.split_off(MAX_LINE);
            self.finish_line(out);
            self.partial = tail;
        }
    }

    /// Flush a final line without newline (QEMU exited).
    pub fn flush(&mut self, out: &mut Vec<String>) {
        if !self.partial.is_empty() {
            self.finish_line(out);
        }
    }

    fn finish_line(&mut self, out: &mut Vec<String>) {
        let raw = std::mem::take(&mut self.partial);
        let line = decode_line(&raw);
        if self.lines.len() == MAX_LINES {
            self.lines.pop_front();
            self.dropped += 1;
        }
        self.lines.push_back(line.clone());
        out.push(line);
    }

    /// `"\n".join(lines)` like upstream's `get_console_log`.
    pub fn log_text(&self) -> String {
        let mut s = String::new();
        for (i, l) in self.lines.iter().enumerate() {
            if i > 0 {
                s.push('\n');
            }
            s.push_str(l);
        }
        s
    }

    /// The last `n` lines (for error messages about a machine that stopped).
    pub fn tail(&self, n: usize) -> impl Iterator<Item = &str> {
        self.lines
            .iter()
            .skip(self.lines.len().saturating_sub(n))
            .map(String::as_str)
    }

    /// Take every line not consumed by an earlier wait.
    pub fn take_unconsumed(&mut self) -> Vec<String> {
        let first = self.consumed.max(self.dropped) - self.dropped;
        let taken: Vec<String> = self.lines.iter().skip(first).cloned().collect();
        self.consumed = self.dropped + self.lines.len();
        taken
    }
}

/// Upstream: `line.decode(errors="ignore").replace("\r", "").rstrip()`.
pub fn decode_line(raw: &[u8]) -> String {
    let mut s = String::with_capacity(raw.len());
    for chunk in raw.utf8_chunks() {
        s.push_str(chunk.valid());
    }
    s.retain(|c| c != '\r');
    s.truncate(s.trim_end().len());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_split_line_yields_it_once_complete() {
        let mut c = Console::default();
        let mut out = Vec::new();
        c.feed(b"[  0.1] hel", &mut out);
        assert!(out.is_empty());
        c.feed(b"lo\r\nnext", &mut out);
        assert_eq!(out, vec!["[  0.1] hello".to_string()]);
        c.flush(&mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(c.log_text(), "[  0.1] hello\nnext");
    }

    #[test]
    fn decode_line_drops_invalid_utf8_and_trailing_space() {
        assert_eq!(decode_line(b"a\xffb\xe2\x82 \t"), "ab");
        assert_eq!(decode_line("é\r ok  ".as_bytes()), "é ok");
    }

    #[test]
    fn take_unconsumed_consumes_once() {
        let mut c = Console::default();
        let mut out = Vec::new();
        c.feed(b"one\ntwo\n", &mut out);
        assert_eq!(c.take_unconsumed(), vec!["one", "two"]);
        assert!(c.take_unconsumed().is_empty());
        assert_eq!(c.tail(1).collect::<Vec<_>>(), ["two"]);
        assert_eq!(c.tail(5).count(), 2);
        c.feed(b"three\n", &mut out);
        assert_eq!(c.take_unconsumed(), vec!["three"]);
    }

    #[test]
    fn very_long_line_is_cut() {
        let mut c = Console::default();
        let mut out = Vec::new();
        c.feed(&vec![b'x'; MAX_LINE * 2 + 5], &mut out);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|l| l.len() == MAX_LINE));
    }
}
