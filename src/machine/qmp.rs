//! The QMP client: framing of the bytes QEMU writes on the QMP socket into messages, and the
//! client state ([`QmpClient`]: handshake, command ids, pending results, events).
//!
//! QEMU writes one JSON object per line (`\r\n`); the first is the greeting, then command
//! results (`return`/`error`, echoing our numeric `id`) and asynchronous events, which may
//! arrive before the result of the command that caused them. This module owns only that
//! framing, the handshake and the bookkeeping; it does no I/O (the machine moves the bytes) and
//! never panics on what QEMU sends.

use crate::json::{obj, Value};
use std::collections::{HashMap, HashSet, VecDeque};
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

/// Where a [`QmpClient`] is in QEMU's handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handshake {
    /// Connected; waiting for QEMU's greeting.
    Greeting,
    /// `qmp_capabilities` sent.
    Capabilities,
    /// `query-kvm` sent (which accelerator QEMU really uses).
    QueryKvm,
    /// Commands may be sent.
    Ready,
    /// QEMU closed the connection.
    Closed,
}

/// Something the machine should know or log about its QMP connection.
#[derive(Debug, Clone, PartialEq)]
pub enum QmpNote {
    /// The handshake is complete; `kvm` tells whether QEMU runs the guest with KVM.
    Ready { kvm: bool },
    /// The thread ids of QEMU's vCPUs (`query-cpus-fast`, asked right after the handshake).
    VcpuThreads(Vec<i32>),
    /// A line QEMU sent could not be understood (the stream stays usable).
    Protocol(QmpError),
    /// An error reply nobody waits for (an internal command failed).
    UnsolicitedError(QmpFailure),
}

/// Why a command could not be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotReady;

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QMP API is not ready yet, is the VM ready?")
    }
}

/// Error text for commands whose answer can never come.
pub const CLOSED: &str = "QEMU closed the QMP connection";

/// Why a QMP command has no result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QmpFailure {
    /// QEMU answered with an error: its `class` and `desc`, as it sent them.
    Error { class: String, desc: String },
    /// The connection closed before QEMU answered.
    Closed,
}

impl QmpFailure {
    /// The error's QMP class (`GenericError` when the connection closed, as upstream's client
    /// reports a missing class).
    pub fn class(&self) -> &str {
        match self {
            QmpFailure::Error { class, .. } => class,
            QmpFailure::Closed => "GenericError",
        }
    }

    /// The error's description.
    pub fn desc(&self) -> &str {
        match self {
            QmpFailure::Error { desc, .. } => desc,
            QmpFailure::Closed => CLOSED,
        }
    }
}

impl fmt::Display for QmpFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QmpFailure::Error { class, desc } => write!(f, "{class}: {desc}"),
            QmpFailure::Closed => f.write_str(CLOSED),
        }
    }
}

impl std::error::Error for QmpFailure {}

/// The id of the internal `query-cpus-fast` (user commands count up from 1).
pub const CPUS_ID: u64 = 0x7fff_ffff_ffff_ffff;

/// Queued QMP events kept for `wait_for_qmp_event`; older ones are dropped.
pub const MAX_EVENTS: usize = 4096;

/// The QMP client of one QEMU connection, without I/O: bytes from QEMU go into
/// [`QmpClient::feed`], bytes for QEMU come out of [`QmpClient::take_outbox`].
///
/// It answers the greeting with `qmp_capabilities`, asks `query-kvm`, then (once ready)
/// `query-cpus-fast` for the vCPU threads ([`CPUS_ID`]), numbers user commands from 1
/// (handshake commands use id 0), keeps their results until taken and queues
/// events (bounded by [`MAX_EVENTS`]).
#[derive(Debug)]
pub struct QmpClient {
    framing: QmpFraming,
    state: Handshake,
    next_id: u64,
    pending: HashSet<u64>,
    results: HashMap<u64, Result<Value, QmpFailure>>,
    events: VecDeque<Value>,
    outbox: Vec<u8>,
    kvm: Option<bool>,
}

impl Default for QmpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl QmpClient {
    /// A client for a freshly connected socket.
    pub fn new() -> Self {
        QmpClient {
            framing: QmpFraming::default(),
            state: Handshake::Greeting,
            next_id: 1,
            pending: HashSet::new(),
            results: HashMap::new(),
            events: VecDeque::new(),
            outbox: Vec::new(),
            kvm: None,
        }
    }

    pub fn ready(&self) -> bool {
        self.state == Handshake::Ready
    }

    /// Whether QEMU runs the guest with KVM (known once ready).
    pub fn kvm(&self) -> Option<bool> {
        self.kvm
    }

