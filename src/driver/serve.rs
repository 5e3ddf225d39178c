//! What each request means: the driver's [`Serve`] impl, one method per op of the protocol
//! table ([`crate::rpc::ops`]). A method answers at once through its [`Responder`] or hands
//! it to a [`Pending`] op that answers later ([`super::pending`]); the responder only takes
//! the reply type its op declares. Network faults are served in [`super::vlans`].

use super::control::Controlled;
use super::deadline::Deadline;
use super::node::{Kind, Node};
use super::pending::Pending;
use super::shell_op::{ShellOp, WaitOp};
use super::Driver;
use crate::json::Value;
use crate::machine::guest::{format_seconds, WaitSpec};
use crate::machine::session::ShellRequest;
use crate::machine::waits::{retry_step, PaceMode, Pacing, Schedule};
use crate::machine::{self, qemu, words};
use crate::reactor::Ctx;
use crate::rpc::ops::Serve;
use crate::rpc::replies::{
    HelloReply, MachineInfo, MachineState, NextAttempt, RunReply, SshBackdoor, VlanInfo,
    VsockSockets, WaitReply,
};
use crate::rpc::requests::*;
use crate::rpc::wire::{Answer, Responder, Seconds};
use crate::rpc::{ErrorType, OpError};
use std::path::Path;
use std::time::{Duration, Instant};

/// What serving a request gave.
#[derive(Debug)]
// Moved once per request; boxing the pending op would cost an allocation per command.
#[allow(clippy::large_enum_variant)]
pub enum Served {
    /// Answered.
    Now(Answer),
    /// It waits for something; the driver polls it after every loop turn.
    Later(Pending),
}

/// How long a container's `systemctl poweroff` may take (it only queues the job).
const POWEROFF_COMMAND_TIMEOUT: Duration = Duration::from_secs(900);

/// How a shutdown op ends the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ShutdownKind {
    /// `poweroff` in the guest, then wait.
    Poweroff,
    /// QMP `quit` (SIGKILL if QMP is gone), then wait.
    Crash,
    /// Only wait.
    Wait,
}

impl Driver {
    pub(super) fn machine_index(&self, name: &str) -> Result<usize, OpError> {
        self.machines
            .iter()
            .position(|m| m.name() == name)
            .ok_or_else(|| OpError::new(ErrorType::Value, format!("no machine named '{name}'")))
    }

    fn shell(
        &mut self,
        machine: &str,
        req: ShellRequest,
        check_output: bool,
        out: Responder<RunReply>,
    ) -> Served {
        match self.machine_index(machine) {
            Ok(m) => Served::Later(Pending::Run {
                op: ShellOp::new(m, req, Instant::now()),
                // Upstream's containers ignore check_output: every command is waited for.
                check_output: check_output || self.machines[m].kind() == Kind::Nspawn,
                out,
            }),
            Err(e) => Served::Now(out.err(e)),
        }
    }

    /// A wait slice: as long as the wait's time allows, or one polling slice.
    fn wait(&mut self, req: impl WaitRequest, out: Responder<WaitReply>) -> Served {
        let (machine, condition, limits) = req.into_wait();
        let m = match self.machine_index(&machine) {
            Ok(m) => m,
            Err(e) => return Served::Now(out.err(e)),
        };
        let schedule = Schedule::from_env();
        let (budget, final_slice) = WaitOp::slice(limits);
        let psi = self.host_psi();
        let machine = &mut self.machines[m];
        machine.clock(Instant::now(), &mut self.log);
        let mode = PaceMode::of(machine.pace_verdict(psi));
        let kvm = machine.accelerator() == Some("kvm");
        let req = ShellRequest::Wait {
            check: Box::new(condition.guest_check(schedule)),
            spec: Box::new(WaitSpec {
                budget,
                pacing: Pacing::new(schedule, limits.age, mode, kvm),
            }),
        };
        Served::Later(Pending::Wait {
            op: ShellOp::new(m, req, Instant::now()),
            wait: WaitOp {
                condition,
                limits,
                final_slice,
            },
            out,
        })
    }

