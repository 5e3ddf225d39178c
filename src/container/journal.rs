//! The container's log, as upstream shows it: once `<root>/var/log/journal` exists, one
//! `journalctl --follow --directory=<it> --lines=all --output=short-monotonic` child whose
//! output lines become the machine's serial lines; restarted a second after it ends while the
//! container runs; stopped shortly after the container exits (so its last lines still
//! arrive). Upstream polls for the directory once a second; ntd checks after 50 ms, doubling
//! to a second. The container owns the tokens and routes events here; this never blocks.

use crate::child::{self, Child, SpawnOptions};
use crate::log::Logger;
use crate::nbio::{read_available, FdReader};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use rustix::process::Signal;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FIRST_CHECK: Duration = Duration::from_millis(50);
const MAX_CHECK: Duration = Duration::from_secs(1);
/// Upstream says "Still waiting" after ten one-second checks.
const STILL_WAITING_AFTER: Duration = Duration::from_secs(10);
/// Upstream restarts a journalctl that ended after a second.
const RESTART_AFTER: Duration = Duration::from_secs(1);
/// After the container exits, journalctl may still be reading its last lines.
const LINGER: Duration = Duration::from_millis(300);
/// What journalctl says while journald has not written a file yet (logged at debug level).
const NO_FILES: &str = "No journal files were found.";
const MAX_LINE: usize = 64 * 1024;

/// Which fd of the follower an event is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalFd {
    Output,
    Pidfd,
}

enum State {
    Idle,
    Waiting {
        next: Instant,
        interval: Duration,
        since: Instant,
        warned: bool,
    },
    Running {
        child: Child,
        output: Option<OwnedFd>,
        stop_at: Option<Instant>,
    },
    Backoff {
        until: Instant,
    },
}

pub struct Journal {
    dir: PathBuf,
    journalctl: Option<PathBuf>,
    output_token: Token,
    pidfd_token: Token,
    state: State,
    line: Vec<u8>,
    container_running: bool,
}

impl Journal {
    pub fn new(
        root: &Path,
        journalctl: Option<PathBuf>,
        output_token: Token,
        pidfd_token: Token,
    ) -> Journal {
        Journal {
            dir: root.join("var/log/journal"),
            journalctl,
            output_token,
            pidfd_token,
            state: State::Idle,
            line: Vec::new(),
            container_running: false,
        }
    }

    /// The container's process started: wait for its journal directory.
    pub fn container_started(&mut self, now: Instant, log: &mut Logger, machine: &str) {
        self.container_running = true;
        if self.journalctl.is_none() {
            log.warning(
                Some(machine),
                "journalctl is not in PATH: the container's journal is not shown (install systemd)",
            );
            return;
        }
        if matches!(self.state, State::Idle) {
            log.machine(
                machine,
                &format!("Waiting for journal at {}...", self.dir.display()),
            );
            self.state = State::Waiting {
                next: now,
                interval: FIRST_CHECK,
                since: now,
                warned: false,
            };
        }
    }

    /// The container's process exited: stop following shortly.
    pub fn container_exited(&mut self, now: Instant) {
        self.container_running = false;
        match &mut self.state {
            State::Running { stop_at, .. } => *stop_at = Some(now + LINGER),
            _ => self.state = State::Idle,
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Idle => None,
            State::Waiting { next, .. } => Some(*next),
            State::Running { stop_at, .. } => *stop_at,
            State::Backoff { until } => Some(*until),
        }
    }

    pub fn on_timer(&mut self, now: Instant, registry: &Registry, log: &mut Logger, machine: &str) {
        match &mut self.state {
            State::Waiting {
                next,
                interval,
                since,
                warned,
            } if now >= *next => {
                if self.dir.is_dir() {
                    self.spawn(registry, log, machine);
                    return;
                }
                if !*warned && now.duration_since(*since) >= STILL_WAITING_AFTER {
                    *warned = true;
                    log.machine(
                        machine,
                        &format!("Still waiting for journal at {}...", self.dir.display()),
                    );
                }
                *next = now + *interval;
                *interval = (*interval * 2).min(MAX_CHECK);
            }
            State::Running {
                child,
                stop_at: Some(t),
                ..
            } if now >= *t => {
                child.signal(Signal::TERM);
                self.stop(registry);
            }
            State::Backoff { until } if now >= *until => self.spawn(registry, log, machine),
            _ => {}
        }
    }