    /// Bytes to write to QEMU.
    pub fn take_outbox(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.outbox)
    }

    /// Feed bytes read from the socket; what the machine should know goes to `notes`.
    pub fn feed(&mut self, data: &[u8], notes: &mut Vec<QmpNote>) {
        let mut msgs = Vec::new();
        self.framing.feed(data, &mut msgs);
        for m in msgs {
            match m {
                Ok(m) => self.message(m, notes),
                Err(e) => notes.push(QmpNote::Protocol(e)),
            }
        }
    }

    /// The connection is gone: commands in flight will never be answered.
    pub fn closed(&mut self) {
        self.state = Handshake::Closed;
        for id in std::mem::take(&mut self.pending) {
            self.results.insert(id, Err(QmpFailure::Closed));
        }
    }

    fn message(&mut self, m: QmpMessage, notes: &mut Vec<QmpNote>) {
        match m {
            QmpMessage::Greeting(_) => {
                if self.state == Handshake::Greeting {
                    self.state = Handshake::Capabilities;
                    self.send(0, "qmp_capabilities", None);
                }
            }
            QmpMessage::Event(ev) => {
                if self.events.len() == MAX_EVENTS {
                    self.events.pop_front();
                }
                self.events.push_back(ev);
            }
            QmpMessage::Return { id, value } => self.reply(id, Ok(value), notes),
            QmpMessage::Error { id, class, desc } => {
                self.reply(id, Err(QmpFailure::Error { class, desc }), notes)
            }
        }
    }

    fn reply(
        &mut self,
        id: Option<u64>,
        result: Result<Value, QmpFailure>,
        notes: &mut Vec<QmpNote>,
    ) {
        match (id, self.state) {
            (Some(0), Handshake::Capabilities) => {
                self.state = Handshake::QueryKvm;
                self.send(0, "query-kvm", None);
            }
            (Some(0), Handshake::QueryKvm) => {
                let kvm = result
                    .as_ref()
                    .ok()
                    .and_then(|v| v.get("enabled"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                self.kvm = Some(kvm);
                self.state = Handshake::Ready;
                notes.push(QmpNote::Ready { kvm });
                self.send(CPUS_ID, "query-cpus-fast", None);
            }
            (Some(CPUS_ID), _) => match result {
                Ok(v) => notes.push(QmpNote::VcpuThreads(crate::hostcpu::parse::vcpu_threads(
                    &v,
                ))),
                Err(e) => notes.push(QmpNote::UnsolicitedError(e)),
            },
            (Some(id), _) if self.pending.remove(&id) => {
                self.results.insert(id, result);
            }
            _ => {
                if let Err(e) = result {
                    notes.push(QmpNote::UnsolicitedError(e));
                }
            }
        }
    }

    fn send(&mut self, id: u64, name: &str, args: Option<Value>) {
        self.outbox
            .extend_from_slice(&encode_command(name, args, id));
    }

    /// Queue a user command; its result comes from [`Self::take_result`] with the returned id.
    pub fn execute(&mut self, name: &str, args: Option<Value>) -> Result<u64, NotReady> {
        if !self.ready() {
            return Err(NotReady);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(id);
        self.send(id, name, args);
        Ok(id)
    }

    /// The result of command `id`, once it arrived (or can never arrive).
    pub fn take_result(&mut self, id: u64) -> Option<Result<Value, QmpFailure>> {
        if let Some(r) = self.results.remove(&id) {
            return Some(r);
        }
        if !self.pending.contains(&id) {
            return Some(Err(QmpFailure::Closed));
        }
        None
    }

    /// The oldest queued event.
    pub fn next_event(&mut self) -> Option<Value> {
        self.events.pop_front()
    }

    /// Drop queued events with these names (the `STOP`/`RESUME` of ntd's own checkpoint
    /// work must not reach a test that waits for QMP events).
    pub fn forget_events(&mut self, names: &[&str]) {
        self.events.retain(|e| {
            !e.get("event")
                .and_then(Value::as_str)
                .is_some_and(|n| names.contains(&n))
        });
    }
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

    fn handshake(kvm: bool) -> (QmpClient, Vec<QmpNote>) {
        let mut c = QmpClient::new();
        let mut notes = Vec::new();
        c.feed(
            b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n",
            &mut notes,
        );
        assert_eq!(
            c.take_outbox(),
            b"{\"execute\":\"qmp_capabilities\",\"id\":0}\n"
        );
        c.feed(b"{\"return\": {}, \"id\": 0}\r\n", &mut notes);
        assert_eq!(c.take_outbox(), b"{\"execute\":\"query-kvm\",\"id\":0}\n");
        let reply =
            format!("{{\"return\": {{\"enabled\": {kvm}, \"present\": true}}, \"id\": 0}}\r\n");
        c.feed(reply.as_bytes(), &mut notes);
        (c, notes)
    }

    #[test]
    fn client_handshake_reports_ready_with_accelerator() {
        let (c, notes) = handshake(false);
        assert_eq!(notes, vec![QmpNote::Ready { kvm: false }]);
        assert!(c.ready());
        assert_eq!(c.kvm(), Some(false));
        assert_eq!(handshake(true).0.kvm(), Some(true));
    }

    #[test]
    fn client_asks_for_the_vcpu_threads_once_ready() {
        let (mut c, mut notes) = handshake(false);
        assert_eq!(
            c.take_outbox(),
            format!("{{\"execute\":\"query-cpus-fast\",\"id\":{CPUS_ID}}}\n").into_bytes()
        );
        let reply = format!(
            "{{\"return\": [{{\"cpu-index\": 0, \"thread-id\": 41}}], \"id\": {CPUS_ID}}}\r\n"
        );
        c.feed(reply.as_bytes(), &mut notes);
        assert_eq!(notes.last(), Some(&QmpNote::VcpuThreads(vec![41])));
        assert_eq!(c.execute("stop", None), Ok(1), "user ids are unaffected");
    }

    #[test]
    fn client_execute_before_ready_is_refused() {
        let mut c = QmpClient::new();
        assert_eq!(c.execute("stop", None), Err(NotReady));
        assert!(c.take_outbox().is_empty());
    }

    #[test]
    fn client_results_match_ids_even_when_events_come_first() {
        let (mut c, _) = handshake(false);
        c.take_outbox();
        let a = c.execute("stop", None).unwrap();
        let b = c.execute("cont", None).unwrap();
        assert_eq!((a, b), (1, 2));
        assert_eq!(
            c.take_outbox(),
            b"{\"execute\":\"stop\",\"id\":1}\n{\"execute\":\"cont\",\"id\":2}\n"
        );
        let mut notes = Vec::new();
        c.feed(
            b"{\"event\": \"STOP\"}\r\n{\"error\": {\"class\": \"GenericError\", \"desc\": \"no\"}, \"id\": 2}\r\n{\"return\": {}, \"id\": 1}\r\n",
            &mut notes,
        );
        assert!(notes.is_empty());
        assert_eq!(c.take_result(1), Some(Ok(Value::Object(vec![]))));
        assert_eq!(
            c.take_result(2),
            Some(Err(QmpFailure::Error {
                class: "GenericError".into(),
                desc: "no".into()
            }))
        );
        assert_eq!(
            c.next_event().and_then(|e| e.get("event").cloned()),
            Some(Value::from("STOP"))
        );
        assert_eq!(c.next_event(), None);
    }

    #[test]
    fn client_pending_command_fails_when_connection_closes() {
        let (mut c, _) = handshake(false);
        let id = c.execute("query-status", None).unwrap();
        assert_eq!(c.take_result(id), None);
        c.closed();
        assert_eq!(c.take_result(id), Some(Err(QmpFailure::Closed)));
        assert!(!c.ready());
        assert_eq!(c.execute("stop", None), Err(NotReady));
    }

    #[test]
    fn client_unknown_id_error_is_a_note_and_events_are_bounded() {
        let (mut c, _) = handshake(false);
        let mut notes = Vec::new();
        c.feed(
            b"{\"error\": {\"class\": \"X\", \"desc\": \"y\"}, \"id\": 99}\r\n",
            &mut notes,
        );
        assert_eq!(
            notes,
            vec![QmpNote::UnsolicitedError(QmpFailure::Error {
                class: "X".into(),
                desc: "y".into()
            })]
        );
        for _ in 0..MAX_EVENTS + 5 {
            c.feed(b"{\"event\": \"E\"}\n", &mut notes);
        }
        let mut n = 0;
        while c.next_event().is_some() {
            n += 1;
        }
        assert_eq!(n, MAX_EVENTS);
    }

    #[test]
    fn client_byte_by_byte_handshake_is_the_same() {
        let mut c = QmpClient::new();
        let mut notes = Vec::new();
        for b in b"{\"QMP\": {}}\r\n" {
            c.feed(&[*b], &mut notes);
        }
        assert!(!c.take_outbox().is_empty());
        for b in b"{\"return\": {}, \"id\": 0}\r\n{\"return\": {\"enabled\": true}, \"id\": 0}\r\n"
        {
            c.feed(&[*b], &mut notes);
        }
        assert_eq!(notes, vec![QmpNote::Ready { kvm: true }]);
    }

    #[test]
    fn forget_events_drops_only_the_named_ones() {
        let (mut c, _) = handshake(false);
        let mut notes = Vec::new();
        c.feed(
            b"{\"event\": \"STOP\"}\n{\"event\": \"NIC_RX_FILTER_CHANGED\"}\n{\"event\": \"RESUME\"}\n",
            &mut notes,
        );
        c.forget_events(&["STOP", "RESUME"]);
        let left = c.next_event().unwrap();
        assert_eq!(
            left.get("event").and_then(Value::as_str),
            Some("NIC_RX_FILTER_CHANGED")
        );
        assert!(c.next_event().is_none());
    }
}
