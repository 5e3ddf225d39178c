//! What each request means: one function per [`Op`] that either answers at once or starts a
//! [`Pending`] operation (finished in [`super::pending`]). Adding a testScript method means
//! one [`Op`] variant (decoded in [`crate::rpc::ops`]) and one arm here.

use super::pending::{Pending, ShellOp, ShellStage};
use super::Driver;
use crate::json::{obj, Value};
use crate::machine::guest::{format_seconds, WaitSpec};
use crate::machine::qemu;
use crate::machine::session::ShellRequest;
use crate::machine::waits::{Pacing, Schedule, WaitCondition};
use crate::machine::{self, Machine, Phase};
use crate::reactor::Ctx;
use crate::rpc::ops::{Op, ShutdownKind};
use crate::rpc::{ErrorType, OpError};
use std::path::Path;
use std::time::{Duration, Instant};

pub(super) type OpResult = Result<Value, OpError>;

/// What [`Driver::start_op`] made of a request.
pub(super) enum Begun {
    Done(OpResult),
    Pending(Pending),
}

fn done(v: Value) -> Begun {
    Begun::Done(Ok(v))
}

fn error(kind: ErrorType, msg: impl Into<String>) -> Begun {
    Begun::Done(Err(OpError::new(kind, msg)))
}

fn deadline_after(timeout: Option<Duration>) -> Option<Instant> {
    timeout.map(|t| Instant::now() + t)
}

impl Driver {
    fn machine_index(&self, name: &str) -> Result<usize, OpError> {
        self.machines
            .iter()
            .position(|m| m.name == name)
            .ok_or_else(|| OpError::new(ErrorType::Value, format!("no machine named '{name}'")))
    }

    /// Decide what a request is: answered now, or pending.
    pub(super) fn start_op(&mut self, op: Op) -> Begun {
        match op {
            Op::Log { kind, machine, msg } => {
                self.log.line(kind, machine.as_deref(), &msg);
                done(Value::Null)
            }
            Op::Nest { machine, msg } => {
                self.log.begin(machine.as_deref(), &msg);
                done(Value::Null)
            }
            Op::Unnest { ok } => {
                self.log.end(ok);
                done(Value::Null)
            }
            Op::Serial { on } => {
                self.log.set_serial(on);
                done(Value::Null)
            }
            Op::LogLevel { level } => {
                self.log.set_level(level);
                done(Value::Null)
            }
            Op::Hello => done(self.hello()),
            Op::ArmTimeout => {
                self.log.log(&format!(
                    "Test will time out and terminate in {} seconds",
                    format_seconds(self.opts.global_timeout.as_secs_f64())
                ));
                self.global_deadline = Instant::now().checked_add(self.opts.global_timeout);
                done(Value::Null)
            }
            Op::DisarmTimeout => {
                self.global_deadline = None;
                done(Value::Null)
            }
            Op::CreateMachine {
                start_command,
                name,
                keep_machine_state,
            } => Begun::Done(self.create_machine(&start_command, name, keep_machine_state)),
            Op::QemuCommand {
                start_command,
                monitor,
                qmp,
                shell,
                allow_reboot,
            } => done(Value::from(qemu_command(
                &start_command,
                [&monitor, &qmp, &shell].map(Path::new),
                allow_reboot,
            ))),
            Op::Capture { vlan, path } => Begun::Done(self.capture(vlan, path.as_deref())),
            Op::Impair {
                vlan,
                faults,
                between,
            } => Begun::Done(self.op_impair(vlan, &faults, between.as_ref())),
            Op::Partition { vlan, groups } => Begun::Done(self.op_partition(vlan, &groups)),
            Op::Heal { vlan } => Begun::Done(self.op_heal(vlan)),
            Op::Start {
                machines,
                all,
                allow_reboot,
            } => self.op_start(&machines, all, allow_reboot),
            Op::Connect { machine } => match self.machine_index(&machine) {
                Ok(m) => Begun::Pending(Pending::Connect { m, stage: None }),
                Err(e) => Begun::Done(Err(e)),
            },
            Op::Execute {
                machine,
                command,
                timeout,
                check_output,
            } => {
                let req = ShellRequest::Run {
                    command,
                    timeout: timeout.map(|t| t.as_secs_f64()),
                };
                self.shell_op(&machine, req, None, check_output)
            }
            Op::Wait {
                machine,
                condition,
                budget,
                age,
            } => {
                let schedule = Schedule::from_env();
                let req = ShellRequest::Wait {
                    check: Box::new(condition.guest_check(schedule)),
                    spec: Box::new(WaitSpec {
                        budget_secs: budget.as_secs_f64(),
                        pacing: Pacing::new(schedule, age),
                    }),
                };
                self.shell_op(&machine, req, Some(condition), true)
            }
            Op::ConsoleWait { machine, timeout } => match self.machine_index(&machine) {
                Ok(m) => Begun::Pending(Pending::ConsoleWait {
                    m,
                    deadline: deadline_after(timeout),
                }),
                Err(e) => Begun::Done(Err(e)),
            },
            Op::ConsoleLog { machine } => Begun::Done(
                self.machine_index(&machine)
                    .map(|m| Value::from(self.machines[m].console_log())),
            ),
            Op::SendConsole { machine, data } => match self.machine_index(&machine) {
                Ok(m) => {
                    self.machines[m].send_console(self.poll.registry(), data.as_bytes());
                    done(Value::Null)
                }
                Err(e) => Begun::Done(Err(e)),
            },
            Op::Qmp {
                machine,
                execute,
                arguments,
            } => self.op_qmp(&machine, &execute, arguments, false),
            Op::Hmp { machine, command } => self.op_qmp(
                &machine,
                "human-monitor-command",
                Some(machine::qmp::hmp_args(&command)),
                true,
            ),
            Op::QmpEvent { machine, timeout } => self.op_qmp_event(&machine, timeout),
            Op::Shutdown {
                machine,
                how,
                timeout,
            } => self.op_shutdown(&machine, how, timeout),
            Op::State { machine } => Begun::Done(
                self.machine_index(&machine)
                    .map(|m| machine_state(&self.machines[m])),
            ),
            Op::MarkDisconnected { machine } => match self.machine_index(&machine) {
                Ok(m) => {
                    self.machines[m].mark_disconnected();
                    done(Value::Null)
                }
                Err(e) => Begun::Done(Err(e)),
            },
        }
    }

