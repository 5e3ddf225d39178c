//! What the pending-op controller ([`super::pending`]) needs of a machine: the narrow
//! [`Controlled`] trait, and what it gets from the loop on every turn ([`Env`]).
//!
//! A pending operation never sees a QEMU process, a socket or a file: it asks a machine
//! whether it is booted, connected, ready for a command, what the shell answered, whether the
//! shell is gone and how to say why. A [`Machine`] (a QEMU VM) implements the trait here; a
//! second kind of machine (a container) implements the same methods and its ops work
//! unchanged (methods that need what it lacks, QMP or a serial console, answer "nothing"
//! or an error that says so; [`ConnectWords`] says how waiting for it is logged). The tests
//! drive the controller with a scripted machine; `super::node` has the container's side.

use crate::hostcpu::parse::Verdict;
use crate::hostcpu::Stamp;
use crate::json::Value;
use crate::log::Logger;
use crate::machine::guest::HostMessage;
use crate::machine::qmp::QmpFailure;
use crate::machine::session::{ShellRequest, ShellResult};
use crate::machine::{Machine, MachineError, Phase, ShellDown};
use crate::reactor::Ctx;
use crate::trace::Trace;
use mio::Registry;
use std::time::{Duration, Instant};

/// How a start is going.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartProgress {
    /// Still starting.
    Starting,
    /// Up: the machine runs (its shell may still be booting).
    Up,
    /// It could not start; the message says how it ended.
    Failed(String),
}

/// How waiting for a machine's shell is logged and bounded: a VM waits for its backdoor
/// (upstream's reminders, the shell timeout), a container for its notify socket (upstream's
/// reminder, no limit but the global timeout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectWords {
    /// The log block opened while waiting.
    pub waiting: &'static str,
    /// The line logged once the shell answers (then how long it took).
    pub connected: &'static str,
    /// How often the reminder is logged.
    pub reminder_every: Duration,
    /// The reminder's lines.
    pub reminder: Vec<String>,
    /// Whether the shell timeout ([`Env::shell_timeout`]) applies.
    pub gives_up: bool,
}

/// A machine as the pending-op controller drives it. See the module documentation.
pub trait Controlled {
    /// The machine's name (log lines, messages).
    fn name(&self) -> &str;
    /// The process whose exit ends the machine, for messages (`QEMU`, `systemd-nspawn`).
    fn process_name(&self) -> &'static str;
    /// How waiting for its shell is logged and bounded.
    fn connect_words(&self) -> ConnectWords;
    /// Started and not yet seen to stop (upstream's `booted`).
    fn booted(&self) -> bool;
    /// The process ended (whether or not anybody asked for it) and was not yet acknowledged.
    fn exited(&self) -> bool;
    /// Exited and everything it wrote was read.
    fn fully_exited(&self) -> bool;
    /// Boot it; nothing happens if it is booted.
    fn start(&mut self, cx: &mut Ctx<'_>, env: &[(String, String)]) -> Result<(), MachineError>;
    /// How the start is going.
    fn start_progress(&self) -> StartProgress;
    /// After an exit: forget the process, so that the next command boots it again.
    fn finish_shutdown(&mut self, registry: &Registry);
    /// Why it is not running: how it ended and what its console showed last.
    fn exit_report(&self) -> String;

    /// The guest shell answered its setup (upstream's `connected`).
    fn connected(&self) -> bool;
    /// Ready for a command now (connected and idle).
    fn shell_ready(&self) -> bool;
    /// Whether the shell is gone for good, going, or fine.
    fn shell_down(&self, now: Instant) -> ShellDown;
    /// Why the shell cannot be used although it is connected (its setup failed, it stopped
    /// answering).
    fn shell_error(&self) -> Option<String>;
    /// Send a request to the shell; its result comes from [`Controlled::take_shell_result`].
    fn send_shell(&mut self, registry: &Registry, req: &ShellRequest) -> Result<(), MachineError>;
    /// The result of the request in flight, once complete.
    fn take_shell_result(&mut self) -> Option<ShellResult>;
    /// Give up on the request in flight (the guest stopped answering).
    fn abandon_shell(&mut self, reason: String);
    /// Tell the timed request in flight something (pace, stop, kill); false when none runs
    /// under the guest's watchdog.
    fn tell_shell(&mut self, registry: &Registry, m: HostMessage) -> bool;

    /// The machine's clock at `now` (wall time and the time the host withheld from it);
    /// `log` hears once when it cannot be measured.
    fn clock(&mut self, now: Instant, log: &mut Logger) -> Stamp;
    /// The host's verdict for this machine's polling, given the host's CPU pressure (per
    /// mille; `None`: unknown) and the machine's own vCPU waiting share as of its last clock
    /// reading (with hysteresis: the machine keeps its last verdict).
    fn pace_verdict(&mut self, host_psi: Option<u32>) -> Verdict;
    /// The share (per mille) of the last second in which its vCPUs waited for a host CPU.
    fn vcpu_waiting_share(&self) -> Option<u32>;
    /// `machine '<name>'` and the console's last lines (a shell that never came).
    fn console_report(&self) -> String;
    /// `; its last console lines:` and the lines, for errors about a stuck guest.
    fn console_tail_text(&self) -> String;

    /// Console lines printed since the last call (none for a machine without a console).
    fn take_console_lines(&mut self) -> Vec<String>;
    /// The oldest QMP event not yet taken (never one for a machine without QMP).
    fn next_qmp_event(&mut self) -> Option<Value>;
    /// The result of QMP command `id`, once it arrived (or can never arrive).
    fn take_qmp_result(&mut self, id: u64) -> Option<Result<Value, QmpFailure>>;
}

/// What the controller may use on one loop turn.
pub struct Env<'a, M> {
    /// The run's machines; a pending op names its machine by index.
    pub machines: &'a mut [M],
    pub cx: Ctx<'a>,
    /// The loop's clock reading for this turn.
    pub now: Instant,
    /// `QEMU_VDE_SOCKET_<n>` and the like, for machines booted by a command.
    pub extra_env: &'a [(String, String)],
    /// How long a machine may take to open its backdoor shell (`NTD_SHELL_TIMEOUT`).
    pub shell_timeout: Duration,
    /// The run's trace, if recorded (commands and waits become spans).
    pub trace: Option<&'a Trace>,
    /// The host's CPU pressure (PSI `some`, per mille) as last sampled; `None`: unknown.
    pub host_psi: Option<u32>,
    /// The driver's start: guest clock readings for the shim count from here.
    pub epoch: Instant,
}