    fn shutdown_op(
        &mut self,
        machine: &str,
        how: ShutdownKind,
        timeout: Option<Duration>,
        out: Responder<()>,
    ) -> Served {
        let m = match self.machine_index(machine) {
            Ok(m) => m,
            Err(e) => return Served::Now(out.err(e)),
        };
        let reg = self.poll.registry();
        if self.machines[m].stopped() {
            return Served::Now(out.ok(()));
        }
        let clock = self.machines[m].clock(Instant::now(), &mut self.log);
        let deadline = Deadline::within(clock, timeout);
        let machine = match &mut self.machines[m] {
            Node::Vm(vm) => vm,
            Node::Container(c) => {
                return match how {
                    // Upstream: `systemctl poweroff` in the container, then wait.
                    ShutdownKind::Poweroff if c.is_up() => {
                        let req = ShellRequest::Run {
                            command: words::systemctl("poweroff", None),
                            timeout: Some(POWEROFF_COMMAND_TIMEOUT),
                        };
                        Served::Later(Pending::PowerOff {
                            op: ShellOp::new(m, req, Instant::now()),
                            deadline,
                            out,
                        })
                    }
                    ShutdownKind::Crash => Served::Now(out.err(OpError::new(
                        ErrorType::Machine,
                        format!(
                            "{} is a systemd-nspawn container: it cannot crash()",
                            c.name
                        ),
                    ))),
                    _ => Served::Later(Pending::WaitExit {
                        m,
                        deadline,
                        drain: None,
                        out,
                    }),
                };
            }
        };
        // An exit nobody asked for (Phase::Exited) is acknowledged by waiting for it: the
        // machine is then stopped, and the next command boots it again, as upstream.
        match how {
            _ if !machine.booted() => {}
            ShutdownKind::Poweroff => {
                machine.send_shell_raw(reg, b"poweroff\n");
            }
            ShutdownKind::Crash if machine.qmp_execute(reg, "quit", None).is_err() => {
                machine.kill_now();
            }
            ShutdownKind::Crash | ShutdownKind::Wait => {}
        }
        Served::Later(Pending::WaitExit {
            m,
            deadline,
            drain: None,
            out,
        })
    }

    /// Send a QMP command; `Ok(id)` to wait for its result.
    fn qmp_send(
        &mut self,
        machine: &str,
        name: &str,
        args: Option<Value>,
    ) -> Result<(usize, u64), OpError> {
        let m = self.machine_index(machine)?;
        self.machines[m]
            .vm_mut("QMP")?
            .qmp_execute(self.poll.registry(), name, args)
            .map(|qid| (m, qid))
            .map_err(|e| OpError::new(ErrorType::Runtime, e.to_string()))
    }

    /// `create_machine(start_command, name=…)`: a machine outside the configured set. Unlike
    /// upstream, ntd still ends it at cleanup (nothing is left running).
    fn add_created(&mut self, req: CreateMachine) -> Result<MachineInfo, OpError> {
        let name = req
            .name
            .unwrap_or_else(|| qemu::name_from_start_command(&req.start_command));
        if name.is_empty() || name.contains('/') {
            return Err(OpError::new(
                ErrorType::Value,
                format!("invalid machine name '{name}'"),
            ));
        }
        if self.machines.iter().any(|m| m.name() == name) {
            return Err(OpError::new(
                ErrorType::Value,
                format!(
                    "a machine named '{name}' exists already; pass create_machine(..., name=...)"
                ),
            ));
        }
        let i = self
            .add_machine(&name, &req.start_command, req.keep_machine_state)
            .map_err(|e| OpError::new(ErrorType::Machine, e.to_string()))?;
        Ok(machine_info(&self.machines[i]))
    }

