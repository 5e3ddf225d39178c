//! The machines of a run, both kinds in one list: a [`Node`] is a QEMU VM ([`Machine`]) or a
//! systemd-nspawn container ([`Container`]). The loop and the pending-op controller see a
//! node through [`LoopMember`] and [`Controlled`], which delegate to the kind; the few
//! requests that only a VM can serve (QMP, the serial console, `crash`) ask
//! [`Node::vm_mut`], which answers with an error naming the container otherwise.
//!
//! The container's side of [`Controlled`] is here: its "shell" is ready once the notify socket
//! has named the leader and said READY, each command is an `nsenter` child, waiting for it is
//! worded as upstream words it (a reminder every 10 s, no limit but the global timeout), and
//! it has neither a console to wait on nor QMP.

use super::control::{ConnectWords, Controlled, StartProgress};
use super::save_group::Checkpointable;
use crate::checkpoint::plan::Boot;
use crate::container::{Container, Phase as ContainerPhase};
use crate::hostcpu::parse::Verdict;
use crate::hostcpu::Stamp;
use crate::json::Value;
use crate::log::Logger;
use crate::machine::guest::HostMessage;
use crate::machine::qmp::QmpFailure;
use crate::machine::session::{ShellRequest, ShellResult};
use crate::machine::{
    Machine, MachineError, Phase, RestorePlan, SaveOutcome, SaveRequest, ShellDown,
};
use crate::reactor::{Ctx, LoopMember};
use crate::rpc::{ErrorType, OpError};
use mio::event::Event;
use mio::Registry;
use std::time::{Duration, Instant};

/// Upstream logs "still waiting for container … to reach ready state" every 10 s.
pub const CONTAINER_REMINDER: Duration = Duration::from_secs(10);

/// One machine of the run.
// A handful per run, made once and never moved: boxing the VM would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Node {
    Vm(Machine),
    Container(Container),
}

/// Which kind of machine a node is (the shim builds `QemuMachine` or `NspawnMachine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Qemu,
    Nspawn,
}

impl Kind {
    /// The name the shim knows the kind by.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Qemu => "qemu",
            Kind::Nspawn => "nspawn",
        }
    }
}

impl Node {
    pub fn name(&self) -> &str {
        match self {
            Node::Vm(m) => &m.name,
            Node::Container(c) => &c.name,
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Node::Vm(_) => Kind::Qemu,
            Node::Container(_) => Kind::Nspawn,
        }
    }

    /// The VM, or an error saying that `what` needs one (a container has no QEMU).
    pub fn vm_mut(&mut self, what: &str) -> Result<&mut Machine, OpError> {
        match self {
            Node::Vm(m) => Ok(m),
            Node::Container(c) => Err(not_a_vm(&c.name, what)),
        }
    }

    pub fn vm(&self, what: &str) -> Result<&Machine, OpError> {
        match self {
            Node::Vm(m) => Ok(m),
            Node::Container(c) => Err(not_a_vm(&c.name, what)),
        }
    }

    /// Never started, or acknowledged as stopped.
    pub fn stopped(&self) -> bool {
        match self {
            Node::Vm(m) => m.phase() == Phase::Stopped,
            Node::Container(c) => c.phase() == ContainerPhase::Stopped,
        }
    }

    /// The process group of a VM's QEMU (switch ports are labelled through it).
    pub fn process_group(&self) -> Option<i32> {
        match self {
            Node::Vm(m) => m.process_group(),
            Node::Container(_) => None,
        }
    }

    /// Begin ending it (SIGTERM to its process group, SIGKILL after `grace`).
    pub fn terminate(&mut self, log: &mut Logger, registry: &Registry, grace: Duration) {
        match self {
            Node::Vm(m) => m.terminate(log, grace),
            Node::Container(c) => c.terminate(log, registry, grace),
        }
    }

    /// Nothing of it runs any more.
    pub fn gone(&mut self) -> bool {
        match self {
            Node::Vm(m) => m.gone(),
            Node::Container(c) => c.gone(),
        }
    }

