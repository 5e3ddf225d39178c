//! The driver: one thread, one `mio::Poll`, every fd of the run.
//!
//! It owns the machines, the Python shim process and its two pipes, the termination signals,
//! the global timeout and the one request the shim is waiting on (the current [`Op`]). Each
//! loop iteration polls, dispatches readiness to the owner of the token (machines drain their
//! channels whether or not anybody waits), runs timers, and then advances the current op,
//! which replies once its condition holds. Nothing here blocks: a wait is an op that is
//! re-checked after every event. Cleanup (every exit path) ends every process group it
//! started and removes the files it made.

use crate::cli::Options;
use crate::json::{obj, Value};
use crate::log::{LineKind, Logger};
use crate::machine::qemu::{self, ExitInfo};
use crate::machine::shell::WaitSpec;
use crate::machine::{Machine, Phase, ShellRequest, ShellResult};
use crate::reactor;
use crate::rpc::{self, Channel, ErrorType, OpError, Request};
use crate::shim;
use crate::signals;
use crate::trace::Trace;
use crate::vde::{Switch, SwitchConfig, SwitchEvent};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll};
use std::collections::VecDeque;
use std::fmt;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const OWNER_DRIVER: usize = 0;
const FIRST_MACHINE_OWNER: usize = 1;
/// Owner ids of switches (one per vlan) start here, far above any machine count.
const FIRST_SWITCH_OWNER: usize = 1 << 24;
const SLOT_SIGNALS: usize = 0;
const SLOT_RPC_RX: usize = 1;
const SLOT_RPC_TX: usize = 2;
const SLOT_SHIM_PIDFD: usize = 3;

/// Upstream logs a reminder every 30 s while the shell is silent and gives up after 10.
const CONNECT_REMINDER: Duration = Duration::from_secs(30);
const CONNECT_MAX_REMINDERS: u32 = 10;
/// SIGTERM → SIGKILL grace for QEMU at cleanup.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// After SIGKILL, how long cleanup waits before giving up on a process group.
const KILL_GIVE_UP: Duration = Duration::from_secs(3);
/// How long a wait for shutdown keeps reading QEMU's output after the process exited.
const STDOUT_DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// Why the driver could not even start.
#[derive(Debug)]
pub enum DriverError {
    Setup(&'static str, std::io::Error),
    Machine(String),
    Shim(String),
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverError::Setup(what, e) => write!(f, "{what}: {e}"),
            DriverError::Machine(e) => write!(f, "{e}"),
            DriverError::Shim(e) => write!(f, "cannot start the Python shim: {e}"),
        }
    }
}

impl std::error::Error for DriverError {}

/// Why the run is ending early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Termination {
    GlobalTimeout,
    Signal(u32),
}

/// A shim child process.
struct ShimProcess {
    pid: rustix::process::Pid,
    pidfd: OwnedFd,
}

/// Progress of a "wait for the guest shell" step (upstream `connect()`).
#[derive(Debug)]
struct Connecting {
    began: Instant,
    next_reminder: Instant,
    reminders: u32,
    nested: bool,
}

#[derive(Debug)]
enum ShellStage {
    /// Waiting for the backdoor (boots the machine if needed).
    Connect(Option<Connecting>),
    /// Connected; waiting for the previous command to finish.
    Idle,
    /// Request sent; waiting for its result.
    Sent,
}

#[derive(Debug)]
enum OpKind {
    Start {
        machines: Vec<usize>,
        all: bool,
        errors: Vec<(usize, String)>,
    },
    Connect {
        m: usize,
        stage: Option<Connecting>,
    },
    Shell {
        m: usize,
        req: ShellRequest,
        stage: ShellStage,
        check_output: bool,
        started: Instant,
    },
    ConsoleWait {
        m: usize,
        deadline: Option<Instant>,
    },
    Qmp {
        m: usize,
        qid: u64,
        hmp: bool,
    },
    QmpEvent {
        m: usize,
        deadline: Option<Instant>,
    },
    WaitExit {
        m: usize,
        deadline: Option<Instant>,
        drain_until: Option<Instant>,
    },
}

#[derive(Debug)]
struct Op {
    id: i64,
    kind: OpKind,
}

type OpResult = Result<Value, OpError>;

pub struct Driver {
    poll: Poll,
    log: Logger,
    opts: Options,
    tmp_dir: PathBuf,
    machines: Vec<Machine>,
    switches: Vec<Switch>,
    extra_env: Vec<(String, String)>,
    chan: Option<Channel>,
    shim: Option<ShimProcess>,
    shim_exit: Option<ExitInfo>,
    shim_dir: Option<PathBuf>,
    sigfd: OwnedFd,
    op: Option<Op>,
    queued: VecDeque<Request>,
    global_deadline: Option<Instant>,
    termination: Option<Termination>,
    started: Instant,
    trace: Option<Trace>,
}

