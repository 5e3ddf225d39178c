//! The driver: one thread, one `mio::Poll`, every fd of the run.
//!
//! It owns the loop members (machines, switches, the shim link), the termination signals, the
//! global timeout and the one request the shim is waiting on. Each loop iteration polls,
//! routes readiness to the member that owns the token (machines drain their channels whether
//! or not anybody waits), runs the members' timers, and then advances the current op
//! (`ops`), which replies once its condition holds. Nothing here blocks: a wait is an op
//! that is re-checked after every event. Cleanup (every exit path) runs the same routing until
//! every process group it started is gone, then removes the files it made.

mod capsule;
mod checkpoints;
mod containers;
mod control;
mod deadline;
mod dirs;
mod gate;
mod limit;
mod node;
mod pacing;
mod pending;
mod report;
mod save_group;
mod serve;
mod shell_op;
mod shim;
mod snapshots;
mod vlans;
pub mod vsock;

pub use dirs::runtime_dir;

use crate::cli::Options;
use crate::container::hostenv::HostEnvError;
use crate::hostcpu::{HostPressure, RunClock};
use crate::log::Logger;
use crate::machine::{Machine, MachineError};
use crate::netlink::Netlink;
use crate::reactor::{self, Ctx, LoopMember, Owner};
use crate::rpc::ops::{dispatch, Request};
use crate::rpc::wire::Answer;
use crate::signals;
use crate::trace::Trace;
use crate::vde::tap::{LinkError, VlanLink};
use crate::vde::{Switch, VdeError};
use control::Env;
use mio::event::Event;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll};
use node::Node;
use pending::{Pending, Polled};
use serve::Served;
use shim::ShimLink;
use std::fmt;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The driver's own fds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Signals = 0,
}

/// SIGTERM → SIGKILL grace for QEMU at cleanup.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// After SIGKILL, how long cleanup waits before giving up on a process group.
const KILL_GIVE_UP: Duration = Duration::from_secs(3);
/// SIGTERM → SIGKILL grace when the global timeout ends the run.
const TIMEOUT_KILL_GRACE: Duration = Duration::from_millis(500);
/// The same for a container's start script: its `run-nspawn` removes veths and the netns on
/// SIGTERM, which takes a moment (upstream waits 30 s at every cleanup).
const TIMEOUT_CONTAINER_GRACE: Duration = Duration::from_secs(5);
/// Longest single poll during cleanup (process exits are noticed through pidfds; this only
/// bounds how late the give-up check runs).
const CLEANUP_TICK: Duration = Duration::from_millis(50);

/// Why the driver could not even start.
#[derive(Debug)]
pub enum DriverError {
    /// A resource of the loop itself (the poller, signals, a directory); the text says which.
    Setup(&'static str, std::io::Error),
    /// The switch of vlan `nr` could not start.
    Vlan { nr: u32, source: VdeError },
    /// A configured machine could not be prepared.
    Machine(MachineError),
    /// The Python shim could not start.
    Shim(crate::shim::ShimError),
    /// The SSH backdoor's vhost-device-vsock could not start.
    Vsock(vsock::VsockError),
    /// `ntd resume DIR`: the capsule cannot be used.
    Resume(String),
    /// The host cannot run containers (not root) or could not be prepared for them.
    ContainerHost(HostEnvError),
    /// Vlan `nr` could not get its bridge and tap for containers.
    Tap { nr: u32, source: LinkError },
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverError::Setup(what, e) => write!(f, "{what}: {e}"),
            DriverError::Vlan { nr, source } => write!(f, "cannot start vlan {nr}: {source}"),
            DriverError::Machine(e) => write!(f, "{e}"),
            DriverError::Shim(e) => write!(f, "cannot start the Python shim: {e}"),
            DriverError::Vsock(e) => write!(f, "{e}"),
            DriverError::Resume(e) => write!(f, "cannot resume the failure capsule: {e}"),
            DriverError::ContainerHost(e) => write!(f, "{e}"),
            DriverError::Tap { nr, source } => {
                write!(f, "cannot connect containers to vlan {nr}: {source}")
            }
        }
    }
}

impl std::error::Error for DriverError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DriverError::Setup(_, e) => Some(e),
            DriverError::Vlan { source, .. } => Some(source),
            DriverError::Machine(e) => Some(e),
            DriverError::Shim(e) => Some(e),
            DriverError::Vsock(e) => Some(e),
            DriverError::Resume(_) => None,
            DriverError::ContainerHost(e) => Some(e),
            DriverError::Tap { source, .. } => Some(source),
        }
    }
}

