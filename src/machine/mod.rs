//! One virtual machine: its QEMU process and every channel to it, advanced only by readiness
//! events from the driver's poll loop.
//!
//! A machine goes `Stopped → Spawned → Running → Exited`: spawned when the start command runs,
//! running once QEMU has connected the monitor and shell sockets and the QMP handshake is done.
//! Independently the backdoor shell becomes *ready* when the sentinel has arrived and the setup
//! block has answered. Every fd is drained whenever it is readable, whether or not anybody
//! waits on it (the virtio console drops what the host does not read). The machine never
//! blocks and never waits; long operations are the driver's ops, which submit a request here
//! and poll for its result.

pub mod console;
pub mod qemu;
pub mod qmp;
pub mod shell;

use crate::json::Value;
use crate::log::{py_bytes_repr, Logger};
use crate::reactor;
use mio::net::{UnixListener, UnixStream};
use mio::unix::SourceFd;
use mio::{Interest, Registry};
use qemu::{ExitInfo, MachinePaths, QemuProcess};
use qmp::{QmpFraming, QmpMessage};
use rustix::process::Signal;
use shell::{NonceSource, ShellEvent, ShellFraming, WaitSpec};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

const SLOT_MONITOR_LISTEN: usize = 0;
const SLOT_SHELL_LISTEN: usize = 1;
const SLOT_MONITOR: usize = 2;
const SLOT_SHELL: usize = 3;
const SLOT_QMP: usize = 4;
const SLOT_STDOUT: usize = 5;
const SLOT_STDIN: usize = 6;
const SLOT_PIDFD: usize = 7;

/// How long to keep retrying the QMP connect after both chardevs connected.
const QMP_CONNECT_PATIENCE: Duration = Duration::from_secs(10);
const QMP_CONNECT_RETRY: Duration = Duration::from_millis(10);
/// QMP events kept for `wait_for_qmp_event`; older ones are dropped.
const MAX_QMP_EVENTS: usize = 4096;
/// Tail of QEMU's output kept for error messages about a failed start.
const EARLY_OUTPUT_TAIL: usize = 4096;
/// Read buffer for every stream.
const READ_CHUNK: usize = 256 * 1024;
/// Frames at least this large are checked for bytes the virtio console dropped (below the
/// socket buffer size nothing can be dropped).
const VERIFY_MIN_BYTES: u64 = 64 * 1024;
/// The guest's spool is emptied in front of the next command once it holds this much.
const SPOOL_LIMIT: u64 = 16 << 20;

/// Why a machine operation failed (shown to the test author as `MachineError`).
#[derive(Debug)]
pub enum MachineError {
    Qemu(qemu::QemuError),
    Io(&'static str, io::Error),
    NotConnected,
    ShellBusy,
    Encode(shell::EncodeError),
    QmpNotReady,
}

impl fmt::Display for MachineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MachineError::Qemu(e) => write!(f, "{e}"),
            MachineError::Io(what, e) => write!(f, "{what}: {e}"),
            MachineError::NotConnected => write!(f, "the guest shell is not connected"),
            MachineError::ShellBusy => write!(f, "the guest shell is still running a command"),
            MachineError::Encode(e) => write!(f, "{e}"),
            MachineError::QmpNotReady => write!(f, "QMP API is not ready yet, is the VM ready?"),
        }
    }
}

impl std::error::Error for MachineError {}

