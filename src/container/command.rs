//! One running container command: its `nsenter` child (leading a process group of its own,
//! so a timeout ends the command's whole process tree, like `timeout`), its stdout (the
//! result, through an [`OutputCollector`]) and stderr (logged line by line as the container's
//! output) pipes, its pidfd, and its time limit.
//!
//! The result is ready as soon as the child has exited and what its stdout held then has been
//! read: a background process that keeps stdout open never holds a command up (upstream
//! blocks on it); what it writes later is reported as late output until the pipe closes or
//! the container stops. A command past its limit gets SIGTERM (status 124, like `timeout`),
//! and SIGKILL [`KILL_GRACE`] later. The container owns the fds' registrations and routes
//! their events here; this type never blocks.

use super::exec::{self, OutputCollector};
use crate::child::{self, Child, ExitInfo, SpawnOptions};
use crate::log::{py_bytes_repr, Logger};
use crate::machine::session::{ShellRequest, ShellResult};
use crate::machine::shell::NonceSource;
use crate::nbio::{read_available, FdReader};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use rustix::process::Signal;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a command that got SIGTERM at its time limit may take before SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(2);
/// Longest stderr line kept before it is logged in pieces.
const MAX_LINE: usize = 64 * 1024;

/// Which pipe or fd of a command an event is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandFd {
    Stdout = 0,
    Stderr = 1,
    Pidfd = 2,
}

/// Tokens of one command's three fds.
#[derive(Debug, Clone, Copy)]
pub struct CommandTokens {
    pub stdout: Token,
    pub stderr: Token,
    pub pidfd: Token,
}

pub struct RunningCommand {
    pub id: u64,
    what: String,
    child: Child,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    collector: Option<OutputCollector>,
    err_line: Vec<u8>,
    deadline: Option<Instant>,
    kill_at: Option<Instant>,
    timed_out: bool,
    exit: Option<ExitInfo>,
    result: Option<ShellResult>,
    /// Nobody waits for the result: it is dropped when it comes.
    discarded: bool,
}

