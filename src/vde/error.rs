//! What can go wrong in a switch: [`VdeError`], one enum for set-up failures and for the
//! reasons a client is refused, each with a message a user can act on. This module owns the
//! error type only; it must not decide what to do about an error (the switch and the driver do).

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use super::wire::{self, WireError};

/// Everything that can go wrong in a switch: set-up failures returned by
/// [`Switch::create`](super::Switch::create) and
/// [`Switch::start_capture`](super::Switch::start_capture), and the reasons a client was
/// refused (reported as [`SwitchEvent::Rejected`](super::SwitchEvent::Rejected)).
#[derive(Debug)]
pub enum VdeError {
    DirTooLong {
        path: PathBuf,
        len: usize,
        max: usize,
    },
    CreateDir {
        path: PathBuf,
        source: io::Error,
    },
    NotADirectory {
        path: PathBuf,
    },
    AlreadyRunning {
        ctl: PathBuf,
    },
    Listen {
        path: PathBuf,
        source: io::Error,
    },
    Register {
        source: io::Error,
    },
    Capture {
        path: PathBuf,
        source: io::Error,
    },
    Accept {
        source: io::Error,
    },
    Request(WireError),
    RequestTooLong {
        got: usize,
    },
    RequestTimeout {
        after: Duration,
        got: usize,
    },
    ClosedEarly {
        got: usize,
    },
    ReadRequest {
        source: io::Error,
    },
    PortOutOfRange {
        port: u32,
        max: u32,
    },
    NoFreePort {
        max: u32,
    },
    TooManyPending {
        max: usize,
    },
    TooManyEndpoints {
        max: usize,
    },
    ClientSocket {
        path: PathBuf,
        source: io::Error,
    },
    DataSocket {
        path: PathBuf,
        source: io::Error,
    },
    Reply {
        source: io::Error,
    },
    RemoveDir {
        path: PathBuf,
        source: io::Error,
    },
    /// [`super::Switch::label_endpoint`] named an endpoint that is not connected (any more).
    UnknownEndpoint {
        endpoint: u32,
    },
}

impl fmt::Display for VdeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use VdeError::*;
        match self {
            DirTooLong { path, len, max } => write!(
                f,
                "switch directory {} is {len} bytes long, at most {max} fit in the 108-byte \
                 sun_path of its sockets; use a shorter directory (e.g. under /tmp)",
                path.display()
            ),
            CreateDir { path, source } => {
                write!(
                    f,
                    "cannot create switch directory {}: {source}",
                    path.display()
                )
            }
            NotADirectory { path } => {
                write!(
                    f,
                    "{} exists and is not a directory; remove it or pick another path",
                    path.display()
                )
            }
            AlreadyRunning { ctl } => write!(
                f,
                "another switch is answering on {}; stop it or use another directory",
                ctl.display()
            ),
            Listen { path, source } => write!(f, "cannot listen on {}: {source}", path.display()),
            Register { source } => write!(
                f,
                "cannot register a switch socket with the poller: {source}"
            ),
            Capture { path, source } => {
                write!(f, "packet capture to {} failed: {source}", path.display())
            }
            Accept { source } => write!(f, "accepting a control connection failed: {source}"),
            Request(e) => write!(f, "invalid request: {e}"),
            RequestTooLong { got } => {
                write!(
                    f,
                    "request longer than {} bytes (got {got}); not a libvdeplug client",
                    wire::MAX_REQUEST
                )
            }
            RequestTimeout { after, got } => write!(
                f,
                "client sent only {got} of at least {} request bytes in {after:?}; disconnected",
                wire::HEADER_LEN
            ),
            ClosedEarly { got } => write!(
                f,
                "client closed after {got} bytes, before a complete request"
            ),
            ReadRequest { source } => write!(f, "reading the request failed: {source}"),
            PortOutOfRange { port, max } => write!(
                f,
                "client asked for port {port} but this switch has ports 1..={max} \
                 (vde_switch would leave the client hanging; ntd closes the connection)"
            ),
            NoFreePort { max } => write!(f, "all ports 1..={max} are in use"),
            TooManyPending { max } => write!(
                f,
                "more than {max} clients are mid-handshake; connection closed"
            ),
            TooManyEndpoints { max } => {
                write!(f, "switch already has {max} endpoints; connection closed")
            }
            ClientSocket { path, source } => write!(
                f,
                "cannot connect to the client's data socket {}: {source} (client gone, or path not \
                 reachable from the switch)",
                path.display()
            ),
            DataSocket { path, source } => {
                write!(
                    f,
                    "cannot create the switch data socket {}: {source}",
                    path.display()
                )
            }
            Reply { source } => write!(f, "cannot send the reply to the client: {source}"),
            UnknownEndpoint { endpoint } => write!(
                f,
                "no endpoint {endpoint} is connected (closed already?); nothing labelled"
            ),
            RemoveDir { path, source } => write!(
                f,
                "switch directory {} not removed: {source} (files left by clients?)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for VdeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        use VdeError::*;
        match self {
            CreateDir { source, .. }
            | Listen { source, .. }
            | Register { source }
            | Capture { source, .. }
            | Accept { source }
            | ReadRequest { source }
            | ClientSocket { source, .. }
            | DataSocket { source, .. }
            | Reply { source }
            | RemoveDir { source, .. } => Some(source),
            Request(e) => Some(e),
            _ => None,
        }
    }
}