impl From<qemu::QemuError> for MachineError {
    fn from(e: qemu::QemuError) -> Self {
        MachineError::Qemu(e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Stopped,
    Spawned,
    Running,
    Exited,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QmpState {
    Disconnected,
    Greeting,
    Capabilities,
    QueryKvm,
    Ready,
}

/// What to run in the guest shell.
#[derive(Debug, Clone)]
pub enum ShellRequest {
    Run {
        command: String,
        timeout: Option<f64>,
    },
    Wait {
        command: String,
        spec: WaitSpec,
    },
}

/// The outcome of one [`ShellRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellResult {
    pub status: i32,
    pub output: Vec<u8>,
    /// Output bytes dropped beyond [`shell::MAX_OUTPUT`].
    pub truncated: usize,
    /// Failed attempts of a guest-side wait loop.
    pub attempts: u32,
    /// False when a wait's `timeout` wrapper had to stop a hanging attempt.
    pub looped: bool,
    /// Bytes the guest wrote that never arrived (the virtio console dropped them).
    pub lost: u64,
}

/// A finished request being checked for output the console dropped.
#[derive(Debug)]
struct Unverified {
    result: ShellResult,
    /// Bytes of the frame that arrived (end marker included).
    frame_bytes: u64,
    /// Bytes the guest spooled for the frame (known once the count came back).
    spooled: u64,
    /// Pieces fetched again so far.
    spool: Vec<u8>,
    pieces: u64,
}

/// Where the shell is in its own little life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ShellState {
    /// No connection, or no sentinel yet.
    Booting,
    /// Setup sent; waiting for its check frame.
    Setup,
    /// Ready for commands.
    Ready,
    /// Running a user request.
    Busy,
    /// The request finished; checking that none of its output was dropped (and fetching it
    /// again from the guest's spool if some was).
    Verifying,
}

pub struct Machine {
    pub name: String,
    pub owner: usize,
    pub paths: MachinePaths,
    pub start_command: String,
    pub keep_state: bool,
    pub allow_reboot: bool,
    phase: Phase,
    process: Option<QemuProcess>,
    exit: Option<ExitInfo>,
    stdout_open: bool,
    early_output: VecDeque<u8>,
    monitor_listener: Option<UnixListener>,
    shell_listener: Option<UnixListener>,
    monitor: Option<UnixStream>,
    shell: Option<UnixStream>,
    shell_out: Vec<u8>,
    shell_writable_armed: bool,
    framing: ShellFraming,
    shell_state: ShellState,
    nonces: NonceSource,
    attempts: u32,
    shell_result: Option<ShellResult>,
    /// A finished request whose output is being checked for (and repaired from) drops.
    unverified: Option<Unverified>,
    /// Nonce and kind of the request in flight.
    request_nonce: [u8; shell::NONCE_LEN],
    request_is_wait: bool,
    /// `framing.consumed()` when the spool was last emptied (the spool holds everything
    /// consumed since, except fetch frames, which go straight to the console).
    spool_base: u64,
    /// Bytes consumed by fetch frames since `spool_base`.
    spool_fetched: u64,
    /// Offset in the spool where the request in flight started.
    request_spool_offset: u64,
    /// Whether this shell has the timeout and wait machinery yet (sent with the first
    /// command that needs it).
    sent_timeouts: bool,
    sent_waits: bool,
    shell_eof: bool,
    qmp: Option<UnixStream>,
    qmp_state: QmpState,
    qmp_framing: QmpFraming,
    qmp_out: Vec<u8>,
    qmp_writable_armed: bool,
    qmp_retry_at: Option<Instant>,
    qmp_give_up_at: Option<Instant>,
    qmp_next_id: u64,
    qmp_pending: HashSet<u64>,
    qmp_results: HashMap<u64, Result<Value, String>>,
    qmp_events: VecDeque<Value>,
    pub accelerator: Option<String>,
    console: console::Console,
    /// One read buffer for every channel of this machine (allocated once).
    read_buf: Vec<u8>,
    stdin_out: Vec<u8>,
    stdin_armed: bool,
    /// When the start command was spawned (boot timings).
    pub spawned_at: Option<Instant>,
    /// When the sentinel arrived.
    pub sentinel_at: Option<Instant>,
    /// When the shell setup was confirmed (the first command could be sent).
    pub ready_at: Option<Instant>,
    /// Boot milestones of the current boot (spawn, QMP ready, first serial line, sentinel,
    /// shell ready, exit), for the trace and the boot-phase report. A handful per boot.
    milestones: Vec<(Instant, &'static str)>,
    /// How many milestones the trace has taken.
    milestones_traced: usize,
    kill_deadline: Option<Instant>,
    killed: bool,
}

impl Machine {
    pub fn new(name: &str, owner: usize, tmp_dir: &std::path::Path, start_command: &str) -> Self {
        Machine {
            name: name.to_owned(),
            owner,
            paths: MachinePaths::new(tmp_dir, name),
            start_command: start_command.to_owned(),
            keep_state: false,
            allow_reboot: false,
            phase: Phase::Stopped,
            process: None,
            exit: None,
            stdout_open: false,
            early_output: VecDeque::new(),
            monitor_listener: None,
            shell_listener: None,
            monitor: None,
            shell: None,
            shell_out: Vec::new(),
            shell_writable_armed: false,
            framing: ShellFraming::new(),
            shell_state: ShellState::Booting,
            nonces: NonceSource::new(),
            attempts: 0,
            shell_result: None,
            unverified: None,
            request_nonce: [b'0'; shell::NONCE_LEN],
            request_is_wait: false,
            spool_base: 0,
            spool_fetched: 0,
            request_spool_offset: 0,
            sent_timeouts: false,
            sent_waits: false,
            shell_eof: false,
            qmp: None,
            qmp_state: QmpState::Disconnected,
            qmp_framing: QmpFraming::default(),
            qmp_out: Vec::new(),
            qmp_writable_armed: false,
            qmp_retry_at: None,
            qmp_give_up_at: None,
            qmp_next_id: 1,
            qmp_pending: HashSet::new(),
            qmp_results: HashMap::new(),
            qmp_events: VecDeque::new(),
            accelerator: None,
            console: console::Console::default(),
            read_buf: vec![0; READ_CHUNK],
            stdin_out: Vec::new(),
            stdin_armed: false,
            spawned_at: None,
            sentinel_at: None,
            ready_at: None,
            milestones: Vec::new(),
            milestones_traced: 0,
            kill_deadline: None,
            killed: false,
        }
    }

    fn token(&self, slot: usize) -> mio::Token {
        reactor::token(self.owner, slot)
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
        matches!(
            self.shell_state,
            ShellState::Ready | ShellState::Busy | ShellState::Verifying
        )
    }

    pub fn pid(&self) -> Option<i32> {
        self.process
            .as_ref()
            .filter(|_| self.booted())
            .map(|p| p.pid.as_raw_nonzero().get())
    }

    pub fn exit_info(&self) -> Option<ExitInfo> {
        self.exit
    }

    /// Exited and every byte QEMU wrote has been read.
    pub fn fully_exited(&self) -> bool {
        self.phase == Phase::Exited && !self.stdout_open
    }

