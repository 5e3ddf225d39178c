//! [`MachineError`]: why an operation on a machine failed (QEMU's start, a socket, the
//! shell session, QMP, a container), each with its cause as `source()`.

use super::qemu;
use super::qmp;
use super::session::SessionError;
use std::fmt;
use std::io;

/// Why a machine operation failed (shown to the test author as `MachineError`).
#[derive(Debug)]
pub enum MachineError {
    /// Preparing or spawning QEMU failed.
    Qemu(qemu::QemuError),
    /// A socket or poll operation failed; the text says which.
    Io(&'static str, io::Error),
    /// No directory for the machine's sockets could be made.
    SocketDir { name: String, source: io::Error },
    /// The guest shell cannot take the request.
    Session(SessionError),
    /// QMP is not ready yet.
    QmpNotReady,
    /// A systemd-nspawn container could not start or run a command.
    Container(crate::container::ContainerError),
}

impl fmt::Display for MachineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MachineError::Qemu(e) => write!(f, "{e}"),
            MachineError::Io(what, e) => write!(f, "{what}: {e}"),
            MachineError::SocketDir { name, source } => write!(
                f,
                "cannot create a directory for the sockets of {name}: {source}"
            ),
            MachineError::Session(e) => write!(f, "{e}"),
            MachineError::QmpNotReady => write!(f, "{}", qmp::NotReady),
            MachineError::Container(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for MachineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MachineError::Qemu(e) => Some(e),
            MachineError::Io(_, e) | MachineError::SocketDir { source: e, .. } => Some(e),
            MachineError::Session(e) => Some(e),
            MachineError::QmpNotReady => None,
            MachineError::Container(e) => Some(e),
        }
    }
}

impl From<qemu::QemuError> for MachineError {
    fn from(e: qemu::QemuError) -> Self {
        MachineError::Qemu(e)
    }
}
