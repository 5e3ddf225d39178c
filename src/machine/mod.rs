//! One virtual machine: its QEMU process and the fds to it, advanced only by readiness events
//! from the driver's poll loop.
//!
//! A machine goes `Stopped → Spawned → Running → Exited`: spawned when the start command runs,
//! running once QEMU has connected the monitor and shell sockets and the QMP handshake is done.
//! The machine owns the process, the fds and the phase; the conversations on them are I/O-free
//! parts it feeds bytes to: [`session::ShellSession`] (the backdoor shell), [`qmp::QmpClient`]
//! and [`console::Console`] (serial lines). Every fd is drained whenever it is readable,
//! whether or not anybody waits on it (the virtio console drops what the host does not read).
//! The machine never blocks and never waits; long operations are the driver's ops, which
//! submit a request here and poll for its result.

mod accel;
pub mod boot;
mod channels;
mod checkpoint;
pub mod console;
mod curl;
mod error;
pub mod guest;
mod link;
pub mod qemu;
pub mod qmp;
mod report;
pub mod session;
pub mod shell;
pub mod waits;
mod watchdog;
pub mod words;

pub use error::MachineError;

use crate::child::ExitInfo;
use crate::hostcpu::{Stamp, VcpuClock};
use crate::log::Logger;
use crate::nbio::{Registration, WriteBuffer};
use crate::reactor::{Ctx, LoopMember, Owner};
pub use boot::BootTimes;
use boot::Milestone;
pub(crate) use checkpoint::{RestorePlan, SaveOutcome, SaveRequest};
use link::Link;
use mio::event::Event;
use mio::net::{UnixListener, UnixStream};
use mio::unix::SourceFd;
use mio::{Interest, Registry};
use qemu::{MachinePaths, QemuProcess};
use qmp::QmpClient;
pub use report::ShellDown;
use rustix::process::Signal;
use session::ShellSession;
use shell::NonceSource;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// How long to keep retrying the QMP connect after both chardevs connected.
const QMP_CONNECT_PATIENCE: Duration = Duration::from_secs(10);
const QMP_CONNECT_RETRY: Duration = Duration::from_millis(10);
/// Tail of QEMU's output kept for error messages about a failed start.
pub(crate) const EARLY_OUTPUT_TAIL: usize = 4096;
/// How long the guest shell may take to answer ntd's setup block after the sentinel. It takes
/// well under a second even on a loaded host; a shell that never answers (a guest without
/// what the setup needs) must not hang the test until the global timeout.
pub(crate) const SETUP_PATIENCE: Duration = Duration::from_secs(20);
/// After the shell connection ends, how long to wait for QEMU's own exit before reporting:
/// QEMU closes its sockets a moment before it exits, and its exit status and last console
/// lines say far more than "the shell closed".
pub(crate) const SHELL_LOSS_GRACE: Duration = Duration::from_secs(3);
/// How far back the report looks for a kernel panic's headline.
pub(crate) const PANIC_SEARCH_LINES: usize = 200;
/// Console lines quoted when a machine stopped unexpectedly.
pub(crate) const EXIT_REPORT_LINES: usize = 10;
/// Read buffer for every stream.
const READ_CHUNK: usize = 256 * 1024;

/// The fds of a machine on the poll loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    MonitorListen = 0,
    ShellListen = 1,
    Monitor = 2,
    Shell = 3,
    Qmp = 4,
    Stdout = 5,
    Stdin = 6,
    Pidfd = 7,
}

impl TryFrom<usize> for Slot {
    type Error = usize;

