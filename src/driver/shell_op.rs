//! Shell operations of the pending-op controller: connecting to the guest shell (booting the
//! machine first if needed, with upstream's reminders and the shell timeout), sending a
//! command or a wait slice once the shell is ready, and reading its answer or why it will
//! never come (a lost shell, a guest that stopped answering). [`super::pending`] holds the
//! responders and turns what these steps give into replies.
//!
//! Like the rest of the controller it sees machines only through [`Controlled`] and time only
//! as the loop's `now` and its machine's clock; it never blocks. Once a timed request is
//! sent, [`super::limit`] decides when the host ends it and how a wait paces.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_precision_loss
)]

use super::control::{Controlled, Env};
use super::deadline::{stretch_note, Deadline, STRETCH_WORTH_SAYING};
use super::limit::{Limit, LimitStep, Pace};
use crate::hostcpu::Stamp;
use crate::json::Value;
use crate::machine::guest::HostMessage;
use crate::machine::session::{ShellRequest, ShellResult};
use crate::machine::waits::{PaceMode, Verdict, WaitCondition};
use crate::machine::ShellDown;
use crate::rpc::replies::{timed_out, RunReply, WaitReply};
use crate::rpc::requests::WaitLimits;
use crate::rpc::wire::{Base64, Seconds};
use crate::rpc::{ErrorType, OpError};
use std::time::{Duration, Instant};

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
    /// The machine's clock when the request was sent.
    pub sent: Option<Stamp>,
    /// When the host ends the request (set once it is sent; none for a command without a
    /// timeout).
    pub limit: Option<Limit>,
    /// A wait's pacing as last told.
    pub pace: Option<Pace>,
}

impl ShellOp {
    /// When the op needs the loop: a reminder or the give-up while connecting; once sent,
    /// the request's limit and a wait's next look at the host.
    pub fn wake_at(&self) -> Option<Instant> {
        match &self.stage {
            ShellStage::Connect(Some(c)) => c.wake_at(),
            _ => self
                .limit
                .and_then(|l| l.wake_at())
                .into_iter()
                .chain(self.pace.map(|p| p.wake_at()))
                .min(),
        }
    }

