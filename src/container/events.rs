//! A container's events: the notify socket (leader pid, readiness, then the probe for the
//! service manager, [`super::ready`]), the start script's console pipe (drained for the
//! container's whole life, its tail kept), the script's exit, the journal follower's fds and
//! every command's fds; and its timers (command limits, the journal's checks, the readiness
//! probe, SIGKILL after the grace). Nothing here blocks.

use super::command::{CommandFd, RunningCommand};
use super::journal::JournalFd;
use super::ready::{self, ManagerProbe, Probe};
use super::{notify, Container, Phase, Slot, COMMAND_BASE, CONSOLE_TAIL};
use crate::log::Logger;
use crate::nbio::{read_available, FdReader};
use crate::reactor::{Ctx, LoopMember};
use mio::event::Event;
use mio::unix::SourceFd;
use rustix::process::Signal;
use std::io;
use std::os::fd::AsRawFd;
use std::time::Instant;

impl Container {
    fn drain_notify(&mut self, log: &mut Logger) {
        let Some(sock) = self.notify.as_ref() else {
            return;
        };
        let mut buf = [0u8; notify::MAX_DATAGRAM];
        loop {
            match sock.recv(&mut buf) {
                Ok(n) => {
                    let notice = notify::parse(&buf[..n]);
                    if let Some(pid) = notice.leader {
                        self.leader = self.leader_as_seen_here(pid, log);
                    }
                    self.ready |= notice.ready;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if self.phase != Phase::Starting || !self.ready || self.probe.is_some() {
            return;
        }
        if let Some(leader) = self.leader {
            let mut probe = ManagerProbe::new(leader, Instant::now());
            self.probe_manager(&mut probe, log);
            if self.phase == Phase::Starting {
                self.probe = Some(probe);
            }
        }
    }

    /// The leader's pid as ntd sees it: nspawn numbers it in the start script's PID namespace
    /// when the script runs in one of its own (see `super::pidns`).
    fn leader_as_seen_here(&self, reported: i32, log: &mut Logger) -> Option<i32> {
        if self.tools.unshare.is_none() {
            return Some(reported);
        }
        let wrapper = self.process.as_ref()?.child.raw_pid();
        let found = super::pidns::host_pid(wrapper, reported);
        if found.is_none() {
            log.warning(
                Some(&self.name),
                &format!(
                    "systemd-nspawn reported leader pid {reported}, which no process below \
                     the start script has in its PID namespace"
                ),
            );
        }
        found
    }

    /// Look for the container's service manager; ready once it listens (or never will).
    fn probe_manager(&mut self, probe: &mut ManagerProbe, log: &mut Logger) {
        let now = Instant::now();
        match probe.look(now) {
            Probe::Waiting => return,
            Probe::Ready => {}
            Probe::GaveUp => log.machine(
                &self.name,
                &format!(
                    "no service manager listens in the container {} s after its PID 1 \
                     started (its init is not systemd?); running commands anyway",
                    ready::MANAGER_PATIENCE.as_secs()
                ),
            ),
        }
        self.phase = Phase::Ready;
        self.probe = None;
        self.ready_at = Some(now);
        if let (Some(t0), Some(pid)) = (self.started_at, self.leader) {
            log.debug(
                Some(&self.name),
                &format!(
                    "container ready (leader pid {pid}) after {} ms",
                    now.duration_since(t0).as_millis()
                ),
            );
        }
    }

    fn read_console(&mut self, log: &mut Logger) {
        let Some(fd) = self.process.as_mut().and_then(|p| p.console.as_ref()) else {
            return;
        };
        let tail = &mut self.console_tail;
        let eof = read_available(&mut FdReader(fd), &mut self.read_buf, |chunk| {
            tail.extend(chunk.iter().copied());
            let over = tail.len().saturating_sub(CONSOLE_TAIL);
            tail.drain(..over);
            for line in String::from_utf8_lossy(chunk).lines() {
                log.debug(Some(&self.name), &format!("console: {line}"));
            }
        });
        if eof {
            if let Some(fd) = self.process.as_mut().and_then(|p| p.console.take()) {
                let _ = log; // the pipe is closed by dropping it; nothing more will come
                drop(fd);
            }
        }
    }

    fn check_exit(&mut self, cx: &mut Ctx<'_>) {
        let Some(p) = self.process.as_ref() else {
            return;
        };
        let Some(info) = p.child.try_reap() else {
            return;
        };
        let _ = cx
            .registry
            .deregister(&mut SourceFd(&p.child.pidfd().as_raw_fd()));
        // Leftovers of the script's group and cgroup (a wrapper that did not wait for its
        // nspawn) go now.
        p.child.signal(Signal::KILL);
        if let Some(cg) = self.cgroup.as_ref() {
            cg.kill_all();
        }
        self.exit = Some(info);
        self.phase = Phase::Exited;
        if !self.killed {
            cx.log
                .machine(&self.name, &format!("systemd-nspawn exited ({info})"));
        }
        self.read_console(cx.log);
        self.drain_notify(cx.log);
        self.journal.container_exited(Instant::now());
    }
}

impl LoopMember for Container {
    fn on_event(&mut self, cx: &mut Ctx<'_>, slot: usize, _ev: &Event) {
        let name = self.name.clone();
        match slot {
            s if s == Slot::Notify as usize => self.drain_notify(cx.log),
            s if s == Slot::Console as usize => self.read_console(cx.log),
            s if s == Slot::Pidfd as usize => self.check_exit(cx),
            s if s == Slot::JournalOutput as usize || s == Slot::JournalPidfd as usize => {
                let fd = if s == Slot::JournalOutput as usize {
                    JournalFd::Output
                } else {
                    JournalFd::Pidfd
                };
                self.journal
                    .on_event(fd, cx.registry, cx.log, &name, &mut self.read_buf);
            }
            s if s >= COMMAND_BASE => {
                let (index, fd) = ((s - COMMAND_BASE) / 4, (s - COMMAND_BASE) % 4);
                let fd = match fd {
                    0 => CommandFd::Stdout,
                    1 => CommandFd::Stderr,
                    _ => CommandFd::Pidfd,
                };
                let buf = &mut self.read_buf;
                if let Some(c) = self.commands.get_mut(index).and_then(Option::as_mut) {
                    c.on_event(fd, cx.registry, cx.log, &name, buf);
                    if c.done() {
                        self.commands[index] = None;
                    }
                }
            }
            other => cx.log.warning(
                Some(&self.name),
                &format!("event for unknown container slot {other} ignored"),
            ),
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let commands = self
            .commands
            .iter()
            .flatten()
            .filter_map(RunningCommand::next_deadline);
        let probe = self.probe.as_ref().map(ManagerProbe::next);
        [self.kill_deadline, self.journal.next_deadline(), probe]
            .into_iter()
            .flatten()
            .chain(commands)
            .min()
    }

    fn on_timer(&mut self, cx: &mut Ctx<'_>, now: Instant) {
        for c in self.commands.iter_mut().flatten() {
            c.on_timer(now);
        }
        self.journal.on_timer(now, cx.registry, cx.log, &self.name);
        if let Some(mut probe) = self.probe.take().filter(|p| now >= p.next()) {
            if self.phase == Phase::Starting {
                self.probe_manager(&mut probe, cx.log);
                if self.phase == Phase::Starting {
                    self.probe = Some(probe);
                }
            }
        }
        if self.kill_deadline.is_some_and(|t| now >= t) {
            self.kill_deadline = None;
            if let Some(p) = self.process.as_ref().filter(|p| p.child.alive()) {
                cx.log.error(&format!(
                    "NspawnMachine {} (pid {}) did not exit after SIGTERM; sending SIGKILL",
                    self.name,
                    p.child.raw_pid()
                ));
                p.child.signal(Signal::KILL);
            }
        }
    }
}