    /// At the end of the run: fds closed, sockets (and the state directory unless kept)
    /// removed; a container also removes its cgroup, and says what it could not remove.
    pub fn remove_files(&mut self, registry: &Registry, log: &mut Logger) {
        match self {
            Node::Vm(m) => {
                m.release_fds(registry);
                m.remove_files();
            }
            Node::Container(c) => {
                for p in c.remove_files(registry) {
                    log.warning(Some(&c.name), &p);
                }
            }
        }
    }

    pub fn keep_state(&self) -> bool {
        match self {
            Node::Vm(m) => m.keep_state,
            Node::Container(c) => c.keep_state,
        }
    }
}

fn not_a_vm(name: &str, what: &str) -> OpError {
    OpError::new(
        ErrorType::Machine,
        format!("{name} is a systemd-nspawn container: {what} needs a QEMU machine"),
    )
}

impl LoopMember for Node {
    fn on_event(&mut self, cx: &mut Ctx<'_>, slot: usize, ev: &Event) {
        match self {
            Node::Vm(m) => m.on_event(cx, slot, ev),
            Node::Container(c) => c.on_event(cx, slot, ev),
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        match self {
            Node::Vm(m) => m.next_deadline(),
            Node::Container(c) => c.next_deadline(),
        }
    }

    fn on_timer(&mut self, cx: &mut Ctx<'_>, now: Instant) {
        match self {
            Node::Vm(m) => m.on_timer(cx, now),
            Node::Container(c) => c.on_timer(cx, now),
        }
    }
}

/// Delegate one [`Controlled`] method to the kind.
macro_rules! delegate {
    ($self:ident, $m:ident => $e:expr) => {
        match $self {
            Node::Vm($m) => $e,
            Node::Container($m) => $e,
        }
    };
}

impl Controlled for Node {
    fn name(&self) -> &str {
        Node::name(self)
    }
    fn process_name(&self) -> &'static str {
        delegate!(self, m => m.process_name())
    }
    fn connect_words(&self) -> ConnectWords {
        delegate!(self, m => m.connect_words())
    }
    fn booted(&self) -> bool {
        delegate!(self, m => Controlled::booted(m))
    }
    fn exited(&self) -> bool {
        delegate!(self, m => m.exited())
    }
    fn fully_exited(&self) -> bool {
        delegate!(self, m => Controlled::fully_exited(m))
    }
    fn start(&mut self, cx: &mut Ctx<'_>, env: &[(String, String)]) -> Result<(), MachineError> {
        delegate!(self, m => Controlled::start(m, cx, env))
    }
    fn start_progress(&self) -> StartProgress {
        delegate!(self, m => m.start_progress())
    }
    fn finish_shutdown(&mut self, registry: &Registry) {
        delegate!(self, m => Controlled::finish_shutdown(m, registry))
    }
    fn exit_report(&self) -> String {
        delegate!(self, m => Controlled::exit_report(m))
    }
    fn connected(&self) -> bool {
        delegate!(self, m => Controlled::connected(m))
    }
    fn shell_ready(&self) -> bool {
        delegate!(self, m => Controlled::shell_ready(m))
    }
    fn shell_down(&self, now: Instant) -> ShellDown {
        delegate!(self, m => Controlled::shell_down(m, now))
    }
    fn shell_error(&self) -> Option<String> {
        delegate!(self, m => Controlled::shell_error(m))
    }
    fn send_shell(&mut self, registry: &Registry, req: &ShellRequest) -> Result<(), MachineError> {
        delegate!(self, m => Controlled::send_shell(m, registry, req))
    }
    fn take_shell_result(&mut self) -> Option<ShellResult> {
        delegate!(self, m => Controlled::take_shell_result(m))
    }
    fn abandon_shell(&mut self, reason: String) {
        delegate!(self, m => Controlled::abandon_shell(m, reason))
    }
    fn tell_shell(&mut self, registry: &Registry, message: HostMessage) -> bool {
        delegate!(self, m => Controlled::tell_shell(m, registry, message))
    }
    fn clock(&mut self, now: Instant, log: &mut Logger) -> Stamp {
        delegate!(self, m => Controlled::clock(m, now, log))
    }
    fn pace_verdict(&mut self, host_psi: Option<u32>) -> Verdict {
        delegate!(self, m => Controlled::pace_verdict(m, host_psi))
    }
    fn vcpu_waiting_share(&self) -> Option<u32> {
        delegate!(self, m => Controlled::vcpu_waiting_share(m))
    }
    fn console_report(&self) -> String {
        delegate!(self, m => Controlled::console_report(m))
    }
    fn console_tail_text(&self) -> String {
        delegate!(self, m => Controlled::console_tail_text(m))
    }
    fn take_console_lines(&mut self) -> Vec<String> {
        delegate!(self, m => Controlled::take_console_lines(m))
    }
    fn next_qmp_event(&mut self) -> Option<Value> {
        delegate!(self, m => Controlled::next_qmp_event(m))
    }
    fn take_qmp_result(&mut self, id: u64) -> Option<Result<Value, QmpFailure>> {
        delegate!(self, m => Controlled::take_qmp_result(m, id))
    }
}

