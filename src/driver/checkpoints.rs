//! Boot checkpoints in the driver (`--checkpoints DIR`): which machine restores from which
//! entry (chosen when the run starts), holding the script's first command until the machines
//! started so far are booted and saved, and committing or discarding the saved entries.
//!
//! The rule and its reasons are in [`crate::checkpoint::plan`]; the machine does the QMP and
//! shell work ([`crate::machine`]'s `checkpoint`); the directory is
//! [`crate::checkpoint::store`]'s. Nothing here fails a test: a checkpoint that cannot be
//! used or written is a warning and a normal boot.

use super::Driver;
use crate::checkpoint::key::{self, FileCache, Identity};
use crate::checkpoint::manifest::FileRecord;
use crate::checkpoint::plan::{self, Boot, Candidate, Decision};
use crate::checkpoint::store::{self, Checksum, ChecksumStep, Store};
use crate::checkpoint::RAM;
use crate::machine::{RestorePlan, SaveOutcome, SaveRequest};
use crate::reactor::Ctx;
use crate::rpc::ops::Request;
use crate::rpc::reach::Reach;
use crate::trace::timeline::SAVE_SPAN;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug)]
enum Gate {
    /// No command yet: requests that cannot reach a guest pass.
    Open,
    /// The first command waits for the machines started so far.
    Holding {
        since: Instant,
    },
    /// Saving these machines; `went`: they were told to stop and migrate.
    Saving {
        set: Vec<usize>,
        went: bool,
    },
    /// The command runs; the saved streams are being checksummed.
    Committing {
        set: Vec<usize>,
    },
    Closed,
}

pub(super) struct Checkpoints {
    store: Store,
    /// Key per configured machine (`None`: it cannot be checkpointed).
    keys: Vec<Option<String>>,
    comp: Vec<usize>,
    gate: Gate,
    held: Option<Request>,
    cut: String,
    tmp: Vec<(usize, PathBuf)>,
    outcomes: Vec<(usize, SaveOutcome)>,
    /// Checksums of the saved migration streams, a few MB per loop turn.
    sums: Vec<(usize, Checksum)>,
    save_began: Option<Instant>,
}

impl Checkpoints {
    /// Whether a request must wait (the gate is not open for it).
    fn holding(&self) -> bool {
        self.held.is_some()
    }
}

/// Bytes of saved streams checksummed per loop turn (a few ms; the test runs meanwhile).
const CHECKSUM_BUDGET: usize = 8 << 20;