    /// QEMU's recent output, for errors about a failed start.
    pub fn output_tail(&self) -> String {
        let v: Vec<u8> = self.early_output.iter().copied().collect();
        String::from_utf8_lossy(&v).trim_end().to_owned()
    }

    /// Which socket QEMU had not connected yet (upstream's error names it).
    pub fn missing_connection(&self) -> &'static str {
        if self.monitor.is_none() {
            "monitor"
        } else if self.shell.is_none() {
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
        registry: &Registry,
        log: &mut Logger,
        extra_env: &[(String, String)],
    ) -> Result<(), MachineError> {
        if self.booted() {
            return Ok(());
        }
        log.machine(&self.name, "starting vm");
        self.paths.check_socket_lengths()?;
        let dir = &self.paths.state_dir;
        std::fs::create_dir_all(dir).map_err(|e| qemu::QemuError::StateDir(dir.clone(), e))?;
        set_mode(dir, 0o700);
        std::fs::create_dir_all(&self.paths.shared_dir)
            .map_err(|e| qemu::QemuError::StateDir(self.paths.shared_dir.clone(), e))?;
        self.release_fds(registry);
        for p in [&self.paths.monitor, &self.paths.shell, &self.paths.qmp] {
            let _ = std::fs::remove_file(p);
        }
        let mut monitor = UnixListener::bind(&self.paths.monitor)
            .map_err(|e| MachineError::Io("cannot listen on the monitor socket", e))?;
        let mut shell = UnixListener::bind(&self.paths.shell)
            .map_err(|e| MachineError::Io("cannot listen on the shell socket", e))?;
        registry
            .register(
                &mut monitor,
                self.token(SLOT_MONITOR_LISTEN),
                Interest::READABLE,
            )
            .map_err(|e| MachineError::Io("poll register", e))?;
        registry
            .register(
                &mut shell,
                self.token(SLOT_SHELL_LISTEN),
                Interest::READABLE,
            )
            .map_err(|e| MachineError::Io("poll register", e))?;
        self.monitor_listener = Some(monitor);
        self.shell_listener = Some(shell);

        let args = qemu::appended_args(&self.paths, self.allow_reboot, qemu::wants_nographic());
        let mut env = extra_env.to_vec();
        env.extend(qemu::start_env(&self.paths));
        let proc = qemu::spawn(&self.start_command, &args, &env, &self.paths.state_dir)?;
        let reg = |fd: &OwnedFd, slot, interest| {
            registry
                .register(&mut SourceFd(&fd.as_raw_fd()), self.token(slot), interest)
                .map_err(|e| MachineError::Io("poll register", e))
        };
        reg(&proc.stdout, SLOT_STDOUT, Interest::READABLE)?;
        reg(&proc.pidfd, SLOT_PIDFD, Interest::READABLE)?;
        self.process = Some(proc);
        self.phase = Phase::Spawned;
        self.exit = None;
        self.stdout_open = true;
        self.early_output.clear();
        self.console.reset();
        self.framing.await_sentinel();
        self.shell_state = ShellState::Booting;
        self.shell_result = None;
        self.shell_eof = false;
        self.qmp_state = QmpState::Disconnected;
        self.qmp_framing = QmpFraming::default();
        self.qmp_pending.clear();
        self.qmp_results.clear();
        self.qmp_events.clear();
        self.accelerator = None;
        self.spawned_at = Some(Instant::now());
        self.sentinel_at = None;
        self.ready_at = None;
        self.milestones.clear();
        self.milestones_traced = 0;
        self.milestone("QEMU spawned");
        self.kill_deadline = None;
        self.killed = false;
        Ok(())
    }

    /// Dispatch one readiness event for a slot of this machine.
    pub fn handle(
        &mut self,
        registry: &Registry,
        slot: usize,
        ev: &mio::event::Event,
        log: &mut Logger,
    ) {
        match slot {
            SLOT_MONITOR_LISTEN => self.accept_monitor(registry, log),
            SLOT_SHELL_LISTEN => self.accept_shell(registry, log),
            SLOT_MONITOR => self.drain_monitor(registry),
            SLOT_SHELL => {
                if ev.is_writable() {
                    self.flush_shell(registry);
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.read_shell(registry, log);
                }
            }
            SLOT_QMP => {
                if ev.is_writable() {
                    self.flush_qmp(registry);
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.read_qmp(registry, log);
                }
            }
            SLOT_STDOUT => self.read_stdout(registry, log),
            SLOT_STDIN => self.flush_stdin(registry),
            SLOT_PIDFD => self.check_exit(registry, log),
            _ => {}
        }
    }

    fn accept_monitor(&mut self, registry: &Registry, log: &mut Logger) {
        let token = self.token(SLOT_MONITOR);
        match accept_once(&mut self.monitor_listener, registry, token) {
            Ok(Some(s)) => self.monitor = Some(s),
            Ok(None) => return,
            Err(e) => log.warning(Some(&self.name), &format!("accept on monitor: {e}")),
        }
        self.maybe_connect_qmp(registry, log);
    }