    fn spawn(&mut self, registry: &Registry, log: &mut Logger, machine: &str) {
        let Some(journalctl) = self.journalctl.as_ref() else {
            self.state = State::Idle;
            return;
        };
        let started = (|| -> std::io::Result<(Child, OwnedFd)> {
            let (r, w) = child::cloexec_pipe()?;
            let w2 = w.try_clone()?;
            let mut cmd = Command::new(journalctl);
            cmd.arg("--follow")
                .arg(format!("--directory={}", self.dir.display()))
                .args(["--lines=all", "--output=short-monotonic"])
                .stdin(Stdio::null())
                .stdout(Stdio::from(w))
                .stderr(Stdio::from(w2));
            let opts = SpawnOptions {
                own_group: true,
                nice: None,
            };
            let c = child::spawn(&mut cmd, opts)?;
            child::set_nonblocking(&r)?;
            registry.register(
                &mut SourceFd(&r.as_raw_fd()),
                self.output_token,
                Interest::READABLE,
            )?;
            registry.register(
                &mut SourceFd(&c.pidfd().as_raw_fd()),
                self.pidfd_token,
                Interest::READABLE,
            )?;
            Ok((c, r))
        })();
        match started {
            Ok((child, output)) => {
                self.state = State::Running {
                    child,
                    output: Some(output),
                    stop_at: None,
                }
            }
            Err(e) => {
                log.warning(Some(machine), &format!("cannot start journalctl: {e}"));
                self.state = State::Idle;
            }
        }
    }

    pub fn on_event(
        &mut self,
        fd: JournalFd,
        registry: &Registry,
        log: &mut Logger,
        machine: &str,
        buf: &mut [u8],
    ) {
        match fd {
            JournalFd::Output => self.read_output(registry, log, machine, buf),
            JournalFd::Pidfd => {
                let State::Running { child, .. } = &self.state else {
                    return;
                };
                if child.try_reap().is_some() {
                    self.read_output(registry, log, machine, buf);
                    self.stop(registry);
                    if self.container_running {
                        self.state = State::Backoff {
                            until: Instant::now() + RESTART_AFTER,
                        };
                    }
                }
            }
        }
    }

    fn read_output(
        &mut self,
        registry: &Registry,
        log: &mut Logger,
        machine: &str,
        buf: &mut [u8],
    ) {
        let State::Running { output, .. } = &mut self.state else {
            return;
        };
        let Some(fd) = output.as_ref() else {
            return;
        };
        let line = &mut self.line;
        let eof = read_available(&mut FdReader(fd), buf, |chunk| {
            for piece in chunk.split_inclusive(|&b| b == b'\n') {
                line.extend_from_slice(piece);
                if piece.ends_with(b"\n") || line.len() >= MAX_LINE {
                    emit(log, machine, line);
                    line.clear();
                }
            }
        });
        if eof {
            if let Some(fd) = output.take() {
                let _ = registry.deregister(&mut SourceFd(&fd.as_raw_fd()));
            }
        }
    }

    /// Stop following: SIGKILL journalctl's group (if it still runs), deregister, go idle.
    pub fn stop(&mut self, registry: &Registry) {
        if let State::Running { child, output, .. } = &mut self.state {
            child.signal(Signal::KILL);
            if let Some(fd) = output.take() {
                let _ = registry.deregister(&mut SourceFd(&fd.as_raw_fd()));
            }
            let _ = registry.deregister(&mut SourceFd(&child.pidfd().as_raw_fd()));
            // SIGKILL cannot be caught: the wait is short.
            child.kill_and_reap();
        }
        self.line.clear();
        self.state = State::Idle;
    }

    /// No journalctl of this container runs.
    pub fn idle(&self) -> bool {
        !matches!(self.state, State::Running { .. })
    }
}

fn emit(log: &mut Logger, machine: &str, line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches(['\n', '\r']);
    if text == NO_FILES {
        log.debug(Some(machine), text);
    } else {
        log.serial(machine, text);
    }
}