/// Why the run is ending early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Termination {
    GlobalTimeout,
    Signal(u32),
}

pub struct Driver {
    poll: Poll,
    log: Logger,
    opts: Options,
    tmp_dir: PathBuf,
    sockets: dirs::SocketDirs,
    /// VMs and containers; a machine's index is its owner id on the loop and its label on
    /// the switches.
    machines: Vec<Node>,
    switches: Vec<Switch>,
    /// In a run with containers: the netlink socket for bridges, and each switch's tap.
    netlink: Option<Netlink>,
    links: Vec<Option<VlanLink>>,
    /// `QEMU_VDE_SOCKET_<n>` for start scripts and the shim.
    extra_env: Vec<(String, String)>,
    shim: Option<ShimLink>,
    sigfd: OwnedFd,
    /// The request being served (the shim waits for one reply at a time).
    current: Option<Pending>,
    global_deadline: Option<Instant>,
    termination: Option<Termination>,
    started: Instant,
    trace: Option<Trace>,
    /// Fault injection for the tests (`NTD_TEST_PANIC=<op>`): panic when that op arrives.
    panic_on: Option<String>,
    /// The seed of every vlan's network-fault decisions (`--net-seed`, else random).
    net_seed: u64,
    /// Network faults in force, for the trace timeline (closed when replaced or healed).
    fault_spans: Vec<vlans::FaultSpan>,
    /// The SSH backdoor's vhost-user vsock backend (`enable_ssh_backdoor`).
    vsock: Option<vsock::VsockBackend>,
    /// Boot checkpoints (`--checkpoints`), when on.
    checkpoints: Option<gate::Checkpoints>,
    /// Named snapshots of this run (`snapshot`, `snapshot_all`), once one was taken.
    snapshots: Option<snapshots::Snapshots>,
    /// The failure capsule to write if the test fails (`--keep-failed`).
    capsule: Option<capsule::CapsuleState>,
    /// The host's CPU pressure (PSI), for the waits' pacing.
    host: HostPressure,
    /// The run's guest clock (calls that belong to no machine: `retry`).
    run_clock: RunClock,
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
                Owner::Driver.token(Slot::Signals as usize),
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
            sockets: dirs::SocketDirs::new(tmp_dir.clone()),
            tmp_dir,
            machines: Vec::new(),
            switches: Vec::new(),
            netlink: None,
            links: Vec::new(),
            extra_env: Vec::new(),
            shim: None,
            sigfd,
            current: None,
            global_deadline: None,
            termination: None,
            started: Instant::now(),
            trace,
            panic_on: std::env::var("NTD_TEST_PANIC").ok(),
            net_seed: 0,
            fault_spans: Vec::new(),
            vsock: None,
            checkpoints: None,
            snapshots: None,
            capsule: None,
            host: HostPressure::new(),
            run_clock: RunClock::default(),
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
        if !d.opts.containers.is_empty() {
            d.prepare_container_host()?;
        }
        d.start_vlans()?;
        if d.opts.enable_ssh_backdoor && !d.opts.vms.is_empty() {
            d.start_vsock()?;
        }
        let keep = d.opts.keep_machine_state;
        for spec in d.opts.vms.clone() {
            d.add_machine(&spec.name, &spec.start_script, keep)
                .map_err(DriverError::Machine)?;
        }
        for spec in d.opts.containers.clone() {
            d.add_container(&spec.name, &spec.start_script, keep)
                .map_err(DriverError::Machine)?;
        }
        d.setup_vmgenid();
        d.setup_checkpoints();
        d.setup_capsule();
        d.setup_resume().map_err(DriverError::Resume)?;
        Ok(d)
    }

    /// Upstream's nested `start vhost-device-vsock`: the SSH backdoor's backend, serving a
    /// vsock device per configured machine (before any QEMU starts: QEMU connects to it).
    fn start_vsock(&mut self) -> Result<(), DriverError> {
        self.log.begin(None, "start vhost-device-vsock");
        let names: Vec<String> = self.opts.vms.iter().map(|v| v.name.clone()).collect();
        let longest = names.iter().map(String::len).max().unwrap_or(0);
        let dir_name = format!("vhost-vsock-{}", std::process::id());
        let probe = PathBuf::from(&dir_name).join(format!("{}_guest.socket", "x".repeat(longest)));
        let base = self
            .sockets
            .base_for(&probe, crate::machine::qemu::MAX_SOCKET_PATH, &mut self.log)
            .map_err(|source| {
                self.log.end(false);
                DriverError::Vsock(vsock::VsockError::Dir {
                    path: PathBuf::from(&dir_name),
                    source,
                })
            })?;
        let started = vsock::VsockBackend::start(base.join(dir_name), &names);
        self.log.end(started.is_ok());
        self.vsock = Some(started.map_err(DriverError::Vsock)?);
        Ok(())
    }

    /// A machine of the run (configured, or from `create_machine`), its old state removed
    /// unless kept.
    fn add_machine(
        &mut self,
        name: &str,
        start_command: &str,
        keep: bool,
    ) -> Result<usize, MachineError> {
        let index = self.machines.len();
        let monitor = PathBuf::from(format!("vm-state-{name}")).join("monitor");
        let socket_base = self
            .sockets
            .base_for(
                &monitor,
                crate::machine::qemu::MAX_SOCKET_PATH,
                &mut self.log,
            )
            .map_err(|source| MachineError::SocketDir {
                name: name.to_owned(),
                source,
            })?;
        let mut m = Machine::new(name, index, &self.tmp_dir, &socket_base, start_command);
        m.keep_state = keep;
        if let Some(pair) = self.vsock.as_ref().and_then(|v| v.pair(name)) {
            m.extra_args = vsock::qemu_args(&pair.guest);
        }
        m.force_accel = self.opts.force_accel;
        m.reset_state_dir(&mut self.log)?;
        self.machines.push(Node::Vm(m));
        Ok(index)
    }

    /// Run the test: start the shim, serve it until it exits (or the run is cut short), clean
    /// up, and return the process exit status. A bug in the driver (a panic) ends the run
    /// through the same cleanup, with status 1.
    pub fn run(mut self) -> i32 {
        let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.serve()));
        let code = served.unwrap_or_else(|_| {
            self.log.test_error(
                "ntd stopped the test after an internal error (see the message above); \
                 cleaning up",
            );
            1
        });
        self.cleanup();
        self.finish_capsule();
        code
    }

    /// Serve the shim until it exits or the run is cut short; the exit status.
    fn serve(&mut self) -> i32 {
        self.start_resumed();
        match ShimLink::spawn(&self.tmp_dir, &self.extra_env, self.poll.registry()) {
            Ok(link) => self.shim = Some(link),
            Err(e) => {
                self.log.error(&e.to_string());
                return 1;
            }
        }
        let mut events = Events::with_capacity(256);
        while self.shim_exit().is_none() && self.termination.is_none() {
            self.turn(&mut events);
        }
        // Requests the shim wrote just before exiting (its last log lines) still count.
        if let Some(s) = self.shim.as_mut() {
            s.read_requests(self.poll.registry());
        }
        self.advance();
        let code = match self.termination {
            Some(Termination::GlobalTimeout) => 143,
            Some(Termination::Signal(sig)) => signals::exit_status_for(sig),
            None => self.shim_exit().map_or(1, |info| info.shell_status()),
        };
        // A failed test (not one a signal ended) leaves a capsule, with --keep-failed.
        let failure = match self.termination {
            Some(Termination::GlobalTimeout) => Some(format!(
                "the global timeout of {} seconds ran out",
                crate::machine::guest::format_seconds(self.opts.global_timeout)
            )),
            Some(Termination::Signal(_)) => None,
            None => (code != 0).then(|| format!("the test script failed (exit status {code})")),
        };
        if let Some(reason) = failure {
            self.save_capsule(reason);
        }
        code
    }

    fn shim_exit(&self) -> Option<crate::child::ExitInfo> {
        self.shim.as_ref().and_then(ShimLink::exit)
    }

    /// One poll iteration: events, timers, the current op.
    fn turn(&mut self, events: &mut Events) {
        let timeout = self
            .next_deadline()
            .map(|d| d.saturating_duration_since(Instant::now()) + Duration::from_micros(100));
        if !self.poll_once(events, timeout) {
            return;
        }
        self.timers(Instant::now());
        self.trace_milestones();
        self.advance();
    }

    /// Poll and route every event; false if the poll itself failed.
    fn poll_once(&mut self, events: &mut Events, timeout: Option<Duration>) -> bool {
        if let Err(e) = self.poll.poll(events, timeout) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                self.log.error(&format!("poll failed: {e}"));
                self.termination = Some(Termination::Signal(signals::SIGTERM));
            }
            return false;
        }
        for ev in events.iter() {
            self.route(ev);
        }
        true
    }

    /// Hand an event to the member that owns its token.
    fn route(&mut self, ev: &Event) {
        let (id, slot) = reactor::split(ev.token());
        let owner = Owner::from(id);
        if owner == Owner::Driver {
            match slot {
                s if s == Slot::Signals as usize => {
                    for sig in signals::drain(&self.sigfd) {
                        self.on_signal(sig);
                    }
                }
                other => self.log.warning(
                    None,
                    &format!("event for unknown driver slot {other} ignored"),
                ),
            }
            return;
        }
        let mut cx = Ctx {
            registry: self.poll.registry(),
            log: &mut self.log,
        };
        let member: Option<&mut dyn LoopMember> = match owner {
            Owner::Shim => self.shim.as_mut().map(|s| s as &mut dyn LoopMember),
            Owner::Machine(i) => self.machines.get_mut(i).map(|m| m as &mut dyn LoopMember),
            Owner::Switch(i) => self.switches.get_mut(i).map(|s| s as &mut dyn LoopMember),
            Owner::Driver => None,
        };
        match member {
            Some(m) => m.on_event(&mut cx, slot, ev),
            None => cx.log.warning(
                None,
                &format!("event for {owner:?}, which does not exist, ignored"),
            ),
        }
        if let Owner::Switch(i) = owner {
            self.switch_events(i);
        }
    }

    fn members(&self) -> impl Iterator<Item = &dyn LoopMember> {
        let machines = self.machines.iter().map(|m| m as &dyn LoopMember);
        let switches = self.switches.iter().map(|s| s as &dyn LoopMember);
        let shim = self.shim.iter().map(|s| s as &dyn LoopMember);
        machines.chain(switches).chain(shim)
    }

    fn next_deadline(&self) -> Option<Instant> {
        let op = self.current.as_ref().and_then(Pending::wake_at);
        self.members()
            .filter_map(LoopMember::next_deadline)
            .chain(op)
            .chain(self.checkpoint_deadline())
            .chain(self.global_deadline)
            .min()
    }

    /// Members' timers that are due.
    fn member_timers(&mut self, now: Instant) {
        let mut cx = Ctx {
            registry: self.poll.registry(),
            log: &mut self.log,
        };
        let machines = self.machines.iter_mut().map(|m| m as &mut dyn LoopMember);
        let switches = self.switches.iter_mut().map(|s| s as &mut dyn LoopMember);
        for m in machines.chain(switches) {
            if m.next_deadline().is_some_and(|d| now >= d) {
                m.on_timer(&mut cx, now);
            }
        }
        for i in 0..self.switches.len() {
            self.switch_events(i);
        }
    }

    fn timers(&mut self, now: Instant) {
        self.member_timers(now);
        if self.global_deadline.is_some_and(|d| now >= d) {
            self.global_deadline = None;
            self.log.begin(None, "timeout reached; test terminating...");
            self.log.test_error(&format!(
                "the global timeout of {} seconds ran out",
                crate::machine::guest::format_seconds(self.opts.global_timeout)
            ));
            // With --keep-failed the machines are saved first; cleanup ends them after.
            if self.capsule.is_none() {
                let registry = self.poll.registry();
                for m in &mut self.machines {
                    let grace = match m {
                        Node::Vm(_) => TIMEOUT_KILL_GRACE,
                        Node::Container(_) => TIMEOUT_CONTAINER_GRACE,
                    };
                    m.terminate(&mut self.log, registry, grace);
                }
            }
            self.log.end(true);
            self.termination = Some(Termination::GlobalTimeout);
            self.kill_shim();
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

    fn kill_shim(&mut self) {
        if let Some(s) = &self.shim {
            s.kill();
        }
    }

    /// Progress the current op; start queued requests while none is running.
    fn advance(&mut self) {
        self.checkpoint_turn();
        loop {
            if let Some(op) = self.current.take() {
                let host_psi = self.host_psi();
                let mut env = Env {
                    machines: &mut self.machines,
                    cx: Ctx {
                        registry: self.poll.registry(),
                        log: &mut self.log,
                    },
                    now: Instant::now(),
                    extra_env: &self.extra_env,
                    shell_timeout: self.opts.shell_timeout,
                    trace: self.trace.as_ref(),
                    host_psi,
                    epoch: self.started,
                };
                match op.poll(&mut env) {
                    Polled::Done(answer) => self.answer(answer),
                    Polled::Waiting(op) => {
                        self.current = Some(op);
                        return;
                    }
                }
            }
            // The first command waits while the machines booted so far are saved.
            if let Some(req) = self.checkpoint_released() {
                self.begin(req);
                continue;
            }
            if self.checkpoint_holding() {
                return;
            }
            let Some(next) = self.shim.as_mut().and_then(ShimLink::next_request) else {
                return;
            };
            match next {
                Ok(req) => match self.checkpoint_admit(req) {
                    Some(req) => self.begin(req),
                    None => self.checkpoint_turn(),
                },
                Err(e) => match e.id {
                    Some(id) => self.answer(Answer::Line(crate::rpc::encode_err(id, &e.error))),
                    None => self
                        .log
                        .warning(None, &format!("bad request from the shim: {}", e.error.msg)),
                },
            }
        }
    }

    /// Send what answering a request gave (a notification's error goes to the log).
    fn answer(&mut self, answer: Answer) {
        match answer {
            Answer::Line(line) => {
                if let Some(s) = self.shim.as_mut() {
                    s.send(self.poll.registry(), &line);
                }
            }
            Answer::Unanswered(e) => self.log.warning(None, &e.msg),
            Answer::Silent => {}
        }
    }

    /// Handle a new request: notifications and instant ones are answered at once, the rest
    /// become the current op.
    fn begin(&mut self, req: Request) {
        if self.panic_on.as_deref() == Some(req.op.name()) {
            injected_panic(req.op.name());
        }
        match dispatch(self, req) {
            Served::Now(answer) => self.answer(answer),
            Served::Later(op) if op.id().is_some() => self.current = Some(op),
            Served::Later(_) => self.log.warning(
                None,
                "a request that takes time was sent as a notification (no id); dropped",
            ),
        }
    }

    /// End everything: machines (sorted by name), then switches, then files. Runs the normal
    /// routing until every process group is gone.
    fn cleanup(&mut self) {
        self.kill_shim();
        self.log.unwind_to(0);
        self.log.begin(None, "cleanup");
        let mut order: Vec<usize> = (0..self.machines.len()).collect();
        order.sort_by(|a, b| self.machines[*a].name().cmp(self.machines[*b].name()));
        let mut longest = KILL_GRACE;
        for i in order {
            let grace = match self.machines[i] {
                Node::Vm(_) => KILL_GRACE,
                Node::Container(_) => crate::container::TERMINATE_GRACE,
            };
            longest = longest.max(grace);
            self.machines[i].terminate(&mut self.log, self.poll.registry(), grace);
        }
        let give_up = Instant::now() + longest + KILL_GIVE_UP;
        let mut events = Events::with_capacity(64);
        loop {
            let shim_done = self.shim.is_none() || self.shim_exit().is_some();
            let machines_done = self.machines.iter_mut().all(Node::gone);
            if (shim_done && machines_done) || Instant::now() >= give_up {
                break;
            }
            let timeout = self
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(CLEANUP_TICK)
                .min(CLEANUP_TICK);
            // The switches keep forwarding until the last machine is gone (QEMU never
            // reconnects to a restarted switch).
            self.poll_once(&mut events, Some(timeout));
            self.member_timers(Instant::now());
        }
        self.checkpoint_cleanup();
        self.remove_snapshots();
        if let Some(v) = self.vsock.as_mut() {
            v.stop();
        }
        for m in &mut self.machines {
            if !m.gone() {
                let what = match m {
                    Node::Vm(_) => "QEMU process group",
                    Node::Container(_) => "the container's start script or a command",
                };
                self.log.warning(
                    Some(m.name()),
                    &format!("{what} still alive after SIGKILL; giving up on it"),
                );
            }
            m.remove_files(self.poll.registry(), &mut self.log);
        }
        // Bridges go after the containers' veths (their start scripts removed them), taps
        // with their switches.
        self.unlink_vlans();
        self.stop_vlans();
        if let Some(s) = self.shim.as_mut() {
            s.close(self.poll.registry());
        }
        let _ = std::fs::remove_dir(self.tmp_dir.join("shared-xchg"));
        self.sockets.remove();
        self.log.end(true);
        self.report_usage();
        self.log.finish();
        self.write_trace();
    }
}

/// The one deliberate panic: fault injection for the tests of the panic path
/// (`NTD_TEST_PANIC=<op>`).
#[allow(clippy::panic)]
fn injected_panic(op: &str) -> ! {
    panic!("NTD_TEST_PANIC: a panic injected while handling '{op}'")
}
