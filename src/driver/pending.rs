//! Operations that complete later: what each waits for, and the checks that finish it.
//!
//! [`Driver::poll_op`] runs after every loop turn; a pending operation answers once the
//! machine, QMP or the console has what it waits for, or its deadline has passed. It never
//! blocks. Connecting to the guest shell (booting the machine first if needed, with upstream's
//! reminders) is a stage of every shell operation.

use super::ops::OpResult;
use super::Driver;
use crate::json::{obj, Value};
use crate::machine::guest::WAIT_GRACE;
use crate::machine::session::{ShellRequest, ShellResult};
use crate::machine::waits::{Verdict, WaitCondition};
use crate::machine::{Machine, Phase, ShellDown};
use crate::reactor::Ctx;
use crate::rpc::{self, ErrorType, OpError};
use std::time::{Duration, Instant};

/// Upstream logs a reminder every 30 s while the shell is silent (and gives up after 10, the
/// default of [`crate::cli::Options::shell_timeout`]).
const CONNECT_REMINDER: Duration = Duration::from_secs(30);
/// How long the host waits for a command's answer beyond the command's own timeout (which the
/// guest enforces) before it declares the guest stuck: a base plus a share of the timeout.
const ANSWER_GRACE: Duration = Duration::from_secs(15);
/// The share of the timeout added to [`ANSWER_GRACE`]: 1/20 (5 %).
const ANSWER_GRACE_DIVISOR: u32 = 20;
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
            | Pending::Shell(ShellOp {
                stage: ShellStage::Connect(Some(c)),
                ..
            }) => Some(c.next_reminder.min(c.give_up)),
            Pending::ConsoleWait { deadline, .. } | Pending::QmpEvent { deadline, .. } => *deadline,
            Pending::WaitExit {
                deadline,
                drain_until,
                ..
            } => [*deadline, *drain_until].into_iter().flatten().min(),
            Pending::Shell(op) => op.answer_by,
            _ => None,
        }
    }
}

/// Progress of a "wait for the guest shell" step (upstream `connect()`).
#[derive(Debug)]
pub(super) struct Connecting {
    began: Instant,
    next_reminder: Instant,
    give_up: Instant,
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

/// A command or wait in the guest shell, from connecting to the answer.
pub(super) struct ShellOp {
    pub m: usize,
    pub req: ShellRequest,
    /// For waits: how to read the loop's final status.
    pub wait: Option<WaitCondition>,
    pub stage: ShellStage,
    pub check_output: bool,
    pub started: Instant,
    /// When the host stops waiting for the answer (set once the request is sent; none for a
    /// command without a timeout).
    pub answer_by: Option<Instant>,
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
    Shell(ShellOp),
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
            Pending::Shell(op) => self.poll_shell(op),
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
                    Err(e) => Err(OpError::qmp(e)),
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
        let patience = self.opts.shell_timeout;
        let c = stage.get_or_insert_with(|| Connecting {
            began: now,
            next_reminder: now + CONNECT_REMINDER,
            give_up: now + patience,
            nested: false,
        });
        let mut cx = Ctx {
            registry: self.poll.registry(),
            log: &mut self.log,
        };
        let machine = &mut self.machines[m];
        if machine.phase() == Phase::Exited {
            // QEMU died and nobody asked for it (no shutdown, crash or wait_for_shutdown):
            // fail loudly instead of booting a fresh machine behind the test's back.
            if c.nested {
                cx.log.end(false);
            }
            stage.take();
            return Step::Failed(OpError::new(
                ErrorType::Machine,
                format!(
                    "{}\n(it stopped unexpectedly; call {}.start() to boot it again)",
                    machine.exit_report(),
                    machine.name
                ),
            ));
        }
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
        let failed = match machine.shell_down(now) {
            ShellDown::Yes(why) => Some(format!("Shell disconnected: {why}")),
            ShellDown::Settling(_) => return Step::Pending,
            ShellDown::No => machine.shell_error(),
        };
        if let Some(msg) = failed {
            cx.log.end(false);
            stage.take();
            return Step::Failed(OpError::new(ErrorType::Machine, msg));
        }
        if now >= c.give_up {
            cx.log.end(false);
            stage.take();
            return Step::Failed(OpError::new(
                ErrorType::Runtime,
                format!(
                    "Shell did not start in time ({} s): the guest never printed the backdoor's \
                     sentinel (check 'systemctl status backdoor.service' in the guest). {}",
                    patience.as_secs(),
                    machine.console_report()
                ),
            ));
        }
        if now >= c.next_reminder {
            c.next_reminder = now + CONNECT_REMINDER;
            cx.log.machine(
                &machine.name,
                "Guest root shell did not produce any data yet...",
            );
            cx.log.machine(
                &machine.name,
                "  To debug, enter the VM and run 'systemctl status backdoor.service'.",
            );
        }
        Step::Pending
    }