    fn accept_shell(&mut self, registry: &Registry, log: &mut Logger) {
        let token = self.token(SLOT_SHELL);
        match accept_once(&mut self.shell_listener, registry, token) {
            Ok(Some(s)) => {
                self.shell = Some(s);
                self.shell_writable_armed = false;
            }
            Ok(None) => return,
            Err(e) => log.warning(Some(&self.name), &format!("accept on shell: {e}")),
        }
        self.maybe_connect_qmp(registry, log);
    }

    /// QEMU has created its QMP listener before it connects the chardevs, so once both are
    /// connected the QMP connect succeeds (retried briefly for reordered start scripts).
    fn maybe_connect_qmp(&mut self, registry: &Registry, log: &mut Logger) {
        if self.monitor.is_none() || self.shell.is_none() || self.qmp.is_some() {
            return;
        }
        if self.qmp_give_up_at.is_none() {
            self.qmp_give_up_at = Some(Instant::now() + QMP_CONNECT_PATIENCE);
        }
        match UnixStream::connect(&self.paths.qmp) {
            Ok(mut s) => {
                if registry
                    .register(&mut s, self.token(SLOT_QMP), Interest::READABLE)
                    .is_ok()
                {
                    self.qmp = Some(s);
                    self.qmp_state = QmpState::Greeting;
                    self.qmp_retry_at = None;
                    self.qmp_give_up_at = None;
                }
            }
            Err(e) => {
                let now = Instant::now();
                if self.qmp_give_up_at.is_some_and(|t| now >= t) {
                    log.warning(
                        Some(&self.name),
                        &format!(
                            "cannot connect to QMP socket {}: {e}",
                            self.paths.qmp.display()
                        ),
                    );
                    self.qmp_retry_at = None;
                } else {
                    self.qmp_retry_at = Some(now + QMP_CONNECT_RETRY);
                }
            }
        }
    }

    fn drain_monitor(&mut self, registry: &Registry) {
        // The HMP monitor only prints its banner and prompt; HMP commands go through QMP.
        if let Some(m) = self.monitor.as_mut() {
            if read_available(m, &mut self.read_buf, |_| {}) {
                let _ = registry.deregister(m);
                self.monitor = None;
            }
        }
    }

    fn read_shell(&mut self, registry: &Registry, log: &mut Logger) {
        let mut events = Vec::new();
        let framing = &mut self.framing;
        let eof = match self.shell.as_mut() {
            Some(s) => read_available(s, &mut self.read_buf, |b| framing.feed(b, &mut events)),
            None => false,
        };
        for ev in events {
            self.shell_event(registry, ev, log);
        }
        if eof {
            if let Some(mut s) = self.shell.take() {
                let _ = registry.deregister(&mut s);
            }
            self.shell_eof = true;
            self.shell_state = ShellState::Booting;
            self.shell_out.clear();
        }
    }

    fn shell_event(&mut self, registry: &Registry, ev: ShellEvent, log: &mut Logger) {
        match ev {
            ShellEvent::Greeting(bytes) => {
                log.machine(
                    &self.name,
                    &format!("Guest shell says: {}", py_bytes_repr(&bytes)),
                );
            }
            ShellEvent::Connected => {
                self.sentinel_at = Some(Instant::now());
                self.milestone("backdoor sentinel");
                // A new shell: a new, empty spool; the framing counts from the sentinel on.
                self.spool_base = 0;
                self.spool_fetched = 0;
                let mut setup = shell::setup_text(shell::SetupPart::Base).to_owned();
                self.sent_timeouts = false;
                self.sent_waits = false;
                let nonce = self.nonces.next_nonce();
                // An internal check frame: proves the setup works before any user command.
                setup.push_str(&shell::encode_run(&nonce, "true", None).unwrap_or_default());
                self.framing.expect(nonce);
                self.shell_state = ShellState::Setup;
                self.queue_shell(registry, setup.as_bytes());
            }
            ShellEvent::Stray(bytes) => {
                log.machine(
                    &self.name,
                    &format!(
                        "output after its command finished (a background process kept stdout?): {}",
                        py_bytes_repr(&bytes)
                    ),
                );
            }
            ShellEvent::Attempt { .. } => self.attempts += 1,
            ShellEvent::Count { spooled } => self.check_spool_count(registry, spooled, log),
            ShellEvent::Done {
                status,
                output,
                truncated,
                looped,
                frame_bytes,
            } => match self.shell_state {
                ShellState::Setup => {
                    if status == 0 {
                        self.shell_state = ShellState::Ready;
                        self.ready_at = Some(Instant::now());
                        self.milestone("shell ready");
                    } else {
                        log.warning(
                            Some(&self.name),
                            &format!("backdoor setup check failed with status {status}"),
                        );
                    }
                }
                ShellState::Verifying => {
                    self.spool_fetched += frame_bytes;
                    self.spool_piece(registry, output, log)
                }
                _ => {
                    let result = ShellResult {
                        status,
                        output,
                        truncated,
                        attempts: std::mem::take(&mut self.attempts),
                        looped,
                        lost: 0,
                    };
                    if frame_bytes >= VERIFY_MIN_BYTES {
                        let nonce = self.nonces.next_nonce();
                        self.framing.expect_count(nonce);
                        self.unverified = Some(Unverified {
                            result,
                            frame_bytes,
                            spooled: 0,
                            spool: Vec::new(),
                            pieces: 0,
                        });
                        self.shell_state = ShellState::Verifying;
                        self.queue_shell(registry, shell::encode_count(&nonce).as_bytes());
                    } else {
                        self.shell_state = ShellState::Ready;
                        self.shell_result = Some(result);
                    }
                }
            },
        }
    }

