//! The pending-op controller: operations that complete later, what each waits for, and the
//! checks that finish it.
//!
//! A [`Pending`] op holds the [`Responder`] of its request and the state of its wait. The
//! driver polls it after every loop turn ([`Pending::poll`]) with an [`Env`]: the machines
//! (through the narrow [`Controlled`] trait, never a QEMU process or a socket), the log, the
//! trace and the loop's `now`. It answers once the machine, QMP or the console has what it
//! waits for, or its [`Deadline`] has passed; [`Pending::wake_at`] tells the loop when to
//! look again without an event. It never blocks and never reads the clock itself, so the
//! unit tests drive every path (boot reminders, give-up, deadlines, a lost shell) with a
//! scripted machine and made-up instants. Connecting to the guest shell (booting the machine
//! first if needed, with upstream's reminders) is a stage of every shell operation.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_precision_loss
)]

use super::control::{Controlled, Env, StartProgress};
use super::deadline::Deadline;
use crate::json::Value;
use crate::machine::guest::WAIT_GRACE;
use crate::machine::session::{ShellRequest, ShellResult};
use crate::machine::waits::{Verdict, WaitCondition};
use crate::machine::ShellDown;
use crate::rpc::replies::{timed_out, ConsoleChunk, RunReply, WaitReply};
use crate::rpc::requests::WaitLimits;
use crate::rpc::wire::{Answer, Base64, Responder};
use crate::rpc::{ErrorType, OpError};
use std::time::{Duration, Instant};

/// Upstream logs a reminder every 30 s while the shell is silent (and gives up after 10, the
/// default of [`crate::cli::Options::shell_timeout`]).
pub const CONNECT_REMINDER: Duration = Duration::from_secs(30);
/// How long the host waits for a command's answer beyond the command's own timeout (which the
/// guest enforces) before it declares the guest stuck: a base plus a share of the timeout.
pub const ANSWER_GRACE: Duration = Duration::from_secs(15);
/// The share of the timeout added to [`ANSWER_GRACE`]: 1/20 (5 %).
const ANSWER_GRACE_DIVISOR: u32 = 20;
/// How long a wait for shutdown keeps reading QEMU's output after the process exited.
pub const STDOUT_DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// An operation that completes later, with the responder of its request.
#[derive(Debug)]
pub enum Pending {
    /// Machines starting (`start`, `start_all`).
    Start {
        machines: Vec<usize>,
        all: bool,
        errors: Vec<(usize, String)>,
        out: Responder<()>,
    },
    /// Waiting for the backdoor shell (`connect`).
    Connect {
        m: usize,
        stage: Option<Connecting>,
        out: Responder<()>,
    },
    /// A command in the guest shell.
    Run {
        op: ShellOp,
        check_output: bool,
        out: Responder<RunReply>,
    },
    /// A slice of a wait in the guest shell.
    Wait {
        op: ShellOp,
        wait: WaitOp,
        out: Responder<WaitReply>,
    },
    /// Console lines.
    ConsoleWait {
        m: usize,
        deadline: Option<Deadline>,
        out: Responder<ConsoleChunk>,
    },
    /// A QMP command's result.
    Qmp {
        m: usize,
        qid: u64,
        out: Responder<Value>,
    },
    /// An HMP command's output (through QMP).
    Hmp {
        m: usize,
        qid: u64,
        out: Responder<String>,
    },
    /// The next QMP event.
    QmpEvent {
        m: usize,
        deadline: Option<Deadline>,
        out: Responder<Option<Value>>,
    },
    /// The machine's exit (`shutdown`, `crash`, `wait_for_shutdown`).
    WaitExit {
        m: usize,
        deadline: Option<Deadline>,
        /// Once exited: how long its output is still read.
        drain: Option<Deadline>,
        out: Responder<()>,
    },
}

/// What polling a pending op gave.
#[derive(Debug)]
// A pending op moves by value once per loop turn (a few hundred bytes); boxing it would cost
// an allocation per command.
#[allow(clippy::large_enum_variant)]
pub enum Polled {
    /// It finished with this answer.
    Done(Answer),
    /// Not yet.
    Waiting(Pending),
}

/// Progress of a "wait for the guest shell" step (upstream `connect()`).
#[derive(Debug)]
pub struct Connecting {
    began: Instant,
    next_reminder: Instant,
    give_up: Deadline,
    /// The log block "waiting for the VM to finish booting" is open.
    nested: bool,
}