    fn hello_reply(&self) -> HelloReply {
        HelloReply {
            machines: self.machines.iter().map(machine_info).collect(),
            vlans: self
                .switches
                .iter()
                .map(|sw| VlanInfo {
                    nr: sw.vlan(),
                    socket_dir: sw.dir().display().to_string(),
                })
                .collect(),
            test_script: self
                .opts
                .test_script
                .as_ref()
                .map(|p| p.display().to_string()),
            out_dir: self.opts.output_directory.display().to_string(),
            tmp_dir: self.tmp_dir.display().to_string(),
            interactive: self.opts.interactive,
            global_timeout: Seconds(self.opts.global_timeout),
            debug_hook: self.opts.debug_hook.clone(),
            legacy: self.opts.legacy_state_flag,
            ssh_backdoor: self.ssh_backdoor(),
        }
    }

    /// The newest generation's vsock-mux sockets, or the mid generation's CID offset, or
    /// nothing when the test has no SSH backdoor.
    fn ssh_backdoor(&self) -> Option<SshBackdoor> {
        if !self.opts.enable_ssh_backdoor && self.opts.dump_vsocks.is_none() {
            return None;
        }
        let sockets = self.vsock.as_ref().map(|v| {
            v.sockets
                .iter()
                .map(|(name, p)| VsockSockets {
                    machine: name.clone(),
                    guest: p.guest.clone(),
                    host: p.host.clone(),
                    cid: p.cid,
                })
                .collect()
        });
        Some(SshBackdoor {
            sockets,
            vsock_offset: self.opts.dump_vsocks,
        })
    }
}

impl Serve for Driver {
    type Served = Served;

    fn log(&mut self, req: Log, out: Responder<()>) -> Served {
        self.log.line(req.level, req.machine.as_deref(), &req.msg);
        Served::Now(out.ok(()))
    }

    fn failure(&mut self, req: Failure, out: Responder<()>) -> Served {
        self.note_failure(req.text);
        Served::Now(out.ok(()))
    }

    fn nest(&mut self, req: Nest, out: Responder<()>) -> Served {
        self.log.begin(req.machine.as_deref(), &req.msg);
        Served::Now(out.ok(()))
    }

    fn unnest(&mut self, req: Unnest, out: Responder<()>) -> Served {
        self.log.end(req.ok);
        Served::Now(out.ok(()))
    }

    fn serial(&mut self, req: Serial, out: Responder<()>) -> Served {
        self.log.set_serial(req.on);
        Served::Now(out.ok(()))
    }

    fn log_level(&mut self, req: LogLevel, out: Responder<()>) -> Served {
        self.log.set_level(req.level);
        Served::Now(out.ok(()))
    }

    fn hello(&mut self, _: Hello, out: Responder<HelloReply>) -> Served {
        Served::Now(out.ok(self.hello_reply()))
    }

    fn arm_timeout(&mut self, _: ArmTimeout, out: Responder<()>) -> Served {
        self.log.log(&format!(
            "Test will time out and terminate in {} seconds",
            format_seconds(self.opts.global_timeout)
        ));
        self.global_deadline = Instant::now().checked_add(self.opts.global_timeout);
        Served::Now(out.ok(()))
    }

    fn disarm_timeout(&mut self, _: DisarmTimeout, out: Responder<()>) -> Served {
        self.global_deadline = None;
        Served::Now(out.ok(()))
    }

    fn create_machine(&mut self, req: CreateMachine, out: Responder<MachineInfo>) -> Served {
        Served::Now(out.finish(self.add_created(req)))
    }

    fn qemu_command(&mut self, req: QemuCommand, out: Responder<String>) -> Served {
        let sockets = qemu::Sockets {
            monitor: Path::new(&req.monitor),
            qmp: Path::new(&req.qmp),
            shell: Path::new(&req.shell),
        };
        let args = qemu::appended_args(&sockets, req.allow_reboot, qemu::wants_nographic());
        Served::Now(out.ok(format!("{} {}", req.start_command, args.join(" "))))
    }

    fn capture(&mut self, req: Capture, out: Responder<()>) -> Served {
        Served::Now(out.finish(self.op_capture(req.vlan, req.path.as_deref().map(Path::new))))
    }

