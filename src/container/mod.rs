//! One systemd-nspawn container (upstream's `NspawnMachine`), a member of the driver's poll
//! loop like a VM: its start script `run-<name>-nspawn`, the notify socket its nspawn reports
//! to, the script's console output, every command's `nsenter` child, and the follower of its
//! journal — all fds on the one loop, no threads.
//!
//! A container goes `Stopped → Starting → Ready → Exited` (and `Stopped` again once the
//! driver has seen the exit, so that `start()` boots it anew): starting runs the script with
//! exactly upstream's environment (`RUN_NSPAWN_ROOT_DIR` = the state directory,
//! `RUN_NSPAWN_SHARED_DIR`, `NOTIFY_SOCKET`; no `PATH`), in the state directory, in a cgroup
//! of its own ([`cgroup`]); it is ready once the notify socket has carried both
//! `X_NSPAWN_LEADER_PID=` and `READY=1` ([`notify`]). The socket is drained for the
//! container's whole life (PID 1 re-sends `READY=1` on every `daemon-reexec` and would block
//! on a full socket), and so is the script's console pipe (upstream never reads it; a full
//! pipe stalls nspawn's console forwarding): its tail is kept for the error a failed start
//! reports. Leader and readiness belong to one start: after a shutdown the next start waits
//! for the new leader (upstream keeps the dead one). Commands are [`command::RunningCommand`]s
//! ([`exec`] has their text); several may run at once. Cleanup ends the script's process
//! group (its `run-nspawn` removes veths and netns on SIGTERM; SIGKILL after a grace), every
//! command's group and the journal follower, and removes the cgroup and the socket.
//!
//! [`hostenv`] prepares the host (upstream's checks, ntd's private namespaces) before the first
//! container starts. The container never blocks; the driver's ops submit and poll.

pub mod cgroup;
pub mod command;
mod control;
mod error;
mod events;
pub mod exec;
pub mod hostenv;
mod journal;
pub mod notify;
mod paths;
pub mod pidns;
pub mod ready;
mod tools;

use crate::child::{self, Child, ExitInfo, SpawnOptions};
use crate::log::Logger;
use crate::machine::session::{ShellRequest, ShellResult};
use crate::machine::shell::NonceSource;
use crate::reactor::{Ctx, Owner};
use cgroup::ContainerCgroup;
use command::{CommandFd, CommandTokens, RunningCommand};
pub use error::ContainerError;
use journal::Journal;
use mio::net::UnixDatagram;
use mio::unix::SourceFd;
use mio::{Interest, Registry};
pub use paths::ContainerPaths;
use rustix::process::Signal;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
pub use tools::Tools;

/// Upstream waits 30 s for the start script after SIGTERM before it sends SIGKILL.
pub const TERMINATE_GRACE: Duration = Duration::from_secs(30);
/// Tail of the script's console output kept for the error of a failed start.
pub const CONSOLE_TAIL: usize = 8192;
/// Commands running at once in one container, at most.
pub const MAX_COMMANDS: usize = 64;
/// Longest unix socket path (108 bytes with the NUL).
pub(crate) const MAX_SOCKET_PATH: usize = 107;
const READ_CHUNK: usize = 64 * 1024;
/// First token slot of the commands; each command takes four slots.
const COMMAND_BASE: usize = 8;

/// The fds of a container on the poll loop (commands follow at [`COMMAND_BASE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Notify = 0,
    Console = 1,
    Pidfd = 2,
    JournalOutput = 3,
    JournalPidfd = 4,
}

fn command_slot(index: usize, fd: CommandFd) -> usize {
    COMMAND_BASE + 4 * index + fd as usize
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Stopped,
    Starting,
    Ready,
    Exited,
}

/// Where a start stands, for the driver's waiting ops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    NotStarted,
    Starting,
    /// Ready: commands go to this leader pid.
    Ready(i32),
    /// The start script ended before the container was ready (or after, while nobody asked).
    Failed(String),
}

struct Process {
    child: Child,
    /// Upstream gives the script a stdin pipe it never writes; ntd keeps the write end open.
    _stdin: OwnedFd,
    console: Option<OwnedFd>,
}