/// Where a shell operation is.
#[derive(Debug)]
pub enum ShellStage {
    /// Waiting for the backdoor (boots the machine if needed).
    Connect(Option<Connecting>),
    /// Connected; waiting for the previous command to finish.
    Idle,
    /// Request sent; waiting for its result.
    Sent,
}

/// A command or wait in the guest shell, from connecting to the answer.
#[derive(Debug)]
pub struct ShellOp {
    pub m: usize,
    pub req: ShellRequest,
    pub stage: ShellStage,
    pub started: Instant,
    /// When the host stops waiting for the answer (set once the request is sent; none for a
    /// command without a timeout).
    pub answer_by: Option<Deadline>,
}

impl ShellOp {
    /// `req` for machine `m`, from connecting on.
    pub fn new(m: usize, req: ShellRequest, now: Instant) -> ShellOp {
        ShellOp {
            m,
            req,
            stage: ShellStage::Connect(None),
            started: now,
            answer_by: None,
        }
    }
}

/// What a wait slice needs to read its loop's final status.
#[derive(Debug, Clone, PartialEq)]
pub struct WaitOp {
    pub condition: WaitCondition,
    pub limits: WaitLimits,
    /// This slice ends the wait: not met then means timed out.
    pub final_slice: bool,
}

impl WaitOp {
    /// The slice a wait with `limits` may take now, and whether it is the last one.
    pub fn slice(limits: WaitLimits) -> (Duration, bool) {
        let left = limits.timeout.map_or(crate::rpc::ops::MAX_DURATION, |t| {
            t.saturating_sub(limits.age)
        });
        match limits.slice {
            Some(s) if s < left => (s, false),
            _ => (left, true),
        }
    }
}

/// How a shell op went on this turn.
enum ShellStep {
    Waiting,
    /// Sent, and the caller does not wait for the answer.
    Sent,
    Answered(ShellResult),
    Failed(OpError),
}

impl Pending {
    /// Advance the op; [`Polled::Done`] ends it.
    pub fn poll<M: Controlled>(self, env: &mut Env<'_, M>) -> Polled {
        match self {
            Pending::Start {
                machines,
                all,
                mut errors,
                out,
            } => match poll_start(env, &machines, all, &mut errors) {
                Some(r) => Polled::Done(out.finish(r)),
                None => Polled::Waiting(Pending::Start {
                    machines,
                    all,
                    errors,
                    out,
                }),
            },
            Pending::Connect { m, mut stage, out } => match poll_connect(env, m, &mut stage) {
                Some(r) => Polled::Done(out.finish(r)),
                None => Polled::Waiting(Pending::Connect { m, stage, out }),
            },
            Pending::Run {
                mut op,
                check_output,
                out,
            } => match poll_shell(env, &mut op, !check_output) {
                ShellStep::Waiting => Polled::Waiting(Pending::Run {
                    op,
                    check_output,
                    out,
                }),
                ShellStep::Sent => Polled::Done(out.ok(RunReply {
                    status: None,
                    output: Base64(Vec::new()),
                    truncated: 0,
                })),
                ShellStep::Failed(e) => Polled::Done(out.err(e)),
                ShellStep::Answered(r) => Polled::Done(out.finish(run_reply(env, &op, r))),
            },
            Pending::Wait { mut op, wait, out } => match poll_shell(env, &mut op, false) {
                ShellStep::Waiting | ShellStep::Sent => {
                    Polled::Waiting(Pending::Wait { op, wait, out })
                }
                ShellStep::Failed(e) => Polled::Done(out.err(e)),
                ShellStep::Answered(r) => Polled::Done(out.finish(wait_reply(env, &op, &wait, r))),
            },
            Pending::ConsoleWait { m, deadline, out } => {
                let machine = &mut env.machines[m];
                let lines = machine.take_console_lines();
                let exited = !machine.booted();
                let timed_out = deadline.is_some_and(|d| d.passed(env.now));
                if lines.is_empty() && !exited && !timed_out {
                    return Polled::Waiting(Pending::ConsoleWait { m, deadline, out });
                }
                Polled::Done(out.ok(ConsoleChunk {
                    lines,
                    exited,
                    timed_out,
                }))
            }
            Pending::QmpEvent { m, deadline, out } => {
                let machine = &mut env.machines[m];
                if let Some(ev) = machine.next_qmp_event() {
                    return Polled::Done(out.ok(Some(ev)));
                }
                let expired = deadline.is_some_and(|d| d.passed(env.now));
                if expired || !machine.booted() {
                    return Polled::Done(out.ok(None));
                }
                Polled::Waiting(Pending::QmpEvent { m, deadline, out })
            }
            Pending::Qmp { m, qid, out } => match env.machines[m].take_qmp_result(qid) {
                Some(r) => Polled::Done(out.finish(r.map_err(OpError::qmp))),
                None => Polled::Waiting(Pending::Qmp { m, qid, out }),
            },
            Pending::Hmp { m, qid, out } => match env.machines[m].take_qmp_result(qid) {
                Some(r) => Polled::Done(
                    out.finish(
                        r.map(|v| v.as_str().unwrap_or_default().to_owned())
                            .map_err(OpError::qmp),
                    ),
                ),
                None => Polled::Waiting(Pending::Hmp { m, qid, out }),
            },
            Pending::WaitExit {
                m,
                deadline,
                mut drain,
                out,
            } => {
                let now = env.now;
                let machine = &mut env.machines[m];
                if machine.exited() {
                    let until = *drain.get_or_insert(Deadline::after(now, STDOUT_DRAIN_AFTER_EXIT));
                    if machine.fully_exited() || until.passed(now) {
                        machine.finish_shutdown(env.cx.registry);
                        return Polled::Done(out.ok(()));
                    }
                } else if deadline.is_some_and(|d| d.passed(now)) {
                    let msg = format!("{}: QEMU did not exit in time", machine.name());
                    return Polled::Done(out.fail(ErrorType::Timeout, msg));
                }
                Polled::Waiting(Pending::WaitExit {
                    m,
                    deadline,
                    drain,
                    out,
                })
            }
        }
    }