impl Driver {
    /// Set up the poller, the signals, the runtime directory, the vlans and the machines
    /// (nothing starts yet). `trace` records the run's timeline when `--trace` is given.
    pub fn new(opts: Options, log: Logger, trace: Option<Trace>) -> Result<Driver, DriverError> {
        let poll = Poll::new().map_err(|e| DriverError::Setup("cannot create the poller", e))?;
        let sigfd = signals::termination_fd()
            .map_err(|e| DriverError::Setup("cannot set up signal handling", e))?;
        poll.registry()
            .register(
                &mut SourceFd(&sigfd.as_raw_fd()),
                reactor::token(OWNER_DRIVER, SLOT_SIGNALS),
                Interest::READABLE,
            )
            .map_err(|e| DriverError::Setup("cannot poll signals", e))?;
        let tmp_dir = runtime_dir();
        std::fs::create_dir_all(&tmp_dir)
            .map_err(|e| DriverError::Setup("cannot create the temporary directory", e))?;
        let mut d = Driver {
            poll,
            log,
            opts,
            tmp_dir,
            machines: Vec::new(),
            switches: Vec::new(),
            extra_env: Vec::new(),
            chan: None,
            shim: None,
            shim_exit: None,
            shim_dir: None,
            sigfd,
            op: None,
            queued: VecDeque::new(),
            global_deadline: None,
            termination: None,
            started: Instant::now(),
            trace,
        };
        if !d.opts.keep_machine_state {
            let flag = if d.opts.legacy_state_flag {
                "--keep-vm-state"
            } else {
                "--keep-machine-state"
            };
            d.log.info(&format!(
                "Machine state will be reset. To keep it, pass {flag}"
            ));
        }
        d.start_vlans()?;
        for (i, spec) in d.opts.vms.clone().iter().enumerate() {
            let mut m = Machine::new(
                &spec.name,
                FIRST_MACHINE_OWNER + i,
                &d.tmp_dir,
                &spec.start_script,
            );
            m.keep_state = d.opts.keep_machine_state;
            m.reset_state_dir(&mut d.log)
                .map_err(|e| DriverError::Machine(e.to_string()))?;
            d.machines.push(m);
        }
        Ok(d)
    }