    fn poll_shell(&mut self, op: &mut ShellOp) -> Option<OpResult> {
        let m = op.m;
        loop {
            match &mut op.stage {
                ShellStage::Connect(c) => match self.poll_connect(m, c) {
                    Step::Pending => return None,
                    Step::Failed(e) => return Some(Err(e)),
                    Step::Done => op.stage = ShellStage::Idle,
                },
                ShellStage::Idle => {
                    let machine = &mut self.machines[m];
                    if !machine.connected() {
                        op.stage = ShellStage::Connect(None);
                        continue;
                    }
                    if !machine.shell_ready() {
                        return None;
                    }
                    if let Err(e) = machine.send_shell(self.poll.registry(), &op.req) {
                        return Some(Err(OpError::new(ErrorType::Machine, e.to_string())));
                    }
                    op.stage = ShellStage::Sent;
                    op.answer_by = answer_deadline(&op.req);
                    if !op.check_output {
                        let r = ShellResult {
                            status: -2,
                            output: Vec::new(),
                            truncated: 0,
                            attempts: 0,
                            looped: false,
                            lost: 0,
                        };
                        return Some(Ok(shell_reply(&r, op.started)));
                    }
                }
                ShellStage::Sent => return self.poll_answer(op),
            }
        }
    }

    /// A sent request: its result, or why it will never come.
    fn poll_answer(&mut self, op: &ShellOp) -> Option<OpResult> {
        let machine = &mut self.machines[op.m];
        if let Some(r) = machine.take_shell_result() {
            self.trace_shell(op.m, &op.req, &r, op.started);
            return Some(finish_shell(
                &self.machines[op.m],
                &op.req,
                op.wait.as_ref(),
                &r,
                op.started,
            ));
        }
        let command = op.req.command();
        match machine.shell_down(Instant::now()) {
            ShellDown::No => {}
            ShellDown::Settling(_) => return None,
            ShellDown::Yes(why) => {
                return Some(Err(OpError::new(
                    ErrorType::Machine,
                    format!("Shell disconnected while running `{command}`: {why}"),
                )))
            }
        }
        if op.answer_by.is_some_and(|t| Instant::now() >= t) {
            let reason = format!(
                "the guest shell did not answer `{command}` within {:.0} s, although the guest \
                 enforces the command's own timeout: the guest is stuck (a kernel hang?) or its \
                 shell exited",
                op.started.elapsed().as_secs_f64()
            );
            machine.abandon_shell(reason.clone());
            let msg = format!(
                "machine '{}': {reason}{}",
                machine.name,
                machine.console_tail_text()
            );
            return Some(Err(OpError::new(ErrorType::Machine, msg)));
        }
        None
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

/// When the host gives up on the answer to `req`: its own timeout (enforced in the guest)
/// plus a grace; never for a command without a timeout.
fn answer_deadline(req: &ShellRequest) -> Option<Instant> {
    let own = match req {
        ShellRequest::Run { timeout, .. } => (*timeout)?,
        ShellRequest::Wait { spec, .. } => spec.budget.saturating_add(WAIT_GRACE),
    };
    let grace = ANSWER_GRACE.saturating_add(own / ANSWER_GRACE_DIVISOR);
    Instant::now().checked_add(own.saturating_add(grace))
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
