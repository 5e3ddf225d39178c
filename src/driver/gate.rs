//! The first-command gate of boot checkpoints: the script's first request that can reach a
//! guest ([`Reach::Guest`]) is held until every machine started so far has opened its shell
//! and been saved (by the rule of [`crate::checkpoint::plan`]); then it goes, and the saved
//! entries are committed into the directory once their streams are checksummed.
//!
//! Generic over the machine ([`Checkpointable`]), so the unit tests drive it with a scripted
//! machine. Nothing here fails a test: a save that fails is a warning and no checkpoint.

use super::save_group::{Checkpointable, GroupState, SaveGroup, CHECKSUM_STEP};
use crate::checkpoint::codec::Codec;
use crate::checkpoint::plan::{self, Boot, Decision};
use crate::checkpoint::store::{self, Store};
use crate::machine::{SaveOutcome, SaveRequest};
use crate::reactor::Ctx;
use crate::rpc::ops::Request;
use crate::rpc::reach::Reach;
use crate::trace::Trace;
use std::time::{Duration, Instant};

/// Bytes of saved streams checksummed per loop turn (a few ms; the test runs meanwhile).
const CHECKSUM_BUDGET: usize = CHECKSUM_STEP;

#[derive(Debug)]
enum Gate {
    /// No command yet: requests that cannot reach a guest pass.
    Open,
    /// The first command waits for the machines started so far.
    Holding {
        since: Instant,
    },
    /// Saving; the held command goes once every machine runs again.
    Saving(SaveGroup),
    Closed,
}

/// Boot checkpoints of one run: the directory, each configured machine's key and vlan
/// component, and the gate.
pub(super) struct Checkpoints {
    store: Store,
    /// Key per configured machine (`None`: it cannot be checkpointed).
    keys: Vec<Option<String>>,
    comp: Vec<usize>,
    gate: Gate,
    held: Option<Request>,
    /// The held request may go.
    release: bool,
    cut: String,
    /// Machines started after the gate closed boot normally (their plans were dropped).
    plans_dropped: bool,
}

impl Checkpoints {
    pub(super) fn new(store: Store, keys: Vec<Option<String>>, comp: Vec<usize>) -> Self {
        Checkpoints {
            store,
            keys,
            comp,
            gate: Gate::Open,
            held: None,
            release: false,
            cut: store::new_cut(),
            plans_dropped: false,
        }
    }

    /// Let a request through, or hold it as the first command (`None`). A held command
    /// that runs in a machine's shell boots that machine now, so that it counts as started
    /// before the first command (and may restore).
    pub(super) fn admit<M: Checkpointable>(
        &mut self,
        req: Request,
        machines: &mut [M],
        cx: &mut Ctx<'_>,
        env: &[(String, String)],
        now: Instant,
    ) -> Option<Request> {
        let boots = match req.op.reach() {
            Reach::Guest(boots) if matches!(self.gate, Gate::Open) => boots,
            _ => return Some(req),
        };
        self.gate = Gate::Holding { since: now };
        if let Some(m) = boots.and_then(|n| machines.iter_mut().find(|m| m.name() == n)) {
            if !m.booted() && !m.exited() {
                // A failed start shows when the command runs.
                let _ = m.start(cx, env);
            }
        }
        self.held = Some(req);
        None
    }

    /// True while the first command is held.
    pub(super) fn holding(&self) -> bool {
        self.held.is_some()
    }

    /// The held command, once it may run.
    pub(super) fn released(&mut self) -> Option<Request> {
        if self.release {
            self.held.take()
        } else {
            None
        }
    }

    /// Advance the gate: decide, save, release, commit.
    pub(super) fn turn<M: Checkpointable>(
        &mut self,
        machines: &mut [M],
        cx: &mut Ctx<'_>,
        now: Instant,
        shell_timeout: Duration,
        trace: Option<&Trace>,
    ) {
        self.gate = match std::mem::replace(&mut self.gate, Gate::Closed) {
            Gate::Holding { since } => self.decide(machines, cx, since, now, shell_timeout),
            Gate::Saving(mut group) => match group.poll(machines, cx, CHECKSUM_BUDGET, trace) {
                GroupState::Holding => Gate::Saving(group),
                GroupState::Released => {
                    self.release = true;
                    Gate::Saving(group)
                }
                GroupState::Done => {
                    self.release = true;
                    self.commit(machines, cx, group);
                    Gate::Closed
                }
            },
            other => other,
        };
        if matches!(self.gate, Gate::Closed) {
            self.release = true;
        }
        if self.release && !self.plans_dropped {
            // Machines started from now on boot normally.
            self.plans_dropped = true;
            for m in machines.iter_mut() {
                if m.has_restore_plan() && !m.booted() {
                    m.set_restore_plan(None);
                }
            }
        }
    }

