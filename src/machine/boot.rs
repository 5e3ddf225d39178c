//! Boot milestones of one machine: when QEMU was spawned, QMP became ready, the first serial
//! line, the backdoor sentinel arrived, ntd's setup went out (with the first command) and was
//! answered, and when QEMU exited. They feed the
//! `--trace` timeline, the boot-phase report and the `state` reply. Pure bookkeeping.

use std::time::Instant;

/// One milestone of a boot. The trace and the boot-phase report show [`Milestone::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Milestone {
    /// The start command was spawned.
    Spawned,
    /// The QMP handshake finished (QEMU runs the guest).
    QmpReady,
    /// The guest printed its first line on the serial console.
    FirstSerialLine,
    /// The backdoor shell printed its sentinel: commands may be sent.
    Sentinel,
    /// ntd's setup went to the shell, with the first command.
    SetupSent,
    /// The shell answered ntd's setup (or a restored shell answers again).
    ShellReady,
    /// A restore's state is loaded (the guest runs again from the checkpoint).
    Restored,
    /// The process ended.
    Exited,
}

impl Milestone {
    /// How the trace and the boot-phase report name it.
    pub const fn name(self) -> &'static str {
        match self {
            Milestone::Spawned => "QEMU spawned",
            Milestone::QmpReady => "QMP ready",
            Milestone::FirstSerialLine => "first serial line",
            Milestone::Sentinel => "backdoor sentinel",
            Milestone::SetupSent => "setup sent",
            Milestone::ShellReady => "shell ready",
            Milestone::Restored => "restored from checkpoint",
            Milestone::Exited => "QEMU exited",
        }
    }
}

/// Boot milestones of the current boot, for the trace, the boot-phase report and the `state`
/// reply. A handful per boot.
#[derive(Debug, Default)]
pub struct BootTimes {
    milestones: Vec<(Instant, Milestone)>,
    /// How many milestones the trace has taken.
    traced: usize,
}

impl BootTimes {
    pub(super) fn reset(&mut self) {
        self.milestones.clear();
        self.traced = 0;
    }

    pub(super) fn mark(&mut self, what: Milestone) {
        self.milestones.push((Instant::now(), what));
    }

    pub(super) fn mark_once(&mut self, what: Milestone) {
        if !self.milestones.iter().any(|(_, m)| *m == what) {
            self.mark(what);
        }
    }

    /// When `what` last happened in this boot.
    pub fn at(&self, what: Milestone) -> Option<Instant> {
        self.milestones
            .iter()
            .rev()
            .find(|(_, m)| *m == what)
            .map(|(t, _)| *t)
    }

    /// Milestones not yet handed to the trace.
    pub fn untraced(&mut self) -> &[(Instant, Milestone)] {
        let from = self.traced.min(self.milestones.len());
        self.traced = self.milestones.len();
        &self.milestones[from..]
    }

    /// `boot phases: QMP ready +0.05 s, …` for the current (or last) boot.
    pub fn phases(&self) -> Option<String> {
        let (start, _) = *self.milestones.first()?;
        let parts: Vec<String> = self.milestones[1..]
            .iter()
            .map(|(at, what)| format!("{} +{:.2} s", what.name(), (*at - start).as_secs_f64()))
            .collect();
        Some(format!("boot phases: {}", parts.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_name_every_milestone_after_the_first_and_untraced_hands_each_once() {
        let mut b = BootTimes::default();
        b.mark(Milestone::Spawned);
        b.mark_once(Milestone::FirstSerialLine);
        b.mark_once(Milestone::FirstSerialLine);
        b.mark(Milestone::Sentinel);
        let phases = b.phases().unwrap();
        assert!(
            phases.starts_with("boot phases: first serial line +"),
            "{phases}"
        );
        assert!(phases.contains(", backdoor sentinel +"), "{phases}");
        assert_eq!(b.untraced().len(), 3);
        assert!(b.untraced().is_empty());
        assert!(b.at(Milestone::Sentinel).is_some());
        assert!(b.at(Milestone::ShellReady).is_none());
    }
}