    fn impair(&mut self, req: Impair, out: Responder<()>) -> Served {
        Served::Now(out.finish(self.op_impair(req.vlan, req.impairment, req.between.as_ref())))
    }

    fn partition(&mut self, req: Partition, out: Responder<()>) -> Served {
        Served::Now(out.finish(self.op_partition(req.vlan, &req.groups)))
    }

    fn heal(&mut self, req: Heal, out: Responder<()>) -> Served {
        Served::Now(out.finish(self.op_heal(req.vlan)))
    }

    fn start(&mut self, req: Start, out: Responder<()>) -> Served {
        let indices: Result<Vec<usize>, OpError> =
            req.machines.iter().map(|n| self.machine_index(n)).collect();
        let indices = match indices {
            Ok(i) => i,
            Err(e) => return Served::Now(out.err(e)),
        };
        let mut machines = Vec::new();
        let mut errors = Vec::new();
        let mut cx = Ctx {
            registry: self.poll.registry(),
            log: &mut self.log,
        };
        for i in indices {
            let m = &mut self.machines[i];
            if let Node::Vm(vm) = m {
                if !vm.booted() {
                    vm.allow_reboot = req.allow_reboot;
                }
            }
            match Controlled::start(m, &mut cx, &self.extra_env) {
                Ok(()) => machines.push(i),
                Err(e) => errors.push((i, e.to_string())),
            }
        }
        Served::Later(Pending::Start {
            machines,
            all: req.all,
            errors,
            out,
        })
    }

    fn connect(&mut self, req: Connect, out: Responder<()>) -> Served {
        match self.machine_index(&req.machine) {
            Ok(m) => Served::Later(Pending::Connect {
                m,
                stage: None,
                out,
            }),
            Err(e) => Served::Now(out.err(e)),
        }
    }

    fn execute(&mut self, req: Execute, out: Responder<RunReply>) -> Served {
        let run = ShellRequest::Run {
            command: req.command,
            timeout: req.timeout,
        };
        self.shell(&req.machine, run, req.check_output, out)
    }

    fn systemctl(&mut self, req: Systemctl, out: Responder<RunReply>) -> Served {
        let run = ShellRequest::Run {
            command: words::systemctl(&req.query, req.user.as_deref()),
            timeout: req.timeout,
        };
        self.shell(&req.machine, run, true, out)
    }

    fn wait_command(&mut self, req: WaitCommand, out: Responder<WaitReply>) -> Served {
        self.wait(req, out)
    }

    fn wait_file(&mut self, req: WaitFile, out: Responder<WaitReply>) -> Served {
        self.wait(req, out)
    }

    fn wait_port(&mut self, req: WaitPort, out: Responder<WaitReply>) -> Served {
        self.wait(req, out)
    }

    fn wait_unix_socket(&mut self, req: WaitUnixSocket, out: Responder<WaitReply>) -> Served {
        self.wait(req, out)
    }

    fn wait_unit(&mut self, req: WaitUnit, out: Responder<WaitReply>) -> Served {
        self.wait(req, out)
    }

    fn wait_unit_state(&mut self, req: WaitUnitState, out: Responder<WaitReply>) -> Served {
        self.wait(req, out)
    }

    fn wait_x11(&mut self, req: WaitX11, out: Responder<WaitReply>) -> Served {
        self.wait(req, out)
    }

    fn retry_step(&mut self, req: RetryStep, out: Responder<NextAttempt>) -> Served {
        let now = self.run_stamp();
        let age = match req.first {
            true => Duration::ZERO,
            false => req
                .age
                .saturating_sub(now.withheld.saturating_sub(req.since)),
        };
        let (mode, kvm) = self.run_pacing();
        let step = retry_step(
            Schedule::from_env(),
            req.first,
            age,
            req.cost,
            req.timeout,
            (mode, kvm),
        );
        Served::Now(out.ok(NextAttempt {
            pause: Seconds(step.pause),
            last: step.last,
            withheld: Seconds(now.withheld),
        }))
    }