impl Driver {
    /// Open DIR, key every configured machine and pick what each restores from.
    pub(super) fn setup_checkpoints(&mut self) {
        let Some(dir) = self.opts.checkpoints.clone() else {
            return;
        };
        if self.opts.keep_machine_state {
            self.log.warning(
                None,
                "--checkpoints is ignored with --keep-machine-state (a kept disk is not a fresh boot)",
            );
            return;
        }
        let store = match Store::open(&dir, self.opts.checkpoints_max_size) {
            Ok(s) => s,
            Err(e) => {
                self.log.warning(
                    None,
                    &format!("--checkpoints: {e}; machines boot normally and are not saved"),
                );
                return;
            }
        };
        let nographic = crate::machine::qemu::wants_nographic();
        let shape = format!("vmgenid{}", if nographic { " nographic" } else { "" });
        let shape_own = format!("own-{shape}");
        let mut cache = FileCache::default();
        let env = |v: &str| std::env::var(v).ok();
        let mut owns = Vec::new();
        let mut vlans = Vec::new();
        for (index, m) in self.machines.iter_mut().enumerate() {
            match key::gather(&m.start_command, &env, &mut cache) {
                Ok(inputs) => {
                    // QEMU takes one vmgenid device: a start script with its own keeps it.
                    let own = [Some(inputs.command.as_bytes()), inputs.script.as_deref()]
                        .into_iter()
                        .flatten()
                        .any(|t| memchr::memmem::find(t, b"vmgenid").is_some());
                    m.set_vmgenid(!own);
                    let id = Identity {
                        name: &m.name,
                        index,
                        args_shape: if own { &shape_own } else { &shape },
                    };
                    owns.push(Some(key::own_hash(&inputs, &id)));
                    vlans.push(inputs.vlans);
                }
                Err(e) => {
                    self.log.warning(
                        Some(&m.name),
                        &format!("no checkpoint: cannot read what its start script names ({e})"),
                    );
                    owns.push(None);
                    vlans.push(Vec::new());
                }
            }
        }
        let peers: Vec<(u32, [u8; 32])> = owns
            .iter()
            .zip(&vlans)
            .filter_map(|(o, v)| o.map(|o| v.iter().map(move |&n| (n, o))))
            .flatten()
            .collect();
        let keys: Vec<Option<String>> = owns
            .iter()
            .zip(&vlans)
            .map(|(o, v)| o.map(|o| key::machine_key(&o, v, &peers)))
            .collect();
        let comp = plan::components(&vlans);
        let found: Vec<Vec<store::EntryInfo>> = keys
            .iter()
            .map(|k| k.as_deref().map(|k| store.find(k)).unwrap_or_default())
            .collect();
        let candidates: Vec<Vec<Candidate>> = found
            .iter()
            .map(|v| {
                v.iter()
                    .map(|e| Candidate {
                        cut: e.cut.clone(),
                        last_used: e.last_used,
                    })
                    .collect()
            })
            .collect();
        let chosen = plan::choose_cuts(&comp, &candidates);
        for (i, cut) in chosen.into_iter().enumerate() {
            let Some(entry) = cut.and_then(|c| found[i].iter().find(|e| e.cut == c)) else {
                continue;
            };
            match store.load(entry) {
                Ok((manifest, lock)) => self.machines[i].set_restore_plan(Some(RestorePlan {
                    entry: entry.dir.clone(),
                    manifest,
                    lock,
                })),
                Err(e) => self.log.warning(
                    Some(&self.machines[i].name),
                    &format!("the checkpoint is unusable ({e}); booting normally"),
                ),
            }
        }
        for (m, k) in self.machines.iter().zip(&keys) {
            if let Some(k) = k {
                self.log
                    .debug(Some(&m.name), &format!("checkpoint key {k}"));
            }
        }
        self.checkpoints = Some(Checkpoints {
            store,
            keys,
            comp,
            gate: Gate::Open,
            held: None,
            cut: store::new_cut(),
            tmp: Vec::new(),
            outcomes: Vec::new(),
            sums: Vec::new(),
            save_began: None,
        });
    }

    /// Let a request through, or hold it as the first command (`None`).
    pub(super) fn checkpoint_admit(&mut self, req: Request) -> Option<Request> {
        let Some(ck) = self.checkpoints.as_mut() else {
            return Some(req);
        };
        let boots = match req.op.reach() {
            Reach::Guest(boots) if matches!(ck.gate, Gate::Open) => boots,
            _ => return Some(req),
        };
        ck.gate = Gate::Holding {
            since: Instant::now(),
        };
        // The command boots its machine if it is not running: do it now, so it counts as
        // started before the first command (and may restore).
        if let Some(i) = boots.and_then(|n| self.machines.iter().position(|m| m.name == n)) {
            if !self.machines[i].booted() {
                let mut cx = Ctx {
                    registry: self.poll.registry(),
                    log: &mut self.log,
                };
                let _ = self.machines[i].start(&mut cx, &self.extra_env);
            }
        }
        ck.held = Some(req);
        None
    }

    /// True while the first command is held.
    pub(super) fn checkpoint_holding(&self) -> bool {
        self.checkpoints.as_ref().is_some_and(Checkpoints::holding)
    }

    /// The held command, once it may run.
    pub(super) fn checkpoint_released(&mut self) -> Option<Request> {
        let ck = self.checkpoints.as_mut()?;
        match ck.gate {
            Gate::Committing { .. } | Gate::Closed => ck.held.take(),
            _ => None,
        }
    }

    /// Advance the gate: decide, save, release, commit.
    pub(super) fn checkpoint_turn(&mut self) {
        let Some(mut ck) = self.checkpoints.take() else {
            return;
        };
        let gate = std::mem::replace(&mut ck.gate, Gate::Closed);
        ck.gate = match gate {
            Gate::Holding { since } => self.checkpoint_decide(&mut ck, since),
            Gate::Saving { set, went } => self.checkpoint_saving(&mut ck, set, went),
            Gate::Committing { set } => self.checkpoint_commit(&mut ck, set, CHECKSUM_BUDGET),
            other => other,
        };
        if matches!(ck.gate, Gate::Closed | Gate::Committing { .. }) {
            // Machines started from now on boot normally.
            for m in &mut self.machines {
                if m.has_restore_plan() && !m.booted() {
                    m.set_restore_plan(None);
                }
            }
        }
        self.checkpoints = Some(ck);
    }

