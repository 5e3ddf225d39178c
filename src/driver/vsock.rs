//! The newest generation's SSH backdoor (configuration `enable_ssh_backdoor`, nixpkgs PRs
//! #453305/#422066): one `vhost-device-vsock` process serves a vhost-user vsock device per
//! machine, as upstream starts it. QEMU connects to each machine's *guest* socket (ntd
//! appends `-chardev socket,id=vsock_ssh,reconnect=0,path=<guest>` and `-device
//! vhost-user-vsock-pci,chardev=vsock_ssh`); the host reaches the guest's vsock ports through
//! the *host* socket with the hybrid-vsock handshake (`CONNECT <port>\n` → `OK <port>\n`),
//! which `ssh vsock-mux/<host socket>` speaks through systemd-ssh-proxy. Guest CIDs are 3,
//! 4, … in configuration order.
//!
//! This module owns that process and the directory of its sockets: started before the loop
//! runs (its sockets must exist before any QEMU starts), SIGKILLed and reaped at cleanup. It
//! touches no fd of the loop.

use crate::child::{self, Child, ExitInfo, SpawnOptions};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The program, overridable for tests and packagers (`NTD_VHOST_DEVICE_VSOCK`).
pub const PROGRAM_ENV: &str = "NTD_VHOST_DEVICE_VSOCK";
const PROGRAM: &str = "vhost-device-vsock";
/// How long the backend may take to create its sockets.
const READY_PATIENCE: Duration = Duration::from_secs(10);
const READY_POLL: Duration = Duration::from_millis(5);
/// The first guest CID upstream hands out (2 is the host).
pub const FIRST_CID: u32 = 3;

/// One machine's two sockets and its guest CID (upstream's `VsockPair`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockPair {
    pub guest: PathBuf,
    pub host: PathBuf,
    pub cid: u32,
}

/// Upstream's socket names in `dir`: `<name>_guest.socket`, `<name>_host.socket`.
pub fn plan(dir: &Path, names: &[String]) -> Vec<(String, VsockPair)> {
    names
        .iter()
        .zip(FIRST_CID..)
        .map(|(name, cid)| {
            (
                name.clone(),
                VsockPair {
                    guest: dir.join(format!("{name}_guest.socket")),
                    host: dir.join(format!("{name}_host.socket")),
                    cid,
                },
            )
        })
        .collect()
}

/// The backend's arguments: `--vm guest-cid=C,socket=G,uds-path=H` per machine.
pub fn backend_args(pairs: &[(String, VsockPair)]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|(_, p)| {
            [
                "--vm".to_owned(),
                format!(
                    "guest-cid={},socket={},uds-path={}",
                    p.cid,
                    p.guest.display(),
                    p.host.display()
                ),
            ]
        })
        .collect()
}

/// The QEMU arguments that give a machine its vhost-user vsock device (upstream's
/// `VHostVsock.qemu_args`).
pub fn qemu_args(guest: &Path) -> Vec<String> {
    vec![
        "-chardev".into(),
        format!("socket,id=vsock_ssh,reconnect=0,path={}", guest.display()),
        "-device".into(),
        "vhost-user-vsock-pci,chardev=vsock_ssh".into(),
    ]
}

/// Why the backend could not start (the run cannot: its machines would have no device).
#[derive(Debug)]
pub enum VsockError {
    /// The directory of the sockets could not be made.
    Dir { path: PathBuf, source: io::Error },
    /// The program could not be started.
    Spawn { program: String, source: io::Error },
    /// It exited before creating its sockets.
    Exited { exit: ExitInfo, dir: PathBuf },
    /// It created no socket within ten seconds.
    NotReady { dir: PathBuf },
}

impl fmt::Display for VsockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VsockError::Dir { path, source } => write!(
                f,
                "cannot create a directory for the SSH backdoor's vsock sockets ({}): {source}",
                path.display()
            ),
            VsockError::Spawn { program, source } => write!(
                f,
                "the SSH backdoor (enable_ssh_backdoor) needs {program} (rust-vmm's \
                 vhost-device-vsock; nixpkgs: vhost-device-vsock), which could not be started: \
                 {source}"
            ),
            VsockError::Exited { exit, dir } => write!(
                f,
                "vhost-device-vsock exited ({exit}) before creating its sockets in {}",
                dir.display()
            ),
            VsockError::NotReady { dir } => write!(
                f,
                "vhost-device-vsock created no socket in {} within {} s",
                dir.display(),
                READY_PATIENCE.as_secs()
            ),
        }
    }
}