    /// When the op needs the loop even if no event arrives.
    pub fn wake_at(&self) -> Option<Instant> {
        let connecting =
            |c: &Connecting| Some(c.next_reminder).into_iter().chain(c.give_up.wake_at());
        match self {
            Pending::Connect { stage: Some(c), .. } => connecting(c).min(),
            Pending::Run { op, .. } | Pending::Wait { op, .. } => match &op.stage {
                ShellStage::Connect(Some(c)) => connecting(c).min(),
                _ => op.answer_by.and_then(|d| d.wake_at()),
            },
            Pending::ConsoleWait { deadline, .. } | Pending::QmpEvent { deadline, .. } => {
                deadline.and_then(|d| d.wake_at())
            }
            Pending::WaitExit {
                deadline, drain, ..
            } => [*deadline, *drain]
                .into_iter()
                .flatten()
                .filter_map(|d| d.wake_at())
                .min(),
            _ => None,
        }
    }

    /// The responder's request id (`None`: sent as a notification).
    pub fn id(&self) -> Option<i64> {
        match self {
            Pending::Start { out, .. }
            | Pending::Connect { out, .. }
            | Pending::WaitExit { out, .. } => out.id(),
            Pending::Run { out, .. } => out.id(),
            Pending::Wait { out, .. } => out.id(),
            Pending::ConsoleWait { out, .. } => out.id(),
            Pending::Qmp { out, .. } => out.id(),
            Pending::Hmp { out, .. } => out.id(),
            Pending::QmpEvent { out, .. } => out.id(),
        }
    }
}

fn poll_start<M: Controlled>(
    env: &Env<'_, M>,
    machines: &[usize],
    all: bool,
    errors: &mut Vec<(usize, String)>,
) -> Option<Result<(), OpError>> {
    for &i in machines {
        if errors.iter().any(|(e, _)| *e == i) {
            continue;
        }
        match env.machines[i].start_progress() {
            StartProgress::Up => {}
            StartProgress::Starting => return None,
            StartProgress::Failed(why) => errors.push((i, why)),
        }
    }
    if errors.is_empty() {
        return Some(Ok(()));
    }
    let msg = if all {
        let mut s = String::from("Failed to start the following machines:");
        for (i, e) in errors.iter() {
            s.push_str(&format!("\n{}: {e}", env.machines[*i].name()));
        }
        s
    } else {
        errors[0].1.clone()
    };
    Some(Err(OpError::new(ErrorType::Machine, msg)))
}

