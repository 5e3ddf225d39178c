//! Saving several machines at one instant, and what the driver needs of a machine for it
//! ([`Checkpointable`]).
//!
//! A [`SaveGroup`] first gets every member ready (its shell idle, ntd's 9p shares unmounted,
//! the guest clock read), then stops all of them one right after the other, so that what one
//! saw of another over a vlan is true of the other too; each migrates into its own directory
//! and runs again; then the migration streams are checksummed a few megabytes per loop turn
//! (the test goes on meanwhile). Members are *tied* in groups: a member whose save failed
//! before the stop cancels the others of its tie. Boot checkpoints (a tie per vlan
//! component), `snapshot_all` (one tie) and failure capsules (a tie per machine) use it and
//! decide what the outcomes become. It never blocks; the machine does the QMP and shell work.

use super::control::Controlled;
use crate::checkpoint::manifest::FileRecord;
use crate::checkpoint::plan::Boot;
use crate::checkpoint::store::{Checksum, ChecksumStep};
use crate::checkpoint::RAM;
use crate::machine::{Machine, RestorePlan, SaveOutcome, SaveRequest};
use crate::reactor::Ctx;
use crate::trace::timeline::SAVE_SPAN;
use crate::trace::Trace;
use std::path::PathBuf;
use std::time::Instant;

/// Bytes of a saved stream checksummed per step (a few ms from the page cache).
pub const CHECKSUM_STEP: usize = 8 << 20;

