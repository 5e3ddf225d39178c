//! Child processes: spawning, tracking, reaping and ending them.
//!
//! Every process ntd starts (a machine's start script, the Python shim) goes through
//! [`spawn`]: the termination signals the driver blocks are unblocked again in the child, the
//! child gets a parent-death signal (so a driver killed with SIGKILL, by the OOM killer or a
//! cancelled CI job, takes its children along; it survives the start script's `exec` of QEMU),
//! and optionally leads a process group of its own, which [`Child::signal`] ends as a whole.
//! A [`Child`] is tracked through a pidfd that the poll loop watches and reaped without
//! blocking ([`Child::try_reap`]). This module owns no fd of the poll loop and never waits.

use rustix::process::{Pid, Signal};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Mutex;

/// Every child not yet reaped (pid, leads its own group): what the panic hook ends.
static LIVE: Mutex<Vec<(i32, bool)>> = Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<(i32, bool)>> {
    // A panic while the list was locked leaves it consistent (push/retain only).
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Make a panic anywhere in ntd SIGKILL every child (group) at once, before anything else
/// runs: a driver bug must never leave a guest behind. The previous hook still prints the
/// message; the run then ends through the normal cleanup (or aborts, if cleanup panics too).
pub fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        for &(pid, group) in live().iter() {
            if let Some(pid) = Pid::from_raw(pid) {
                let _ = if group {
                    rustix::process::kill_process_group(pid, Signal::KILL)
                } else {
                    rustix::process::kill_process(pid, Signal::KILL)
                };
            }
        }
        eprintln!("ntd: internal error (a bug in ntd; please report it); every child was killed");
        previous(info);
    }));
}

/// The signal a child receives when the driver dies (even by SIGKILL).
pub const PARENT_DEATH_SIGNAL: Signal = Signal::KILL;

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

/// How to start a child, beyond what the [`Command`] says.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpawnOptions {
    /// Lead a new process group (QEMU and any shell in front of it end together).
    pub own_group: bool,
    /// Niceness for the child (and every thread it starts); `None` inherits ours.
    pub nice: Option<i32>,
}

/// A running (or exited, not yet reaped) child.
#[derive(Debug)]
pub struct Child {
    pid: Pid,
    pidfd: OwnedFd,
    own_group: bool,
}