    /// The guest says how large its spool of the last frame is: equal (or unknown) means
    /// nothing was dropped; larger means the console dropped bytes, which are then fetched
    /// again from the spool piece by piece.
    fn check_spool_count(&mut self, registry: &Registry, spooled: i64, log: &mut Logger) {
        let Some(mut u) = self.unverified.take() else {
            self.shell_state = ShellState::Ready;
            return;
        };
        // The spool holds this frame from request_spool_offset on (the count's own marker
        // is written after the size was taken).
        let frame_spooled = (spooled.max(0) as u64).saturating_sub(self.request_spool_offset);
        if spooled < 0 || frame_spooled <= u.frame_bytes {
            self.shell_state = ShellState::Ready;
            self.shell_result = Some(u.result);
            return;
        }
        u.spooled = frame_spooled;
        if self.request_is_wait {
            // A wait's frame holds every attempt; only its last output matters and it is small.
            u.result.lost = u.spooled - u.frame_bytes;
            self.shell_state = ShellState::Ready;
            self.shell_result = Some(u.result);
            return;
        }
        log.machine(
            &self.name,
            &format!(
                "the console dropped {} bytes of output; fetching them again from the guest",
                u.spooled - u.frame_bytes
            ),
        );
        self.unverified = Some(u);
        self.fetch_next_piece(registry);
    }

    fn fetch_next_piece(&mut self, registry: &Registry) {
        let Some(u) = self.unverified.as_mut() else {
            return;
        };
        let nonce = self.nonces.next_nonce();
        let start = (u.pieces == 0).then_some(self.request_spool_offset);
        let line = shell::encode_fetch(&nonce, start, shell::FETCH_PIECE);
        u.pieces += 1;
        self.framing.expect(nonce);
        self.queue_shell(registry, line.as_bytes());
    }

    /// One piece of the spool arrived; the last one is short.
    fn spool_piece(&mut self, registry: &Registry, piece: Vec<u8>, log: &mut Logger) {
        let Some(u) = self.unverified.as_mut() else {
            self.shell_state = ShellState::Ready;
            return;
        };
        let last = piece.len() < shell::FETCH_PIECE || u.spool.len() as u64 >= u.spooled;
        u.spool.extend_from_slice(&piece);
        if !last {
            self.fetch_next_piece(registry);
            return;
        }
        let Some(mut u) = self.unverified.take() else {
            return;
        };
        self.queue_shell(registry, shell::FETCH_DONE.as_bytes());
        match shell::parse_spool(&u.spool, &self.request_nonce) {
            Some((len, _status)) => {
                u.spool.truncate(len);
                let keep = len.min(shell::MAX_OUTPUT);
                u.result.truncated = len - keep;
                u.spool.truncate(keep);
                u.result.output = u.spool;
                log.machine(
                    &self.name,
                    &format!("recovered the full output ({len} bytes) from the guest's spool"),
                );
            }
            None => u.result.lost = u.spooled - u.frame_bytes,
        }
        self.shell_state = ShellState::Ready;
        self.shell_result = Some(u.result);
    }

    /// Send a command to the guest shell; its result arrives via [`Self::take_shell_result`].
    pub fn send_shell(
        &mut self,
        registry: &Registry,
        req: &ShellRequest,
    ) -> Result<(), MachineError> {
        match self.shell_state {
            ShellState::Ready => {}
            ShellState::Busy | ShellState::Verifying => return Err(MachineError::ShellBusy),
            _ => return Err(MachineError::NotConnected),
        }
        let nonce = self.nonces.next_nonce();
        let mut line = match req {
            ShellRequest::Run { command, timeout } => shell::encode_run(&nonce, command, *timeout),
            ShellRequest::Wait { command, spec } => shell::encode_wait(&nonce, command, *spec),
        }
        .map_err(MachineError::Encode)?;
        let needs_timeouts = matches!(
            req,
            ShellRequest::Run {
                timeout: Some(_),
                ..
            } | ShellRequest::Wait { .. }
        );
        let needs_waits = matches!(req, ShellRequest::Wait { .. });
        if needs_waits && !self.sent_waits {
            line.insert_str(0, shell::setup_text(shell::SetupPart::Waits));
            self.sent_waits = true;
        }
        if needs_timeouts && !self.sent_timeouts {
            line.insert_str(0, shell::setup_text(shell::SetupPart::Timeouts));
            self.sent_timeouts = true;
        }
        let consumed = self.framing.consumed();
        if consumed - self.spool_base - self.spool_fetched > SPOOL_LIMIT {
            line.insert_str(0, shell::TRUNCATE_SPOOL);
            self.spool_base = consumed;
            self.spool_fetched = 0;
        }
        self.request_spool_offset = consumed - self.spool_base - self.spool_fetched;
        self.framing.expect(nonce);
        self.request_nonce = nonce;
        self.request_is_wait = matches!(req, ShellRequest::Wait { .. });
        self.attempts = 0;
        self.shell_result = None;
        self.shell_state = ShellState::Busy;
        self.queue_shell(registry, line.as_bytes());
        Ok(())
    }

