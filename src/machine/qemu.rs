//! Starting and stopping one QEMU: the state directory, the upstream-compatible command line
//! and environment, the child process in its own process group, and its pidfd.
//!
//! This module knows how upstream launches a start script (`run-<name>-vm` + appended
//! arguments, §4 of the upstream reference); [`crate::child`] spawns and ends the process
//! group. It does not read or write any of QEMU's channels; the machine does that.

use crate::child::{self, Child, SpawnOptions};
use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Largest path a unix socket address can hold (108 bytes including the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Why a machine could not be prepared or started.
#[derive(Debug)]
pub enum QemuError {
    StateDir(PathBuf, io::Error),
    SocketPathTooLong(PathBuf),
    Spawn(String, io::Error),
    Pipe(io::Error),
}

impl fmt::Display for QemuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QemuError::StateDir(p, e) => {
                write!(f, "cannot prepare state directory {}: {e}", p.display())
            }
            QemuError::SocketPathTooLong(p) => write!(
                f,
                "socket path {} is {} bytes, over the {MAX_SOCKET_PATH}-byte limit of unix \
                 sockets; point XDG_RUNTIME_DIR or TMPDIR at a shorter directory",
                p.display(),
                p.as_os_str().len()
            ),
            QemuError::Spawn(cmd, e) => write!(f, "cannot start `{cmd}`: {e}"),
            QemuError::Pipe(e) => write!(f, "cannot create a pipe for QEMU: {e}"),
        }
    }
}

impl std::error::Error for QemuError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            QemuError::StateDir(_, e) | QemuError::Spawn(_, e) | QemuError::Pipe(e) => Some(e),
            QemuError::SocketPathTooLong(_) => None,
        }
    }
}

/// Where a machine's files live (upstream §4.2).
#[derive(Debug, Clone)]
pub struct MachinePaths {
    pub state_dir: PathBuf,
    pub shared_dir: PathBuf,
    /// The directory of the three sockets: the state directory, unless the runtime directory
    /// is too long for socket paths (see `driver::dirs`).
    pub socket_dir: PathBuf,
    pub monitor: PathBuf,
    pub shell: PathBuf,
    pub qmp: PathBuf,
}

impl MachinePaths {
    /// Paths below `tmp_dir`, with the sockets below `socket_base` (usually `tmp_dir`).
    pub fn new(tmp_dir: &Path, socket_base: &Path, name: &str) -> MachinePaths {
        let dir_name = format!("vm-state-{name}");
        let socket_dir = socket_base.join(&dir_name);
        MachinePaths {
            shared_dir: tmp_dir.join("shared-xchg"),
            monitor: socket_dir.join("monitor"),
            shell: socket_dir.join("shell"),
            qmp: socket_dir.join("qmp"),
            state_dir: tmp_dir.join(dir_name),
            socket_dir,
        }
    }

    /// Fail early and clearly when a socket path cannot be bound.
    pub fn check_socket_lengths(&self) -> Result<(), QemuError> {
        for p in [&self.monitor, &self.shell, &self.qmp] {
            if p.as_os_str().len() > MAX_SOCKET_PATH {
                return Err(QemuError::SocketPathTooLong(p.clone()));
            }
        }
        Ok(())
    }
}

/// The three sockets of a machine, as QEMU's appended arguments name them.
#[derive(Debug, Clone, Copy)]
pub struct Sockets<'a> {
    pub monitor: &'a Path,
    pub qmp: &'a Path,
    pub shell: &'a Path,
}

impl MachinePaths {
    pub fn sockets(&self) -> Sockets<'_> {
        Sockets {
            monitor: &self.monitor,
            qmp: &self.qmp,
            shell: &self.shell,
        }
    }
}

/// Machine name from a start command, as upstream: `run-(.+)-vm$`, else `machine`.
pub fn name_from_start_command(cmd: &str) -> String {
    let trimmed = cmd.trim_end();
    if let Some(body) = trimmed.strip_suffix("-vm") {
        // Leftmost "run-" that leaves at least one character for the name (re.search).
        let mut from = 0;
        while let Some(i) = body[from..].find("run-") {
            let start = from + i + 4;
            if start < body.len() {
                return body[start..].to_owned();
            }
            from += i + 1;
        }
    }
    "machine".to_owned()
}

/// True when upstream would add `-nographic` (no display in the environment).
pub fn wants_nographic() -> bool {
    ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .all(|v| std::env::var_os(v).is_none())
}

/// The arguments upstream appends to the start script (§4.1), in its order.
pub fn appended_args(sockets: &Sockets<'_>, allow_reboot: bool, nographic: bool) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", sockets.qmp.display()),
        "-monitor".into(),
        format!("unix:{}", sockets.monitor.display()),
        "-chardev".into(),
        format!("socket,id=shell,path={}", sockets.shell.display()),
        "-device".into(),
        "virtio-serial".into(),
        "-device".into(),
        "virtconsole,chardev=shell".into(),
        "-device".into(),
        "virtio-rng-pci".into(),
        "-serial".into(),
        "stdio".into(),
    ];
    if !allow_reboot {
        a.push("-no-reboot".into());
    }
    if nographic {
        a.push("-nographic".into());
    }
    a
}

