//! The run's view of the host's CPU for calls that belong to no one machine (`retry()`): the
//! host's pressure (PSI, sampled), the run's clock (the most-starved machine's withheld time)
//! and the pacing verdict of the whole run.

use super::control::Controlled;
use super::Driver;
use crate::hostcpu::parse::Verdict;
use crate::hostcpu::Stamp;
use crate::machine::waits::PaceMode;
use std::time::Instant;

impl Driver {
    /// The host's CPU pressure now (PSI `some`, per mille), read at most every 100 ms; the
    /// first time it cannot be read is said once at debug level.
    pub(super) fn host_psi(&mut self) -> Option<u32> {
        self.host.sample(Instant::now());
        if let Some(note) = self.host.take_note() {
            self.log.debug(None, &note);
        }
        self.host.permille()
    }

    /// The run's clock now: every machine read, the most-starved one's withheld time of
    /// this interval added (see [`crate::hostcpu::RunClock`]).
    pub(super) fn run_stamp(&mut self) -> Stamp {
        let now = Instant::now();
        let withheld: Vec<_> = self
            .machines
            .iter_mut()
            .map(|m| m.clock(now, &mut self.log).withheld)
            .collect();
        self.run_clock.stamp(now, withheld.into_iter())
    }

    /// How the run's `retry()` paces: as contended as its most contended running machine
    /// (the host alone decides while none runs), with KVM's overhead only when some machine
    /// runs and every running one has KVM.
    pub(super) fn run_pacing(&mut self) -> (PaceMode, bool) {
        let psi = self.host_psi();
        let verdicts: Vec<Verdict> = self
            .machines
            .iter_mut()
            .filter(|m| m.booted())
            .map(|m| m.pace_verdict(psi))
            .collect();
        let verdict = match verdicts.is_empty() {
            true => crate::hostcpu::parse::verdict(psi, None, Verdict::Contended),
            false if verdicts.contains(&Verdict::Contended) => Verdict::Contended,
            false => Verdict::Idle,
        };
        let mode = PaceMode::of(verdict);
        let mut running = self.machines.iter().filter(|m| m.booted()).peekable();
        let kvm = running.peek().is_some() && running.all(|m| m.accelerator() == Some("kvm"));
        (mode, kvm)
    }
}