    /// `req` for machine `m`, from connecting on.
    pub fn new(m: usize, req: ShellRequest, now: Instant) -> ShellOp {
        ShellOp {
            m,
            req,
            stage: ShellStage::Connect(None),
            started: now,
            sent: None,
            limit: None,
            pace: None,
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
    let clock = machine.clock(now, log);
    let c = stage.get_or_insert_with(|| {
        let words = machine.connect_words();
        Connecting {
            began: now,
            next_reminder: now + words.reminder_every,
            reminder_every: words.reminder_every,
            give_up: words.gives_up.then(|| Deadline::after(clock, patience)),
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
    if c.give_up.as_mut().is_some_and(|d| d.passed(clock)) {
        let stretched = c
            .give_up
            .as_ref()
            .and_then(|d| d.stretch_note(clock))
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        let msg = format!(
            "Shell did not start in time ({} s{stretched}): the guest never printed the \
             backdoor's sentinel (check 'systemctl status backdoor.service' in the guest). {}",
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
                if no_answer {
                    return ShellStep::Sent;
                }
                let stamp = env.stamp(op.m);
                op.sent = Some(stamp);
                op.limit = Limit::of(&op.req, stamp);
                if let ShellRequest::Wait { spec, .. } = &op.req {
                    op.pace = Some(Pace::new(spec.pacing.mode, env.now));
                }
            }
            ShellStage::Sent => return poll_answer(env, op),
        }
    }
}

/// A sent request: its result, or why it will never come; meanwhile the host ends it when
/// its time is up and tells a wait how to pace.
fn poll_answer<M: Controlled>(env: &mut Env<'_, M>, op: &mut ShellOp) -> ShellStep {
    let machine = &mut env.machines[op.m];
    if let Some(r) = machine.take_shell_result() {
        if let Some(t) = env.trace {
            let withheld = op.sent.map(|s| {
                let now = machine.clock(env.now, env.cx.log);
                now.withheld_since(&s)
            });
            let pace = op.pace.map(|p| p.mode());
            trace_shell(t, machine.name(), op, &r, env.now, withheld, pace);
        }
        return ShellStep::Answered(r);
    }
    let command = op.req.command().to_owned();
    match machine.shell_down(env.now) {
        // ntd's setup, sent with this (the shell's first) request, failed.
        ShellDown::No if !machine.connected() => {
            if let Some(msg) = machine.shell_error() {
                return ShellStep::Failed(OpError::new(ErrorType::Machine, msg));
            }
        }
        ShellDown::No => {}
        ShellDown::Settling(_) => return ShellStep::Waiting,
        ShellDown::Yes(why) => {
            return ShellStep::Failed(OpError::new(
                ErrorType::Machine,
                format!("Shell disconnected while running `{command}`: {why}"),
            ))
        }
    }
    let stamp = env.stamp(op.m);
    if let Some(step) = op.limit.as_mut().and_then(|l| l.check(stamp)) {
        match step {
            LimitStep::Tell { message, reached } => {
                let machine = &mut env.machines[op.m];
                machine.tell_shell(env.cx.registry, message);
                let what = if matches!(op.req, ShellRequest::Wait { .. }) {
                    "wait for"
                } else {
                    "command"
                };
                match reached {
                    Some(Some(note)) => env
                        .cx
                        .log
                        .machine(machine.name(), &format!("{what} `{command}`: {note}")),
                    Some(None) => env.cx.log.debug(
                        Some(machine.name()),
                        &format!("{what} `{command}`: its time is up"),
                    ),
                    None => env.cx.log.debug(
                        Some(machine.name()),
                        &format!("{what} `{command}` did not stop: ending it"),
                    ),
                }
            }
            LimitStep::Overdue { grace } => {
                let machine = &mut env.machines[op.m];
                let reason = format!(
                    "the guest shell did not answer `{command}` within {:.0} s, although ntd \
                     told the guest to end it {:.0} s of guest time before: the guest is stuck \
                     (a kernel hang?) or its shell exited",
                    env.now.saturating_duration_since(op.started).as_secs_f64(),
                    grace.as_secs_f64()
                );
                machine.abandon_shell(reason.clone());
                let msg = format!(
                    "machine '{}': {reason}{}",
                    machine.name(),
                    machine.console_tail_text()
                );
                return ShellStep::Failed(OpError::new(ErrorType::Machine, msg));
            }
        }
    }
    if let Some(pace) = op.pace.as_mut().filter(|p| p.due(env.now)) {
        let machine = &mut env.machines[op.m];
        let verdict = machine.pace_verdict(env.host_psi);
        if let Some(message) = pace.update(PaceMode::of(verdict), env.now) {
            machine.tell_shell(env.cx.registry, message);
            let why = format!(
                "host CPU pressure {}, this machine's vCPUs waited {}",
                permille_text(env.host_psi),
                permille_text(machine.vcpu_waiting_share())
            );
            let how = match message {
                HostMessage::PaceFast => "fast (the host has idle CPU",
                _ => "by the CPU budget (the host is short of CPU",
            };
            env.cx.log.debug(
                Some(machine.name()),
                &format!("pacing the wait for `{command}` {how}: {why})"),
            );
            if let Some(t) = env.trace {
                t.instant(
                    machine.name(),
                    &format!("pacing {}", PaceMode::of(verdict).name()),
                    env.now,
                );
            }
        }
    }
    ShellStep::Waiting
}

/// A share in per mille as a percentage, or "unknown".
fn permille_text(p: Option<u32>) -> String {
    p.map_or_else(
        || "unknown".to_owned(),
        |p| format!("{:.1} %", f64::from(p) / 10.0),
    )
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
    env: &mut Env<'_, M>,
    op: &ShellOp,
    wait: &WaitOp,
    r: ShellResult,
) -> Result<WaitReply, OpError> {
    complete(env, op, &r)?;
    let sent = op.sent.unwrap_or(Stamp::wall(op.started));
    let stamp = env.stamp(op.m);
    let met = match wait.condition.verdict(r.status, r.looped) {
        Verdict::Met => true,
        Verdict::NotYet if wait.final_slice => {
            let elapsed = wait.limits.age + stamp.available_since(&sent);
            let withheld = wait.limits.withheld + stamp.withheld_since(&sent);
            let wall = elapsed + withheld;
            let mut msg = timed_out(elapsed, wait.limits.timeout);
            if let Some(t) = wait
                .limits
                .timeout
                .filter(|_| withheld >= STRETCH_WORTH_SAYING)
            {
                msg.push_str("; ");
                msg.push_str(&stretch_note(t, wall, withheld));
            }
            return Err(OpError::new(ErrorType::Assertion, msg));
        }
        Verdict::NotYet => false,
        Verdict::Impossible(msg) => return Err(OpError::new(ErrorType::Assertion, msg)),
    };
    Ok(WaitReply {
        met,
        output: Base64(r.output),
        started: Seconds(sent.guest_since(env.epoch).saturating_sub(wait.limits.age)),
    })
}

fn trace_shell(
    t: &crate::trace::Trace,
    machine: &str,
    op: &ShellOp,
    r: &ShellResult,
    now: Instant,
    withheld: Option<Duration>,
    pace: Option<PaceMode>,
) {
    let name = match op.req {
        ShellRequest::Run { .. } => "command",
        ShellRequest::Wait { .. } => "wait",
    };
    let mut args = vec![
        ("command".to_owned(), Value::from(op.req.command())),
        ("status".to_owned(), Value::Int(r.status.into())),
        (
            "bytes".to_owned(),
            Value::Int(i64::try_from(r.output.len()).unwrap_or(i64::MAX)),
        ),
    ];
    if name == "wait" {
        args.push(("attempts".to_owned(), Value::Int(r.attempts.into())));
    }
    if let Some(p) = pace {
        args.push(("pacing".to_owned(), Value::from(p.name())));
    }
    if let Some(w) = withheld {
        // Milliseconds the host withheld from the machine while it ran.
        let ms = i64::try_from(w.as_millis()).unwrap_or(i64::MAX);
        args.push(("withheld_ms".to_owned(), Value::Int(ms)));
    }
    t.span(machine, name, op.started, now, args);
}
