//! What each request means: one function per [`Op`] that either answers at once or starts a
//! [`Pending`] operation, and the checks that finish pending operations as events arrive.
//!
//! A pending operation never blocks; [`Driver::poll_op`] is called after every loop turn and
//! answers once the machine, QMP or the console has what the operation waits for, or its
//! deadline has passed. Adding a testScript method means one [`Op`] variant (decoded in
//! [`crate::rpc::ops`]) and one function here.

use super::Driver;
use crate::json::{obj, Value};
use crate::machine::guest::{format_seconds, WaitSpec};
use crate::machine::qemu::{self, MachinePaths};
use crate::machine::session::{ShellRequest, ShellResult};
use crate::machine::waits::{Verdict, WaitCondition};
use crate::machine::{self, Machine, Phase};
use crate::reactor::Ctx;
use crate::rpc::ops::{Op, ShutdownKind, WAIT_MIN_INTERVAL};
use crate::rpc::{self, ErrorType, OpError};
use std::path::Path;
use std::time::{Duration, Instant};

/// Upstream logs a reminder every 30 s while the shell is silent and gives up after 10.
const CONNECT_REMINDER: Duration = Duration::from_secs(30);
const CONNECT_MAX_REMINDERS: u32 = 10;
/// How long a wait for shutdown keeps reading QEMU's output after the process exited.
const STDOUT_DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

pub(super) type OpResult = Result<Value, OpError>;

/// What [`Driver::start_op`] made of a request.
pub(super) enum Begun {
    Done(OpResult),
    Pending(Pending),
}

/// The request being served and what it waits for.
pub(super) struct Current {
    pub id: i64,
    pub op: Pending,
}

impl Current {
    /// When the operation needs the loop even if no event arrives.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.op {
            Pending::Connect { stage: Some(c), .. }
            | Pending::Shell {
                stage: ShellStage::Connect(Some(c)),
                ..
            } => Some(c.next_reminder),
            Pending::ConsoleWait { deadline, .. } | Pending::QmpEvent { deadline, .. } => *deadline,
            Pending::WaitExit {
                deadline,
                drain_until,
                ..
            } => [*deadline, *drain_until].into_iter().flatten().min(),
            _ => None,
        }
    }
}

/// Progress of a "wait for the guest shell" step (upstream `connect()`).
#[derive(Debug)]
pub(super) struct Connecting {
    began: Instant,
    next_reminder: Instant,
    reminders: u32,
    nested: bool,
}

#[derive(Debug)]
pub(super) enum ShellStage {
    /// Waiting for the backdoor (boots the machine if needed).
    Connect(Option<Connecting>),
    /// Connected; waiting for the previous command to finish.
    Idle,
    /// Request sent; waiting for its result.
    Sent,
}

/// An operation that completes later.
pub(super) enum Pending {
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
        /// For waits: how to read the loop's final status.
        wait: Option<WaitCondition>,
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

enum Step {
    Pending,
    Done,
    Failed(OpError),
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
            } => {
                let check = condition.guest_check();
                let req = ShellRequest::Wait {
                    command: check.command,
                    spec: WaitSpec {
                        until_success: check.until_success,
                        budget_secs: budget.as_secs_f64(),
                        min_interval_us: WAIT_MIN_INTERVAL.as_micros() as u64,
                        fatal_status: check.fatal_status,
                    },
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
            Ok(m) => Begun::Pending(Pending::Shell {
                m,
                req,
                wait,
                stage: ShellStage::Connect(None),
                check_output,
                started: Instant::now(),
            }),
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
        if !machine.booted() {
            return done(Value::Null);
        }
        match how {
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
        let vlans = self.opts.vlans.iter().map(|v| Value::Int((*v).into()));
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
        ])
    }

