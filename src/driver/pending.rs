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
//! scripted machine and made-up instants. Shell operations (connecting, sending, reading the
//! answer) are [`super::shell_op`]'s.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_precision_loss
)]

use super::control::{Controlled, Env, StartProgress};
use super::deadline::Deadline;
use super::save_group::Checkpointable;
use super::shell_op::{
    poll_connect, poll_shell, run_reply, wait_reply, Connecting, ShellOp, ShellStep, WaitOp,
};
use super::snapshots::{RestoreWork, SnapshotWork};
use crate::hostcpu::Stamp;
use crate::json::Value;
use crate::rpc::replies::{ConsoleChunk, RunReply, WaitReply};
use crate::rpc::wire::{Answer, Base64, Responder, Seconds};
use crate::rpc::{ErrorType, OpError};
use std::time::{Duration, Instant};

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
    /// A named snapshot being saved (`snapshot`, `snapshot_all`).
    Snapshot {
        work: Box<SnapshotWork>,
        out: Responder<()>,
    },
    /// Machines being put back to a named snapshot (`restore`, `restore_all`).
    Restore {
        work: Box<RestoreWork>,
        out: Responder<()>,
    },
    /// A container's `shutdown()`: `systemctl poweroff` in it (as upstream; its status does
    /// not matter), then its exit as [`Pending::WaitExit`] waits for it.
    PowerOff {
        op: ShellOp,
        deadline: Option<Deadline>,
        out: Responder<()>,
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

impl Pending {
    /// Advance the op; [`Polled::Done`] ends it.
    pub fn poll<M: Checkpointable>(self, env: &mut Env<'_, M>) -> Polled {
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
            Pending::ConsoleWait {
                m,
                mut deadline,
                out,
            } => {
                let clock = env.stamp(m);
                let machine = &mut env.machines[m];
                let lines = machine.take_console_lines();
                let exited = !machine.booted();
                let timed_out = deadline.as_mut().is_some_and(|d| d.passed(clock));
                if lines.is_empty() && !exited && !timed_out {
                    return Polled::Waiting(Pending::ConsoleWait { m, deadline, out });
                }
                Polled::Done(out.ok(ConsoleChunk {
                    lines,
                    exited,
                    timed_out,
                    clock: Seconds(clock.guest_since(env.epoch)),
                }))
            }
            Pending::QmpEvent {
                m,
                mut deadline,
                out,
            } => {
                let clock = env.stamp(m);
                let machine = &mut env.machines[m];
                if let Some(ev) = machine.next_qmp_event() {
                    return Polled::Done(out.ok(Some(ev)));
                }
                let expired = deadline.as_mut().is_some_and(|d| d.passed(clock));
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
            Pending::Snapshot { mut work, out } => match work.poll(env) {
                Some(r) => Polled::Done(out.finish(r)),
                None => Polled::Waiting(Pending::Snapshot { work, out }),
            },
            Pending::Restore { mut work, out } => match work.poll(env) {
                Some(r) => Polled::Done(out.finish(r)),
                None => Polled::Waiting(Pending::Restore { work, out }),
            },
            Pending::PowerOff {
                mut op,
                deadline,
                out,
            } => match poll_shell(env, &mut op, false) {
                ShellStep::Waiting | ShellStep::Sent => {
                    Polled::Waiting(Pending::PowerOff { op, deadline, out })
                }
                // Answered, or the container went before it could answer: wait for the exit.
                ShellStep::Answered(_) | ShellStep::Failed(_) => Pending::WaitExit {
                    m: op.m,
                    deadline,
                    drain: None,
                    out,
                }
                .poll(env),
            },
            Pending::WaitExit {
                m,
                mut deadline,
                mut drain,
                out,
            } => {
                let now = env.now;
                let clock = env.stamp(m);
                let machine = &mut env.machines[m];
                if machine.exited() {
                    // Nothing runs any more: the drain counts wall time.
                    let until = drain
                        .get_or_insert(Deadline::after(Stamp::wall(now), STDOUT_DRAIN_AFTER_EXIT));
                    if machine.fully_exited() || until.passed(Stamp::wall(now)) {
                        machine.finish_shutdown(env.cx.registry);
                        return Polled::Done(out.ok(()));
                    }
                } else if deadline.as_mut().is_some_and(|d| d.passed(clock)) {
                    let stretched = deadline
                        .and_then(|d| d.stretch_note(clock))
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default();
                    let msg = format!(
                        "{}: {} did not exit in time{stretched}",
                        machine.name(),
                        machine.process_name()
                    );
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
        match self {
            Pending::Connect { stage: Some(c), .. } => c.wake_at(),
            Pending::Run { op, .. } | Pending::Wait { op, .. } | Pending::PowerOff { op, .. } => {
                op.wake_at()
            }
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
            Pending::Snapshot { work, .. } => work.wake_at(),
            Pending::Restore { work, .. } => work.wake_at(),
            _ => None,
        }
    }

    /// The responder's request id (`None`: sent as a notification).
    pub fn id(&self) -> Option<i64> {
        match self {
            Pending::Start { out, .. }
            | Pending::Connect { out, .. }
            | Pending::WaitExit { out, .. }
            | Pending::Snapshot { out, .. }
            | Pending::Restore { out, .. }
            | Pending::PowerOff { out, .. } => out.id(),
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

#[cfg(test)]
#[path = "pending_tests.rs"]
mod tests;