impl<M: Controlled> Env<'_, M> {
    /// Machine `m`'s clock now.
    pub fn stamp(&mut self, m: usize) -> Stamp {
        self.machines[m].clock(self.now, self.cx.log)
    }
}

/// Upstream logs a reminder every 30 s while a VM's shell is silent.
pub const VM_CONNECT_REMINDER: Duration = Duration::from_secs(30);

impl Controlled for Machine {
    fn name(&self) -> &str {
        &self.name
    }
    fn process_name(&self) -> &'static str {
        "QEMU"
    }
    fn connect_words(&self) -> ConnectWords {
        ConnectWords {
            waiting: "waiting for the VM to finish booting",
            connected: "connected to guest root shell",
            reminder_every: VM_CONNECT_REMINDER,
            reminder: vec![
                "Guest root shell did not produce any data yet...".to_owned(),
                "  To debug, enter the VM and run 'systemctl status backdoor.service'.".to_owned(),
            ],
            gives_up: true,
        }
    }
    fn booted(&self) -> bool {
        Machine::booted(self)
    }
    fn exited(&self) -> bool {
        self.phase() == Phase::Exited
    }
    fn fully_exited(&self) -> bool {
        Machine::fully_exited(self)
    }
    fn start(&mut self, cx: &mut Ctx<'_>, env: &[(String, String)]) -> Result<(), MachineError> {
        Machine::start(self, cx, env)
    }
    fn start_progress(&self) -> StartProgress {
        match self.phase() {
            Phase::Running => StartProgress::Up,
            Phase::Exited if Machine::fully_exited(self) => {
                let code = self.exit_info().map_or(-1, |i| i.shell_status());
                StartProgress::Failed(format!(
                    "QEMU process exited with code {code} before connecting to {} socket.\n{}",
                    self.missing_connection(),
                    self.output_tail()
                ))
            }
            _ => StartProgress::Starting,
        }
    }
    fn finish_shutdown(&mut self, registry: &Registry) {
        Machine::finish_shutdown(self, registry)
    }
    fn exit_report(&self) -> String {
        Machine::exit_report(self)
    }
    fn connected(&self) -> bool {
        Machine::connected(self)
    }
    fn shell_ready(&self) -> bool {
        Machine::shell_ready(self)
    }
    fn shell_down(&self, now: Instant) -> ShellDown {
        Machine::shell_down(self, now)
    }
    fn shell_error(&self) -> Option<String> {
        Machine::shell_error(self)
    }
    fn send_shell(&mut self, registry: &Registry, req: &ShellRequest) -> Result<(), MachineError> {
        Machine::send_shell(self, registry, req)
    }
    fn take_shell_result(&mut self) -> Option<ShellResult> {
        Machine::take_shell_result(self)
    }
    fn abandon_shell(&mut self, reason: String) {
        Machine::abandon_shell(self, reason)
    }
    fn tell_shell(&mut self, registry: &Registry, m: HostMessage) -> bool {
        Machine::tell_shell(self, registry, m)
    }
    fn clock(&mut self, now: Instant, log: &mut Logger) -> Stamp {
        Machine::clock(self, now, log)
    }
    fn pace_verdict(&mut self, host_psi: Option<u32>) -> Verdict {
        Machine::pace_verdict(self, host_psi)
    }
    fn vcpu_waiting_share(&self) -> Option<u32> {
        Machine::vcpu_waiting_share(self)
    }
    fn console_report(&self) -> String {
        Machine::console_report(self)
    }
    fn console_tail_text(&self) -> String {
        Machine::console_tail_text(self)
    }
    fn take_console_lines(&mut self) -> Vec<String> {
        Machine::take_console_lines(self)
    }
    fn next_qmp_event(&mut self) -> Option<Value> {
        Machine::next_qmp_event(self)
    }
    fn take_qmp_result(&mut self, id: u64) -> Option<Result<Value, QmpFailure>> {
        Machine::take_qmp_result(self, id)
    }
}