impl Controlled for Container {
    fn name(&self) -> &str {
        &self.name
    }
    fn process_name(&self) -> &'static str {
        "systemd-nspawn"
    }
    fn connect_words(&self) -> ConnectWords {
        ConnectWords {
            waiting: "waiting for the container to be ready",
            connected: "container ready",
            reminder_every: CONTAINER_REMINDER,
            reminder: vec![format!(
                "still waiting for container '{}' to reach ready state...",
                self.name
            )],
            gives_up: false,
        }
    }
    fn booted(&self) -> bool {
        self.is_up()
    }
    fn exited(&self) -> bool {
        self.phase() == ContainerPhase::Exited
    }
    fn fully_exited(&self) -> bool {
        self.phase() == ContainerPhase::Exited && self.console_closed()
    }
    fn start(&mut self, cx: &mut Ctx<'_>, _env: &[(String, String)]) -> Result<(), MachineError> {
        // Upstream gives the start script exactly its three variables, none of the VMs'.
        Container::start(self, cx).map_err(MachineError::Container)
    }
    fn start_progress(&self) -> StartProgress {
        // Upstream's start() is asynchronous: it returns once the script runs; a script that
        // fails is reported by the first command.
        StartProgress::Up
    }
    fn finish_shutdown(&mut self, registry: &Registry) {
        Container::finish_shutdown(self, registry)
    }
    fn exit_report(&self) -> String {
        Container::exit_report(self)
    }
    fn connected(&self) -> bool {
        Container::connected(self)
    }
    fn shell_ready(&self) -> bool {
        // Commands run side by side, each in its own nsenter child.
        Container::connected(self)
    }
    fn shell_down(&self, _now: Instant) -> ShellDown {
        match self.phase() {
            ContainerPhase::Starting | ContainerPhase::Ready => ShellDown::No,
            ContainerPhase::Exited | ContainerPhase::Stopped => {
                ShellDown::Yes(Container::exit_report(self))
            }
        }
    }
    fn shell_error(&self) -> Option<String> {
        None
    }
    fn send_shell(&mut self, registry: &Registry, req: &ShellRequest) -> Result<(), MachineError> {
        self.send(registry, req).map_err(MachineError::Container)
    }
    fn take_shell_result(&mut self) -> Option<ShellResult> {
        self.take_sent_result()
    }
    fn abandon_shell(&mut self, _reason: String) {
        self.abandon_in_flight();
    }
    /// A container's commands are the driver's own children: their timeouts are its
    /// timers (wall time: no vCPU is withheld from a container), nothing to tell.
    fn tell_shell(&mut self, _registry: &Registry, _message: HostMessage) -> bool {
        false
    }
    fn clock(&mut self, now: Instant, _log: &mut Logger) -> Stamp {
        Stamp::wall(now)
    }
    /// The host's pressure alone decides (a container has no vCPU threads to look at).
    fn pace_verdict(&mut self, host_psi: Option<u32>) -> Verdict {
        crate::hostcpu::parse::verdict(host_psi, None, Verdict::Contended)
    }
    fn vcpu_waiting_share(&self) -> Option<u32> {
        None
    }
    fn console_report(&self) -> String {
        format!(
            "machine '{}'{}",
            self.name,
            Container::console_tail_text(self)
        )
    }
    fn console_tail_text(&self) -> String {
        Container::console_tail_text(self)
    }
    fn take_console_lines(&mut self) -> Vec<String> {
        Vec::new()
    }
    fn next_qmp_event(&mut self) -> Option<Value> {
        None
    }
    fn take_qmp_result(&mut self, _id: u64) -> Option<Result<Value, QmpFailure>> {
        Some(Err(QmpFailure::Closed))
    }
}