    fn decide<M: Checkpointable>(
        &mut self,
        machines: &mut [M],
        cx: &mut Ctx<'_>,
        since: Instant,
        now: Instant,
        shell_timeout: Duration,
    ) -> Gate {
        let n = self.keys.len().min(machines.len());
        let boot: Vec<Boot> = machines[..n].iter().map(|m| m.checkpoint_boot()).collect();
        let keyed: Vec<bool> = self.keys.iter().map(Option::is_some).collect();
        match plan::decide(&self.comp, &boot, &keyed) {
            Decision::Wait if now.saturating_duration_since(since) < shell_timeout => {
                Gate::Holding { since }
            }
            Decision::Wait => {
                cx.log.warning(
                    None,
                    "no checkpoint saved: a started machine did not open its shell in time",
                );
                Gate::Closed
            }
            Decision::Release => Gate::Closed,
            // A read-only directory (a Nix store path) is for restoring only.
            Decision::Save(_) if self.store.read_only() => Gate::Closed,
            Decision::Save(set) => {
                let mut reqs = Vec::new();
                for i in set {
                    let Some(key) = self.keys[i].clone() else {
                        continue;
                    };
                    match self.store.begin() {
                        Ok(tmp) => reqs.push((
                            i,
                            self.comp[i],
                            SaveRequest {
                                key,
                                cut: self.cut.clone(),
                                tmp,
                                codec: Codec::Raw,
                            },
                        )),
                        Err(e) => {
                            cx.log.warning(
                                None,
                                &format!("cannot write into the checkpoint directory: {e}"),
                            );
                            break;
                        }
                    }
                }
                for (i, _, req) in &reqs {
                    cx.log.machine(
                        machines[*i].name(),
                        &format!("saving a checkpoint (key {})", req.key),
                    );
                }
                let (group, refused) = SaveGroup::begin(machines, cx, reqs, now);
                for (i, why) in refused {
                    cx.log
                        .warning(Some(machines[i].name()), &format!("no checkpoint: {why}"));
                }
                if group.is_empty() {
                    Gate::Closed
                } else {
                    Gate::Saving(group)
                }
            }
        }
    }

    /// Commit the saved entries whose whole vlan component was saved; say why the others
    /// were not; keep the directory under its size cap.
    fn commit<M: Checkpointable>(&mut self, machines: &[M], cx: &mut Ctx<'_>, group: SaveGroup) {
        let began = group.began();
        let outcomes = group.into_outcomes();
        let mut kept = Vec::new();
        for (i, o) in &outcomes {
            let name = machines[*i].name();
            let comp_ok = outcomes
                .iter()
                .filter(|(j, _)| self.comp[*j] == self.comp[*i])
                .all(|(_, o)| matches!(o, SaveOutcome::Saved { .. }));
            match o {
                SaveOutcome::Saved { manifest, tmp } if comp_ok => {
                    match self.store.commit(tmp, manifest) {
                        Ok(true) => {
                            let size: u64 = manifest.files.iter().map(|f| f.len).sum();
                            cx.log.machine(
                                name,
                                &format!(
                                    "checkpoint saved (key {}, {:.1} MB) in {} ms",
                                    manifest.key,
                                    size as f64 / 1e6,
                                    began.elapsed().as_millis()
                                ),
                            );
                            kept.push(
                                self.store
                                    .dir()
                                    .join(format!("{}.{}", manifest.key, manifest.cut)),
                            );
                        }
                        Ok(false) => {
                            cx.log
                                .debug(Some(name), "another run saved this checkpoint first");
                        }
                        Err(e) => {
                            let _ = std::fs::remove_dir_all(tmp);
                            cx.log
                                .warning(Some(name), &format!("cannot store the checkpoint: {e}"));
                        }
                    }
                }
                SaveOutcome::Saved { tmp, .. } => {
                    let _ = std::fs::remove_dir_all(tmp);
                    cx.log.warning(
                        Some(name),
                        "no checkpoint: another machine on its vlans could not be saved",
                    );
                }
                SaveOutcome::Impossible(why) => {
                    cx.log.warning(Some(name), &format!("no checkpoint: {why}"));
                }
                SaveOutcome::Failed(why) => {
                    cx.log.warning(
                        Some(name),
                        &format!("no checkpoint: the save failed: {why}"),
                    );
                }
            }
        }
        for e in self.store.evict(&kept) {
            cx.log.debug(
                None,
                &format!("checkpoint {} evicted (size cap)", e.dir.display()),
            );
        }
    }

    /// While saved streams wait for their checksum, the loop must come back at once.
    pub(super) fn deadline(&self) -> Option<Instant> {
        match &self.gate {
            Gate::Saving(g) if g.busy() => Some(g.began()),
            _ => None,
        }
    }

    /// At the end of the run (the machines are gone): finish a save whose streams were still
    /// being checksummed, or remove what was not committed.
    pub(super) fn cleanup<M: Checkpointable>(&mut self, machines: &mut [M], cx: &mut Ctx<'_>) {
        for m in machines.iter_mut() {
            m.set_restore_plan(None);
        }
        if let Gate::Saving(mut group) = std::mem::replace(&mut self.gate, Gate::Closed) {
            match group.poll(machines, cx, usize::MAX, None) {
                GroupState::Done => self.commit(machines, cx, group),
                _ => group.abandon(),
            }
        }
        self.held = None;
    }
}

#[cfg(test)]
impl Checkpoints {
    /// The directory (tests look into it).
    pub(super) fn store(&self) -> &Store {
        &self.store
    }
}