    /// Check whether the current op is complete; `Some(result)` ends it.
    pub(super) fn poll_op(&mut self, cur: &mut Current) -> Option<OpResult> {
        match &mut cur.op {
            Pending::Start {
                machines,
                all,
                errors,
            } => self.poll_start(machines, *all, errors),
            Pending::Connect { m, stage } => match self.poll_connect(*m, stage) {
                Step::Pending => None,
                Step::Done => Some(Ok(Value::Null)),
                Step::Failed(e) => Some(Err(e)),
            },
            Pending::Shell {
                m,
                req,
                wait,
                stage,
                check_output,
                started,
            } => self.poll_shell(*m, req, wait.as_ref(), stage, *check_output, *started),
            Pending::ConsoleWait { m, deadline } => {
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
            Pending::QmpEvent { m, deadline } => {
                if let Some(ev) = self.machines[*m].next_qmp_event() {
                    return Some(Ok(ev));
                }
                let expired = deadline.is_some_and(|d| Instant::now() >= d);
                let gone = !self.machines[*m].booted();
                (expired || gone).then_some(Ok(Value::Null))
            }
            Pending::Qmp { m, qid, hmp } => {
                let r = self.machines[*m].take_qmp_result(*qid)?;
                Some(match r {
                    Ok(v) if *hmp => Ok(Value::from(v.as_str().unwrap_or_default().to_owned())),
                    Ok(v) => Ok(v),
                    Err(e) => Err(OpError::new(ErrorType::Qmp, e)),
                })
            }
            Pending::WaitExit {
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
                    let name = &self.machines[m].name;
                    self.log.machine(name, "connected to guest root shell");
                    self.log.machine(
                        name,
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
        let c = stage.get_or_insert_with(|| Connecting {
            began: now,
            next_reminder: now + CONNECT_REMINDER,
            reminders: 0,
            nested: false,
        });
        let mut cx = Ctx {
            registry: self.poll.registry(),
            log: &mut self.log,
        };
        let machine = &mut self.machines[m];
        if !c.nested {
            c.nested = true;
            cx.log
                .begin(Some(&machine.name), "waiting for the VM to finish booting");
            if !machine.booted() {
                if let Err(e) = machine.start(&mut cx, &self.extra_env) {
                    cx.log.end(false);
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
            cx.log.end(false);
            stage.take();
            return Step::Failed(OpError::new(ErrorType::Runtime, msg));
        }
        if now >= c.next_reminder {
            c.reminders += 1;
            c.next_reminder = now + CONNECT_REMINDER;
            cx.log.machine(
                &machine.name,
                "Guest root shell did not produce any data yet...",
            );
            cx.log.machine(
                &machine.name,
                "  To debug, enter the VM and run 'systemctl status backdoor.service'.",
            );
            if c.reminders >= CONNECT_MAX_REMINDERS {
                cx.log.end(false);
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
        wait: Option<&WaitCondition>,
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
                        let r = ShellResult {
                            status: -2,
                            output: Vec::new(),
                            truncated: 0,
                            attempts: 0,
                            looped: false,
                            lost: 0,
                        };
                        return Some(Ok(shell_reply(&r, started)));
                    }
                }
                ShellStage::Sent => {
                    let machine = &mut self.machines[m];
                    if let Some(r) = machine.take_shell_result() {
                        self.trace_shell(m, req, &r, started);
                        return Some(finish_shell(&self.machines[m], req, wait, &r, started));
                    }
                    if machine.shell_lost() || !machine.booted() {
                        return Some(Err(OpError::new(
                            ErrorType::Runtime,
                            format!(
                                "Shell disconnected while running `{}` (QEMU {})",
                                req.command(),
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

    fn trace_shell(&self, m: usize, req: &ShellRequest, r: &ShellResult, started: Instant) {
        let Some(t) = &self.trace else {
            return;
        };
        let name = match req {
            ShellRequest::Run { .. } => "command",
            ShellRequest::Wait { .. } => "wait",
        };
        let mut args = vec![
            ("command".to_owned(), Value::from(req.command())),
            ("status".to_owned(), Value::Int(r.status.into())),
            ("bytes".to_owned(), Value::Int(r.output.len() as i64)),
        ];
        if name == "wait" {
            args.push(("attempts".to_owned(), Value::Int(r.attempts.into())));
        }
        t.span(&self.machines[m].name, name, started, Instant::now(), args);
    }
}

/// A finished shell request as the shim sees it: lost output is an error; a wait says
/// whether its condition was met (or raises when it can never be).
fn finish_shell(
    machine: &Machine,
    req: &ShellRequest,
    wait: Option<&WaitCondition>,
    r: &ShellResult,
    started: Instant,
) -> OpResult {
    if r.lost > 0 {
        return Err(OpError::new(
            ErrorType::Machine,
            format!(
                "{}: {} bytes of the output of `{}` never arrived: the virtio console drops \
                 guest output when the host falls behind (an overloaded host?); the output is \
                 incomplete",
                machine.name,
                r.lost,
                req.command()
            ),
        ));
    }
    let mut reply = shell_reply(r, started);
    if let Some(w) = wait {
        let met = match w.verdict(r.status, r.looped) {
            Verdict::Met => true,
            Verdict::NotYet => false,
            Verdict::Impossible(msg) => return Err(OpError::new(ErrorType::Assertion, msg)),
        };
        if let Value::Object(fields) = &mut reply {
            fields.push(("met".to_owned(), Value::from(met)));
        }
    }
    Ok(reply)
}

fn shell_reply(r: &ShellResult, started: Instant) -> Value {
    obj([
        ("status", Value::Int(r.status.into())),
        ("output", Value::from(rpc::base64_encode(&r.output))),
        ("truncated", Value::Int(r.truncated as i64)),
        ("attempts", Value::Int(r.attempts.into())),
        ("looped", Value::from(r.looped)),
        ("elapsed", Value::from(started.elapsed().as_secs_f64())),
    ])
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
    let spawned = m.boot.at(machine::SPAWNED);
    let sentinel = m.boot.at(machine::SENTINEL);
    let ready = m.boot.at(machine::SHELL_READY);
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
    let paths = MachinePaths {
        monitor: monitor.to_owned(),
        qmp: qmp.to_owned(),
        shell: shell.to_owned(),
        ..MachinePaths::new(Path::new("/"), "unused")
    };
    let args = qemu::appended_args(&paths, allow_reboot, qemu::wants_nographic());
    format!("{start_command} {}", args.join(" "))
}