/// Start `cmd` as a tracked child. See the module documentation for what every child gets.
pub fn spawn(cmd: &mut Command, opts: SpawnOptions) -> io::Result<Child> {
    let parent = rustix::process::getpid();
    if opts.own_group {
        cmd.process_group(0);
    }
    let nice = opts.nice;
    // SAFETY: the closure runs in the forked child before exec and makes only system calls
    // (sigprocmask, prctl, getppid, setpriority), which are async-signal-safe; it takes no
    // locks and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            crate::signals::clear_mask_in_child()?;
            rustix::process::set_parent_process_death_signal(Some(PARENT_DEATH_SIGNAL))?;
            // The driver may have died between fork and prctl: then nobody would ever send
            // the signal, so give up now.
            if rustix::process::getppid() != Some(parent) {
                return Err(io::Error::other("the driver exited while starting a child"));
            }
            if let Some(n) = nice {
                let _ = rustix::process::setpriority_process(None, n);
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    // The child cannot be reaped before we wait for it, so its pid is still valid here.
    let pid = Pid::from_raw(child.id() as i32).ok_or_else(|| io::Error::other("spawned pid 0"))?;
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
    drop(child); // std neither waits nor kills on drop; the pidfd tracks the process.
    live().push((pid.as_raw_nonzero().get(), opts.own_group));
    Ok(Child {
        pid,
        pidfd,
        own_group: opts.own_group,
    })
}

impl Drop for Child {
    /// A dropped child is reaped or given up on: the panic hook no longer ends it.
    fn drop(&mut self) {
        let pid = self.raw_pid();
        live().retain(|(p, _)| *p != pid);
    }
}

impl Child {
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The pid as a plain number (for logs and the shim).
    pub fn raw_pid(&self) -> i32 {
        self.pid.as_raw_nonzero().get()
    }

    /// Readable once the child has exited: register it in the poll loop.
    pub fn pidfd(&self) -> &OwnedFd {
        &self.pidfd
    }

    /// Non-blocking reap: `Some(status)` once the child has exited.
    pub fn try_reap(&self) -> Option<ExitInfo> {
        use rustix::process::{waitid, WaitId, WaitIdOptions};
        match waitid(
            WaitId::PidFd(self.pidfd.as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        ) {
            Ok(Some(st)) => {
                // Reaped: the pid may be reused from now on, so the panic hook must forget it.
                let pid = self.raw_pid();
                live().retain(|(p, _)| *p != pid);
                Some(if let Some(code) = st.exit_status() {
                    ExitInfo::Code(code)
                } else if let Some(sig) = st.terminating_signal() {
                    ExitInfo::Signal(sig)
                } else {
                    ExitInfo::Code(-1)
                })
            }
            Ok(None) => None,
            // ECHILD: reaped already; treat as gone.
            Err(_) => Some(ExitInfo::Code(-1)),
        }
    }

    /// Send `sig` to the child's process group (or to the child alone if it leads none).
    /// A group that is gone already is what the caller wants, so errors are ignored.
    pub fn signal(&self, sig: Signal) {
        let _ = if self.own_group {
            rustix::process::kill_process_group(self.pid, sig)
        } else {
            rustix::process::kill_process(self.pid, sig)
        };
    }

    /// Begin ending the child: SIGTERM to its group now, and the instant of the SIGKILL that
    /// follows `grace` later stored in `kill_at` (the caller's timer sends it). A second call
    /// (cleanup after the global timeout) never postpones an earlier SIGKILL.
    pub fn term_then_kill(
        &self,
        kill_at: &mut Option<std::time::Instant>,
        grace: std::time::Duration,
    ) {
        self.signal(Signal::TERM);
        let at = std::time::Instant::now() + grace;
        *kill_at = Some(kill_at.map_or(at, |t| t.min(at)));
    }

    /// SIGKILL the child (its group) and wait for it: for error paths that cannot hand the
    /// child to the poll loop. SIGKILL cannot be caught, so the wait is short.
    pub fn kill_and_reap(&self) {
        use rustix::process::{waitid, WaitId, WaitIdOptions};
        self.signal(Signal::KILL);
        let _ = waitid(WaitId::PidFd(self.pidfd.as_fd()), WaitIdOptions::EXITED);
    }

    /// True while any process of the child's group exists (for a child without a group of
    /// its own: while the child has not been reaped).
    pub fn alive(&self) -> bool {
        if self.own_group {
            rustix::process::test_kill_process_group(self.pid).is_ok()
        } else {
            rustix::process::test_kill_process(self.pid).is_ok()
        }
    }
}

/// A pipe whose both ends are close-on-exec (std dups the child's end onto 0/1/2).
pub fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

pub fn set_nonblocking(fd: impl AsFd) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(&fd)?;
    rustix::fs::fcntl_setfl(&fd, flags | rustix::fs::OFlags::NONBLOCK)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_exit(c: &Child) -> ExitInfo {
        let mut fds = [rustix::event::PollFd::new(
            c.pidfd(),
            rustix::event::PollFlags::IN,
        )];
        let _ = rustix::event::poll(&mut fds, None);
        c.try_reap().expect("readable pidfd means exited")
    }

    #[test]
    fn spawn_exit_code_is_reaped_through_the_pidfd() {
        let c = spawn(
            Command::new("/bin/sh").args(["-c", "exit 7"]),
            SpawnOptions::default(),
        )
        .expect("spawn sh");
        assert_eq!(wait_exit(&c), ExitInfo::Code(7));
        assert!(!c.alive());
    }

    #[test]
    fn signal_own_group_ends_the_grandchild_too() {
        // The shell forks a sleep and waits; ending the group ends both.
        let c = spawn(
            Command::new("/bin/sh").args(["-c", "sleep 30; true"]),
            SpawnOptions {
                own_group: true,
                nice: None,
            },
        )
        .expect("spawn sh");
        assert!(c.alive());
        c.signal(Signal::KILL);
        assert_eq!(wait_exit(&c), ExitInfo::Signal(9));
        // The sleep may take a moment to be reaped by init; the group must drain.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while c.alive() && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!c.alive());
    }

    #[test]
    fn exit_info_shell_status_maps_signals_to_128_plus() {
        assert_eq!(ExitInfo::Code(3).shell_status(), 3);
        assert_eq!(ExitInfo::Signal(15).shell_status(), 143);
        assert_eq!(ExitInfo::Signal(9).to_string(), "signal 9");
    }
}