    /// Write raw bytes to the shell (upstream's `shutdown()` sends `poweroff\n` this way).
    pub fn send_shell_raw(&mut self, registry: &Registry, bytes: &[u8]) -> bool {
        if self.shell.is_none() {
            return false;
        }
        self.queue_shell(registry, bytes);
        true
    }

    pub fn take_shell_result(&mut self) -> Option<ShellResult> {
        self.shell_result.take()
    }

    /// True while the shell connection is gone (QEMU exited or closed it).
    pub fn shell_lost(&self) -> bool {
        self.shell_eof
    }

    /// Guest shell ready for a command.
    pub fn shell_ready(&self) -> bool {
        self.shell_state == ShellState::Ready
    }

    /// Forget the shell so the next connect waits for a fresh sentinel (reboot, switch_root).
    pub fn mark_disconnected(&mut self) {
        self.framing.await_sentinel();
        self.shell_state = ShellState::Booting;
        self.sentinel_at = None;
    }

    fn queue_shell(&mut self, registry: &Registry, bytes: &[u8]) {
        self.shell_out.extend_from_slice(bytes);
        self.flush_shell(registry);
    }

    fn flush_shell(&mut self, registry: &Registry) {
        let Some(s) = self.shell.as_mut() else {
            self.shell_out.clear();
            return;
        };
        let token = reactor::token(self.owner, SLOT_SHELL);
        flush_stream(
            s,
            &mut self.shell_out,
            &mut self.shell_writable_armed,
            registry,
            token,
        );
    }

    fn read_qmp(&mut self, registry: &Registry, log: &mut Logger) {
        let mut msgs = Vec::new();
        let framing = &mut self.qmp_framing;
        let eof = match self.qmp.as_mut() {
            Some(s) => read_available(s, &mut self.read_buf, |b| framing.feed(b, &mut msgs)),
            None => false,
        };
        for m in msgs {
            match m {
                Ok(m) => self.qmp_message(registry, m, log),
                Err(e) => log.warning(Some(&self.name), &e.to_string()),
            }
        }
        if eof {
            if let Some(mut s) = self.qmp.take() {
                let _ = registry.deregister(&mut s);
            }
            self.qmp_state = QmpState::Disconnected;
            // Commands in flight will never be answered.
            for id in std::mem::take(&mut self.qmp_pending) {
                self.qmp_results
                    .insert(id, Err("QEMU closed the QMP connection".into()));
            }
        }
    }

    fn qmp_message(&mut self, registry: &Registry, m: QmpMessage, log: &mut Logger) {
        match m {
            QmpMessage::Greeting(_) => {
                if self.qmp_state == QmpState::Greeting {
                    self.qmp_state = QmpState::Capabilities;
                    self.qmp_send_internal(registry, "qmp_capabilities");
                }
            }
            QmpMessage::Event(ev) => {
                if self.qmp_events.len() == MAX_QMP_EVENTS {
                    self.qmp_events.pop_front();
                }
                self.qmp_events.push_back(ev);
            }
            QmpMessage::Return { id, value } => self.qmp_reply(registry, id, Ok(value), log),
            QmpMessage::Error { id, class, desc } => {
                self.qmp_reply(registry, id, Err(format!("{class}: {desc}")), log)
            }
        }
    }

    /// Internal commands use id 0; user commands get ids from 1.
    fn qmp_send_internal(&mut self, registry: &Registry, name: &str) {
        let bytes = qmp::encode_command(name, None, 0);
        self.qmp_out.extend_from_slice(&bytes);
        self.flush_qmp(registry);
    }