    fn op_start(&mut self, names: &[String], all: bool, allow_reboot: bool) -> Begun {
        let mut indices = Vec::new();
        for n in names {
            match self.machine_index(n) {
                Ok(i) => indices.push(i),
                Err(e) => return Begun::Done(Err(e)),
            }
        }
        let mut machines = Vec::new();
        let mut errors = Vec::new();
        let mut cx = Ctx {
            registry: self.poll.registry(),
            log: &mut self.log,
        };
        for i in indices {
            let m = &mut self.machines[i];
            if !m.booted() {
                m.allow_reboot = allow_reboot;
            }
            match m.start(&mut cx, &self.extra_env) {
                Ok(()) => machines.push(i),
                Err(e) => errors.push((i, e.to_string())),
            }
        }
        Begun::Pending(Pending::Start {
            machines,
            all,
            errors,
        })
    }

    fn shell_op(
        &mut self,
        machine: &str,
        req: ShellRequest,
        wait: Option<WaitCondition>,
        check_output: bool,
    ) -> Begun {
        match self.machine_index(machine) {
            Ok(m) => Begun::Pending(Pending::Shell(ShellOp {
                m,
                req,
                wait,
                stage: ShellStage::Connect(None),
                check_output,
                started: Instant::now(),
                answer_by: None,
            })),
            Err(e) => Begun::Done(Err(e)),
        }
    }

    fn op_qmp(&mut self, machine: &str, name: &str, args: Option<Value>, hmp: bool) -> Begun {
        let m = match self.machine_index(machine) {
            Ok(m) => m,
            Err(e) => return Begun::Done(Err(e)),
        };
        match self.machines[m].qmp_execute(self.poll.registry(), name, args) {
            Ok(qid) => Begun::Pending(Pending::Qmp { m, qid, hmp }),
            Err(e) => error(ErrorType::Runtime, e.to_string()),
        }
    }

    fn op_qmp_event(&mut self, machine: &str, timeout: Option<Duration>) -> Begun {
        let m = match self.machine_index(machine) {
            Ok(m) => m,
            Err(e) => return Begun::Done(Err(e)),
        };
        let machine = &self.machines[m];
        if !machine.qmp_ready() && machine.phase() != Phase::Running {
            return error(
                ErrorType::Runtime,
                "QMP API is not ready yet, is the VM ready?",
            );
        }
        Begun::Pending(Pending::QmpEvent {
            m,
            deadline: deadline_after(timeout),
        })
    }

    fn op_shutdown(
        &mut self,
        machine: &str,
        how: ShutdownKind,
        timeout: Option<Duration>,
    ) -> Begun {
        let m = match self.machine_index(machine) {
            Ok(m) => m,
            Err(e) => return Begun::Done(Err(e)),
        };
        let reg = self.poll.registry();
        let machine = &mut self.machines[m];
        if machine.phase() == Phase::Stopped {
            return done(Value::Null);
        }
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
        Begun::Pending(Pending::WaitExit {
            m,
            deadline: deadline_after(timeout),
            drain_until: None,
        })
    }