    fn checkpoint_decide(&mut self, ck: &mut Checkpoints, since: Instant) -> Gate {
        let n = ck.keys.len();
        let boot: Vec<Boot> = self.machines[..n]
            .iter()
            .map(|m| m.checkpoint_boot())
            .collect();
        let keyed: Vec<bool> = ck.keys.iter().map(Option::is_some).collect();
        match plan::decide(&ck.comp, &boot, &keyed) {
            Decision::Wait if since.elapsed() < self.opts.shell_timeout => Gate::Holding { since },
            Decision::Wait => {
                self.log.warning(
                    None,
                    "no checkpoint saved: a started machine did not open its shell in time",
                );
                Gate::Closed
            }
            Decision::Release => Gate::Closed,
            Decision::Save(set) => {
                let mut began = Vec::new();
                for i in set {
                    let Some(key) = ck.keys[i].clone() else {
                        continue;
                    };
                    let tmp = match ck.store.begin() {
                        Ok(t) => t,
                        Err(e) => {
                            self.log.warning(
                                None,
                                &format!("cannot write into the checkpoint directory: {e}"),
                            );
                            break;
                        }
                    };
                    let req = SaveRequest {
                        key,
                        cut: ck.cut.clone(),
                        tmp: tmp.clone(),
                    };
                    let mut cx = Ctx {
                        registry: self.poll.registry(),
                        log: &mut self.log,
                    };
                    match self.machines[i].begin_save(&mut cx, req) {
                        Ok(()) => {
                            ck.tmp.push((i, tmp));
                            began.push(i);
                        }
                        Err(e) => {
                            let _ = std::fs::remove_dir_all(&tmp);
                            cx.log.warning(
                                Some(&self.machines[i].name),
                                &format!("no checkpoint: {e}"),
                            );
                        }
                    }
                }
                ck.save_began = Some(Instant::now());
                if began.is_empty() {
                    Gate::Closed
                } else {
                    Gate::Saving {
                        set: began,
                        went: false,
                    }
                }
            }
        }
    }

    /// Take the machines' finished saves; a saved stream gets its checksum job.
    fn collect_outcomes(&mut self, ck: &mut Checkpoints, set: &[usize]) {
        for &i in set {
            let Some(o) = self.machines[i].take_save_outcome() else {
                continue;
            };
            let o = match o {
                SaveOutcome::Saved { manifest, tmp } => match Checksum::open(&tmp.join(RAM)) {
                    Ok(c) => {
                        ck.sums.push((i, c));
                        SaveOutcome::Saved { manifest, tmp }
                    }
                    Err(e) => {
                        let _ = std::fs::remove_dir_all(&tmp);
                        SaveOutcome::Failed(format!("cannot read the stream: {e}"))
                    }
                },
                other => other,
            };
            ck.outcomes.push((i, o));
        }
    }

    fn checkpoint_saving(&mut self, ck: &mut Checkpoints, set: Vec<usize>, mut went: bool) -> Gate {
        self.collect_outcomes(ck, &set);
        let finished = |ck: &Checkpoints, i: usize| ck.outcomes.iter().any(|(j, _)| *j == i);
        if !went {
            let all_ready = set
                .iter()
                .all(|&i| self.machines[i].save_prepared() || finished(ck, i));
            if !all_ready {
                return Gate::Saving { set, went };
            }
            let failed_comps: Vec<usize> = ck.outcomes.iter().map(|(i, _)| ck.comp[*i]).collect();
            let mut cx = Ctx {
                registry: self.poll.registry(),
                log: &mut self.log,
            };
            // Stop every machine of the save one right after the other.
            for &i in &set {
                if finished(ck, i) {
                    continue;
                }
                if failed_comps.contains(&ck.comp[i]) {
                    self.machines[i].save_cancel(&mut cx);
                } else {
                    self.machines[i].save_go(&mut cx);
                }
            }
            went = true;
        }
        if set
            .iter()
            .all(|&i| self.machines[i].save_released() || finished(ck, i))
        {
            if let (Some(t), Some(began)) = (&self.trace, ck.save_began) {
                for &i in &set {
                    t.span(
                        &self.machines[i].name,
                        SAVE_SPAN,
                        began,
                        Instant::now(),
                        Vec::new(),
                    );
                }
            }
            Gate::Committing { set }
        } else {
            Gate::Saving { set, went }
        }
    }

