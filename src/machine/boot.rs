//! Boot milestones of one machine: when QEMU was spawned, QMP became ready, the first serial
//! line, the backdoor sentinel and the ready shell arrived, and when QEMU exited. They feed the
//! `--trace` timeline, the boot-phase report and the `state` reply. Pure bookkeeping.

use std::time::Instant;

/// Boot milestones of the current boot (spawn, QMP ready, first serial line, sentinel, shell
/// ready, exit), for the trace, the boot-phase report and the `state` reply. A handful per
/// boot.
#[derive(Debug, Default)]
pub struct BootTimes {
    milestones: Vec<(Instant, &'static str)>,
    /// How many milestones the trace has taken.
    traced: usize,
}

impl BootTimes {
    pub(super) fn reset(&mut self) {
        self.milestones.clear();
        self.traced = 0;
    }

    pub(super) fn mark(&mut self, what: &'static str) {
        self.milestones.push((Instant::now(), what));
    }

    pub(super) fn mark_once(&mut self, what: &'static str) {
        if !self.milestones.iter().any(|(_, m)| *m == what) {
            self.mark(what);
        }
    }

    /// When `what` last happened in this boot.
    pub fn at(&self, what: &str) -> Option<Instant> {
        self.milestones
            .iter()
            .rev()
            .find(|(_, m)| *m == what)
            .map(|(t, _)| *t)
    }

    /// Milestones not yet handed to the trace.
    pub fn untraced(&mut self) -> &[(Instant, &'static str)] {
        let from = self.traced.min(self.milestones.len());
        self.traced = self.milestones.len();
        &self.milestones[from..]
    }

    /// `boot phases: QMP ready +0.05 s, …` for the current (or last) boot.
    pub fn phases(&self) -> Option<String> {
        let (start, _) = *self.milestones.first()?;
        let parts: Vec<String> = self.milestones[1..]
            .iter()
            .map(|(at, what)| format!("{what} +{:.2} s", (*at - start).as_secs_f64()))
            .collect();
        Some(format!("boot phases: {}", parts.join(", ")))
    }
}

/// Milestone names (the trace shows them as they are).
pub const SPAWNED: &str = "QEMU spawned";
pub const QMP_READY: &str = "QMP ready";
pub const FIRST_SERIAL_LINE: &str = "first serial line";
pub const SENTINEL: &str = "backdoor sentinel";
pub const SHELL_READY: &str = "shell ready";
/// A restore's state is loaded (the guest runs again from the checkpoint).
pub const RESTORED: &str = "restored from checkpoint";
pub const EXITED: &str = "QEMU exited";