    fn qmp_reply(
        &mut self,
        registry: &Registry,
        id: Option<u64>,
        result: Result<Value, String>,
        log: &mut Logger,
    ) {
        match (id, self.qmp_state) {
            (Some(0), QmpState::Capabilities) => {
                self.qmp_state = QmpState::QueryKvm;
                self.qmp_send_internal(registry, "query-kvm");
            }
            (Some(0), QmpState::QueryKvm) => {
                let kvm = result
                    .as_ref()
                    .ok()
                    .and_then(|v| v.get("enabled"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                self.accelerator = Some(if kvm { "kvm" } else { "tcg" }.to_owned());
                self.qmp_state = QmpState::Ready;
                self.phase = Phase::Running;
                self.milestone("QMP ready");
                if let Some(pid) = self.pid() {
                    log.machine(&self.name, &format!("QEMU running (pid {pid})"));
                }
                if kvm {
                    log.info(&format!("{}: accelerator: KVM", self.name));
                } else {
                    log.warning(
                        Some(&self.name),
                        "running under TCG (software emulation, KVM is not in use): \
                         the guest is 10-50x slower than with KVM",
                    );
                }
            }
            (Some(id), _) if self.qmp_pending.remove(&id) => {
                self.qmp_results.insert(id, result);
            }
            _ => {
                if let Err(e) = result {
                    log.warning(Some(&self.name), &format!("QMP error: {e}"));
                }
            }
        }
    }

    /// Send a QMP command; its result arrives via [`Self::take_qmp_result`].
    pub fn qmp_execute(
        &mut self,
        registry: &Registry,
        name: &str,
        args: Option<Value>,
    ) -> Result<u64, MachineError> {
        if self.qmp_state != QmpState::Ready {
            return Err(MachineError::QmpNotReady);
        }
        let id = self.qmp_next_id;
        self.qmp_next_id += 1;
        self.qmp_pending.insert(id);
        let bytes = qmp::encode_command(name, args, id);
        self.qmp_out.extend_from_slice(&bytes);
        self.flush_qmp(registry);
        Ok(id)
    }

    pub fn take_qmp_result(&mut self, id: u64) -> Option<Result<Value, String>> {
        if let Some(r) = self.qmp_results.remove(&id) {
            return Some(r);
        }
        if !self.qmp_pending.contains(&id) {
            return Some(Err("QEMU closed the QMP connection".into()));
        }
        None
    }

    pub fn qmp_ready(&self) -> bool {
        self.qmp_state == QmpState::Ready
    }

    /// Take the oldest queued QMP event.
    pub fn next_qmp_event(&mut self) -> Option<Value> {
        self.qmp_events.pop_front()
    }

    fn flush_qmp(&mut self, registry: &Registry) {
        let Some(s) = self.qmp.as_mut() else {
            self.qmp_out.clear();
            return;
        };
        let token = reactor::token(self.owner, SLOT_QMP);
        flush_stream(
            s,
            &mut self.qmp_out,
            &mut self.qmp_writable_armed,
            registry,
            token,
        );
    }

    fn read_stdout(&mut self, registry: &Registry, log: &mut Logger) {
        let Some(p) = self.process.as_ref() else {
            return;
        };
        let mut lines = Vec::new();
        let (console, early, running) = (
            &mut self.console,
            &mut self.early_output,
            self.phase == Phase::Running,
        );
        let eof = read_available(&mut FdReader(&p.stdout), &mut self.read_buf, |chunk| {
            console.feed(chunk, &mut lines);
            if !running {
                early.extend(chunk);
                let excess = early.len().saturating_sub(EARLY_OUTPUT_TAIL);
                early.drain(..excess);
            }
        });
        if eof {
            self.console.flush(&mut lines);
            let _ = registry.deregister(&mut SourceFd(&p.stdout.as_raw_fd()));
            self.stdout_open = false;
        }
        if !lines.is_empty()
            && !self
                .milestones
                .iter()
                .any(|(_, m)| *m == "first serial line")
        {
            self.milestone("first serial line");
        }
        for l in lines {
            log.serial(&self.name, &l);
        }
    }

    fn milestone(&mut self, what: &'static str) {
        self.milestones.push((Instant::now(), what));
    }

    /// Milestones not yet handed to the trace.
    pub fn new_milestones(&mut self) -> &[(Instant, &'static str)] {
        let from = self.milestones_traced.min(self.milestones.len());
        self.milestones_traced = self.milestones.len();
        &self.milestones[from..]
    }

    /// `name: boot phases: QMP ready +0.05 s, …` for the current (or last) boot.
    pub fn boot_phases(&self) -> Option<String> {
        let (start, _) = *self.milestones.first()?;
        let parts: Vec<String> = self.milestones[1..]
            .iter()
            .map(|(at, what)| format!("{what} +{:.2} s", (*at - start).as_secs_f64()))
            .collect();
        Some(format!("boot phases: {}", parts.join(", ")))
    }

    /// Lines printed on the serial console since the last call (upstream's queue semantics).
    pub fn take_console_lines(&mut self) -> Vec<String> {
        self.console.take_unconsumed()
    }

    pub fn console_log(&self) -> String {
        self.console.log_text()
    }

    /// Write bytes to QEMU's stdin (`send_console`).
    pub fn send_console(&mut self, registry: &Registry, bytes: &[u8]) -> bool {
        if self.process.is_none() || !self.booted() {
            return false;
        }
        self.stdin_out.extend_from_slice(bytes);
        self.flush_stdin(registry);
        true
    }

    fn flush_stdin(&mut self, registry: &Registry) {
        let Some(p) = self.process.as_ref() else {
            return;
        };
        while !self.stdin_out.is_empty() {
            match rustix::io::write(&p.stdin, &self.stdin_out) {
                Ok(n) => {
                    self.stdin_out.drain(..n);
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => break,
                Err(_) => {
                    self.stdin_out.clear();
                    break;
                }
            }
        }
        let want = !self.stdin_out.is_empty();
        if want != self.stdin_armed {
            let mut src = SourceFd(&p.stdin.as_raw_fd());
            let token = reactor::token(self.owner, SLOT_STDIN);
            let ok = if want {
                registry.register(&mut src, token, Interest::WRITABLE)
            } else {
                registry.deregister(&mut src)
            };
            if ok.is_ok() {
                self.stdin_armed = want;
            }
        }
    }

    fn check_exit(&mut self, registry: &Registry, log: &mut Logger) {
        let Some(p) = self.process.as_ref() else {
            return;
        };
        if let Some(info) = qemu::try_reap(&p.pidfd) {
            let _ = registry.deregister(&mut SourceFd(&p.pidfd.as_raw_fd()));
            self.exit = Some(info);
            self.milestones.push((Instant::now(), "QEMU exited"));
            let was_running = self.phase == Phase::Running;
            self.phase = Phase::Exited;
            if !self.killed {
                log.machine(&self.name, &format!("QEMU exited ({info})"));
            }
            if !was_running {
                // Do not leave a half-started group behind.
                qemu::signal_group(p.pid, Signal::KILL);
            }
            // Whatever QEMU wrote last is still in the pipe; read_stdout drains it to EOF.
            self.read_stdout(registry, log);
        }
    }

    /// Earliest instant this machine needs [`Self::on_timer`].
    pub fn next_deadline(&self) -> Option<Instant> {
        [self.qmp_retry_at, self.kill_deadline]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn on_timer(&mut self, registry: &Registry, now: Instant, log: &mut Logger) {
        if self.qmp_retry_at.is_some_and(|t| now >= t) {
            self.qmp_retry_at = None;
            self.maybe_connect_qmp(registry, log);
        }
        if self.kill_deadline.is_some_and(|t| now >= t) {
            self.kill_deadline = None;
            if let Some(p) = self.process.as_ref() {
                if qemu::group_alive(p.pid) {
                    log.warning(
                        Some(&self.name),
                        "QEMU did not exit after SIGTERM; sending SIGKILL",
                    );
                    qemu::signal_group(p.pid, Signal::KILL);
                }
            }
        }
    }

    /// Begin ending the machine: SIGTERM to its process group, SIGKILL after `grace`.
    pub fn terminate(&mut self, log: &mut Logger, grace: Duration) {
        let Some(p) = self.process.as_ref() else {
            return;
        };
        if self.phase == Phase::Exited && !qemu::group_alive(p.pid) {
            return;
        }
        if !self.killed {
            log.log(&format!(
                "kill QemuMachine (pid {})",
                p.pid.as_raw_nonzero()
            ));
        }
        self.killed = true;
        qemu::signal_group(p.pid, Signal::TERM);
        self.kill_deadline = Some(Instant::now() + grace);
    }

    /// SIGKILL the process group now (global timeout, second signal).
    pub fn kill_now(&mut self) {
        if let Some(p) = self.process.as_ref() {
            self.killed = true;
            qemu::signal_group(p.pid, Signal::KILL);
        }
    }

    /// True when nothing of this machine's process group is left (or it never started).
    pub fn gone(&self) -> bool {
        match self.process.as_ref() {
            None => true,
            Some(p) => self.phase == Phase::Exited && !qemu::group_alive(p.pid),
        }
    }

    /// Close every fd (after exit) and remove the sockets.
    pub fn release_fds(&mut self, registry: &Registry) {
        if let Some(mut l) = self.monitor_listener.take() {
            let _ = registry.deregister(&mut l);
        }
        if let Some(mut l) = self.shell_listener.take() {
            let _ = registry.deregister(&mut l);
        }
        for s in [&mut self.monitor, &mut self.shell, &mut self.qmp] {
            if let Some(mut s) = s.take() {
                let _ = registry.deregister(&mut s);
            }
        }
        if let Some(p) = self.process.take() {
            for fd in [&p.stdout, &p.pidfd] {
                let _ = registry.deregister(&mut SourceFd(&fd.as_raw_fd()));
            }
            if self.stdin_armed {
                let _ = registry.deregister(&mut SourceFd(&p.stdin.as_raw_fd()));
                self.stdin_armed = false;
            }
        }
        self.shell_out.clear();
        self.qmp_out.clear();
        self.stdin_out.clear();
        self.qmp_state = QmpState::Disconnected;
        self.stdout_open = false;
    }

    /// After QEMU exited: forget the process (upstream sets pid=None, booted=False).
    pub fn finish_shutdown(&mut self, registry: &Registry) {
        self.release_fds(registry);
        self.phase = Phase::Stopped;
        self.shell_state = ShellState::Booting;
        self.framing.await_sentinel();
    }

    /// Remove sockets and (unless kept) the state directory at the end of the run.
    pub fn remove_files(&self) {
        for p in [&self.paths.monitor, &self.paths.shell, &self.paths.qmp] {
            let _ = std::fs::remove_file(p);
        }
        if !self.keep_state {
            let _ = std::fs::remove_dir_all(&self.paths.state_dir);
        }
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

/// `Read` for a borrowed pipe fd.
struct FdReader<'a>(&'a OwnedFd);

impl Read for FdReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        rustix::io::read(self.0, buf).map_err(io::Error::from)
    }
}

/// Read what `s` has now, chunk by chunk into `buf`, handing each chunk to `f`. Returns true
/// once the peer is gone (EOF or an error).
fn read_available(s: &mut impl Read, buf: &mut [u8], mut f: impl FnMut(&[u8])) -> bool {
    loop {
        match s.read(buf) {
            Ok(0) => return true,
            Ok(n) => f(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}

/// Write as much of `out` as the stream takes; arm WRITABLE interest while bytes remain.
fn flush_stream(
    s: &mut UnixStream,
    out: &mut Vec<u8>,
    armed: &mut bool,
    registry: &Registry,
    token: mio::Token,
) {
    while !out.is_empty() {
        match s.write(out) {
            Ok(0) => break,
            Ok(n) => {
                out.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => {
                // The reader side notices the broken connection.
                out.clear();
                break;
            }
        }
    }
    let want = !out.is_empty();
    if want != *armed {
        let interest = if want {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        if registry.reregister(s, token, interest).is_ok() {
            *armed = want;
        }
    }
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
}