pub struct Container {
    pub name: String,
    index: usize,
    owner: Owner,
    pub paths: ContainerPaths,
    pub start_script: String,
    pub keep_state: bool,
    tools: Tools,
    phase: Phase,
    process: Option<Process>,
    exit: Option<ExitInfo>,
    console_tail: VecDeque<u8>,
    notify: Option<UnixDatagram>,
    leader: Option<i32>,
    ready: bool,
    /// After READY: waiting for the container's service manager ([`ready`]).
    probe: Option<ready::ManagerProbe>,
    commands: Vec<Option<RunningCommand>>,
    next_command: u64,
    /// The driver's command in flight ([`Container::send`]).
    in_flight: Option<u64>,
    nonces: NonceSource,
    journal: Journal,
    cgroup: Option<ContainerCgroup>,
    kill_deadline: Option<Instant>,
    killed: bool,
    read_buf: Vec<u8>,
    pub started_at: Option<Instant>,
    pub ready_at: Option<Instant>,
}

impl Container {
    /// Machine number `index` of the run (its owner id on the loop).
    pub fn new(
        name: &str,
        index: usize,
        tmp_dir: &Path,
        socket_base: &Path,
        start_script: &str,
        tools: Tools,
    ) -> Container {
        let owner = Owner::Machine(index);
        let paths = ContainerPaths::new(tmp_dir, socket_base, name);
        let journal = Journal::new(
            &paths.state_dir,
            tools.journalctl.clone(),
            owner.token(Slot::JournalOutput as usize),
            owner.token(Slot::JournalPidfd as usize),
        );
        Container {
            name: name.to_owned(),
            index,
            owner,
            paths,
            start_script: start_script.to_owned(),
            keep_state: false,
            tools,
            phase: Phase::Stopped,
            process: None,
            exit: None,
            console_tail: VecDeque::new(),
            notify: None,
            leader: None,
            ready: false,
            probe: None,
            commands: Vec::new(),
            next_command: 1,
            in_flight: None,
            nonces: NonceSource::new(),
            journal,
            cgroup: None,
            kill_deadline: None,
            killed: false,
            read_buf: vec![0; READ_CHUNK],
            started_at: None,
            ready_at: None,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Upstream's `is_up()`: started and not yet seen to shut down.
    pub fn is_up(&self) -> bool {
        matches!(self.phase, Phase::Starting | Phase::Ready)
    }

    pub fn exit_info(&self) -> Option<ExitInfo> {
        self.exit
    }

    /// The start script's pid while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.process
            .as_ref()
            .filter(|_| self.is_up())
            .map(|p| p.child.raw_pid())
    }

    pub fn readiness(&self) -> Readiness {
        match self.phase {
            Phase::Stopped => Readiness::NotStarted,
            Phase::Starting => Readiness::Starting,
            Phase::Ready => self.leader.map_or(Readiness::Starting, Readiness::Ready),
            Phase::Exited => Readiness::Failed(self.exit_report()),
        }
    }

    /// The script's recent console output.
    pub fn console_text(&self) -> String {
        let v: Vec<u8> = self.console_tail.iter().copied().collect();
        String::from_utf8_lossy(&v).trim_end().to_owned()
    }

    /// Remove the state directory unless state is kept (upstream does so at start-up).
    pub fn reset_state_dir(&self, log: &mut Logger) -> Result<(), ContainerError> {
        let dir = &self.paths.state_dir;
        if dir.exists() && !self.keep_state {
            log.info(&format!(
                "deleting machine state directory {}",
                dir.display()
            ));
            log.info("if you want to keep the machine state, pass --keep-machine-state");
            std::fs::remove_dir_all(dir)
                .map_err(|e| ContainerError::Prepare(format!("remove {}", dir.display()), e))?;
        }
        Ok(())
    }

    /// Run the start script (upstream `start()`; asynchronous). No-op while it runs.
    pub fn start(&mut self, cx: &mut Ctx<'_>) -> Result<(), ContainerError> {
        if self.is_up() {
            return Ok(());
        }
        let sock = self.paths.notify_socket.clone();
        if sock.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(ContainerError::SocketPathTooLong(sock));
        }
        for (dir, mode) in [
            (&self.paths.state_dir, 0o700),
            (&self.paths.shared_dir, 0o700),
        ] {
            std::fs::create_dir_all(dir)
                .map_err(|e| ContainerError::Prepare(format!("create {}", dir.display()), e))?;
            set_mode(dir, mode);
        }
        self.release_fds(cx.registry);
        let _ = std::fs::remove_file(&sock);
        let mut notify = UnixDatagram::bind(&sock)
            .map_err(|e| ContainerError::Prepare(format!("bind {}", sock.display()), e))?;
        set_mode(&sock, 0o600);
        cx.registry
            .register(
                &mut notify,
                self.owner.token(Slot::Notify as usize),
                Interest::READABLE,
            )
            .map_err(|e| ContainerError::Prepare("register the notify socket".into(), e))?;
        self.notify = Some(notify);
        if self.cgroup.is_none() {
            let leaf =
                cgroup::leaf_name(cgroup::own_pid_namespace(), std::process::id(), self.index);
            match ContainerCgroup::create(&leaf) {
                Ok(cg) => self.cgroup = Some(cg),
                Err(e) => cx.log.warning(
                    Some(&self.name),
                    &format!(
                        "cannot give the container a cgroup of its own ({e}); containers \
                         started from one cgroup share systemd-nspawn's payload cgroup"
                    ),
                ),
            }
        }
        let process = self.spawn_script()?;
        let reg = |fd: &OwnedFd, slot: Slot| {
            cx.registry
                .register(
                    &mut SourceFd(&fd.as_raw_fd()),
                    self.owner.token(slot as usize),
                    Interest::READABLE,
                )
                .map_err(|e| ContainerError::Prepare("register the start script".into(), e))
        };
        if let Some(console) = process.console.as_ref() {
            reg(console, Slot::Console)?;
        }
        reg(process.child.pidfd(), Slot::Pidfd)?;
        cx.log.machine(
            &self.name,
            &format!("systemd-nspawn running (pid {})", process.child.raw_pid()),
        );
        let now = Instant::now();
        self.process = Some(process);
        self.phase = Phase::Starting;
        self.exit = None;
        self.leader = None;
        self.ready = false;
        self.probe = None;
        self.console_tail.clear();
        self.kill_deadline = None;
        self.killed = false;
        self.started_at = Some(now);
        self.ready_at = None;
        self.journal.container_started(now, cx.log, &self.name);
        Ok(())
    }