impl std::error::Error for VsockError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            VsockError::Dir { source, .. } | VsockError::Spawn { source, .. } => Some(source),
            VsockError::Exited { .. } | VsockError::NotReady { .. } => None,
        }
    }
}

/// The running backend.
#[derive(Debug)]
pub struct VsockBackend {
    dir: PathBuf,
    pub sockets: Vec<(String, VsockPair)>,
    child: Child,
}

impl VsockBackend {
    /// Start the backend for `names` with its sockets in a new 0700 directory `dir`, and
    /// wait until it listens on every guest socket.
    pub fn start(dir: PathBuf, names: &[String]) -> Result<VsockBackend, VsockError> {
        use std::os::unix::fs::DirBuilderExt;
        if let Err(source) = std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            return Err(VsockError::Dir { path: dir, source });
        }
        let sockets = plan(&dir, names);
        let program = std::env::var(PROGRAM_ENV).unwrap_or_else(|_| PROGRAM.to_owned());
        let mut cmd = Command::new(&program);
        cmd.args(backend_args(&sockets));
        let child = child::spawn(
            &mut cmd,
            SpawnOptions {
                own_group: true,
                nice: None,
            },
        )
        .map_err(|source| {
            let _ = std::fs::remove_dir_all(&dir);
            VsockError::Spawn { program, source }
        })?;
        let backend = VsockBackend {
            dir,
            sockets,
            child,
        };
        match backend.wait_ready() {
            Ok(()) => Ok(backend),
            Err(e) => {
                let mut backend = backend;
                backend.stop();
                Err(e)
            }
        }
    }

    fn wait_ready(&self) -> Result<(), VsockError> {
        let give_up = Instant::now() + READY_PATIENCE;
        loop {
            if self.sockets.iter().all(|(_, p)| p.guest.exists()) {
                return Ok(());
            }
            if let Some(exit) = self.child.try_reap() {
                return Err(VsockError::Exited {
                    exit,
                    dir: self.dir.clone(),
                });
            }
            if Instant::now() >= give_up {
                return Err(VsockError::NotReady {
                    dir: self.dir.clone(),
                });
            }
            std::thread::sleep(READY_POLL);
        }
    }

    /// The machine's sockets, if it has any.
    pub fn pair(&self, name: &str) -> Option<&VsockPair> {
        self.sockets.iter().find(|(n, _)| n == name).map(|(_, p)| p)
    }

    /// End the backend and remove its sockets.
    pub fn stop(&mut self) {
        self.child.kill_and_reap();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_cids_and_arguments_are_upstreams() {
        let names = vec!["alice".to_owned(), "bob".to_owned()];
        let pairs = plan(Path::new("/r/v"), &names);
        assert_eq!(pairs[1].1.cid, 4);
        assert_eq!(pairs[0].1.host, Path::new("/r/v/alice_host.socket"));
        assert_eq!(
            backend_args(&pairs),
            [
                "--vm",
                "guest-cid=3,socket=/r/v/alice_guest.socket,uds-path=/r/v/alice_host.socket",
                "--vm",
                "guest-cid=4,socket=/r/v/bob_guest.socket,uds-path=/r/v/bob_host.socket",
            ]
        );
        assert_eq!(
            qemu_args(&pairs[0].1.guest).join(" "),
            "-chardev socket,id=vsock_ssh,reconnect=0,path=/r/v/alice_guest.socket \
             -device vhost-user-vsock-pci,chardev=vsock_ssh"
        );
    }

    #[test]
    fn a_missing_program_is_an_error_that_names_it() {
        let dir = std::env::temp_dir().join(format!("ntd-vsock-test-{}", std::process::id()));
        std::env::set_var(PROGRAM_ENV, "/nonexistent/vhost-device-vsock");
        let e = VsockBackend::start(dir.clone(), &["m".to_owned()])
            .unwrap_err()
            .to_string();
        std::env::remove_var(PROGRAM_ENV);
        assert!(e.contains("needs /nonexistent/vhost-device-vsock"), "{e}");
        assert!(!dir.exists());
    }
}