    fn checkpoint_commit(&mut self, ck: &mut Checkpoints, set: Vec<usize>, budget: usize) -> Gate {
        self.collect_outcomes(ck, &set);
        if !Self::checksum_streams(ck, budget) {
            return Gate::Committing { set };
        }
        if !set
            .iter()
            .all(|&i| ck.outcomes.iter().any(|(j, _)| *j == i))
        {
            return Gate::Committing { set };
        }
        let outcomes = std::mem::take(&mut ck.outcomes);
        let mut kept = Vec::new();
        for (i, o) in &outcomes {
            let name = &self.machines[*i].name;
            let comp_ok = outcomes
                .iter()
                .filter(|(j, _)| ck.comp[*j] == ck.comp[*i])
                .all(|(_, o)| matches!(o, SaveOutcome::Saved { .. }));
            match o {
                SaveOutcome::Saved { manifest, tmp } if comp_ok => {
                    match ck.store.commit(tmp, manifest) {
                        Ok(true) => {
                            let size: u64 = manifest.files.iter().map(|f| f.len).sum();
                            self.log.machine(
                                name,
                                &format!(
                                    "checkpoint saved (key {}, {:.1} MB) in {} ms",
                                    manifest.key,
                                    size as f64 / 1e6,
                                    ck.save_began.map_or(0, |t| t.elapsed().as_millis())
                                ),
                            );
                            kept.push(
                                ck.store
                                    .dir()
                                    .join(format!("{}.{}", manifest.key, manifest.cut)),
                            );
                        }
                        Ok(false) => self
                            .log
                            .debug(Some(name), "another run saved this checkpoint first"),
                        Err(e) => self
                            .log
                            .warning(Some(name), &format!("cannot store the checkpoint: {e}")),
                    }
                }
                SaveOutcome::Saved { tmp, .. } => {
                    let _ = std::fs::remove_dir_all(tmp);
                }
                SaveOutcome::Impossible(why) => {
                    self.log
                        .warning(Some(name), &format!("no checkpoint: {why}"));
                }
                SaveOutcome::Failed(why) => {
                    self.log.warning(
                        Some(name),
                        &format!("no checkpoint: the save failed: {why}"),
                    );
                }
            }
        }
        for (_, tmp) in ck.tmp.drain(..) {
            if tmp.exists() {
                let _ = std::fs::remove_dir_all(&tmp);
            }
        }
        for e in ck.store.evict(&kept) {
            self.log.debug(
                None,
                &format!("checkpoint {} evicted (size cap)", e.dir.display()),
            );
        }
        Gate::Closed
    }

    /// Checksum up to `budget` bytes of the saved streams; true when all are done (each
    /// record added to its manifest).
    fn checksum_streams(ck: &mut Checkpoints, budget: usize) -> bool {
        let mut left = budget;
        while let Some((i, c)) = ck.sums.last_mut() {
            let i = *i;
            let step = c.step(left.min(CHECKSUM_BUDGET));
            let done = match step {
                Ok(ChecksumStep::More) => {
                    left = left.saturating_sub(CHECKSUM_BUDGET);
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
            ck.sums.pop();
            if let Some((_, o)) = ck.outcomes.iter_mut().find(|(j, _)| *j == i) {
                match (done, &mut *o) {
                    (Ok(rec), SaveOutcome::Saved { manifest, .. }) => manifest.files.push(rec),
                    (Err(e), _) => *o = SaveOutcome::Failed(e),
                    _ => {}
                }
            }
        }
        true
    }

    /// While saved streams wait for their checksum, the loop must come back at once.
    pub(super) fn checkpoint_deadline(&self) -> Option<Instant> {
        let ck = self.checkpoints.as_ref()?;
        // Work to do: a moment in the past, so the loop does not sleep.
        let busy = matches!(ck.gate, Gate::Committing { .. });
        busy.then_some(ck.save_began?)
    }

    /// At the end of the run (the machines are gone): finish a save whose streams were still
    /// being checksummed, remove what was not committed, release the entries' locks.
    pub(super) fn checkpoint_cleanup(&mut self) {
        for m in &mut self.machines {
            m.set_restore_plan(None);
        }
        if let Some(mut ck) = self.checkpoints.take() {
            if let Gate::Committing { set } = std::mem::replace(&mut ck.gate, Gate::Closed) {
                self.checkpoint_commit(&mut ck, set, usize::MAX);
            }
            for (_, tmp) in ck.tmp.drain(..) {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            self.checkpoints = Some(ck);
        }
    }
}