    /// One in-process switch per vlan, listening before any machine can start; start scripts
    /// find it through `QEMU_VDE_SOCKET_<n>` as they find upstream's `vde_switch`.
    fn start_vlans(&mut self) -> Result<(), DriverError> {
        if self.opts.vlans.is_empty() {
            return Ok(());
        }
        if let Some(dir) = &self.opts.capture_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| DriverError::Setup("cannot create the capture directory", e))?;
        }
        self.log.begin(None, "start all VLans");
        for (i, nr) in self.opts.vlans.clone().into_iter().enumerate() {
            self.log.log("start vlan");
            let dir = self.tmp_dir.join(format!("vde{nr}.ctl"));
            let mut sw = match Switch::create(
                nr,
                &dir,
                FIRST_SWITCH_OWNER + i,
                self.poll.registry(),
                SwitchConfig::default(),
            ) {
                Ok(sw) => sw,
                Err(e) => {
                    self.log.end(false);
                    return Err(DriverError::Machine(format!("cannot start vlan {nr}: {e}")));
                }
            };
            if let Some(cdir) = &self.opts.capture_dir {
                let path = cdir.join(format!("vlan{nr}.pcap"));
                if let Err(e) = sw.start_capture(&path) {
                    self.log.warning(None, &format!("vlan {nr}: {e}"));
                } else {
                    self.log
                        .log(&format!("capturing vlan {nr} to {}", path.display()));
                }
            }
            self.log.log(&format!(
                "running vlan (in-process switch in pid {}; ctl {})",
                std::process::id(),
                sw.dir().display()
            ));
            self.extra_env.push((
                format!("QEMU_VDE_SOCKET_{nr}"),
                sw.dir().display().to_string(),
            ));
            self.switches.push(sw);
        }
        self.log.end(true);
        Ok(())
    }

    fn log_switch_events(&mut self) {
        for sw in &mut self.switches {
            for ev in sw.drain_events() {
                log_switch_event(&mut self.log, &ev);
            }
        }
    }

    /// Run the test: start the shim, serve it until it exits (or the run is cut short), clean
    /// up, and return the process exit status.
    pub fn run(mut self) -> i32 {
        if let Err(e) = self.spawn_shim() {
            self.log.error(&e.to_string());
            self.cleanup();
            return 1;
        }
        let mut events = Events::with_capacity(256);
        while self.shim_exit.is_none() && self.termination.is_none() {
            self.turn(&mut events);
        }
        // Requests the shim wrote just before exiting (its last log lines) still count.
        self.read_shim_requests();
        let code = match self.termination {
            Some(Termination::GlobalTimeout) => 143,
            Some(Termination::Signal(sig)) => signals::exit_status_for(sig),
            None => self.shim_exit.map_or(1, shim_exit_code),
        };
        self.cleanup();
        code
    }

    /// One poll iteration: events, timers, the current op.
    fn turn(&mut self, events: &mut Events) {
        let timeout = self
            .next_deadline()
            .map(|d| d.saturating_duration_since(Instant::now()) + Duration::from_micros(100));
        if let Err(e) = self.poll.poll(events, timeout) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                self.log.error(&format!("poll failed: {e}"));
                self.termination = Some(Termination::Signal(signals::SIGTERM));
            }
            return;
        }
        for ev in events.iter() {
            let (owner, slot) = reactor::split(ev.token());
            if owner == OWNER_DRIVER {
                self.driver_event(slot);
            } else {
                self.owner_event(owner, slot, ev);
            }
        }
        self.timers(Instant::now());
        self.log_switch_events();
        self.trace_milestones();
        self.advance();
    }

    fn trace_milestones(&mut self) {
        if let Some(t) = &self.trace {
            for m in &mut self.machines {
                let name = m.name.clone();
                for &(at, what) in m.new_milestones() {
                    t.instant(&name, what, at);
                }
            }
        }
    }

    /// Route an event to the machine or switch that owns the token.
    fn owner_event(&mut self, owner: usize, slot: usize, ev: &mio::event::Event) {
        if let Some(sw) = owner
            .checked_sub(FIRST_SWITCH_OWNER)
            .and_then(|i| self.switches.get_mut(i))
        {
            sw.handle_event(self.poll.registry(), slot, ev);
        } else if let Some(m) = owner
            .checked_sub(FIRST_MACHINE_OWNER)
            .and_then(|i| self.machines.get_mut(i))
        {
            m.handle(self.poll.registry(), slot, ev, &mut self.log);
        }
    }

    fn driver_event(&mut self, slot: usize) {
        match slot {
            SLOT_SIGNALS => {
                for sig in signals::drain(&self.sigfd) {
                    self.on_signal(sig);
                }
            }
            SLOT_RPC_RX => self.read_shim_requests(),
            SLOT_RPC_TX => {
                if let Some(c) = self.chan.as_mut() {
                    c.flush(self.poll.registry());
                }
            }
            SLOT_SHIM_PIDFD => {
                if let Some(s) = &self.shim {
                    if let Some(info) = qemu::try_reap(&s.pidfd) {
                        let _ = self
                            .poll
                            .registry()
                            .deregister(&mut SourceFd(&s.pidfd.as_raw_fd()));
                        self.shim_exit = Some(info);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_signal(&mut self, sig: u32) {
        if sig == signals::SIGINT && self.opts.interactive {
            // The REPL (same process group) handles Ctrl-C itself.
            return;
        }
        let name = match sig {
            signals::SIGINT => "SIGINT",
            signals::SIGTERM => "SIGTERM",
            signals::SIGHUP => "SIGHUP",
            _ => "SIGQUIT",
        };
        self.log.test_error(&format!(
            "received {name}; stopping the test and cleaning up"
        ));
        self.termination = Some(Termination::Signal(sig));
        self.kill_shim();
    }

    fn next_deadline(&self) -> Option<Instant> {
        let op = self.op.as_ref().and_then(|op| match &op.kind {
            OpKind::Connect { stage: Some(c), .. } => Some(c.next_reminder),
            OpKind::Shell {
                stage: ShellStage::Connect(Some(c)),
                ..
            } => Some(c.next_reminder),
            OpKind::ConsoleWait { deadline, .. } | OpKind::QmpEvent { deadline, .. } => *deadline,
            OpKind::WaitExit {
                deadline,
                drain_until,
                ..
            } => [*deadline, *drain_until].into_iter().flatten().min(),
            _ => None,
        });
        self.machines
            .iter()
            .filter_map(Machine::next_deadline)
            .chain(self.switches.iter().filter_map(Switch::next_deadline))
            .chain(op)
            .chain(self.global_deadline)
            .min()
    }

    fn timers(&mut self, now: Instant) {
        for m in &mut self.machines {
            m.on_timer(self.poll.registry(), now, &mut self.log);
        }
        for sw in &mut self.switches {
            if sw.next_deadline().is_some_and(|d| now >= d) {
                sw.on_timer(self.poll.registry(), now);
            }
        }
        if self.global_deadline.is_some_and(|d| now >= d) {
            self.global_deadline = None;
            self.log.begin(None, "timeout reached; test terminating...");
            self.log.test_error(&format!(
                "the global timeout of {} seconds ran out",
                crate::machine::shell::format_seconds(self.opts.global_timeout.as_secs_f64())
            ));
            for m in &mut self.machines {
                m.terminate(&mut self.log, Duration::from_millis(500));
            }
            self.log.end(true);
            self.termination = Some(Termination::GlobalTimeout);
            self.kill_shim();
        }
    }

    fn kill_shim(&mut self) {
        if let (Some(s), None) = (&self.shim, self.shim_exit) {
            let _ = rustix::process::kill_process(s.pid, rustix::process::Signal::KILL);
        }
    }

    fn spawn_shim(&mut self) -> Result<(), DriverError> {
        let dir = self
            .tmp_dir
            .join(format!("ntd-shim-{}", std::process::id()));
        shim::write_package(&dir).map_err(|e| DriverError::Shim(e.to_string()))?;
        self.shim_dir = Some(dir.clone());
        let spawned =
            shim::spawn(&dir, &self.extra_env).map_err(|e| DriverError::Shim(e.to_string()))?;
        let reg = self.poll.registry();
        let chan = Channel::new(
            spawned.from_shim,
            spawned.to_shim,
            reactor::token(OWNER_DRIVER, SLOT_RPC_TX),
        );
        chan.register_rx(reg, reactor::token(OWNER_DRIVER, SLOT_RPC_RX))
            .map_err(|e| DriverError::Setup("cannot poll the shim pipe", e))?;
        reg.register(
            &mut SourceFd(&spawned.pidfd.as_raw_fd()),
            reactor::token(OWNER_DRIVER, SLOT_SHIM_PIDFD),
            Interest::READABLE,
        )
        .map_err(|e| DriverError::Setup("cannot poll the shim process", e))?;
        self.chan = Some(chan);
        self.shim = Some(ShimProcess {
            pid: spawned.pid,
            pidfd: spawned.pidfd,
        });
        Ok(())
    }

    fn read_shim_requests(&mut self) {
        let Some(chan) = self.chan.as_mut() else {
            return;
        };
        let mut reqs = Vec::new();
        chan.read(self.poll.registry(), &mut reqs);
        for r in reqs {
            match r {
                Ok(req) => self.queued.push_back(req),
                Err(e) => self
                    .log
                    .warning(None, &format!("bad request from the shim: {e}")),
            }
        }
        self.advance();
    }

    fn reply(&mut self, id: i64, result: OpResult) {
        let line = match result {
            Ok(v) => rpc::encode_ok(id, v),
            Err(e) => rpc::encode_err(id, &e),
        };
        if let Some(c) = self.chan.as_mut() {
            c.send(self.poll.registry(), &line);
        }
    }

    /// Progress the current op; start queued requests while none is running.
    fn advance(&mut self) {
        loop {
            if let Some(mut op) = self.op.take() {
                match self.poll_op(&mut op) {
                    Some(result) => self.reply(op.id, result),
                    None => {
                        self.op = Some(op);
                        return;
                    }
                }
            }
            let Some(req) = self.queued.pop_front() else {
                return;
            };
            self.begin(req);
        }
    }

    fn machine_index(&self, req: &Request) -> Result<usize, OpError> {
        let name = req.str("machine")?;
        self.machines
            .iter()
            .position(|m| m.name == name)
            .ok_or_else(|| OpError::new(ErrorType::Value, format!("no machine named '{name}'")))
    }

    /// Handle a new request: notifications and instant queries reply at once, the rest
    /// become the current op.
    fn begin(&mut self, req: Request) {
        let id = req.id;
        let result: Result<Option<OpKind>, OpError> = self.dispatch(&req);
        match (id, result) {
            (None, Err(e)) => self.log.warning(None, &format!("{}: {}", req.op, e.msg)),
            (None, Ok(_)) => {}
            (Some(id), Ok(Some(kind))) => self.op = Some(Op { id, kind }),
            (Some(id), Ok(None)) => {
                let v = self.instant_reply(&req);
                self.reply(id, v);
            }
            (Some(id), Err(e)) => self.reply(id, Err(e)),
        }
    }

    /// Decide what a request is. `Ok(None)`: answered by [`Self::instant_reply`].
    fn dispatch(&mut self, req: &Request) -> Result<Option<OpKind>, OpError> {
        let reg = self.poll.registry();
        match req.op.as_str() {
            "log" => {
                let kind = match req.body.get("level").and_then(Value::as_str) {
                    Some("info") => LineKind::Info,
                    Some("warning") => LineKind::Warning,
                    Some("debug") => LineKind::Debug,
                    Some("error") => LineKind::Error,
                    Some("test_error") => LineKind::TestError,
                    _ => LineKind::Log,
                };
                let machine = req.body.get("machine").and_then(Value::as_str);
                self.log.line(kind, machine, req.str("msg")?);
                Ok(None)
            }
            "nest" => {
                let machine = req.body.get("machine").and_then(Value::as_str);
                self.log.begin(machine, req.str("msg")?);
                Ok(None)
            }
            "unnest" => {
                self.log.end(req.bool_or("ok", true));
                Ok(None)
            }
            "serial" => {
                self.log.set_serial(req.bool_or("on", true));
                Ok(None)
            }
            "log_level" => {
                if let Some(l) = crate::log::Level::parse(req.str("level")?) {
                    self.log.set_level(l);
                }
                Ok(None)
            }
            "hello" | "state" | "console_log" => Ok(None),
            "arm_timeout" => {
                let secs = self.opts.global_timeout.as_secs_f64();
                self.log.log(&format!(
                    "Test will time out and terminate in {} seconds",
                    crate::machine::shell::format_seconds(secs)
                ));
                self.global_deadline = Some(Instant::now() + self.opts.global_timeout);
                Ok(None)
            }
            "disarm_timeout" => {
                self.global_deadline = None;
                Ok(None)
            }
            "start" => {
                let names: Vec<String> = match req.body.get("machines").and_then(Value::as_array) {
                    Some(a) => a
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect(),
                    None => vec![req.str("machine")?.to_owned()],
                };
                let all = req.bool_or("all", false);
                let allow_reboot = req.bool_or("allow_reboot", false);
                let mut machines = Vec::new();
                let mut errors = Vec::new();
                for n in names {
                    let Some(i) = self.machines.iter().position(|m| m.name == n) else {
                        return Err(OpError::new(
                            ErrorType::Value,
                            format!("no machine named '{n}'"),
                        ));
                    };
                    let m = &mut self.machines[i];
                    if !m.booted() {
                        m.allow_reboot = allow_reboot;
                    }
                    if let Err(e) = m.start(reg, &mut self.log, &self.extra_env) {
                        errors.push((i, e.to_string()));
                    } else {
                        machines.push(i);
                    }
                }
                Ok(Some(OpKind::Start {
                    machines,
                    all,
                    errors,
                }))
            }
            "connect" => Ok(Some(OpKind::Connect {
                m: self.machine_index(req)?,
                stage: None,
            })),
            "execute" => {
                let m = self.machine_index(req)?;
                Ok(Some(OpKind::Shell {
                    m,
                    req: ShellRequest::Run {
                        command: req.str("command")?.to_owned(),
                        timeout: req.opt_f64("timeout")?,
                    },
                    stage: ShellStage::Connect(None),
                    check_output: req.bool_or("check_output", true),
                    started: Instant::now(),
                }))
            }
            "wait" => {
                let m = self.machine_index(req)?;
                let budget = req.opt_f64("budget")?.unwrap_or(900.0).max(0.0);
                let interval = req.opt_f64("interval")?.unwrap_or(0.02).clamp(0.001, 60.0);
                Ok(Some(OpKind::Shell {
                    m,
                    req: ShellRequest::Wait {
                        command: req.str("command")?.to_owned(),
                        spec: WaitSpec {
                            until_success: req.bool_or("until_success", true),
                            budget_secs: budget,
                            min_interval_us: (interval * 1e6) as u64,
                            fatal_status: req
                                .body
                                .get("fatal_status")
                                .and_then(Value::as_i64)
                                .unwrap_or(0)
                                .clamp(0, 255) as u8,
                        },
                    },
                    stage: ShellStage::Connect(None),
                    check_output: true,
                    started: Instant::now(),
                }))
            }
            "console_wait" => {
                let m = self.machine_index(req)?;
                let deadline = req
                    .opt_f64("timeout")?
                    .map(|t| Instant::now() + Duration::from_secs_f64(t.max(0.0)));
                Ok(Some(OpKind::ConsoleWait { m, deadline }))
            }
            "qmp" | "hmp" => {
                let m = self.machine_index(req)?;
                let hmp = req.op == "hmp";
                let (name, args) = if hmp {
                    (
                        "human-monitor-command".to_owned(),
                        Some(crate::machine::qmp::hmp_args(req.str("command")?)),
                    )
                } else {
                    (
                        req.str("execute")?.to_owned(),
                        req.body.get("arguments").filter(|a| !a.is_null()).cloned(),
                    )
                };
                let qid = self.machines[m]
                    .qmp_execute(reg, &name, args)
                    .map_err(|e| OpError::new(ErrorType::Runtime, e.to_string()))?;
                Ok(Some(OpKind::Qmp { m, qid, hmp }))
            }
            "shutdown" | "crash" | "wait_for_shutdown" => {
                let m = self.machine_index(req)?;
                let machine = &mut self.machines[m];
                if !machine.booted() {
                    return Ok(None);
                }
                match req.op.as_str() {
                    "shutdown" => {
                        machine.send_shell_raw(reg, b"poweroff\n");
                    }
                    "crash" if machine.qmp_execute(reg, "quit", None).is_err() => {
                        machine.kill_now();
                    }
                    _ => {}
                }
                let deadline = req
                    .opt_f64("timeout")?
                    .map(|t| Instant::now() + Duration::from_secs_f64(t.max(0.0)));
                Ok(Some(OpKind::WaitExit {
                    m,
                    deadline,
                    drain_until: None,
                }))
            }
            "qmp_event" => {
                let m = self.machine_index(req)?;
                let deadline = req
                    .opt_f64("timeout")?
                    .map(|t| Instant::now() + Duration::from_secs_f64(t.max(0.0)));
                if !self.machines[m].qmp_ready() && self.machines[m].phase() != Phase::Running {
                    return Err(OpError::new(
                        ErrorType::Runtime,
                        "QMP API is not ready yet, is the VM ready?",
                    ));
                }
                Ok(Some(OpKind::QmpEvent { m, deadline }))
            }
            "create_machine" => Ok(None),
            "send_console" => {
                let m = self.machine_index(req)?;
                let data = req.str("data")?.to_owned();
                self.machines[m].send_console(reg, data.as_bytes());
                Ok(None)
            }
            "capture" => {
                let nr = req
                    .body
                    .get("vlan")
                    .and_then(Value::as_i64)
                    .ok_or_else(|| {
                        OpError::new(ErrorType::Value, "capture: vlan number missing")
                    })?;
                let sw = self
                    .switches
                    .iter_mut()
                    .find(|s| i64::from(s.vlan()) == nr)
                    .ok_or_else(|| OpError::new(ErrorType::Value, format!("no vlan {nr}")))?;
                match req.body.get("path").and_then(Value::as_str) {
                    Some(path) => sw
                        .start_capture(std::path::Path::new(path))
                        .map_err(|e| OpError::new(ErrorType::Runtime, e.to_string()))?,
                    None => sw.stop_capture(),
                }
                Ok(None)
            }
            "mark_disconnected" => {
                let m = self.machine_index(req)?;
                self.machines[m].mark_disconnected();
                Ok(None)
            }
            other => Err(OpError::new(
                ErrorType::Runtime,
                format!("unknown request '{other}' (shim and driver versions differ?)"),
            )),
        }
    }

    fn instant_reply(&mut self, req: &Request) -> OpResult {
        match req.op.as_str() {
            "hello" => Ok(self.hello()),
            "state" => {
                let m = &self.machines[self.machine_index(req)?];
                Ok(machine_state(m))
            }
            "console_log" => {
                let m = &self.machines[self.machine_index(req)?];
                Ok(Value::from(m.console_log()))
            }
            "shutdown" | "crash" | "wait_for_shutdown" => Ok(Value::Null),
            "create_machine" => self.create_machine(req),
            _ => Ok(Value::Null),
        }
    }

    /// `create_machine(start_command, name=…)`: a machine outside the configured set. Unlike
    /// upstream, ntd still ends it at cleanup (nothing is left running).
    fn create_machine(&mut self, req: &Request) -> OpResult {
        let command = req.str("start_command")?.to_owned();
        let name = match req.body.get("name").and_then(Value::as_str) {
            Some(n) => n.to_owned(),
            None => qemu::name_from_start_command(&command),
        };
        if name.is_empty() || name.contains('/') {
            return Err(OpError::new(
                ErrorType::Value,
                format!("invalid machine name '{name}'"),
            ));
        }
        if self.machines.iter().any(|m| m.name == name) {
            return Err(OpError::new(
                ErrorType::Value,
                format!(
                    "a machine named '{name}' exists already; pass create_machine(..., name=...)"
                ),
            ));
        }
        let mut m = Machine::new(
            &name,
            FIRST_MACHINE_OWNER + self.machines.len(),
            &self.tmp_dir,
            &command,
        );
        m.keep_state = req.bool_or("keep_machine_state", false);
        m.reset_state_dir(&mut self.log)
            .map_err(|e| OpError::new(ErrorType::Machine, e.to_string()))?;
        let info = obj([
            ("name", Value::from(name.as_str())),
            (
                "state_dir",
                Value::from(m.paths.state_dir.display().to_string()),
            ),
            (
                "shared_dir",
                Value::from(m.paths.shared_dir.display().to_string()),
            ),
        ]);
        self.machines.push(m);
        Ok(info)
    }

    fn hello(&self) -> Value {
        let machines = self
            .machines
            .iter()
            .map(|m| {
                obj([
                    ("name", Value::from(m.name.as_str())),
                    ("start_command", Value::from(m.start_command.as_str())),
                    (
                        "state_dir",
                        Value::from(m.paths.state_dir.display().to_string()),
                    ),
                    (
                        "shared_dir",
                        Value::from(m.paths.shared_dir.display().to_string()),
                    ),
                    ("keep_machine_state", Value::from(m.keep_state)),
                ])
            })
            .collect();
        let script = self
            .opts
            .test_script
            .as_ref()
            .map(|p| Value::from(p.display().to_string()))
            .unwrap_or(Value::Null);
        obj([
            ("machines", Value::Array(machines)),
            (
                "vlans",
                Value::Array(
                    self.opts
                        .vlans
                        .iter()
                        .map(|v| Value::Int(*v as i64))
                        .collect(),
                ),
            ),
            ("test_script", script),
            (
                "out_dir",
                Value::from(self.opts.output_directory.display().to_string()),
            ),
            ("tmp_dir", Value::from(self.tmp_dir.display().to_string())),
            ("interactive", Value::from(self.opts.interactive)),
            (
                "global_timeout",
                Value::from(self.opts.global_timeout.as_secs_f64()),
            ),
            (
                "debug_hook",
                self.opts
                    .debug_hook
                    .as_deref()
                    .map(Value::from)
                    .unwrap_or(Value::Null),
            ),
            ("legacy", Value::from(self.opts.legacy_state_flag)),
        ])
    }

    /// Check whether `op` is complete; `Some(result)` ends it.
    fn poll_op(&mut self, op: &mut Op) -> Option<OpResult> {
        match &mut op.kind {
            OpKind::Start {
                machines,
                all,
                errors,
            } => self.poll_start(machines, *all, errors),
            OpKind::Connect { m, stage } => {
                let m = *m;
                match self.poll_connect(m, stage) {
                    Step::Pending => None,
                    Step::Done => Some(Ok(Value::Null)),
                    Step::Failed(e) => Some(Err(e)),
                }
            }
            OpKind::Shell {
                m,
                req,
                stage,
                check_output,
                started,
            } => {
                let (m, check_output, started) = (*m, *check_output, *started);
                self.poll_shell(m, req, stage, check_output, started)
            }
            OpKind::ConsoleWait { m, deadline } => {
                let machine = &mut self.machines[*m];
                let lines = machine.take_console_lines();
                let exited = !machine.booted();
                let expired = deadline.is_some_and(|d| Instant::now() >= d);
                if lines.is_empty() && !exited && !expired {
                    return None;
                }
                Some(Ok(obj([
                    (
                        "lines",
                        Value::Array(lines.into_iter().map(Value::from).collect()),
                    ),
                    ("exited", Value::from(exited)),
                ])))
            }
            OpKind::QmpEvent { m, deadline } => {
                if let Some(ev) = self.machines[*m].next_qmp_event() {
                    return Some(Ok(ev));
                }
                let expired = deadline.is_some_and(|d| Instant::now() >= d);
                let gone = !self.machines[*m].booted();
                (expired || gone).then_some(Ok(Value::Null))
            }
            OpKind::Qmp { m, qid, hmp } => {
                let r = self.machines[*m].take_qmp_result(*qid)?;
                Some(match r {
                    Ok(v) if *hmp => Ok(Value::from(v.as_str().unwrap_or_default().to_owned())),
                    Ok(v) => Ok(v),
                    Err(e) => Err(OpError::new(ErrorType::Qmp, e)),
                })
            }
            OpKind::WaitExit {
                m,
                deadline,
                drain_until,
            } => {
                let now = Instant::now();
                let machine = &mut self.machines[*m];
                if machine.phase() == Phase::Exited {
                    let until = *drain_until.get_or_insert(now + STDOUT_DRAIN_AFTER_EXIT);
                    if machine.fully_exited() || now >= until {
                        machine.finish_shutdown(self.poll.registry());
                        return Some(Ok(Value::Null));
                    }
                    return None;
                }
                if deadline.is_some_and(|d| now >= d) {
                    return Some(Err(OpError::new(
                        ErrorType::Timeout,
                        format!("{}: QEMU did not exit in time", machine.name),
                    )));
                }
                None
            }
        }
    }

    fn poll_start(
        &mut self,
        machines: &[usize],
        all: bool,
        errors: &mut Vec<(usize, String)>,
    ) -> Option<OpResult> {
        for &i in machines {
            let m = &self.machines[i];
            if errors.iter().any(|(e, _)| *e == i) {
                continue;
            }
            match m.phase() {
                Phase::Running => {}
                Phase::Exited => {
                    if !m.fully_exited() {
                        return None;
                    }
                    let info = m.exit_info().map(|i| i.shell_status()).unwrap_or(-1);
                    errors.push((
                        i,
                        format!(
                            "QEMU process exited with code {info} before connecting to {} socket.\n{}",
                            m.missing_connection(),
                            m.output_tail()
                        ),
                    ));
                }
                _ => return None,
            }
        }
        if errors.is_empty() {
            return Some(Ok(Value::Null));
        }
        let msg = if all {
            let mut s = String::from("Failed to start the following machines:");
            for (i, e) in errors.iter() {
                s.push_str(&format!("\n{}: {e}", self.machines[*i].name));
            }
            s
        } else {
            errors[0].1.clone()
        };
        Some(Err(OpError::new(ErrorType::Machine, msg)))
    }

    fn poll_connect(&mut self, m: usize, stage: &mut Option<Connecting>) -> Step {
        let now = Instant::now();
        if self.machines[m].connected() {
            if let Some(c) = stage.take() {
                if c.nested {
                    let name = self.machines[m].name.clone();
                    self.log.machine(&name, "connected to guest root shell");
                    self.log.machine(
                        &name,
                        &format!(
                            "(connecting took {:.2} seconds)",
                            c.began.elapsed().as_secs_f64()
                        ),
                    );
                    self.log.end(true);
                }
            }
            return Step::Done;
        }
        let reg = self.poll.registry();
        let c = stage.get_or_insert_with(|| Connecting {
            began: now,
            next_reminder: now + CONNECT_REMINDER,
            reminders: 0,
            nested: false,
        });
        let machine = &mut self.machines[m];
        if !c.nested {
            c.nested = true;
            self.log
                .begin(Some(&machine.name), "waiting for the VM to finish booting");
            if !machine.booted() {
                if let Err(e) = machine.start(reg, &mut self.log, &self.extra_env) {
                    self.log.end(false);
                    stage.take();
                    return Step::Failed(OpError::new(ErrorType::Machine, e.to_string()));
                }
            }
        }
        let failed = match machine.phase() {
            Phase::Exited | Phase::Stopped => Some(format!(
                "QEMU exited ({}) before the guest shell was ready",
                machine
                    .exit_info()
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "not running".into())
            )),
            _ if machine.shell_lost() => Some("Shell disconnected".to_owned()),
            _ => None,
        };
        if let Some(msg) = failed {
            self.log.end(false);
            stage.take();
            return Step::Failed(OpError::new(ErrorType::Runtime, msg));
        }
        if now >= c.next_reminder {
            c.reminders += 1;
            c.next_reminder = now + CONNECT_REMINDER;
            let name = machine.name.clone();
            self.log
                .machine(&name, "Guest root shell did not produce any data yet...");
            self.log.machine(
                &name,
                "  To debug, enter the VM and run 'systemctl status backdoor.service'.",
            );
            if c.reminders >= CONNECT_MAX_REMINDERS {
                self.log.end(false);
                stage.take();
                return Step::Failed(OpError::new(
                    ErrorType::Runtime,
                    "Shell did not start in time",
                ));
            }
        }
        Step::Pending
    }

    fn poll_shell(
        &mut self,
        m: usize,
        req: &ShellRequest,
        stage: &mut ShellStage,
        check_output: bool,
        started: Instant,
    ) -> Option<OpResult> {
        loop {
            match stage {
                ShellStage::Connect(c) => match self.poll_connect(m, c) {
                    Step::Pending => return None,
                    Step::Failed(e) => return Some(Err(e)),
                    Step::Done => *stage = ShellStage::Idle,
                },
                ShellStage::Idle => {
                    let machine = &mut self.machines[m];
                    if !machine.connected() {
                        *stage = ShellStage::Connect(None);
                        continue;
                    }
                    if !machine.shell_ready() {
                        return None;
                    }
                    if let Err(e) = machine.send_shell(self.poll.registry(), req) {
                        return Some(Err(OpError::new(ErrorType::Machine, e.to_string())));
                    }
                    *stage = ShellStage::Sent;
                    if !check_output {
                        return Some(Ok(shell_reply(
                            &ShellResult {
                                status: -2,
                                output: Vec::new(),
                                truncated: 0,
                                attempts: 0,
                                looped: false,
                                lost: 0,
                            },
                            started,
                        )));
                    }
                }
                ShellStage::Sent => {
                    let machine = &mut self.machines[m];
                    if let Some(r) = machine.take_shell_result() {
                        if let Some(t) = &self.trace {
                            let (name, command) = match req {
                                ShellRequest::Run { command, .. } => ("command", command),
                                ShellRequest::Wait { command, .. } => ("wait", command),
                            };
                            let mut args = vec![
                                ("command".to_owned(), Value::from(command.as_str())),
                                ("status".to_owned(), Value::Int(r.status.into())),
                                ("bytes".to_owned(), Value::Int(r.output.len() as i64)),
                            ];
                            if name == "wait" {
                                args.push(("attempts".to_owned(), Value::Int(r.attempts.into())));
                            }
                            t.span(&machine.name, name, started, Instant::now(), args);
                        }
                        if r.lost > 0 {
                            return Some(Err(OpError::new(
                                ErrorType::Machine,
                                format!(
                                    "{} bytes of the output of `{}` never arrived: the virtio \
                                     console drops guest output when the host falls behind \
                                     (an overloaded host?); the output is incomplete",
                                    r.lost,
                                    request_command(req)
                                ),
                            )));
                        }
                        return Some(Ok(shell_reply(&r, started)));
                    }
                    if machine.shell_lost() || !machine.booted() {
                        let cmd = request_command(req);
                        return Some(Err(OpError::new(
                            ErrorType::Runtime,
                            format!(
                                "Shell disconnected while running `{cmd}` (QEMU {})",
                                machine
                                    .exit_info()
                                    .map(|i| format!("exited with {i}"))
                                    .unwrap_or_else(|| "closed the shell".into())
                            ),
                        )));
                    }
                    return None;
                }
            }
        }
    }

    /// Machine and switch timers, without the global timeout (cleanup is already under way).
    fn timers_without_global(&mut self, now: Instant) {
        let global = self.global_deadline.take();
        self.timers(now);
        self.global_deadline = global;
    }

    /// Stop every switch after the machines: log its counters, close its ports, remove its
    /// files.
    fn stop_vlans(&mut self) {
        for sw in std::mem::take(&mut self.switches) {
            let st = sw.stats();
            self.log.log(&format!(
                "kill vlan (in-process switch; ctl {})",
                sw.dir().display()
            ));
            self.log.info(&format!(
                "vlan {}: {} frames in, {} delivered, {} dropped, {} ports served",
                st.vlan,
                st.frames_in,
                st.frames_out,
                st.drops.total(),
                st.requests_accepted
            ));
            for ev in sw.shutdown(self.poll.registry()) {
                log_switch_event(&mut self.log, &ev);
            }
        }
    }

    /// End everything: machines (sorted by name), then switches, then files. Runs the loop
    /// until every process group is gone.
    fn cleanup(&mut self) {
        self.kill_shim();
        self.log.unwind_to(0);
        self.log.begin(None, "cleanup");
        let mut order: Vec<usize> = (0..self.machines.len()).collect();
        order.sort_by(|a, b| self.machines[*a].name.cmp(&self.machines[*b].name));
        for i in order {
            self.machines[i].terminate(&mut self.log, KILL_GRACE);
        }
        let give_up = Instant::now() + KILL_GRACE + KILL_GIVE_UP;
        let mut events = Events::with_capacity(64);
        loop {
            let shim_done = self.shim.is_none() || self.shim_exit.is_some();
            let machines_done = self.machines.iter().all(|m| m.gone());
            if (shim_done && machines_done) || Instant::now() >= give_up {
                break;
            }
            let timeout = self
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_millis(50))
                .min(Duration::from_millis(50));
            let _ = self.poll.poll(&mut events, Some(timeout));
            for ev in events.iter() {
                let (owner, slot) = reactor::split(ev.token());
                if owner == OWNER_DRIVER {
                    if slot == SLOT_SHIM_PIDFD || slot == SLOT_SIGNALS {
                        self.driver_event(slot);
                    }
                } else {
                    self.owner_event(owner, slot, ev);
                }
            }
            // The switches keep forwarding until the last machine is gone (QEMU never
            // reconnects to a restarted switch).
            self.timers_without_global(Instant::now());
            self.log_switch_events();
        }
        self.stop_vlans();
        for m in &mut self.machines {
            if !m.gone() {
                self.log.warning(
                    Some(&m.name),
                    "QEMU process group still alive after SIGKILL; giving up on it",
                );
            }
            m.release_fds(self.poll.registry());
            m.remove_files();
        }
        if let Some(c) = self.chan.as_mut() {
            c.close(self.poll.registry());
        }
        if let Some(dir) = self.shim_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        let _ = std::fs::remove_dir(self.tmp_dir.join("shared-xchg"));
        self.log.end(true);
        self.report_usage();
        self.log.finish();
        if let Some(t) = self.trace.take() {
            match t.write() {
                Ok(html) => self.log.info(&format!(
                    "trace written to {} (timeline: {})",
                    t.path().display(),
                    html.display()
                )),
                Err(e) => self.log.warning(
                    None,
                    &format!("cannot write the trace to {}: {e}", t.path().display()),
                ),
            }
        }
    }
}

impl Driver {
    /// The driver's own cost and each machine's boot phases: at debug level, or always when
    /// a trace is recorded.
    fn report_usage(&mut self) {
        self.trace_milestones();
        let line = format!(
            "driver ran for {:.2} s; its own peak RSS {} KiB, CPU {:.3} s \
             (QEMU and Python not included)",
            self.started.elapsed().as_secs_f64(),
            crate::procinfo::peak_rss_kib().unwrap_or(0),
            crate::procinfo::cpu_seconds().unwrap_or(0.0)
        );
        let loud = self.trace.is_some();
        let kind = if loud { LineKind::Log } else { LineKind::Debug };
        self.log.line(kind, None, &line);
        for m in &self.machines {
            if let Some(phases) = m.boot_phases() {
                self.log.line(kind, Some(&m.name), &phases);
            }
        }
    }
}

/// Switch events: port changes at debug level, refusals and errors as warnings.
fn log_switch_event(log: &mut Logger, ev: &SwitchEvent) {
    match ev {
        SwitchEvent::PortOpened { .. } | SwitchEvent::PortClosed { .. } => {
            log.debug(None, &ev.to_string())
        }
        SwitchEvent::Rejected { .. } | SwitchEvent::Error { .. } => {
            log.warning(None, &ev.to_string())
        }
    }
}

enum Step {
    Pending,
    Done,
    Failed(OpError),
}

fn request_command(req: &ShellRequest) -> &str {
    match req {
        ShellRequest::Run { command, .. } | ShellRequest::Wait { command, .. } => command,
    }
}

fn shell_reply(r: &ShellResult, started: Instant) -> Value {
    obj([
        ("status", Value::Int(r.status as i64)),
        ("output", Value::from(rpc::base64_encode(&r.output))),
        ("truncated", Value::Int(r.truncated as i64)),
        ("attempts", Value::Int(r.attempts as i64)),
        ("looped", Value::from(r.looped)),
        ("elapsed", Value::from(started.elapsed().as_secs_f64())),
    ])
}

fn machine_state(m: &Machine) -> Value {
    obj([
        ("booted", Value::from(m.booted())),
        ("connected", Value::from(m.connected())),
        (
            "pid",
            m.pid().map(|p| Value::Int(p as i64)).unwrap_or(Value::Null),
        ),
        (
            "accelerator",
            m.accelerator
                .as_deref()
                .map(Value::from)
                .unwrap_or(Value::Null),
        ),
        ("boot_secs", secs_between(m.spawned_at, m.sentinel_at)),
        ("setup_secs", secs_between(m.sentinel_at, m.ready_at)),
    ])
}

fn secs_between(a: Option<Instant>, b: Option<Instant>) -> Value {
    match (a, b) {
        (Some(a), Some(b)) if b >= a => Value::from((b - a).as_secs_f64()),
        _ => Value::Null,
    }
}

/// Python exits 0/1 normally; death by a signal maps to 128 + signal.
fn shim_exit_code(info: ExitInfo) -> i32 {
    info.shell_status()
}

/// Upstream's tmp dir: `$XDG_RUNTIME_DIR`, else Python's `tempfile.gettempdir()` order.
pub fn runtime_dir() -> PathBuf {
    for var in ["XDG_RUNTIME_DIR", "TMPDIR", "TEMP", "TMP"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            return PathBuf::from(v);
        }
    }
    PathBuf::from("/tmp")
}