    fn guest_clock(&mut self, req: GuestClock, out: Responder<Seconds>) -> Served {
        let stamp = match req.machine {
            None => self.run_stamp(),
            Some(name) => match self.machine_index(&name) {
                Ok(m) => self.machines[m].clock(Instant::now(), &mut self.log),
                Err(e) => return Served::Now(out.err(e)),
            },
        };
        Served::Now(out.ok(Seconds(stamp.guest_since(self.started))))
    }

    fn console_wait(
        &mut self,
        req: ConsoleWait,
        out: Responder<crate::rpc::replies::ConsoleChunk>,
    ) -> Served {
        match self.machine_index(&req.machine) {
            Ok(m) => {
                let clock = self.machines[m].clock(Instant::now(), &mut self.log);
                Served::Later(Pending::ConsoleWait {
                    m,
                    deadline: Deadline::within(clock, req.timeout),
                    out,
                })
            }
            Err(e) => Served::Now(out.err(e)),
        }
    }

    fn console_log(&mut self, req: ConsoleLog, out: Responder<String>) -> Served {
        let log = self.machine_index(&req.machine).and_then(|m| {
            self.machines[m]
                .vm("the serial console")
                .map(|vm| vm.console_log())
        });
        Served::Now(out.finish(log))
    }

    fn send_console(&mut self, req: SendConsole, out: Responder<()>) -> Served {
        match self.machine_index(&req.machine) {
            Ok(m) => match self.machines[m].vm_mut("the serial console") {
                Ok(vm) => {
                    vm.send_console(self.poll.registry(), req.data.as_bytes());
                    Served::Now(out.ok(()))
                }
                Err(e) => Served::Now(out.err(e)),
            },
            Err(e) => Served::Now(out.err(e)),
        }
    }

    fn qmp(&mut self, req: Qmp, out: Responder<Value>) -> Served {
        match self.qmp_send(&req.machine, &req.execute, req.arguments) {
            Ok((m, qid)) => Served::Later(Pending::Qmp { m, qid, out }),
            Err(e) => Served::Now(out.err(e)),
        }
    }

    fn hmp(&mut self, req: Hmp, out: Responder<String>) -> Served {
        let args = machine::qmp::hmp_args(&req.command);
        match self.qmp_send(&req.machine, "human-monitor-command", Some(args)) {
            Ok((m, qid)) => Served::Later(Pending::Hmp { m, qid, out }),
            Err(e) => Served::Now(out.err(e)),
        }
    }

    fn qmp_event(&mut self, req: QmpEvent, out: Responder<Option<Value>>) -> Served {
        let m = match self.machine_index(&req.machine) {
            Ok(m) => m,
            Err(e) => return Served::Now(out.err(e)),
        };
        let machine = match self.machines[m].vm("QMP") {
            Ok(vm) => vm,
            Err(e) => return Served::Now(out.err(e)),
        };
        if !machine.qmp_ready() && machine.phase() != machine::Phase::Running {
            return Served::Now(out.err(OpError::new(
                ErrorType::Runtime,
                machine::qmp::NotReady.to_string(),
            )));
        }
        let clock = self.machines[m].clock(Instant::now(), &mut self.log);
        Served::Later(Pending::QmpEvent {
            m,
            deadline: Deadline::within(clock, req.timeout),
            out,
        })
    }

    fn shutdown(&mut self, req: Shutdown, out: Responder<()>) -> Served {
        self.shutdown_op(&req.machine, ShutdownKind::Poweroff, req.timeout, out)
    }

    fn crash(&mut self, req: Crash, out: Responder<()>) -> Served {
        self.shutdown_op(&req.machine, ShutdownKind::Crash, req.timeout, out)
    }

    fn wait_for_shutdown(&mut self, req: WaitForShutdown, out: Responder<()>) -> Served {
        self.shutdown_op(&req.machine, ShutdownKind::Wait, req.timeout, out)
    }

