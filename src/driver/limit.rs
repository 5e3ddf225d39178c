//! How the host ends a request that runs under the guest's watchdog, and how it paces a
//! wait: the decisions only ([`Limit`], [`Pace`]); [`super::shell_op`] tells the machine and
//! logs them.
//!
//! A timed command or a wait runs in the guest until the host says otherwise
//! ([`crate::machine::guest::SETUP_TIMEOUTS`]): the host counts its time in the machine's
//! guest-available time ([`Deadline`]) and, when it is spent, tells a command to die
//! ([`HostMessage::Kill`]: status 124) or a wait to stop ([`HostMessage::Stop`]: "not
//! yet"), then, [`WAIT_GRACE`] later, to die. If no answer comes within [`ANSWER_GRACE`]
//! plus a twentieth of the timeout after that, the guest is stuck (a kernel hang) or its
//! shell is gone. A wait's pacing follows the host's verdict on its CPU ([`Pace`]): checked
//! every [`PACE_CHECK`], and told to the loop whenever it changes.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_precision_loss
)]

use super::deadline::Deadline;
use crate::hostcpu::Stamp;
use crate::machine::guest::{HostMessage, WAIT_GRACE};
use crate::machine::session::ShellRequest;
use crate::machine::waits::PaceMode;
use std::time::{Duration, Instant};

/// How long the host waits for an answer after it told a request to die, before it
/// declares the guest stuck: a base plus a share of the request's own timeout.
pub const ANSWER_GRACE: Duration = Duration::from_secs(15);
/// The share of the timeout added to [`ANSWER_GRACE`]: 1/20 (5 %).
const ANSWER_GRACE_DIVISOR: u32 = 20;
/// How often the host looks at its CPU on behalf of a running wait.
pub const PACE_CHECK: Duration = Duration::from_millis(500);

/// Where the host is in ending a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Its own time runs.
    Running,
    /// A wait was told to stop; it may finish its attempt.
    Stopping,
    /// Told to die; the answer is overdue when this deadline passes.
    Killed,
}

/// The time limit of a request in flight. See the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    phase: Phase,
    deadline: Deadline,
    /// The request's own limit, from the moment it was sent.
    own: Deadline,
    is_wait: bool,
}

/// What the host must do now about a request's time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitStep {
    /// Tell the guest this; `reached` is set when the request's own limit ran out just now
    /// (with the words about how far the host stretched it, if it did).
    Tell {
        message: HostMessage,
        reached: Option<Option<String>>,
    },
    /// No answer in time after the guest was told to end the request.
    Overdue { grace: Duration },
}

impl Limit {
    /// The limit of `req` sent at `now`: its timeout (a command) or budget (a wait); `None`
    /// for a command without a timeout.
    pub fn of(req: &ShellRequest, now: Stamp) -> Option<Limit> {
        let (own, is_wait) = match req {
            ShellRequest::Run { timeout, .. } => ((*timeout)?, false),
            ShellRequest::Wait { spec, .. } => (spec.budget, true),
        };
        let own = Deadline::after(now, own);
        Some(Limit {
            phase: Phase::Running,
            deadline: own,
            own,
            is_wait,
        })
    }

    /// How long the host waits for the answer once the request was told to die.
    fn answer_grace(&self) -> Duration {
        let own = self.own.limit();
        let own = if self.is_wait {
            own.saturating_add(WAIT_GRACE)
        } else {
            own
        };
        ANSWER_GRACE.saturating_add(own / ANSWER_GRACE_DIVISOR)
    }

    /// What to do at the reading `now`, if anything.
    pub fn check(&mut self, now: Stamp) -> Option<LimitStep> {
        if !self.deadline.passed(now) {
            return None;
        }
        let (message, next) = match self.phase {
            Phase::Running if self.is_wait => (HostMessage::Stop, Phase::Stopping),
            Phase::Running | Phase::Stopping => (HostMessage::Kill, Phase::Killed),
            Phase::Killed => {
                return Some(LimitStep::Overdue {
                    grace: self.answer_grace(),
                })
            }
        };
        let reached = (self.phase == Phase::Running).then(|| self.own.stretch_note(now));
        self.deadline = Deadline::after(
            now,
            match next {
                Phase::Stopping => WAIT_GRACE,
                _ => self.answer_grace(),
            },
        );
        self.phase = next;
        Some(LimitStep::Tell { message, reached })
    }

    /// When the loop must look at this limit again.
    pub fn wake_at(&self) -> Option<Instant> {
        self.deadline.wake_at()
    }
}

/// A wait's pacing as the host last told it. See the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    mode: PaceMode,
    next_check: Instant,
}

impl Pace {
    /// A wait sent at `now` with `mode`.
    pub fn new(mode: PaceMode, now: Instant) -> Pace {
        Pace {
            mode,
            next_check: now + PACE_CHECK,
        }
    }