impl RunningCommand {
    /// Start `request` in the container whose PID 1 is `leader` and register its fds.
    pub fn spawn(
        nsenter: &Path,
        leader: i32,
        request: &ShellRequest,
        nonces: &mut NonceSource,
        id: u64,
        registry: &Registry,
        tokens: CommandTokens,
    ) -> io::Result<RunningCommand> {
        let (script, collector) = match request {
            ShellRequest::Run { command, .. } => {
                if command.contains('\0') {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "the command contains a NUL byte, which a command line cannot carry",
                    ));
                }
                (exec::wrap_command(command), OutputCollector::plain())
            }
            ShellRequest::Wait { check, spec } => {
                let nonce = nonces.next_nonce();
                let script = exec::wait_script(&nonce, check, **spec)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
                (script, OutputCollector::framed(nonce))
            }
        };
        let (out_r, out_w) = child::cloexec_pipe()?;
        let (err_r, err_w) = child::cloexec_pipe()?;
        let mut cmd = Command::new(nsenter);
        cmd.args(exec::nsenter_args(leader, &script))
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::from(err_w));
        let opts = SpawnOptions {
            own_group: true,
            nice: None,
        };
        let child = child::spawn(&mut cmd, opts)?;
        drop(cmd);
        let started = Instant::now();
        let mut rc = RunningCommand {
            id,
            what: request.command().to_owned(),
            child,
            stdout: None,
            stderr: None,
            collector: Some(collector),
            err_line: Vec::new(),
            deadline: exec::time_limit(request).map(|t| started + t),
            kill_at: None,
            timed_out: false,
            exit: None,
            result: None,
            discarded: false,
        };
        for (fd, token) in [(&out_r, tokens.stdout), (&err_r, tokens.stderr)] {
            child::set_nonblocking(fd)?;
            register(registry, fd, token)?;
        }
        register(registry, rc.child.pidfd(), tokens.pidfd)?;
        rc.stdout = Some(out_r);
        rc.stderr = Some(err_r);
        Ok(rc)
    }

    /// What the command runs (for logs).
    pub fn what(&self) -> &str {
        &self.what
    }

    /// Handle readiness of one of the command's fds.
    pub fn on_event(
        &mut self,
        fd: CommandFd,
        registry: &Registry,
        log: &mut Logger,
        machine: &str,
        buf: &mut [u8],
    ) {
        match fd {
            CommandFd::Stdout => self.read_stdout(registry, log, machine, buf),
            CommandFd::Stderr => self.read_stderr(registry, log, machine, buf),
            CommandFd::Pidfd => {
                if let Some(info) = self.child.try_reap() {
                    let _ = registry.deregister(&mut SourceFd(&self.child.pidfd().as_raw_fd()));
                    self.exit = Some(info);
                    // What the command wrote before it ended is in the pipes now.
                    self.read_stdout(registry, log, machine, buf);
                    self.read_stderr(registry, log, machine, buf);
                    self.finish();
                }
            }
        }
    }

    fn read_stdout(
        &mut self,
        registry: &Registry,
        log: &mut Logger,
        machine: &str,
        buf: &mut [u8],
    ) {
        let Some(fd) = self.stdout.as_ref() else {
            return;
        };
        let mut late = Vec::new();
        let collector = &mut self.collector;
        let eof = read_available(&mut FdReader(fd), buf, |chunk| match collector.as_mut() {
            Some(c) => c.feed(chunk),
            None => late.extend_from_slice(chunk),
        });
        if let Some(c) = self.collector.as_mut() {
            for (status, output) in c.take_attempts() {
                let msg = if status < 0 {
                    format!("output after its wait ended: {}", py_bytes_repr(&output))
                } else {
                    format!(
                        "attempt failed (status {status}): {}",
                        py_bytes_repr(&output)
                    )
                };
                log.debug(Some(machine), &msg);
            }
        }
        if !late.is_empty() {
            log.machine(
                machine,
                &format!(
                    "output after its command finished (a background process kept stdout?): {}",
                    py_bytes_repr(&late)
                ),
            );
        }
        if eof {
            if let Some(fd) = self.stdout.take() {
                let _ = registry.deregister(&mut SourceFd(&fd.as_raw_fd()));
            }
        }
    }

    fn read_stderr(
        &mut self,
        registry: &Registry,
        log: &mut Logger,
        machine: &str,
        buf: &mut [u8],
    ) {
        let Some(fd) = self.stderr.as_ref() else {
            return;
        };
        let line = &mut self.err_line;
        let eof = read_available(&mut FdReader(fd), buf, |chunk| {
            for piece in chunk.split_inclusive(|&b| b == b'\n') {
                line.extend_from_slice(piece);
                if piece.ends_with(b"\n") || line.len() >= MAX_LINE {
                    let text = String::from_utf8_lossy(line);
                    log.serial(machine, text.trim_end_matches(['\n', '\r']));
                    line.clear();
                }
            }
        });
        if eof {
            if !self.err_line.is_empty() {
                log.serial(machine, &String::from_utf8_lossy(&self.err_line));
                self.err_line.clear();
            }
            if let Some(fd) = self.stderr.take() {
                let _ = registry.deregister(&mut SourceFd(&fd.as_raw_fd()));
            }
        }
    }

    fn finish(&mut self) {
        let (Some(info), Some(collector)) = (self.exit, self.collector.take()) else {
            return;
        };
        if !self.discarded {
            self.result = Some(collector.finish(info.shell_status(), self.timed_out));
        }
    }

    /// Nobody will take the result: drop it (now, or when the command ends). The command
    /// keeps running; its late output is still logged.
    pub fn discard(&mut self) {
        self.discarded = true;
        self.result = None;
    }

    /// The result, once (after the child exited).
    pub fn take_result(&mut self) -> Option<ShellResult> {
        self.result.take()
    }

    pub fn has_result(&self) -> bool {
        self.result.is_some()
    }

    /// Exited, result taken, both pipes closed: nothing left to do.
    pub fn done(&self) -> bool {
        self.exit.is_some()
            && self.result.is_none()
            && self.stdout.is_none()
            && self.stderr.is_none()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        if self.exit.is_some() {
            return None;
        }
        self.kill_at.or(self.deadline)
    }

    /// Enforce the time limit: SIGTERM to the group at the deadline, SIGKILL after the grace.
    pub fn on_timer(&mut self, now: Instant) {
        if self.exit.is_some() {
            return;
        }
        if self.kill_at.is_some_and(|t| now >= t) {
            self.kill_at = None;
            self.child.signal(Signal::KILL);
        } else if self.deadline.is_some_and(|t| now >= t) {
            self.deadline = None;
            self.timed_out = true;
            self.child.signal(Signal::TERM);
            self.kill_at = Some(now + KILL_GRACE);
        }
    }

    /// SIGKILL to the command's process group (its pipes close as they reach their end).
    pub fn kill(&self) {
        self.child.signal(Signal::KILL);
    }

    /// End the command now (the container stops): SIGKILL to its group, fds deregistered.
    pub fn abort(&mut self, registry: &Registry) {
        self.child.signal(Signal::KILL);
        for fd in [self.stdout.take(), self.stderr.take()]
            .into_iter()
            .flatten()
        {
            let _ = registry.deregister(&mut SourceFd(&fd.as_raw_fd()));
        }
        if self.exit.is_none() {
            let _ = registry.deregister(&mut SourceFd(&self.child.pidfd().as_raw_fd()));
        }
    }

    /// True while any process of the command's group exists (the leader is reaped here if it
    /// has exited: an unreaped leader keeps its group alive).
    pub fn alive(&mut self) -> bool {
        if self.exit.is_none() {
            self.exit = self.child.try_reap();
        }
        self.child.alive()
    }
}

fn register(registry: &Registry, fd: &OwnedFd, token: Token) -> io::Result<()> {
    registry.register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)
}
