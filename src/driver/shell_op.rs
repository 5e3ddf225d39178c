//! Shell operations of the pending-op controller: connecting to the guest shell (booting the
//! machine first if needed, with upstream's reminders and the shell timeout), sending a
//! command or a wait slice once the shell is ready, and reading its answer or why it will
//! never come (a lost shell, a guest that stopped answering). [`super::pending`] holds the
//! responders and turns what these steps give into replies.
//!
//! Like the rest of the controller it sees machines only through [`Controlled`] and time only
//! as the loop's `now`; it never blocks.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_precision_loss
)]

use super::control::{Controlled, Env};
use super::deadline::Deadline;
use crate::json::Value;
use crate::machine::guest::WAIT_GRACE;
use crate::machine::session::{ShellRequest, ShellResult};
use crate::machine::waits::{Verdict, WaitCondition};
use crate::machine::ShellDown;
use crate::rpc::replies::{timed_out, RunReply, WaitReply};
use crate::rpc::requests::WaitLimits;
use crate::rpc::wire::Base64;
use crate::rpc::{ErrorType, OpError};
use std::time::{Duration, Instant};

/// How long the host waits for a command's answer beyond the command's own timeout (which the
/// guest enforces) before it declares the guest stuck: a base plus a share of the timeout.
pub const ANSWER_GRACE: Duration = Duration::from_secs(15);
/// The share of the timeout added to [`ANSWER_GRACE`]: 1/20 (5 %).
const ANSWER_GRACE_DIVISOR: u32 = 20;

/// Progress of a "wait for the guest shell" step (upstream `connect()`).
#[derive(Debug)]
pub struct Connecting {
    began: Instant,
    next_reminder: Instant,
    reminder_every: Duration,
    /// None: the machine waits as long as the run may (a container, as upstream).
    give_up: Option<Deadline>,
    /// The log block ("waiting for the VM to finish booting") is open.
    nested: bool,
}

impl Connecting {
    /// The next reminder or the give-up, whichever comes first.
    pub fn wake_at(&self) -> Option<Instant> {
        Some(self.next_reminder)
            .into_iter()
            .chain(self.give_up.and_then(|d| d.wake_at()))
            .min()
    }
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
    /// When the op needs the loop: a reminder or the give-up while connecting, the answer's
    /// deadline once sent.
    pub fn wake_at(&self) -> Option<Instant> {
        match &self.stage {
            ShellStage::Connect(Some(c)) => c.wake_at(),
            _ => self.answer_by.and_then(|d| d.wake_at()),
        }
    }

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
pub enum ShellStep {
    Waiting,
    /// Sent, and the caller does not wait for the answer.
    Sent,
    Answered(ShellResult),
    Failed(OpError),
}

/// Wait for machine `m`'s shell (booting it first if needed), with upstream's reminders and
/// the shell timeout; `Some` once connected or failed.
pub fn poll_connect<M: Controlled>(
    env: &mut Env<'_, M>,
    m: usize,
    stage: &mut Option<Connecting>,
) -> Option<Result<(), OpError>> {
    let now = env.now;
    let machine = &mut env.machines[m];
    let log = &mut *env.cx.log;
    if machine.connected() {
        if let Some(c) = stage.take().filter(|c| c.nested) {
            log.machine(machine.name(), machine.connect_words().connected);
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
    let c = stage.get_or_insert_with(|| {
        let words = machine.connect_words();
        Connecting {
            began: now,
            next_reminder: now + words.reminder_every,
            reminder_every: words.reminder_every,
            give_up: words.gives_up.then(|| Deadline::after(now, patience)),
            nested: false,
        }
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
        log.begin(Some(machine.name()), machine.connect_words().waiting);
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
    if c.give_up.is_some_and(|d| d.passed(now)) {
        let msg = format!(
            "Shell did not start in time ({} s): the guest never printed the backdoor's \
             sentinel (check 'systemctl status backdoor.service' in the guest). {}",
            patience.as_secs(),
            machine.console_report()
        );
        return fail(stage, log, OpError::new(ErrorType::Runtime, msg));
    }
    if now >= c.next_reminder {
        c.next_reminder = now + c.reminder_every;
        for line in machine.connect_words().reminder {
            log.machine(machine.name(), &line);
        }
    }
    None
}

/// Connect, send, and wait for the answer (or, with `no_answer`, only send).
pub fn poll_shell<M: Controlled>(
    env: &mut Env<'_, M>,
    op: &mut ShellOp,
    no_answer: bool,
) -> ShellStep {
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

pub fn run_reply<M: Controlled>(
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
pub fn wait_reply<M: Controlled>(
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
