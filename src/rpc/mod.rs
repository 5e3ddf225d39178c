//! The line protocol between the driver and the Python shim.
//!
//! Two inherited pipes carry one JSON object per line. The shim sends requests
//! `{"id": N, "op": "...", ...}` (or notifications without `id`, such as log lines) and waits
//! for `{"id": N, "ok": ...}` or `{"id": N, "err": {"type": ..., "msg": ..., "qmp": ...}}`.
//! This module owns the framing, buffering and non-blocking I/O of both pipes and the error
//! replies; the protocol table (every op, its request and its reply type) is [`ops`], what
//! an op means is the driver's business. A malformed line from the shim is answered with an
//! error, never a panic.

pub mod args;
pub mod ops;
pub mod reach;
pub mod replies;
pub mod requests;
pub mod wire;

use crate::json;
use crate::machine::qmp::QmpFailure;
use crate::nbio::{read_available, FdReader, Registration, WriteBuffer};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use std::os::fd::{AsRawFd, OwnedFd};

/// Longest request line accepted from the shim (a copy_from_host_via_shell of a big file).
pub const MAX_REQUEST: usize = 1 << 30;

/// Exception types the shim knows how to raise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    /// `RequestedAssertionFailed` (an `AssertionError`).
    Assertion,
    /// `MachineError`.
    Machine,
    /// `RuntimeError`.
    Runtime,
    /// `TimeoutError`.
    Timeout,
    /// `ValueError` / `TypeError` for bad arguments.
    Value,
    /// A QMP error (`QMPAPIError`).
    Qmp,
}

impl ErrorType {
    /// Every error type (the generated Python module maps each to its exception).
    pub const ALL: [ErrorType; 6] = [
        ErrorType::Assertion,
        ErrorType::Machine,
        ErrorType::Runtime,
        ErrorType::Timeout,
        ErrorType::Value,
        ErrorType::Qmp,
    ];

    /// The name of the Python exception the shim raises.
    pub fn name(self) -> &'static str {
        match self {
            ErrorType::Assertion => "RequestedAssertionFailed",
            ErrorType::Machine => "MachineError",
            ErrorType::Runtime => "RuntimeError",
            ErrorType::Timeout => "TimeoutError",
            ErrorType::Value => "ValueError",
            ErrorType::Qmp => "QMPAPIError",
        }
    }
}

/// An error reply.
#[derive(Debug, Clone, PartialEq)]
pub struct OpError {
    pub kind: ErrorType,
    pub msg: String,
    /// For [`ErrorType::Qmp`]: QEMU's error, sent as its `class` and `desc` (the shim's
    /// `QMPAPIError` carries both).
    pub qmp: Option<QmpFailure>,
}

impl OpError {
    pub fn new(kind: ErrorType, msg: impl Into<String>) -> Self {
        OpError {
            kind,
            msg: msg.into(),
            qmp: None,
        }
    }

    /// QEMU refused a command (or closed the connection before answering).
    pub fn qmp(failure: QmpFailure) -> Self {
        OpError {
            kind: ErrorType::Qmp,
            msg: failure.to_string(),
            qmp: Some(failure),
        }
    }
}

pub fn encode_err(id: i64, e: &OpError) -> String {
    let mut s = format!(
        "{{\"id\":{id},\"err\":{{\"type\":\"{}\",\"msg\":",
        e.kind.name()
    );
    json::write_string(&e.msg, &mut s);
    if let Some(q) = &e.qmp {
        s.push_str(",\"qmp\":{\"class\":");
        json::write_string(q.class(), &mut s);
        s.push_str(",\"desc\":");
        json::write_string(q.desc(), &mut s);
        s.push('}');
    }
    s.push_str("}}\n");
    s
}

/// Standard base64 (with padding), for binary command output in JSON strings.
#[cfg(test)]
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    base64_encode_into(data, &mut out);
    out
}