    fn state(&mut self, req: State, out: Responder<MachineState>) -> Served {
        let state = self
            .machine_index(&req.machine)
            .map(|m| machine_state(&self.machines[m]));
        Served::Now(out.finish(state))
    }

    fn mark_disconnected(&mut self, req: MarkDisconnected, out: Responder<()>) -> Served {
        match self.machine_index(&req.machine) {
            Ok(m) => match self.machines[m].vm_mut("reconnecting the shell") {
                Ok(vm) => {
                    vm.mark_disconnected();
                    Served::Now(out.ok(()))
                }
                Err(e) => Served::Now(out.err(e)),
            },
            Err(e) => Served::Now(out.err(e)),
        }
    }

    fn snapshot(&mut self, req: Snapshot, out: Responder<()>) -> Served {
        match self.op_snapshot(Some(&req.machine), &req.name) {
            Ok(work) => Served::Later(Pending::Snapshot { work, out }),
            Err(e) => Served::Now(out.err(e)),
        }
    }

    fn restore(&mut self, req: RestoreSnapshot, out: Responder<()>) -> Served {
        match self.op_restore(Some(&req.machine), &req.name) {
            Ok(work) => Served::Later(Pending::Restore { work, out }),
            Err(e) => Served::Now(out.err(e)),
        }
    }

    fn snapshot_all(&mut self, req: SnapshotAll, out: Responder<()>) -> Served {
        match self.op_snapshot(None, &req.name) {
            Ok(work) => Served::Later(Pending::Snapshot { work, out }),
            Err(e) => Served::Now(out.err(e)),
        }
    }

    fn restore_all(&mut self, req: RestoreAll, out: Responder<()>) -> Served {
        match self.op_restore(None, &req.name) {
            Ok(work) => Served::Later(Pending::Restore { work, out }),
            Err(e) => Served::Now(out.err(e)),
        }
    }
}

/// What the shim's machine objects are built from (hello, `create_machine`).
fn machine_info(node: &Node) -> MachineInfo {
    let (start_command, paths) = match node {
        Node::Vm(m) => (&m.start_command, (&m.paths.state_dir, &m.paths.shared_dir)),
        Node::Container(c) => (&c.start_script, (&c.paths.state_dir, &c.paths.shared_dir)),
    };
    MachineInfo {
        name: node.name().to_owned(),
        kind: node.kind().name().to_owned(),
        start_command: start_command.clone(),
        state_dir: paths.0.display().to_string(),
        shared_dir: paths.1.display().to_string(),
        keep_machine_state: node.keep_state(),
    }
}

fn between(a: Option<Instant>, b: Option<Instant>) -> Option<Seconds> {
    match (a, b) {
        (Some(a), Some(b)) if b >= a => Some(Seconds(b - a)),
        _ => None,
    }
}

fn machine_state(node: &Node) -> MachineState {
    use machine::boot::Milestone;
    let m = match node {
        Node::Vm(m) => m,
        Node::Container(c) => {
            return MachineState {
                booted: c.is_up(),
                connected: c.connected(),
                pid: c.pid(),
                accelerator: None,
                boot_secs: between(c.started_at, c.ready_at),
                setup_secs: None,
                monitor_path: String::new(),
                shell_path: String::new(),
                qmp_path: String::new(),
            }
        }
    };
    let spawned = m.boot.at(Milestone::Spawned);
    let sentinel = m.boot.at(Milestone::Sentinel);
    let setup_sent = m.boot.at(Milestone::SetupSent);
    let ready = m.boot.at(Milestone::ShellReady);
    MachineState {
        booted: m.booted(),
        connected: m.connected(),
        pid: m.pid(),
        accelerator: m.accelerator().map(str::to_owned),
        boot_secs: between(spawned, sentinel),
        setup_secs: between(setup_sent, ready),
        monitor_path: m.paths.monitor.display().to_string(),
        shell_path: m.paths.shell.display().to_string(),
        qmp_path: m.paths.qmp.display().to_string(),
    }
}