/// Wait for machine `m`'s shell (booting it first if needed), with upstream's reminders and
/// the shell timeout; `Some` once connected or failed.
fn poll_connect<M: Controlled>(
    env: &mut Env<'_, M>,
    m: usize,
    stage: &mut Option<Connecting>,
) -> Option<Result<(), OpError>> {
    let now = env.now;
    let machine = &mut env.machines[m];
    let log = &mut *env.cx.log;
    if machine.connected() {
        if let Some(c) = stage.take().filter(|c| c.nested) {
            log.machine(machine.name(), "connected to guest root shell");
            log.machine(
                machine.name(),
                &format!(
                    "(connecting took {:.2} seconds)",
                    now.saturating_duration_since(c.began).as_secs_f64()
                ),
            );
            log.end(true);
        }
        return Some(Ok(()));
    }
    let patience = env.shell_timeout;
    let c = stage.get_or_insert_with(|| Connecting {
        began: now,
        next_reminder: now + CONNECT_REMINDER,
        give_up: Deadline::after(now, patience),
        nested: false,
    });
    let fail = |stage: &mut Option<Connecting>, log: &mut crate::log::Logger, e: OpError| {
        if stage.take().is_some_and(|c| c.nested) {
            log.end(false);
        }
        Some(Err(e))
    };
    if machine.exited() {
        // It died and nobody asked for it (no shutdown, crash or wait_for_shutdown): fail
        // loudly instead of booting a fresh machine behind the test's back.
        let msg = format!(
            "{}\n(it stopped unexpectedly; call {}.start() to boot it again)",
            machine.exit_report(),
            machine.name()
        );
        return fail(stage, log, OpError::new(ErrorType::Machine, msg));
    }
    if !c.nested {
        c.nested = true;
        log.begin(Some(machine.name()), "waiting for the VM to finish booting");
        if !machine.booted() {
            let mut cx = crate::reactor::Ctx {
                registry: env.cx.registry,
                log: &mut *log,
            };
            if let Err(e) = machine.start(&mut cx, env.extra_env) {
                return fail(stage, log, OpError::new(ErrorType::Machine, e.to_string()));
            }
        }
    }
    let failed = match machine.shell_down(now) {
        ShellDown::Yes(why) => Some(format!("Shell disconnected: {why}")),
        ShellDown::Settling(_) => return None,
        ShellDown::No => machine.shell_error(),
    };
    if let Some(msg) = failed {
        return fail(stage, log, OpError::new(ErrorType::Machine, msg));
    }
    if c.give_up.passed(now) {
        let msg = format!(
            "Shell did not start in time ({} s): the guest never printed the backdoor's \
             sentinel (check 'systemctl status backdoor.service' in the guest). {}",
            patience.as_secs(),
            machine.console_report()
        );
        return fail(stage, log, OpError::new(ErrorType::Runtime, msg));
    }
    if now >= c.next_reminder {
        c.next_reminder = now + CONNECT_REMINDER;
        log.machine(
            machine.name(),
            "Guest root shell did not produce any data yet...",
        );
        log.machine(
            machine.name(),
            "  To debug, enter the VM and run 'systemctl status backdoor.service'.",
        );
    }
    None
}

/// Connect, send, and wait for the answer (or, with `no_answer`, only send).
fn poll_shell<M: Controlled>(env: &mut Env<'_, M>, op: &mut ShellOp, no_answer: bool) -> ShellStep {
    loop {
        match &mut op.stage {
            ShellStage::Connect(c) => match poll_connect(env, op.m, c) {
                None => return ShellStep::Waiting,
                Some(Err(e)) => return ShellStep::Failed(e),
                Some(Ok(())) => op.stage = ShellStage::Idle,
            },
            ShellStage::Idle => {
                let machine = &mut env.machines[op.m];
                if !machine.connected() {
                    op.stage = ShellStage::Connect(None);
                    continue;
                }
                if !machine.shell_ready() {
                    return ShellStep::Waiting;
                }
                if let Err(e) = machine.send_shell(env.cx.registry, &op.req) {
                    return ShellStep::Failed(OpError::new(ErrorType::Machine, e.to_string()));
                }
                op.stage = ShellStage::Sent;
                op.answer_by = answer_deadline(&op.req, env.now);
                if no_answer {
                    return ShellStep::Sent;
                }
            }
            ShellStage::Sent => return poll_answer(env, op),
        }
    }
}

