//! When a container is ready for commands. The notify socket says when its PID 1 runs
//! (`X_NSPAWN_LEADER_PID=` and nspawn's own `READY=1`), which is all upstream waits for; a
//! test's first `systemctl` or unit wait can then come before the container's systemd
//! listens and fail ("System has not been booted with systemd as init system"). ntd also waits
//! until the container's service manager has created its private socket
//! (`/run/systemd/private`, seen from the host through `/proc/<leader>/root`) — early in its
//! start, long before boot finishes. A container whose PID 1 never becomes systemd (not a
//! NixOS one) is taken as ready after [`MANAGER_PATIENCE`]. The probe is a `stat` per timer
//! tick (5 ms, doubling to 100 ms); it never blocks.

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// First pause between two looks for the manager's socket.
pub const FIRST_PROBE: Duration = Duration::from_millis(5);
/// Longest pause between two looks.
pub const MAX_PROBE: Duration = Duration::from_millis(100);
/// How long after READY a container without a service manager is waited for.
pub const MANAGER_PATIENCE: Duration = Duration::from_secs(20);

/// What a look for the manager found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The service manager listens: ready.
    Ready,
    /// Not yet; look again at the deadline.
    Waiting,
    /// No manager within [`MANAGER_PATIENCE`]: ready as upstream counts it.
    GaveUp,
}

/// Waiting for the service manager of the container whose PID 1 is `leader`.
#[derive(Debug, Clone)]
pub struct ManagerProbe {
    socket: PathBuf,
    next: Instant,
    interval: Duration,
    give_up: Instant,
}

impl ManagerProbe {
    pub fn new(leader: i32, now: Instant) -> ManagerProbe {
        ManagerProbe {
            socket: manager_socket(leader),
            next: now,
            interval: FIRST_PROBE,
            give_up: now + MANAGER_PATIENCE,
        }
    }

    /// When to look next.
    pub fn next(&self) -> Instant {
        self.next
    }

    /// Look now.
    pub fn look(&mut self, now: Instant) -> Probe {
        self.step(now, self.socket.exists())
    }

    fn step(&mut self, now: Instant, found: bool) -> Probe {
        if found {
            return Probe::Ready;
        }
        if now >= self.give_up {
            return Probe::GaveUp;
        }
        self.next = now + self.interval;
        self.interval = (self.interval * 2).min(MAX_PROBE);
        Probe::Waiting
    }
}

/// The private socket of the service manager of the container whose PID 1 is `leader`, as
/// the host sees it.
pub fn manager_socket(leader: i32) -> PathBuf {
    PathBuf::from(format!("/proc/{leader}/root/run/systemd/private"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_backs_off_to_its_maximum_and_gives_up_after_its_patience() {
        let t0 = Instant::now();
        let mut p = ManagerProbe::new(1, t0);
        assert_eq!(p.next(), t0);
        assert_eq!(p.step(t0, false), Probe::Waiting);
        assert_eq!(p.next(), t0 + FIRST_PROBE);
        let mut now = t0;
        for _ in 0..10 {
            now = p.next();
            assert_eq!(p.step(now, false), Probe::Waiting);
        }
        assert_eq!(p.next() - now, MAX_PROBE);
        assert_eq!(p.step(t0 + MANAGER_PATIENCE, false), Probe::GaveUp);
        assert_eq!(p.step(t0 + MANAGER_PATIENCE, true), Probe::Ready);
    }

    #[test]
    fn manager_socket_is_seen_through_the_leaders_root() {
        assert_eq!(
            manager_socket(4242),
            PathBuf::from("/proc/4242/root/run/systemd/private")
        );
    }
}