/// Append standard base64 (with padding) of `data` to `out`.
pub fn base64_encode_into(data: &[u8], out: &mut String) {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    out.reserve(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
}

/// Decode standard base64; `None` on invalid input (tests check the encoder with it).
#[cfg(test)]
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Both pipes to the shim, non-blocking, with their buffers.
pub struct Channel {
    rx: Option<OwnedFd>,
    tx: Option<OwnedFd>,
    inbuf: Vec<u8>,
    /// Scratch buffer for reads (allocated once).
    readbuf: Vec<u8>,
    out: WriteBuffer,
}

impl Channel {
    pub fn new(rx: OwnedFd, tx: OwnedFd, tx_token: Token) -> Channel {
        Channel {
            rx: Some(rx),
            tx: Some(tx),
            inbuf: Vec::new(),
            readbuf: vec![0; 256 * 1024],
            out: WriteBuffer::new(tx_token, Registration::WriteOnly),
        }
    }

    pub fn register_rx(&self, registry: &Registry, token: Token) -> std::io::Result<()> {
        if let Some(rx) = &self.rx {
            registry.register(&mut SourceFd(&rx.as_raw_fd()), token, Interest::READABLE)?;
        }
        Ok(())
    }

    /// Read what is available; every complete line, decoded, goes to `out`. Returns false once
    /// the shim closed its end (EOF).
    pub fn read(
        &mut self,
        registry: &Registry,
        out: &mut Vec<Result<ops::Request, ops::DecodeError>>,
    ) -> bool {
        let Some(rx) = &self.rx else {
            return false;
        };
        let inbuf = &mut self.inbuf;
        let open = !read_available(&mut FdReader(rx), &mut self.readbuf, |chunk| {
            inbuf.extend_from_slice(chunk)
        });
        let mut start = 0;
        while let Some(nl) = memchr::memchr(b'\n', &self.inbuf[start..]) {
            let line = &self.inbuf[start..start + nl];
            start += nl + 1;
            if !line.is_empty() {
                out.push(ops::decode(line));
            }
        }
        self.inbuf.drain(..start);
        if self.inbuf.len() > MAX_REQUEST {
            self.inbuf.clear();
            out.push(Err(ops::DecodeError {
                id: None,
                error: OpError::new(
                    ErrorType::Value,
                    format!("request longer than {MAX_REQUEST} bytes dropped"),
                ),
            }));
        }
        if !open {
            if let Some(rx) = self.rx.take() {
                let _ = registry.deregister(&mut SourceFd(&rx.as_raw_fd()));
            }
        }
        open
    }

    /// Queue a reply line and write as much as the pipe takes.
    pub fn send(&mut self, registry: &Registry, line: &str) {
        if let Some(tx) = &self.tx {
            self.out.send(tx, registry, line.as_bytes());
        }
    }

    pub fn flush(&mut self, registry: &Registry) {
        if let Some(tx) = &self.tx {
            self.out.flush(tx, registry);
        }
    }

    /// Close both pipes (the shim sees EOF on its reads).
    pub fn close(&mut self, registry: &Registry) {
        if let Some(rx) = self.rx.take() {
            let _ = registry.deregister(&mut SourceFd(&rx.as_raw_fd()));
        }
        if let Some(tx) = self.tx.take() {
            if self.out.armed() {
                let _ = registry.deregister(&mut SourceFd(&tx.as_raw_fd()));
            }
            self.out.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_roundtrips_all_lengths() {
        for n in 0..70u32 {
            let data: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            let enc = base64_encode(&data);
            assert_eq!(enc.len() % 4, 0);
            assert_eq!(base64_decode(&enc).unwrap(), data);
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert!(base64_decode("a$b").is_none());
    }

    #[test]
    fn encode_err_of_a_qmp_error_carries_class_and_desc() {
        let e = OpError::qmp(QmpFailure::Error {
            class: "CommandNotFound".into(),
            desc: "no \"x\"".into(),
        });
        assert_eq!(
            encode_err(5, &e),
            "{\"id\":5,\"err\":{\"type\":\"QMPAPIError\",\"msg\":\"CommandNotFound: no \\\"x\\\"\",\
             \"qmp\":{\"class\":\"CommandNotFound\",\"desc\":\"no \\\"x\\\"\"}}}\n"
        );
        let closed = OpError::qmp(QmpFailure::Closed);
        assert!(encode_err(6, &closed)
            .contains("\"qmp\":{\"class\":\"GenericError\",\"desc\":\"QEMU closed"));
    }

    #[test]
    fn encode_err_escapes_message() {
        let e = OpError::new(ErrorType::Assertion, "command `x` failed\n\"q\"");
        assert_eq!(
            encode_err(4, &e),
            "{\"id\":4,\"err\":{\"type\":\"RequestedAssertionFailed\",\"msg\":\"command `x` failed\\n\\\"q\\\"\"}}\n"
        );
    }
}
