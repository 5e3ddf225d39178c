//! What can go wrong with a container, each with a message a user can act on (the driver
//! shows it as `MachineError`). This module owns the type only.

use super::{MAX_COMMANDS, MAX_SOCKET_PATH};
use crate::child::ExitInfo;
use std::fmt;
use std::io;
use std::path::PathBuf;

/// What is wrong with a container (shown to the test author as `MachineError`).
#[derive(Debug)]
pub enum ContainerError {
    Prepare(String, io::Error),
    SocketPathTooLong(PathBuf),
    Spawn(String, io::Error),
    /// The start script ended before the container was ready: upstream's message, then ours.
    ExitedEarly {
        exit: ExitInfo,
        output: String,
    },
    NotRunning,
    NotReady,
    NoNsenter,
    TooManyCommands,
    Command(io::Error),
}

impl fmt::Display for ContainerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContainerError::Prepare(what, e) => write!(f, "cannot {what}: {e}"),
            ContainerError::SocketPathTooLong(p) => write!(
                f,
                "notify socket path {} is over the {MAX_SOCKET_PATH}-byte limit of unix sockets; \
                 point XDG_RUNTIME_DIR or TMPDIR at a shorter directory",
                p.display()
            ),
            ContainerError::Spawn(cmd, e) => write!(f, "cannot start `{cmd}`: {e}"),
            ContainerError::ExitedEarly { exit, output } => {
                write!(f, "systemd-nspawn process exited unexpectedly ({exit})")?;
                if !output.is_empty() {
                    write!(f, "; its last output:\n{output}")?;
                }
                Ok(())
            }
            ContainerError::NotRunning => write!(f, "the container is not running"),
            ContainerError::NotReady => write!(f, "the container is not ready yet"),
            ContainerError::NoNsenter => write!(
                f,
                "nsenter is not in PATH: containers need it to run commands (install util-linux)"
            ),
            ContainerError::TooManyCommands => write!(
                f,
                "more than {MAX_COMMANDS} commands are running in this container at once"
            ),
            ContainerError::Command(e) => write!(f, "cannot run the command: {e}"),
        }
    }
}

impl std::error::Error for ContainerError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_exit_starts_with_upstreams_words_and_quotes_the_output() {
        let e = ContainerError::ExitedEarly {
            exit: ExitInfo::Code(1),
            output: "systemd-nspawn requires root to work. You are 1000".into(),
        };
        assert_eq!(
            e.to_string(),
            "systemd-nspawn process exited unexpectedly (code 1); its last output:\n\
             systemd-nspawn requires root to work. You are 1000"
        );
    }
}
