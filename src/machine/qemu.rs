//! Starting and stopping one QEMU: the state directory, the upstream-compatible command line
//! and environment, the child process in its own process group, and its pidfd.
//!
//! This module knows how upstream launches a start script (`run-<name>-vm` + appended
//! arguments, §4 of the upstream reference) and how to end the whole process group. It does
//! not read or write any of QEMU's channels; the machine does that.

use rustix::process::{Pid, Signal};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
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

impl std::error::Error for QemuError {}

/// Where a machine's files live (upstream §4.2).
#[derive(Debug, Clone)]
pub struct MachinePaths {
    pub state_dir: PathBuf,
    pub shared_dir: PathBuf,
    pub monitor: PathBuf,
    pub shell: PathBuf,
    pub qmp: PathBuf,
}

impl MachinePaths {
    pub fn new(tmp_dir: &Path, name: &str) -> MachinePaths {
        let state_dir = tmp_dir.join(format!("vm-state-{name}"));
        MachinePaths {
            shared_dir: tmp_dir.join("shared-xchg"),
            monitor: state_dir.join("monitor"),
            shell: state_dir.join("shell"),
            qmp: state_dir.join("qmp"),
            state_dir,
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

/// Upstream's `pythonize_name`: a valid Python identifier for the machine variable.
pub fn pythonize_name(name: &str) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            let ok = c.is_ascii_alphabetic() || c == '_' || (i > 0 && c.is_ascii_digit());
            if ok {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// True when upstream would add `-nographic` (no display in the environment).
pub fn wants_nographic() -> bool {
    ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .all(|v| std::env::var_os(v).is_none())
}

/// The arguments upstream appends to the start script (§4.1), in its order.
pub fn appended_args(paths: &MachinePaths, allow_reboot: bool, nographic: bool) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", paths.qmp.display()),
        "-monitor".into(),
        format!("unix:{}", paths.monitor.display()),
        "-chardev".into(),
        format!("socket,id=shell,path={}", paths.shell.display()),
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
    /// Pid of the process we spawned; it leads its own process group.
    pub pid: Pid,
    pub pidfd: OwnedFd,
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
    let (stdin_r, stdin_w) = cloexec_pipe()?;
    let (out_r, out_w) = cloexec_pipe()?;
    let out_w2 = out_w.try_clone().map_err(QemuError::Pipe)?;
    let mut cmd = if is_plain_path(command) {
        let mut c = Command::new(command);
        c.args(args);
        c
    } else {
        let mut line = command.to_owned();
        for a in args {
            line.push(' ');
            line.push_str(a);
        }
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(line);
        c
    };
    cmd.current_dir(cwd)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .process_group(0)
        .stdin(Stdio::from(stdin_r))
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(out_w2));
    crate::signals::unblock_in_child(&mut cmd);
    if let Some(nice) = qemu_nice() {
        // SAFETY: the closure runs in the forked child before exec and only makes one
        // setpriority system call (async-signal-safe); every QEMU thread inherits the value.
        unsafe {
            cmd.pre_exec(move || {
                let _ = rustix::process::setpriority_process(None, nice);
                Ok(())
            });
        }
    }
    let child = cmd
        .spawn()
        .map_err(|e| QemuError::Spawn(command.to_owned(), e))?;
    // The child cannot be reaped before we wait for it, so its pid is still valid here.
    let pid = Pid::from_raw(child.id() as i32)
        .ok_or_else(|| QemuError::Spawn(command.to_owned(), io::Error::other("spawned pid 0")))?;
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
        .map_err(|e| QemuError::Spawn(command.to_owned(), e.into()))?;
    drop(child); // std neither waits nor kills on drop; the pidfd tracks the process.
    set_nonblocking(&stdin_w).map_err(QemuError::Pipe)?;
    set_nonblocking(&out_r).map_err(QemuError::Pipe)?;
    Ok(QemuProcess {
        pid,
        pidfd,
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

/// A pipe whose both ends are close-on-exec (std dups the child's end onto 0/1/2).
pub fn cloexec_pipe() -> Result<(OwnedFd, OwnedFd), QemuError> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| QemuError::Pipe(e.into()))
}

pub fn set_nonblocking(fd: impl AsFd) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(&fd)?;
    rustix::fs::fcntl_setfl(&fd, flags | rustix::fs::OFlags::NONBLOCK)?;
    Ok(())
}

/// Send `sig` to the whole process group led by `pid` (QEMU and any shell in front of it).
pub fn signal_group(pid: Pid, sig: Signal) {
    // ESRCH: the group is already gone, which is what we want.
    let _ = rustix::process::kill_process_group(pid, sig);
}

/// True while any process of the group led by `pid` exists.
pub fn group_alive(pid: Pid) -> bool {
    rustix::process::test_kill_process_group(pid).is_ok()
}

/// Non-blocking reap through the pidfd: `Some(status)` once the process has exited.
pub fn try_reap(pidfd: &OwnedFd) -> Option<ExitInfo> {
    use rustix::process::{waitid, WaitId, WaitIdOptions};
    match waitid(
        WaitId::PidFd(pidfd.as_fd()),
        WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
    ) {
        Ok(Some(st)) => {
            if let Some(code) = st.exit_status() {
                Some(ExitInfo::Code(code))
            } else if let Some(sig) = st.terminating_signal() {
                Some(ExitInfo::Signal(sig))
            } else {
                Some(ExitInfo::Code(-1))
            }
        }
        Ok(None) => None,
        // ECHILD: somebody else reaped it; treat as gone.
        Err(_) => Some(ExitInfo::Code(-1)),
    }
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitInfo {
    Code(i32),
    Signal(i32),
}

impl ExitInfo {
    /// Shell-style status: the code, or 128 + signal.
    pub fn shell_status(self) -> i32 {
        match self {
            ExitInfo::Code(c) => c,
            ExitInfo::Signal(s) => 128 + s,
        }
    }
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitInfo::Code(c) => write!(f, "code {c}"),
            ExitInfo::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

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
    fn pythonize_name_replaces_invalid_characters() {
        assert_eq!(pythonize_name("web-server.1"), "web_server_1");
        assert_eq!(pythonize_name("1st"), "_st");
        assert_eq!(pythonize_name("ok_name2"), "ok_name2");
    }

    #[test]
    fn appended_args_match_upstream_order() {
        let p = MachinePaths::new(Path::new("/tmp/x"), "m");
        let a = appended_args(&p, false, true).join(" ");
        assert_eq!(
            a,
            "-qmp unix:/tmp/x/vm-state-m/qmp,server=on,wait=off -monitor unix:/tmp/x/vm-state-m/monitor \
             -chardev socket,id=shell,path=/tmp/x/vm-state-m/shell -device virtio-serial \
             -device virtconsole,chardev=shell -device virtio-rng-pci -serial stdio -no-reboot -nographic"
        );
        assert!(!appended_args(&p, true, false).contains(&"-no-reboot".to_string()));
    }

    #[test]
    fn long_socket_paths_are_rejected_with_advice() {
        let long = "/".to_owned() + &"d".repeat(100);
        let p = MachinePaths::new(Path::new(&long), "m");
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
