//! QMP client framing: turns the bytes QEMU writes on the QMP socket into messages and encodes
//! commands.
//!
//! QEMU writes one JSON object per line (`\r\n`); the first is the greeting, then command
//! results (`return`/`error`, echoing our numeric `id`) and asynchronous events, which may
//! arrive before the result of the command that caused them. This module owns only that
//! framing and classification; which commands to send and when is the machine's business. It
//! never blocks and never panics on what QEMU sends.

use crate::json::{obj, Value};
use std::fmt;

/// Longest QMP line accepted (`human-monitor-command` output can be large, not unbounded).
pub const MAX_LINE: usize = 16 << 20;

/// One message from QEMU.
#[derive(Debug, Clone, PartialEq)]
pub enum QmpMessage {
    Greeting(Value),
    Return {
        id: Option<u64>,
        value: Value,
    },
    Error {
        id: Option<u64>,
        class: String,
        desc: String,
    },
    Event(Value),
}

/// Why the QMP stream cannot be understood.
#[derive(Debug, Clone, PartialEq)]
pub enum QmpError {
    LineTooLong,
    BadJson(String),
    Unexpected(String),
}

impl fmt::Display for QmpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QmpError::LineTooLong => write!(f, "QMP message longer than {MAX_LINE} bytes"),
            QmpError::BadJson(e) => write!(f, "QEMU sent malformed QMP JSON: {e}"),
            QmpError::Unexpected(s) => write!(f, "QEMU sent an unexpected QMP message: {s}"),
        }
    }
}

impl std::error::Error for QmpError {}

/// Line splitter and classifier for the QMP stream.
#[derive(Debug, Default)]
pub struct QmpFraming {
    buf: Vec<u8>,
}

impl QmpFraming {
    /// Feed bytes; every complete message is appended to `out`. A malformed line is reported
    /// and skipped: the stream stays usable.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<Result<QmpMessage, QmpError>>) {
        self.buf.extend_from_slice(data);
        let mut start = 0;
        while let Some(nl) = memchr::memchr(b'\n', &self.buf[start..]) {
            let line = &self.buf[start..start + nl];
            start += nl + 1;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            out.push(classify(line));
        }
        self.buf.drain(..start);
        if self.buf.len() > MAX_LINE {
            self.buf.clear();
            out.push(Err(QmpError::LineTooLong));
        }
    }
}

fn classify(line: &[u8]) -> Result<QmpMessage, QmpError> {
    let v = Value::parse(line).map_err(|e| QmpError::BadJson(e.to_string()))?;
    let id = v.get("id").and_then(Value::as_i64).map(|i| i as u64);
    if v.get("QMP").is_some() {
        Ok(QmpMessage::Greeting(v))
    } else if let Some(r) = v.get("return") {
        Ok(QmpMessage::Return {
            id,
            value: r.clone(),
        })
    } else if let Some(e) = v.get("error") {
        Ok(QmpMessage::Error {
            id,
            class: e
                .get("class")
                .and_then(Value::as_str)
                .unwrap_or("GenericError")
                .to_owned(),
            desc: e
                .get("desc")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
        })
    } else if v.get("event").is_some() {
        Ok(QmpMessage::Event(v))
    } else {
        Err(QmpError::Unexpected(
            String::from_utf8_lossy(line).into_owned(),
        ))
    }
}

/// Encode `{"execute": name, "arguments": args, "id": id}` plus the line terminator.
pub fn encode_command(name: &str, args: Option<Value>, id: u64) -> Vec<u8> {
    let mut fields = vec![("execute".to_owned(), Value::from(name))];
    if let Some(a) = args {
        fields.push(("arguments".to_owned(), a));
    }
    fields.push(("id".to_owned(), Value::Int(id as i64)));
    let mut s = Value::Object(fields).to_json();
    s.push('\n');
    s.into_bytes()
}

/// Arguments of `human-monitor-command` for one HMP command line.
pub fn hmp_args(command_line: &str) -> Value {
    obj([("command-line", Value::from(command_line))])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_split_lines_classifies_each_message() {
        let mut f = QmpFraming::default();
        let mut out = Vec::new();
        f.feed(
            b"{\"QMP\": {\"version\": {}}}\r\n{\"event\": \"STOP\", \"timestamp\": {}}\r\n{\"ret",
            &mut out,
        );
        f.feed(b"urn\": {}, \"id\": 3}\r\n{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"no\"}}\r\n", &mut out);
        let out: Vec<_> = out.into_iter().map(Result::unwrap).collect();
        assert!(matches!(out[0], QmpMessage::Greeting(_)));
        assert!(matches!(out[1], QmpMessage::Event(_)));
        assert_eq!(
            out[2],
            QmpMessage::Return {
                id: Some(3),
                value: Value::Object(vec![])
            }
        );
        assert_eq!(
            out[3],
            QmpMessage::Error {
                id: None,
                class: "CommandNotFound".into(),
                desc: "no".into()
            }
        );
    }

    #[test]
    fn feed_garbage_line_reports_error_and_continues() {
        let mut f = QmpFraming::default();
        let mut out = Vec::new();
        f.feed(b"not json\r\n{\"return\": 1}\r\n[1]\r\n", &mut out);
        assert!(matches!(out[0], Err(QmpError::BadJson(_))));
        assert!(matches!(out[1], Ok(QmpMessage::Return { .. })));
        assert!(matches!(out[2], Err(QmpError::Unexpected(_))));
    }

    #[test]
    fn encode_command_has_id_and_newline() {
        let b = encode_command("human-monitor-command", Some(hmp_args("info status")), 7);
        assert_eq!(
            b,
            b"{\"execute\":\"human-monitor-command\",\"arguments\":{\"command-line\":\"info status\"},\"id\":7}\n"
        );
    }
}