    fn spawn_script(&self) -> Result<Process, ContainerError> {
        let pipe_err = |e| ContainerError::Prepare("create a pipe".into(), e);
        let (in_r, in_w) = child::cloexec_pipe().map_err(pipe_err)?;
        let (out_r, out_w) = child::cloexec_pipe().map_err(pipe_err)?;
        let out_w2 = out_w.try_clone().map_err(pipe_err)?;
        // In a PID namespace of its own when unshare is there (see `pidns`), else as upstream.
        let mut cmd = match self.tools.unshare.as_ref() {
            Some(unshare) => {
                let mut c = std::process::Command::new(unshare);
                c.args(["--pid", "--fork", "--mount-proc", "--kill-child", "--"])
                    .arg(&self.start_script);
                c
            }
            None => std::process::Command::new(&self.start_script),
        };
        cmd.env_clear()
            .envs(self.paths.start_env())
            .current_dir(&self.paths.state_dir)
            .stdin(Stdio::from(in_r))
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::from(out_w2));
        if let Some(cg) = self.cgroup.as_ref() {
            let fds: Vec<_> = cg.procs_fds();
            // SAFETY: the closure only calls write(2) on fds opened before the fork.
            unsafe {
                cmd.pre_exec(move || cgroup::join_fds(&fds));
            }
        }
        let opts = SpawnOptions {
            own_group: true,
            nice: None,
        };
        let child = child::spawn(&mut cmd, opts)
            .map_err(|e| ContainerError::Spawn(self.start_script.clone(), e))?;
        drop(cmd);
        child::set_nonblocking(&out_r).map_err(pipe_err)?;
        Ok(Process {
            child,
            _stdin: in_w,
            console: Some(out_r),
        })
    }

    /// Start `request` in the ready container; its result comes from [`Container::take_result`].
    pub fn run(
        &mut self,
        registry: &Registry,
        request: &ShellRequest,
    ) -> Result<u64, ContainerError> {
        let leader = match self.readiness() {
            Readiness::Ready(pid) => pid,
            Readiness::NotStarted => return Err(ContainerError::NotRunning),
            Readiness::Starting => return Err(ContainerError::NotReady),
            Readiness::Failed(_) => return Err(ContainerError::NotRunning),
        };
        let nsenter = self
            .tools
            .nsenter
            .clone()
            .ok_or(ContainerError::NoNsenter)?;
        let index = match self.commands.iter().position(Option::is_none) {
            Some(i) => i,
            None if self.commands.len() < MAX_COMMANDS => {
                self.commands.push(None);
                self.commands.len() - 1
            }
            None => return Err(ContainerError::TooManyCommands),
        };
        let tokens = CommandTokens {
            stdout: self.owner.token(command_slot(index, CommandFd::Stdout)),
            stderr: self.owner.token(command_slot(index, CommandFd::Stderr)),
            pidfd: self.owner.token(command_slot(index, CommandFd::Pidfd)),
        };
        let id = self.next_command;
        self.next_command += 1;
        let rc = RunningCommand::spawn(
            &nsenter,
            leader,
            request,
            &mut self.nonces,
            id,
            registry,
            tokens,
        )
        .map_err(ContainerError::Command)?;
        self.commands[index] = Some(rc);
        Ok(id)
    }

    /// The result of command `id`, once it has finished.
    pub fn take_result(&mut self, id: u64) -> Option<ShellResult> {
        let slot = self
            .commands
            .iter_mut()
            .find(|c| c.as_ref().is_some_and(|c| c.id == id))?;
        let result = slot.as_mut()?.take_result()?;
        if slot.as_ref().is_some_and(RunningCommand::done) {
            *slot = None;
        }
        Some(result)
    }

    /// Begin ending the container: SIGTERM to the start script's group (its `run-nspawn`
    /// tears down veths and netns), SIGKILL after `grace`; every command is ended now.
    pub fn terminate(&mut self, log: &mut Logger, registry: &Registry, grace: Duration) {
        for c in self.commands.iter_mut().flatten() {
            c.abort(registry);
        }
        let Some(p) = self.process.as_ref() else {
            return;
        };
        if self.phase == Phase::Exited && !p.child.alive() {
            return;
        }
        if !self.killed {
            log.log(&format!("kill NspawnMachine (pid {})", p.child.raw_pid()));
        }
        self.killed = true;
        p.child.term_then_kill(&mut self.kill_deadline, grace);
    }

    /// SIGKILL every group now (global timeout, second signal).
    pub fn kill_now(&mut self, registry: &Registry) {
        for c in self.commands.iter_mut().flatten() {
            c.abort(registry);
        }
        if let Some(p) = self.process.as_ref() {
            self.killed = true;
            p.child.signal(Signal::KILL);
        }
    }

    /// Nothing of this container runs any more: script group, commands, journal follower.
    pub fn gone(&mut self) -> bool {
        let script_gone = match self.process.as_ref() {
            None => true,
            Some(p) => {
                self.phase != Phase::Starting && self.phase != Phase::Ready && !p.child.alive()
            }
        };
        let commands_gone = self.commands.iter_mut().flatten().all(|c| !c.alive());
        // Whatever the script left in its cgroup is killed (again) until it is empty.
        let cgroup_empty = !script_gone || self.cgroup.as_ref().map_or(true, |cg| cg.kill_all());
        script_gone && commands_gone && cgroup_empty && self.journal.idle()
    }

    /// Close every fd (after the script exited) and forget the process: `Stopped`, so that
    /// the next `start()` boots the container again.
    pub fn finish_shutdown(&mut self, registry: &Registry) {
        self.release_fds(registry);
        self.phase = Phase::Stopped;
        self.leader = None;
        self.ready = false;
        self.probe = None;
    }

    fn release_fds(&mut self, registry: &Registry) {
        if let Some(mut n) = self.notify.take() {
            let _ = registry.deregister(&mut n);
        }
        if let Some(mut p) = self.process.take() {
            if let Some(fd) = p.console.take() {
                let _ = registry.deregister(&mut SourceFd(&fd.as_raw_fd()));
            }
            let _ = registry.deregister(&mut SourceFd(&p.child.pidfd().as_raw_fd()));
        }
        self.journal.stop(registry);
        self.in_flight = None;
        for slot in self.commands.iter_mut() {
            if let Some(c) = slot.as_mut() {
                c.abort(registry);
            }
            *slot = None;
        }
    }

    /// At the end of the run: every fd closed, the socket and the cgroup removed, the state
    /// directory too unless kept. Returns what could not be removed.
    pub fn remove_files(&mut self, registry: &Registry) -> Vec<String> {
        self.release_fds(registry);
        let mut problems = Vec::new();
        let _ = std::fs::remove_file(&self.paths.notify_socket);
        if let Some(mut cg) = self.cgroup.take() {
            if !cg.remove() {
                problems.push(format!("cgroup {:?} still has processes", cg.dirs()));
            }
        }
        if !self.keep_state {
            if let Err(e) = std::fs::remove_dir_all(&self.paths.state_dir) {
                if e.kind() != io::ErrorKind::NotFound {
                    problems.push(format!(
                        "cannot remove {}: {e}",
                        self.paths.state_dir.display()
                    ));
                }
            }
        }
        problems
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
}