impl Node {
    /// Which accelerator a VM's QEMU really uses (`kvm`/`tcg`); none for a container.
    pub fn accelerator(&self) -> Option<&'static str> {
        self.as_vm().and_then(Machine::accelerator)
    }

    /// The VM, if it is one (checkpoints and snapshots save VMs only).
    pub fn as_vm(&self) -> Option<&Machine> {
        match self {
            Node::Vm(m) => Some(m),
            Node::Container(_) => None,
        }
    }

    /// The VM, if it is one.
    pub fn as_vm_mut(&mut self) -> Option<&mut Machine> {
        match self {
            Node::Vm(m) => Some(m),
            Node::Container(_) => None,
        }
    }
}

/// Saving and restoring: a VM does it; a container has no saved form (it boots in well
/// under a second) and refuses to begin a save. Its boot still counts for the checkpoint
/// gate like a VM's: the script's first command waits until it is ready.
impl Checkpointable for Node {
    fn checkpoint_boot(&self) -> Boot {
        match self {
            Node::Vm(m) => m.checkpoint_boot(),
            Node::Container(c) => {
                if c.exited() {
                    Boot::Failed
                } else if c.shell_ready() {
                    Boot::Ready { restored: None }
                } else if c.booted() {
                    Boot::Starting
                } else {
                    Boot::Idle
                }
            }
        }
    }
    fn begin_save(&mut self, cx: &mut Ctx<'_>, req: SaveRequest) -> Result<(), String> {
        match self {
            Node::Vm(m) => Checkpointable::begin_save(m, cx, req),
            Node::Container(_) => Err("a container cannot be saved".to_owned()),
        }
    }
    fn save_prepared(&self) -> bool {
        self.as_vm().is_some_and(Checkpointable::save_prepared)
    }
    fn save_go(&mut self, cx: &mut Ctx<'_>) {
        if let Node::Vm(m) = self {
            Checkpointable::save_go(m, cx);
        }
    }
    fn save_cancel(&mut self, cx: &mut Ctx<'_>) {
        if let Node::Vm(m) = self {
            Checkpointable::save_cancel(m, cx);
        }
    }
    fn save_released(&self) -> bool {
        self.as_vm().map_or(true, Checkpointable::save_released)
    }
    fn take_save_outcome(&mut self) -> Option<SaveOutcome> {
        self.as_vm_mut().and_then(Checkpointable::take_save_outcome)
    }
    fn set_restore_plan(&mut self, plan: Option<RestorePlan>) {
        if let Node::Vm(m) = self {
            Checkpointable::set_restore_plan(m, plan);
        }
    }
    fn has_restore_plan(&self) -> bool {
        self.as_vm().is_some_and(Checkpointable::has_restore_plan)
    }
    fn take_restore_error(&mut self) -> Option<String> {
        self.as_vm_mut()
            .and_then(Checkpointable::take_restore_error)
    }
    fn restored_cut(&self) -> Option<&str> {
        self.as_vm().and_then(Checkpointable::restored_cut)
    }
    fn kill(&mut self) {
        if let Node::Vm(m) = self {
            Checkpointable::kill(m);
        }
    }
    fn gone(&self) -> bool {
        match self {
            Node::Vm(m) => Checkpointable::gone(m),
            Node::Container(c) => c.fully_exited(),
        }
    }
}
