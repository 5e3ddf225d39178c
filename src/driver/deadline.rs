//! When a per-call timeout runs out: [`Deadline`], the one place where a timeout becomes a
//! point in time. Every pending operation that has a time limit keeps one and asks it, with
//! the loop's `now`, whether it has passed ([`Deadline::passed`]) and when the loop must wake
//! up for it ([`Deadline::wake_at`]).
//!
//! Today a deadline counts wall time. A timeout that counts the time its machine could run
//! (a guest clock) changes this type only: what it keeps, and how `passed` and `wake_at`
//! read the clock. The global timeout is wall time by design and does not use it.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_precision_loss
)]

use std::time::{Duration, Instant};

/// A time limit that started at some instant. See the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    start: Instant,
    limit: Duration,
}

impl Deadline {
    /// `limit` from `now`.
    pub fn after(now: Instant, limit: Duration) -> Deadline {
        Deadline { start: now, limit }
    }

    /// `limit` from `now`, or no deadline at all when there is no limit.
    pub fn within(now: Instant, limit: Option<Duration>) -> Option<Deadline> {
        limit.map(|l| Deadline::after(now, l))
    }

    /// The limit has run out by `now`.
    pub fn passed(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.start) >= self.limit
    }

    /// When the loop must look at this deadline again (`None`: beyond the clock's range,
    /// that is never).
    pub fn wake_at(&self) -> Option<Instant> {
        self.start.checked_add(self.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_passes_exactly_at_its_limit_and_wakes_the_loop_then() {
        let t0 = Instant::now();
        let d = Deadline::after(t0, Duration::from_secs(2));
        assert!(!d.passed(t0));
        assert!(!d.passed(t0 + Duration::from_millis(1999)));
        assert!(d.passed(t0 + Duration::from_secs(2)));
        assert_eq!(d.wake_at(), Some(t0 + Duration::from_secs(2)));
        assert_eq!(Deadline::within(t0, None), None);
    }

    #[test]
    fn deadline_beyond_the_clock_never_wakes_and_an_earlier_now_is_not_past() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let d = Deadline::after(t0, Duration::MAX);
        assert_eq!(d.wake_at(), None);
        assert!(!d.passed(t0 - Duration::from_secs(5)));
    }
}