/// The environment upstream gives the start script on top of its own (§4.3).
pub fn start_env(paths: &MachinePaths) -> Vec<(String, String)> {
    vec![
        ("TMPDIR".into(), paths.state_dir.display().to_string()),
        ("SHARED_DIR".into(), paths.shared_dir.display().to_string()),
        ("USE_TMPDIR".into(), "1".into()),
    ]
}

/// A running start command.
#[derive(Debug)]
pub struct QemuProcess {
    /// The process we spawned; it leads its own process group.
    pub child: Child,
    /// QEMU's stdin (`-serial stdio` input, for `send_console`).
    pub stdin: OwnedFd,
    /// QEMU's stdout and stderr (serial console and QEMU's own messages).
    pub stdout: OwnedFd,
}

/// A start command that is a plain path runs directly (its pid becomes QEMU's after the
/// script's `exec`); anything else goes through `/bin/sh -c` like upstream.
fn is_plain_path(cmd: &str) -> bool {
    !cmd.is_empty()
        && cmd
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+,:@%=".contains(&b))
}

/// Spawn `command` + `args` in `cwd` with `env` added, in a new process group, stdin and
/// stdout/stderr on pipes (non-blocking on our side).
pub fn spawn(
    command: &str,
    args: &[String],
    env: &[(String, String)],
    cwd: &Path,
) -> Result<QemuProcess, QemuError> {
    let (stdin_r, stdin_w) = child::cloexec_pipe().map_err(QemuError::Pipe)?;
    let (out_r, out_w) = child::cloexec_pipe().map_err(QemuError::Pipe)?;
    let out_w2 = out_w.try_clone().map_err(QemuError::Pipe)?;
    let mut cmd = if is_plain_path(command) {
        let mut c = Command::new(command);
        c.args(args);
        c
    } else {
        // The start command is a shell line by definition; the arguments ntd appends carry
        // paths (and so machine names), which must stay one word each.
        let mut line = command.to_owned();
        for a in args {
            line.push(' ');
            super::words::shell_quote(a, &mut line);
        }
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(line);
        c
    };
    cmd.current_dir(cwd)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::from(stdin_r))
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(out_w2));
    let opts = SpawnOptions {
        own_group: true,
        nice: qemu_nice(),
    };
    let child =
        child::spawn(&mut cmd, opts).map_err(|e| QemuError::Spawn(command.to_owned(), e))?;
    drop(cmd); // closes our copies of the child's pipe ends
    child::set_nonblocking(&stdin_w).map_err(QemuError::Pipe)?;
    child::set_nonblocking(&out_r).map_err(QemuError::Pipe)?;
    Ok(QemuProcess {
        child,
        stdin: stdin_w,
        stdout: out_r,
    })
}

/// Niceness for QEMU (`NTD_QEMU_NICE`, default [`DEFAULT_QEMU_NICE`]; 0 leaves it alone).
///
/// The virtio console drops guest output whenever the driver does not read in time (QEMU
/// cannot throttle a console port), and on a host whose cores are all busy with guests the
/// driver waits for a core like everybody else. A slightly lower priority for QEMU than for
/// the driver, which needs very little CPU, keeps the consoles drained.
pub fn qemu_nice() -> Option<i32> {
    let nice = std::env::var("NTD_QEMU_NICE")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_QEMU_NICE);
    (nice != 0).then_some(nice.clamp(-20, 19))
}

/// See [`qemu_nice`].
pub const DEFAULT_QEMU_NICE: i32 = 0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_from_start_command_follows_upstream_regex() {
        assert_eq!(
            name_from_start_command("/nix/store/abc-nixos-vm/bin/run-server-vm"),
            "server"
        );
        assert_eq!(name_from_start_command("run-a-b-vm"), "a-b");
        assert_eq!(name_from_start_command("/bin/qemu-foo"), "machine");
        assert_eq!(name_from_start_command("run--vm"), "machine");
    }

    #[test]
    fn appended_args_match_upstream_order() {
        let p = MachinePaths::new(Path::new("/tmp/x"), Path::new("/tmp/x"), "m");
        let a = appended_args(&p.sockets(), false, true).join(" ");
        assert_eq!(
            a,
            "-qmp unix:/tmp/x/vm-state-m/qmp,server=on,wait=off -monitor unix:/tmp/x/vm-state-m/monitor \
             -chardev socket,id=shell,path=/tmp/x/vm-state-m/shell -device virtio-serial \
             -device virtconsole,chardev=shell -device virtio-rng-pci -serial stdio -no-reboot -nographic"
        );
        assert!(!appended_args(&p.sockets(), true, false).contains(&"-no-reboot".to_string()));
    }

    #[test]
    fn long_socket_paths_are_rejected_with_advice() {
        let long = "/".to_owned() + &"d".repeat(100);
        let p = MachinePaths::new(Path::new(&long), Path::new(&long), "m");
        let e = p.check_socket_lengths().unwrap_err().to_string();
        assert!(e.contains("TMPDIR"), "{e}");
    }

    #[test]
    fn plain_paths_run_directly_shell_lines_do_not() {
        assert!(is_plain_path("/nix/store/x-y/bin/run-m-vm"));
        assert!(!is_plain_path("FOO=1 /bin/run-m-vm"));
        assert!(!is_plain_path("run-m-vm; rm -rf /"));
    }
}