/// A sent request: its result, or why it will never come.
fn poll_answer<M: Controlled>(env: &mut Env<'_, M>, op: &ShellOp) -> ShellStep {
    let machine = &mut env.machines[op.m];
    if let Some(r) = machine.take_shell_result() {
        if let Some(t) = env.trace {
            trace_shell(t, machine.name(), &op.req, &r, op.started, env.now);
        }
        return ShellStep::Answered(r);
    }
    let command = op.req.command();
    match machine.shell_down(env.now) {
        ShellDown::No => {}
        ShellDown::Settling(_) => return ShellStep::Waiting,
        ShellDown::Yes(why) => {
            return ShellStep::Failed(OpError::new(
                ErrorType::Machine,
                format!("Shell disconnected while running `{command}`: {why}"),
            ))
        }
    }
    if op.answer_by.is_some_and(|d| d.passed(env.now)) {
        let reason = format!(
            "the guest shell did not answer `{command}` within {:.0} s, although the guest \
             enforces the command's own timeout: the guest is stuck (a kernel hang?) or its \
             shell exited",
            env.now.saturating_duration_since(op.started).as_secs_f64()
        );
        machine.abandon_shell(reason.clone());
        let msg = format!(
            "machine '{}': {reason}{}",
            machine.name(),
            machine.console_tail_text()
        );
        return ShellStep::Failed(OpError::new(ErrorType::Machine, msg));
    }
    ShellStep::Waiting
}

/// When the host gives up on the answer to `req` sent at `now`: its own timeout (enforced
/// in the guest) plus a grace; never for a command without a timeout.
pub fn answer_deadline(req: &ShellRequest, now: Instant) -> Option<Deadline> {
    let own = match req {
        ShellRequest::Run { timeout, .. } => (*timeout)?,
        ShellRequest::Wait { spec, .. } => spec.budget.saturating_add(WAIT_GRACE),
    };
    let grace = ANSWER_GRACE.saturating_add(own / ANSWER_GRACE_DIVISOR);
    Some(Deadline::after(now, own.saturating_add(grace)))
}

/// Output the console dropped and that could not be fetched again is an error.
fn complete<M: Controlled>(env: &Env<'_, M>, op: &ShellOp, r: &ShellResult) -> Result<(), OpError> {
    if r.lost == 0 {
        return Ok(());
    }
    Err(OpError::new(
        ErrorType::Machine,
        format!(
            "{}: {} bytes of the output of `{}` never arrived: the virtio console drops guest \
             output when the host falls behind (an overloaded host?); the output is \
             incomplete",
            env.machines[op.m].name(),
            r.lost,
            op.req.command()
        ),
    ))
}

fn run_reply<M: Controlled>(
    env: &Env<'_, M>,
    op: &ShellOp,
    r: ShellResult,
) -> Result<RunReply, OpError> {
    complete(env, op, &r)?;
    Ok(RunReply {
        status: Some(r.status),
        output: Base64(r.output),
        truncated: r.truncated,
    })
}

/// A wait slice's end: met, not yet, or an error (it can never be met, or its timeout ran
/// out).
fn wait_reply<M: Controlled>(
    env: &Env<'_, M>,
    op: &ShellOp,
    wait: &WaitOp,
    r: ShellResult,
) -> Result<WaitReply, OpError> {
    complete(env, op, &r)?;
    let met = match wait.condition.verdict(r.status, r.looped) {
        Verdict::Met => true,
        Verdict::NotYet if wait.final_slice => {
            let elapsed = wait.limits.age + env.now.saturating_duration_since(op.started);
            return Err(OpError::new(
                ErrorType::Assertion,
                timed_out(elapsed, wait.limits.timeout),
            ));
        }
        Verdict::NotYet => false,
        Verdict::Impossible(msg) => return Err(OpError::new(ErrorType::Assertion, msg)),
    };
    Ok(WaitReply {
        met,
        output: Base64(r.output),
    })
}

fn trace_shell(
    t: &crate::trace::Trace,
    machine: &str,
    req: &ShellRequest,
    r: &ShellResult,
    started: Instant,
    now: Instant,
) {
    let name = match req {
        ShellRequest::Run { .. } => "command",
        ShellRequest::Wait { .. } => "wait",
    };
    let mut args = vec![
        ("command".to_owned(), Value::from(req.command())),
        ("status".to_owned(), Value::Int(r.status.into())),
        (
            "bytes".to_owned(),
            Value::Int(i64::try_from(r.output.len()).unwrap_or(i64::MAX)),
        ),
    ];
    if name == "wait" {
        args.push(("attempts".to_owned(), Value::Int(r.attempts.into())));
    }
    t.span(machine, name, started, now, args);
}

#[cfg(test)]
#[path = "pending_tests.rs"]
mod tests;