    /// Time to look at the host again.
    pub fn due(&self, now: Instant) -> bool {
        now >= self.next_check
    }

    /// The host's verdict at `now` is `mode`: what to tell the loop, if it changed.
    pub fn update(&mut self, mode: PaceMode, now: Instant) -> Option<HostMessage> {
        self.next_check = now + PACE_CHECK;
        if mode == self.mode {
            return None;
        }
        self.mode = mode;
        Some(match mode {
            PaceMode::Fast => HostMessage::PaceFast,
            PaceMode::Budget => HostMessage::PaceBudget,
        })
    }

    pub fn mode(&self) -> PaceMode {
        self.mode
    }

    pub fn wake_at(&self) -> Instant {
        self.next_check
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::guest::WaitSpec;
    use crate::machine::waits::{Pacing, Schedule, WaitCondition};

    fn at(t0: Instant, secs: f64, withheld: f64) -> Stamp {
        Stamp {
            wall: t0 + Duration::from_secs_f64(secs),
            withheld: Duration::from_secs_f64(withheld),
        }
    }

    fn run(timeout: Option<u64>) -> ShellRequest {
        ShellRequest::Run {
            command: "sleep 99".into(),
            timeout: timeout.map(Duration::from_secs),
        }
    }

    #[test]
    fn a_command_is_killed_at_its_guest_time_then_overdue_after_the_grace() {
        let t0 = Instant::now();
        assert_eq!(Limit::of(&run(None), at(t0, 0.0, 0.0)), None);
        let mut l = Limit::of(&run(Some(10)), at(t0, 0.0, 0.0)).unwrap();
        assert_eq!(l.check(at(t0, 9.9, 0.0)), None);
        assert_eq!(l.wake_at(), Some(t0 + Duration::from_millis(10_000)));
        // The host withheld 5 s: the timeout moves by as much.
        assert_eq!(l.check(at(t0, 12.0, 5.0)), None);
        assert_eq!(l.wake_at(), Some(t0 + Duration::from_secs(15)));
        assert_eq!(
            l.check(at(t0, 15.0, 5.0)),
            Some(LimitStep::Tell {
                message: HostMessage::Kill,
                reached: Some(Some(
                    "timeout 10.0 s reached after 15.0 s wall; the host withheld the CPU for 5.0 s"
                        .into()
                ))
            })
        );
        // 15 s + 1/20 of 10 s of guest time to answer.
        assert_eq!(l.check(at(t0, 30.4, 5.0)), None);
        assert_eq!(
            l.check(at(t0, 30.5, 5.0)),
            Some(LimitStep::Overdue {
                grace: Duration::from_millis(15_500)
            })
        );
    }

    #[test]
    fn a_wait_is_stopped_then_killed_half_a_second_later() {
        let t0 = Instant::now();
        let req = ShellRequest::Wait {
            check: Box::new(
                WaitCondition::File { path: "/x".into() }.guest_check(Schedule::Budget),
            ),
            spec: Box::new(WaitSpec {
                budget: Duration::from_secs(2),
                pacing: Pacing::new(Schedule::Budget, Duration::ZERO, PaceMode::Fast, false),
            }),
        };
        let mut l = Limit::of(&req, at(t0, 0.0, 0.0)).unwrap();
        assert_eq!(
            l.check(at(t0, 2.0, 0.0)),
            Some(LimitStep::Tell {
                message: HostMessage::Stop,
                reached: Some(None)
            })
        );
        assert_eq!(l.check(at(t0, 2.4, 0.0)), None);
        assert_eq!(
            l.check(at(t0, 2.5, 0.0)),
            Some(LimitStep::Tell {
                message: HostMessage::Kill,
                reached: None
            })
        );
        assert!(matches!(
            l.check(at(t0, 30.0, 0.0)),
            Some(LimitStep::Overdue { .. })
        ));
    }

    #[test]
    fn pace_tells_only_changes_and_looks_every_half_second() {
        let t0 = Instant::now();
        let mut p = Pace::new(PaceMode::Budget, t0);
        assert!(!p.due(t0));
        assert!(p.due(t0 + PACE_CHECK));
        assert_eq!(p.update(PaceMode::Budget, t0 + PACE_CHECK), None);
        assert_eq!(p.wake_at(), t0 + PACE_CHECK * 2);
        assert_eq!(
            p.update(PaceMode::Fast, t0 + PACE_CHECK * 2),
            Some(HostMessage::PaceFast)
        );
        assert_eq!(p.mode(), PaceMode::Fast);
        assert_eq!(
            p.update(PaceMode::Budget, t0 + PACE_CHECK * 3),
            Some(HostMessage::PaceBudget)
        );
    }
}
