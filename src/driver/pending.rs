//! Operations that complete later: what each waits for, and the checks that finish it.
//!
//! [`Driver::poll_op`] runs after every loop turn; a pending operation answers once the
//! machine, QMP or the console has what it waits for, or its deadline has passed. It never
//! blocks. Connecting to the guest shell (booting the machine first if needed, with upstream's
//! reminders) is a stage of every shell operation.

use super::ops::OpResult;
use super::Driver;
use crate::json::{obj, Value};
use crate::machine::session::{ShellRequest, ShellResult};
use crate::machine::waits::{Verdict, WaitCondition};
use crate::machine::{Machine, Phase};
use crate::reactor::Ctx;
use crate::rpc::{self, ErrorType, OpError};
use std::time::{Duration, Instant};

/// Upstream logs a reminder every 30 s while the shell is silent and gives up after 10.
const CONNECT_REMINDER: Duration = Duration::from_secs(30);
const CONNECT_MAX_REMINDERS: u32 = 10;
/// How long a wait for shutdown keeps reading QEMU's output after the process exited.
const STDOUT_DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

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

impl Driver {
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