/// What saving and restoring need of a machine, beyond [`Controlled`]. A machine kind that
/// cannot be saved refuses in [`Checkpointable::begin_save`].
pub trait Checkpointable: Controlled {
    /// Where it is, for the boot checkpoint rule.
    fn checkpoint_boot(&self) -> Boot;
    /// Begin saving it; its shell must be idle.
    fn begin_save(&mut self, cx: &mut Ctx<'_>, req: SaveRequest) -> Result<(), String>;
    /// Ready to stop (see [`Checkpointable::save_go`]).
    fn save_prepared(&self) -> bool;
    /// Stop and migrate now.
    fn save_go(&mut self, cx: &mut Ctx<'_>);
    /// Give up a prepared save (mount the shares again).
    fn save_cancel(&mut self, cx: &mut Ctx<'_>);
    /// The save no longer holds the machine: it runs again (or the save is over).
    fn save_released(&self) -> bool;
    /// How the save ended, once.
    fn take_save_outcome(&mut self) -> Option<SaveOutcome>;
    /// Restore from `plan` at the next start (`None`: boot normally).
    fn set_restore_plan(&mut self, plan: Option<RestorePlan>);
    fn has_restore_plan(&self) -> bool;
    /// Why the last restore without fallback failed, once.
    fn take_restore_error(&mut self) -> Option<String>;
    /// The cut the running machine was restored from.
    fn restored_cut(&self) -> Option<&str>;
    /// SIGKILL its process group now (a restore replaces it).
    fn kill(&mut self);
    /// Nothing of its process group is left (a restore may replace its disk files).
    fn gone(&self) -> bool;
}

impl Checkpointable for Machine {
    fn checkpoint_boot(&self) -> Boot {
        Machine::checkpoint_boot(self)
    }
    fn begin_save(&mut self, cx: &mut Ctx<'_>, req: SaveRequest) -> Result<(), String> {
        Machine::begin_save(self, cx, req)
    }
    fn save_prepared(&self) -> bool {
        Machine::save_prepared(self)
    }
    fn save_go(&mut self, cx: &mut Ctx<'_>) {
        Machine::save_go(self, cx)
    }
    fn save_cancel(&mut self, cx: &mut Ctx<'_>) {
        Machine::save_cancel(self, cx)
    }
    fn save_released(&self) -> bool {
        Machine::save_released(self)
    }
    fn take_save_outcome(&mut self) -> Option<SaveOutcome> {
        Machine::take_save_outcome(self)
    }
    fn set_restore_plan(&mut self, plan: Option<RestorePlan>) {
        Machine::set_restore_plan(self, plan)
    }
    fn has_restore_plan(&self) -> bool {
        Machine::has_restore_plan(self)
    }
    fn take_restore_error(&mut self) -> Option<String> {
        Machine::take_restore_error(self)
    }
    fn restored_cut(&self) -> Option<&str> {
        Machine::restored_cut(self)
    }
    fn kill(&mut self) {
        Machine::kill_now(self)
    }
    fn gone(&self) -> bool {
        Machine::gone(self)
    }
}

/// Where a group is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// Some member is still held by its save (getting ready, stopped, migrating).
    Holding,
    /// Every member runs again; streams are still being checked.
    Released,
    /// Every outcome is in (see [`SaveGroup::into_outcomes`]).
    Done,
}

/// A member: its machine, its tie, its directory.
#[derive(Debug)]
struct Member {
    machine: usize,
    tie: usize,
    tmp: PathBuf,
}

/// Machines being saved together. See the module documentation.
#[derive(Debug)]
pub struct SaveGroup {
    members: Vec<Member>,
    /// Ties with a machine that could not even begin: they do not go.
    failed_ties: Vec<usize>,
    went: bool,
    released: bool,
    outcomes: Vec<(usize, SaveOutcome)>,
    sums: Vec<(usize, Checksum)>,
    began: Instant,
}

impl SaveGroup {
    /// Begin saving `(machine, tie, request)`s. Machines that cannot begin are returned with
    /// the reason (their directory removed; the others of their tie will not go); the others
    /// form the group.
    pub fn begin<M: Checkpointable>(
        machines: &mut [M],
        cx: &mut Ctx<'_>,
        reqs: Vec<(usize, usize, SaveRequest)>,
        now: Instant,
    ) -> (SaveGroup, Vec<(usize, String)>) {
        let mut members = Vec::new();
        let mut refused = Vec::new();
        let mut failed_ties = Vec::new();
        for (machine, tie, req) in reqs {
            let tmp = req.tmp.clone();
            match machines[machine].begin_save(cx, req) {
                Ok(()) => members.push(Member { machine, tie, tmp }),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&tmp);
                    refused.push((machine, e));
                    failed_ties.push(tie);
                }
            }
        }
        let group = SaveGroup {
            members,
            failed_ties,
            went: false,
            released: false,
            outcomes: Vec::new(),
            sums: Vec::new(),
            began: now,
        };
        (group, refused)
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn began(&self) -> Instant {
        self.began
    }

    /// While streams wait for their checksum, the loop must come back without sleeping.
    pub fn busy(&self) -> bool {
        self.released && !self.sums.is_empty()
    }

    fn finished(&self, machine: usize) -> bool {
        self.outcomes.iter().any(|(j, _)| *j == machine)
    }

    /// Take the machines' finished saves; a saved stream gets its checksum job, a failed
    /// save's directory goes.
    fn collect(&mut self, machines: &mut [impl Checkpointable]) {
        for m in &self.members {
            if self.outcomes.iter().any(|(j, _)| *j == m.machine) {
                continue;
            }
            let Some(o) = machines[m.machine].take_save_outcome() else {
                continue;
            };
            let o = match o {
                SaveOutcome::Saved { manifest, tmp } => match Checksum::open(&tmp.join(RAM)) {
                    Ok(c) => {
                        self.sums.push((m.machine, c));
                        SaveOutcome::Saved { manifest, tmp }
                    }
                    Err(e) => {
                        let _ = std::fs::remove_dir_all(&tmp);
                        SaveOutcome::Failed(format!("cannot read the stream: {e}"))
                    }
                },
                other => {
                    let _ = std::fs::remove_dir_all(&m.tmp);
                    other
                }
            };
            self.outcomes.push((m.machine, o));
        }
    }

    /// Advance: collect outcomes, stop everybody once all are ready, checksum up to
    /// `budget` bytes of streams once all run again. `trace` gets a save span per machine.
    pub fn poll<M: Checkpointable>(
        &mut self,
        machines: &mut [M],
        cx: &mut Ctx<'_>,
        budget: usize,
        trace: Option<&Trace>,
    ) -> GroupState {
        self.collect(machines);
        if !self.went {
            let all_ready = self
                .members
                .iter()
                .all(|m| machines[m.machine].save_prepared() || self.finished(m.machine));
            if !all_ready {
                return GroupState::Holding;
            }
            // Any outcome now is a failure before the stop: its tie does not go.
            let failed: Vec<usize> = self
                .members
                .iter()
                .filter(|m| self.finished(m.machine))
                .map(|m| m.tie)
                .chain(self.failed_ties.iter().copied())
                .collect();
            for m in &self.members {
                if self.finished(m.machine) {
                    continue;
                }
                if failed.contains(&m.tie) {
                    machines[m.machine].save_cancel(cx);
                } else {
                    machines[m.machine].save_go(cx);
                }
            }
            self.went = true;
        }
        if !self.released {
            let all_released = self
                .members
                .iter()
                .all(|m| machines[m.machine].save_released() || self.finished(m.machine));
            if !all_released {
                return GroupState::Holding;
            }
            self.released = true;
            if let Some(t) = trace {
                let now = Instant::now();
                for m in &self.members {
                    t.span(
                        machines[m.machine].name(),
                        SAVE_SPAN,
                        self.began,
                        now,
                        Vec::new(),
                    );
                }
            }
        }
        if !self.checksum(budget) || self.members.iter().any(|m| !self.finished(m.machine)) {
            return GroupState::Released;
        }
        GroupState::Done
    }

    /// Checksum up to `budget` bytes of the saved streams; true when all are done (each
    /// record added to its manifest).
    fn checksum(&mut self, budget: usize) -> bool {
        let mut left = budget;
        while let Some((i, c)) = self.sums.last_mut() {
            let i = *i;
            let done = match c.step(left.min(CHECKSUM_STEP)) {
                Ok(ChecksumStep::More) => {
                    left = left.saturating_sub(CHECKSUM_STEP);
                    if left == 0 {
                        return false;
                    }
                    continue;
                }
                Ok(ChecksumStep::Done { len, crc }) => Ok(FileRecord {
                    name: RAM.into(),
                    len,
                    crc,
                }),
                Err(e) => Err(format!("cannot read the stream: {e}")),
            };
            self.sums.pop();
            if let Some((_, o)) = self.outcomes.iter_mut().find(|(j, _)| *j == i) {
                match (done, &mut *o) {
                    (Ok(rec), SaveOutcome::Saved { manifest, .. }) => manifest.files.push(rec),
                    (Err(e), SaveOutcome::Saved { tmp, .. }) => {
                        let _ = std::fs::remove_dir_all(&*tmp);
                        *o = SaveOutcome::Failed(e);
                    }
                    _ => {}
                }
            }
        }
        true
    }

    /// The outcomes (call once [`GroupState::Done`]): saved ones carry their stream's record;
    /// the caller owns their directories.
    pub fn into_outcomes(mut self) -> Vec<(usize, SaveOutcome)> {
        std::mem::take(&mut self.outcomes)
    }

    /// Give up (the run ends): every directory of the group is removed.
    pub fn abandon(self) {
        for m in &self.members {
            let _ = std::fs::remove_dir_all(&m.tmp);
        }
    }
}
