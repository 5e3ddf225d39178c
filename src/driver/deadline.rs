//! When a per-call timeout runs out: [`Deadline`], the one place where a timeout meets a
//! clock. Every pending operation that has a time limit keeps one and asks it, with a fresh
//! reading of its machine's clock ([`Stamp`]), whether it has passed ([`Deadline::passed`])
//! and when the loop must look again ([`Deadline::wake_at`]).
//!
//! A deadline counts **guest-available time**: wall time minus what the host withheld from
//! the machine's vCPUs in between (see [`crate::hostcpu`]). On an idle host that is wall
//! time; on a host that gives the machine a tenth of a core, a 60 s timeout lasts until the
//! machine had 60 s in which it could run. Since the withheld time is only known up to the
//! last reading, [`Deadline::wake_at`] is the earliest wall instant the limit could pass,
//! and a check then may push it later ([`Deadline::passed`] renews it). The global timeout
//! is wall time by design and does not use this type.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_precision_loss
)]

use crate::hostcpu::Stamp;
pub use crate::rpc::replies::stretch_note;
use std::time::{Duration, Instant};

/// Withheld time below this is not worth a word in a timeout's message.
pub const STRETCH_WORTH_SAYING: Duration = Duration::from_millis(100);

/// A time limit that started at some reading of a machine's clock. See the module
/// documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    start: Stamp,
    limit: Duration,
    /// The earliest wall instant the limit can pass, as of the last check.
    wake: Option<Instant>,
}

impl Deadline {
    /// `limit` of guest-available time from the reading `now`.
    pub fn after(now: Stamp, limit: Duration) -> Deadline {
        Deadline {
            start: now,
            limit,
            wake: now.wall.checked_add(limit),
        }
    }

    /// `limit` from `now`, or no deadline at all when there is no limit.
    pub fn within(now: Stamp, limit: Option<Duration>) -> Option<Deadline> {
        limit.map(|l| Deadline::after(now, l))
    }

    /// The limit has run out by the reading `now` (and the next wake-up moves by the time
    /// withheld so far).
    pub fn passed(&mut self, now: Stamp) -> bool {
        let used = now.available_since(&self.start);
        if used >= self.limit {
            return true;
        }
        self.wake = now.wall.checked_add(self.limit - used);
        false
    }

    /// When the loop must look at this deadline again (`None`: beyond the clock's range,
    /// that is never).
    pub fn wake_at(&self) -> Option<Instant> {
        self.wake
    }

    /// The limit itself.
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// Wall time and withheld time from the start to the reading `now`.
    pub fn spent(&self, now: Stamp) -> (Duration, Duration) {
        (
            now.wall.saturating_duration_since(self.start.wall),
            now.withheld_since(&self.start),
        )
    }

    /// "timeout 60.0 s reached after 95.0 s wall; the host withheld the CPU for 35.0 s" when
    /// the host withheld a noticeable share; `None` otherwise.
    pub fn stretch_note(&self, now: Stamp) -> Option<String> {
        let (wall, withheld) = self.spent(now);
        (withheld >= STRETCH_WORTH_SAYING).then(|| stretch_note(self.limit, wall, withheld))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, secs: u64, withheld: u64) -> Stamp {
        Stamp {
            wall: t0 + Duration::from_secs(secs),
            withheld: Duration::from_secs(withheld),
        }
    }

    #[test]
    fn deadline_passes_exactly_at_its_limit_and_wakes_the_loop_then() {
        let t0 = Instant::now();
        let mut d = Deadline::after(Stamp::wall(t0), Duration::from_secs(2));
        assert_eq!(d.wake_at(), Some(t0 + Duration::from_secs(2)));
        assert!(!d.passed(Stamp::wall(t0)));
        assert!(!d.passed(Stamp::wall(t0 + Duration::from_millis(1999))));
        assert!(d.passed(Stamp::wall(t0 + Duration::from_secs(2))));
        assert_eq!(Deadline::within(Stamp::wall(t0), None), None);
        assert_eq!(
            d.stretch_note(Stamp::wall(t0 + Duration::from_secs(2))),
            None
        );
    }

    #[test]
    fn withheld_time_stretches_the_deadline_and_its_wake_up() {
        let t0 = Instant::now();
        let mut d = Deadline::after(at(t0, 0, 3), Duration::from_secs(60));
        // 60 s wall, of which the host withheld 20 s: 40 s used, 20 s to go.
        assert!(!d.passed(at(t0, 60, 23)));
        assert_eq!(d.wake_at(), Some(t0 + Duration::from_secs(80)));
        // By then another 15 s were withheld.
        assert!(!d.passed(at(t0, 80, 38)));
        assert_eq!(d.wake_at(), Some(t0 + Duration::from_secs(95)));
        assert!(d.passed(at(t0, 95, 38)));
        assert_eq!(
            d.stretch_note(at(t0, 95, 38)).as_deref(),
            Some("timeout 60.0 s reached after 95.0 s wall; the host withheld the CPU for 35.0 s")
        );
        assert_eq!(
            d.spent(at(t0, 95, 38)),
            (Duration::from_secs(95), Duration::from_secs(35))
        );
    }

    #[test]
    fn deadline_beyond_the_clock_never_wakes_and_an_earlier_now_is_not_past() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut d = Deadline::after(Stamp::wall(t0), Duration::MAX);
        assert_eq!(d.wake_at(), None);
        assert!(!d.passed(Stamp::wall(t0 - Duration::from_secs(5))));
    }
}