    fn capture(&mut self, vlan: u32, path: Option<&Path>) -> OpResult {
        let sw = self
            .switch_mut(vlan)
            .ok_or_else(|| OpError::new(ErrorType::Value, format!("no vlan {vlan}")))?;
        match path {
            Some(p) => sw
                .start_capture(p)
                .map_err(|e| OpError::new(ErrorType::Runtime, e.to_string()))?,
            None => sw.stop_capture(),
        }
        Ok(Value::Null)
    }

    /// `create_machine(start_command, name=…)`: a machine outside the configured set. Unlike
    /// upstream, ntd still ends it at cleanup (nothing is left running).
    fn create_machine(&mut self, command: &str, name: Option<String>, keep: bool) -> OpResult {
        let name = name.unwrap_or_else(|| qemu::name_from_start_command(command));
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
        let i = self
            .add_machine(&name, command, keep)
            .map_err(|e| OpError::new(ErrorType::Machine, e))?;
        Ok(machine_info(&self.machines[i]))
    }

    fn hello(&self) -> Value {
        let script = self
            .opts
            .test_script
            .as_ref()
            .map(|p| Value::from(p.display().to_string()))
            .unwrap_or(Value::Null);
        let vlans = self.switches.iter().map(|sw| {
            obj([
                ("nr", Value::Int(sw.vlan().into())),
                ("socket_dir", Value::from(sw.dir().display().to_string())),
            ])
        });
        obj([
            (
                "machines",
                Value::Array(self.machines.iter().map(machine_info).collect()),
            ),
            ("vlans", Value::Array(vlans.collect())),
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
            ("ssh_backdoor", self.ssh_backdoor_info()),
        ])
    }

    /// What `dump_machine_ssh` prints and `driver.vhost_vsock` offers: the newest
    /// generation's vsock-mux sockets, or the mid generation's CID offset, or null.
    fn ssh_backdoor_info(&self) -> Value {
        let sockets = self.vsock.as_ref().map(|v| {
            Value::Object(
                v.sockets
                    .iter()
                    .map(|(name, p)| {
                        let pair = obj([
                            ("guest", Value::from(p.guest.display().to_string())),
                            ("host", Value::from(p.host.display().to_string())),
                            ("cid", Value::Int(p.cid.into())),
                        ]);
                        (name.clone(), pair)
                    })
                    .collect(),
            )
        });
        match (sockets, self.opts.dump_vsocks) {
            (None, None) if !self.opts.enable_ssh_backdoor => Value::Null,
            (sockets, offset) => obj([
                ("sockets", sockets.unwrap_or(Value::Null)),
                (
                    "vsock_offset",
                    offset.map(|o| Value::Int(o.into())).unwrap_or(Value::Null),
                ),
            ]),
        }
    }
}

/// What the shim's machine objects are built from (hello, `create_machine`).
fn machine_info(m: &Machine) -> Value {
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
}

fn machine_state(m: &Machine) -> Value {
    let path = |p: &Path| Value::from(p.display().to_string());
    let between = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
        (Some(a), Some(b)) if b >= a => Value::from((b - a).as_secs_f64()),
        _ => Value::Null,
    };
    let spawned = m.boot.at(machine::boot::SPAWNED);
    let sentinel = m.boot.at(machine::boot::SENTINEL);
    let ready = m.boot.at(machine::boot::SHELL_READY);
    obj([
        ("booted", Value::from(m.booted())),
        ("connected", Value::from(m.connected())),
        (
            "pid",
            m.pid().map(|p| Value::Int(p.into())).unwrap_or(Value::Null),
        ),
        (
            "accelerator",
            m.accelerator().map(Value::from).unwrap_or(Value::Null),
        ),
        ("boot_secs", between(spawned, sentinel)),
        ("setup_secs", between(sentinel, ready)),
        ("monitor_path", path(&m.paths.monitor)),
        ("shell_path", path(&m.paths.shell)),
        ("qmp_path", path(&m.paths.qmp)),
    ])
}

/// Upstream's `QemuStartCommand.cmd`: the start command plus the arguments ntd appends, for
/// the given sockets.
fn qemu_command(
    start_command: &str,
    [monitor, qmp, shell]: [&Path; 3],
    allow_reboot: bool,
) -> String {
    let sockets = qemu::Sockets {
        monitor,
        qmp,
        shell,
    };
    let args = qemu::appended_args(&sockets, allow_reboot, qemu::wants_nographic());
    format!("{start_command} {}", args.join(" "))
}