    fn try_from(n: usize) -> Result<Self, usize> {
        Ok(match n {
            0 => Slot::MonitorListen,
            1 => Slot::ShellListen,
            2 => Slot::Monitor,
            3 => Slot::Shell,
            4 => Slot::Qmp,
            5 => Slot::Stdout,
            6 => Slot::Stdin,
            7 => Slot::Pidfd,
            other => return Err(other),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Stopped,
    Spawned,
    Running,
    Exited,
}
pub struct Machine {
    pub name: String,
    owner: Owner,
    pub paths: MachinePaths,
    pub start_command: String,
    pub keep_state: bool,
    pub allow_reboot: bool,
    /// Upstream's `qemu.forceAccel`: running under TCG is a start failure.
    pub force_accel: bool,
    /// QEMU arguments appended after upstream's own (the SSH backdoor's vsock device).
    pub extra_args: Vec<String>,
    /// Set when QEMU ran the guest under TCG although an accelerator was demanded (QEMU is
    /// being stopped; the start fails with this message).
    accel_refused: Option<String>,
    phase: Phase,
    process: Option<QemuProcess>,
    exit: Option<ExitInfo>,
    stdout_open: bool,
    early_output: VecDeque<u8>,
    monitor_listener: Option<UnixListener>,
    shell_listener: Option<UnixListener>,
    monitor: Option<UnixStream>,
    shell: Link,
    session: ShellSession,
    qmp: Link,
    qmp_client: QmpClient,
    qmp_retry_at: Option<Instant>,
    qmp_give_up_at: Option<Instant>,
    console: console::Console,
    /// One read buffer for every channel of this machine (allocated once).
    read_buf: Vec<u8>,
    stdin_out: WriteBuffer,
    pub boot: BootTimes,
    kill_deadline: Option<Instant>,
    killed: bool,
    /// When a shell that has not answered its setup is given up on.
    setup_deadline: Option<Instant>,
    /// When the shell connection ended (EOF) while QEMU still ran.
    shell_lost_at: Option<Instant>,
    /// When waiting ops should look at a lost shell again (see [`SHELL_LOSS_GRACE`]); cleared
    /// by the timer.
    shell_settle_at: Option<Instant>,
    /// Boot checkpoints: a restore to do, a save in progress (see `checkpoint`).
    ckpt: checkpoint::Checkpointing,
    /// How much time the host withheld from the vCPUs (timeouts count guest time).
    vcpu_clock: VcpuClock,
}

impl Machine {
    /// Machine number `index` of the run, its state below `tmp_dir` and its sockets below
    /// `socket_base`.
    pub fn new(
        name: &str,
        index: usize,
        tmp_dir: &std::path::Path,
        socket_base: &std::path::Path,
        start_command: &str,
    ) -> Self {
        let owner = Owner::Machine(index);
        Machine {
            name: name.to_owned(),
            owner,
            paths: MachinePaths::new(tmp_dir, socket_base, name),
            start_command: start_command.to_owned(),
            keep_state: false,
            allow_reboot: false,
            force_accel: false,
            extra_args: Vec::new(),
            accel_refused: None,
            phase: Phase::Stopped,
            process: None,
            exit: None,
            stdout_open: false,
            early_output: VecDeque::new(),
            monitor_listener: None,
            shell_listener: None,
            monitor: None,
            shell: Link::new(owner.token(Slot::Shell as usize)),
            session: ShellSession::new(NonceSource::new()),
            qmp: Link::new(owner.token(Slot::Qmp as usize)),
            qmp_client: QmpClient::new(),
            qmp_retry_at: None,
            qmp_give_up_at: None,
            console: console::Console::default(),
            read_buf: vec![0; READ_CHUNK],
            stdin_out: WriteBuffer::new(owner.token(Slot::Stdin as usize), Registration::WriteOnly),
            boot: BootTimes::default(),
            kill_deadline: None,
            killed: false,
            setup_deadline: None,
            shell_lost_at: None,
            shell_settle_at: None,
            ckpt: checkpoint::Checkpointing::default(),
            vcpu_clock: VcpuClock::new(),
        }
    }

    fn token(&self, slot: Slot) -> mio::Token {
        self.owner.token(slot as usize)
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Upstream's `booted`: started and not yet seen to shut down.
    pub fn booted(&self) -> bool {
        matches!(self.phase, Phase::Spawned | Phase::Running)
    }

    /// Upstream's `connected`: the backdoor shell answered.
    pub fn connected(&self) -> bool {
        self.session.connected() && !self.ckpt.busy()
    }

    pub fn pid(&self) -> Option<i32> {
        self.process
            .as_ref()
            .filter(|_| self.booted())
            .map(|p| p.child.raw_pid())
    }

    /// The process group of the machine's QEMU (its start script leads it), while it has one.
    pub fn process_group(&self) -> Option<i32> {
        self.process.as_ref().map(|p| p.child.raw_pid())
    }

    pub fn exit_info(&self) -> Option<ExitInfo> {
        self.exit
    }

    /// The machine's clock at `now`: how much time the host had withheld from its vCPUs (see
    /// [`crate::hostcpu`]); `log` hears once, at debug level, when it cannot be measured.
    pub fn clock(&mut self, now: Instant, log: &mut Logger) -> Stamp {
        let stamp = self.vcpu_clock.stamp(now);
        if let Some(note) = self.vcpu_clock.take_note() {
            log.debug(Some(&self.name), &note);
        }
        stamp
    }

    /// The share (per mille) of the last second in which its vCPUs waited for a host CPU.
    pub fn vcpu_waiting_share(&self) -> Option<u32> {
        self.vcpu_clock.waiting_share()
    }

    /// The host's verdict for this machine's polling (see [`crate::hostcpu::parse::verdict`]):
    /// the host's PSI share and this machine's vCPU waiting share as of its last clock
    /// reading, with the machine's previous verdict for hysteresis.
    pub fn pace_verdict(&mut self, host_psi: Option<u32>) -> crate::hostcpu::parse::Verdict {
        self.vcpu_clock.verdict(host_psi)
    }

    /// Which accelerator QEMU really uses (`kvm`/`tcg`), once QMP is ready.
    pub fn accelerator(&self) -> Option<&'static str> {
        self.qmp_client
            .kvm()
            .map(|kvm| if kvm { "kvm" } else { "tcg" })
    }

    /// Exited and every byte QEMU wrote has been read.
    pub fn fully_exited(&self) -> bool {
        self.phase == Phase::Exited && !self.stdout_open
    }

    /// QEMU's recent output, for errors about a failed start; when the start failed for
    /// want of KVM (QEMU could not open it, or ran under TCG while an accelerator was
    /// demanded) upstream's forceAccel message comes first.
    pub fn output_tail(&self) -> String {
        let v: Vec<u8> = self.early_output.iter().copied().collect();
        let output = String::from_utf8_lossy(&v).trim_end().to_owned();
        let why = self
            .accel_refused
            .clone()
            .or_else(|| accel::kvm_start_failure(&output));
        match why {
            Some(why) if output.is_empty() => why,
            Some(why) => format!("{why}\nQEMU's output:\n{output}"),
            None => output,
        }
    }

    /// Which socket QEMU had not connected yet (upstream's error names it).
    pub fn missing_connection(&self) -> &'static str {
        if self.monitor.is_none() {
            "monitor"
        } else if !self.shell.connected() {
            "shell"
        } else {
            "qmp"
        }
    }

    /// Remove the state directory unless state is kept (upstream does this at start-up).
    pub fn reset_state_dir(&self, log: &mut Logger) -> Result<(), MachineError> {
        let dir = &self.paths.state_dir;
        if dir.exists() && !self.keep_state {
            log.info(&format!(
                "deleting machine state directory {}",
                dir.display()
            ));
            log.info("if you want to keep the machine state, pass --keep-machine-state");
            std::fs::remove_dir_all(dir).map_err(|e| qemu::QemuError::StateDir(dir.clone(), e))?;
        }
        Ok(())
    }

    /// Spawn the start command (upstream `start()` up to the process launch). No-op if booted.
    pub fn start(
        &mut self,
        cx: &mut Ctx<'_>,
        extra_env: &[(String, String)],
    ) -> Result<(), MachineError> {
        if self.booted() {
            return Ok(());
        }
        cx.log.machine(&self.name, "starting vm");
        self.paths.check_socket_lengths()?;
        let dir = &self.paths.state_dir;
        for dir in [dir, &self.paths.socket_dir] {
            std::fs::create_dir_all(dir).map_err(|e| qemu::QemuError::StateDir(dir.clone(), e))?;
            set_mode(dir, 0o700);
        }
        std::fs::create_dir_all(&self.paths.shared_dir)
            .map_err(|e| qemu::QemuError::StateDir(self.paths.shared_dir.clone(), e))?;
        self.release_fds(cx.registry);
        for p in [&self.paths.monitor, &self.paths.shell, &self.paths.qmp] {
            let _ = std::fs::remove_file(p);
        }
        self.monitor_listener = Some(self.listen(cx.registry, Slot::MonitorListen)?);
        self.shell_listener = Some(self.listen(cx.registry, Slot::ShellListen)?);

        let mut args = qemu::appended_args(
            &self.paths.sockets(),
            self.allow_reboot,
            qemu::wants_nographic(),
        );
        args.extend(self.extra_args.iter().cloned());
        args.extend(self.checkpoint_args(cx, extra_env));
        let mut env = extra_env.to_vec();
        env.extend(qemu::start_env(&self.paths));
        let proc = qemu::spawn(&self.start_command, &args, &env, &self.paths.state_dir)?;
        let reg = |fd: &OwnedFd, slot, interest| {
            cx.registry
                .register(&mut SourceFd(&fd.as_raw_fd()), self.token(slot), interest)
                .map_err(|e| MachineError::Io("poll register", e))
        };
        reg(&proc.stdout, Slot::Stdout, Interest::READABLE)?;
        reg(proc.child.pidfd(), Slot::Pidfd, Interest::READABLE)?;
        self.process = Some(proc);
        self.phase = Phase::Spawned;
        self.exit = None;
        self.stdout_open = true;
        self.early_output.clear();
        self.accel_refused = None;
        self.console.reset();
        self.session.restart();
        self.qmp_client = QmpClient::new();
        self.boot.reset();
        self.boot.mark(Milestone::Spawned);
        self.kill_deadline = None;
        self.killed = false;
        self.setup_deadline = None;
        self.shell_lost_at = None;
        self.shell_settle_at = None;
        self.checkpoint_spawned(cx);
        Ok(())
    }

    fn listen(&self, registry: &Registry, slot: Slot) -> Result<UnixListener, MachineError> {
        let (path, what) = match slot {
            Slot::MonitorListen => (&self.paths.monitor, "cannot listen on the monitor socket"),
            _ => (&self.paths.shell, "cannot listen on the shell socket"),
        };
        let mut l = UnixListener::bind(path).map_err(|e| MachineError::Io(what, e))?;
        set_mode(path, 0o600);
        registry
            .register(&mut l, self.token(slot), Interest::READABLE)
            .map_err(|e| MachineError::Io("poll register", e))?;
        Ok(l)
    }

    fn accept(&mut self, cx: &mut Ctx<'_>, slot: Slot) {
        let (listener, stream_slot) = match slot {
            Slot::MonitorListen => (&mut self.monitor_listener, Slot::Monitor),
            _ => (&mut self.shell_listener, Slot::Shell),
        };
        let token = self.owner.token(stream_slot as usize);
        match accept_once(listener, cx.registry, token) {
            Ok(Some(s)) if stream_slot == Slot::Monitor => self.monitor = Some(s),
            Ok(Some(s)) => self.shell.attach(s),
            Ok(None) => return,
            Err(e) => cx
                .log
                .warning(Some(&self.name), &format!("accept on {stream_slot:?}: {e}")),
        }
        self.maybe_connect_qmp(cx);
    }

    /// QEMU has created its QMP listener before it connects the chardevs, so once both are
    /// connected the QMP connect succeeds (retried briefly for reordered start scripts).
    fn maybe_connect_qmp(&mut self, cx: &mut Ctx<'_>) {
        if self.monitor.is_none() || !self.shell.connected() || self.qmp.connected() {
            return;
        }
        let now = Instant::now();
        let give_up = *self
            .qmp_give_up_at
            .get_or_insert(now + QMP_CONNECT_PATIENCE);
        match UnixStream::connect(&self.paths.qmp) {
            Ok(mut s) => {
                if cx
                    .registry
                    .register(&mut s, self.token(Slot::Qmp), Interest::READABLE)
                    .is_ok()
                {
                    // QEMU made this socket with its own umask; nobody else may talk QMP.
                    set_mode(&self.paths.qmp, 0o600);
                    self.qmp.attach(s);
                    self.qmp_client = QmpClient::new();
                    self.qmp_retry_at = None;
                    self.qmp_give_up_at = None;
                }
            }
            Err(e) if now >= give_up => {
                cx.log.warning(
                    Some(&self.name),
                    &format!(
                        "cannot connect to QMP socket {}: {e}",
                        self.paths.qmp.display()
                    ),
                );
                self.qmp_retry_at = None;
            }
            Err(_) => self.qmp_retry_at = Some(now + QMP_CONNECT_RETRY),
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
        if self.checkpoint_exit(cx, info) {
            return;
        }
        self.exit = Some(info);
        self.vcpu_clock.clear_threads();
        self.boot.mark(Milestone::Exited);
        let was_running = self.phase == Phase::Running;
        self.phase = Phase::Exited;
        if !self.killed {
            cx.log.machine(&self.name, &format!("QEMU exited ({info})"));
        }
        if let Some(p) = self.process.as_ref().filter(|_| !was_running) {
            // Do not leave a half-started group behind.
            p.child.signal(Signal::KILL);
        }
        // Whatever QEMU wrote last is still in the pipe; read_stdout drains it to EOF.
        self.read_stdout(cx);
    }

    /// Begin ending the machine: SIGTERM to its process group, SIGKILL after `grace`.
    pub fn terminate(&mut self, log: &mut Logger, grace: Duration) {
        let Some(p) = self.process.as_ref() else {
            return;
        };
        if self.phase == Phase::Exited && !p.child.alive() {
            return;
        }
        if !self.killed {
            log.log(&format!("kill QemuMachine (pid {})", p.child.raw_pid()));
        }
        self.killed = true;
        p.child.term_then_kill(&mut self.kill_deadline, grace);
    }

    /// SIGKILL the process group now (global timeout, second signal).
    pub fn kill_now(&mut self) {
        if let Some(p) = self.process.as_ref() {
            self.killed = true;
            p.child.signal(Signal::KILL);
        }
    }

    /// True when nothing of this machine's process group is left (or it never started).
    pub fn gone(&self) -> bool {
        match self.process.as_ref() {
            None => true,
            Some(p) => self.phase == Phase::Exited && !p.child.alive(),
        }
    }

    /// Close every fd (after exit).
    pub fn release_fds(&mut self, registry: &Registry) {
        for l in [&mut self.monitor_listener, &mut self.shell_listener] {
            if let Some(mut l) = l.take() {
                let _ = registry.deregister(&mut l);
            }
        }
        if let Some(mut s) = self.monitor.take() {
            let _ = registry.deregister(&mut s);
        }
        self.shell.close(registry);
        self.qmp.close(registry);
        if let Some(p) = self.process.take() {
            for fd in [&p.stdout, p.child.pidfd()] {
                let _ = registry.deregister(&mut SourceFd(&fd.as_raw_fd()));
            }
            if self.stdin_out.armed() {
                let _ = registry.deregister(&mut SourceFd(&p.stdin.as_raw_fd()));
            }
        }
        self.stdin_out.clear();
        self.qmp_client.closed();
        self.stdout_open = false;
    }

    /// After QEMU exited: forget the process (upstream sets pid=None, booted=False).
    pub fn finish_shutdown(&mut self, registry: &Registry) {
        self.release_fds(registry);
        self.phase = Phase::Stopped;
        self.session.restart();
    }

    /// Remove sockets and (unless kept) the state directory at the end of the run.
    pub fn remove_files(&self) {
        for p in [&self.paths.monitor, &self.paths.shell, &self.paths.qmp] {
            let _ = std::fs::remove_file(p);
        }
        if self.paths.socket_dir != self.paths.state_dir {
            let _ = std::fs::remove_dir(&self.paths.socket_dir);
        }
        if !self.keep_state {
            let _ = std::fs::remove_dir_all(&self.paths.state_dir);
        }
    }
}

impl LoopMember for Machine {
    fn on_event(&mut self, cx: &mut Ctx<'_>, slot: usize, ev: &Event) {
        let Ok(slot) = Slot::try_from(slot) else {
            cx.log.warning(
                Some(&self.name),
                &format!("event for unknown machine slot {slot} ignored"),
            );
            return;
        };
        let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
        match slot {
            Slot::MonitorListen | Slot::ShellListen => self.accept(cx, slot),
            Slot::Monitor => self.drain_monitor(cx.registry),
            Slot::Shell => {
                if ev.is_writable() {
                    self.shell.flush(cx.registry);
                }
                if readable {
                    self.read_shell(cx);
                }
            }
            Slot::Qmp => {
                if ev.is_writable() {
                    self.qmp.flush(cx.registry);
                }
                if readable {
                    self.read_qmp(cx);
                }
            }
            Slot::Stdout => self.read_stdout(cx),
            Slot::Stdin => self.flush_stdin(cx.registry),
            Slot::Pidfd => self.check_exit(cx),
        }
        self.advance_checkpoint(cx);
    }

    fn next_deadline(&self) -> Option<Instant> {
        [
            self.qmp_retry_at,
            self.kill_deadline,
            self.setup_deadline,
            self.shell_settle_at,
            self.checkpoint_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn on_timer(&mut self, cx: &mut Ctx<'_>, now: Instant) {
        if self.shell_settle_at.is_some_and(|t| now >= t) {
            // Nothing to do but wake the loop: waiting ops look at shell_down() again.
            self.shell_settle_at = None;
        }
        if self.setup_deadline.is_some_and(|t| now >= t) {
            self.setup_deadline = None;
            let reason = format!(
                "the guest's root shell did not answer ntd's setup within {} s (sent with the first \
                 command; the shell needs bash with /dev/fd, or at least bash; see the guest's \
                 own error lines on its console)",
                SETUP_PATIENCE.as_secs()
            );
            let mut notes = Vec::new();
            self.session.fail_setup(reason, &mut notes);
            for n in notes {
                self.session_note(cx.log, n);
            }
        }
        if self.qmp_retry_at.is_some_and(|t| now >= t) {
            self.qmp_retry_at = None;
            self.maybe_connect_qmp(cx);
        }
        if self.kill_deadline.is_some_and(|t| now >= t) {
            self.kill_deadline = None;
            if let Some(p) = self.process.as_ref().filter(|p| p.child.alive()) {
                cx.log.warning(
                    Some(&self.name),
                    "QEMU did not exit after SIGTERM; sending SIGKILL",
                );
                p.child.signal(Signal::KILL);
            }
        }
        self.advance_checkpoint(cx);
    }
}

/// Accept the one connection QEMU makes to `listener`, then drop the listener (QEMU never
/// reconnects). `Ok(None)`: nothing to accept yet (or no listener).
fn accept_once(
    listener: &mut Option<UnixListener>,
    registry: &Registry,
    token: mio::Token,
) -> io::Result<Option<UnixStream>> {
    let Some(l) = listener.as_mut() else {
        return Ok(None);
    };
    match l.accept() {
        Ok((mut s, _)) => {
            let _ = registry.deregister(l);
            *listener = None;
            registry.register(&mut s, token, Interest::READABLE)?;
            Ok(Some(s))
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
}
