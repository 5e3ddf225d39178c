//! Named snapshots inside a test: `machine.snapshot(name)` / `machine.restore(name)`, and
//! `snapshot_all(name)` / `restore_all(name)` for every machine plus the vlans' faults.
//!
//! A snapshot is a checkpoint saved into the run's private directory
//! (`$TMPDIR/ntd-snapshots-<pid>`, removed at the end of the run): one directory per name,
//! one entry per machine (manifest, migration stream, disk overlays), replaced when the name
//! is saved again. `snapshot_all` saves every running machine at one instant
//! ([`SaveGroup`], all or nothing) and records the vlans' faults with the save's cut;
//! `restore_all` puts back exactly the machines of that cut (a machine that was not running
//! then is stopped) and the faults. A restore ends the machine's QEMU, copies the saved disk
//! overlays back and starts it from the stream, as a boot checkpoint does, but a failure is
//! an error (the machine stays stopped), not a normal boot; the console is not replayed.

use super::control::{Controlled, Env};
use super::deadline::Deadline;
use super::save_group::{Checkpointable, GroupState, SaveGroup, CHECKSUM_STEP};
use super::vlans::VlanView;
use super::Driver;
use crate::checkpoint::codec::Codec;
use crate::checkpoint::manifest::Manifest;
use crate::checkpoint::{store, MANIFEST};
use crate::hostcpu::Stamp;
use crate::machine::{RestorePlan, SaveOutcome, SaveRequest};
use crate::rpc::{ErrorType, OpError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longest restore of a group of machines (QEMU start, state load, fixes), beyond which the
/// op fails.
const RESTORE_PATIENCE: Duration = Duration::from_secs(600);

/// The run's named snapshots.
pub(super) struct Snapshots {
    dir: PathBuf,
    /// Directory `dir/<i>` holds the snapshots named `names[i]`.
    names: Vec<String>,
    /// The vlans' faults per `snapshot_all`: name, cut, views.
    views: Vec<(String, String, Vec<VlanView>)>,
    seq: u64,
}

impl Snapshots {
    fn slot(&mut self, name: &str) -> PathBuf {
        let i = match self.names.iter().position(|n| n == name) {
            Some(i) => i,
            None => {
                self.names.push(name.to_owned());
                self.names.len() - 1
            }
        };
        self.dir.join(i.to_string())
    }

    fn existing_slot(&self, name: &str) -> Option<PathBuf> {
        let i = self.names.iter().position(|n| n == name)?;
        Some(self.dir.join(i.to_string()))
    }

    /// The names machine `m` has a snapshot of.
    fn names_of(&self, m: usize) -> Vec<String> {
        self.names
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                self.dir
                    .join(i.to_string())
                    .join(m.to_string())
                    .join(MANIFEST)
                    .exists()
            })
            .map(|(_, n)| format!("'{n}'"))
            .collect()
    }
}

/// Machine `m`'s snapshot in `slot`, if there is one.
fn read_entry(slot: &Path, m: usize) -> Option<(PathBuf, Manifest)> {
    let entry = slot.join(m.to_string());
    let text = std::fs::read_to_string(entry.join(MANIFEST)).ok()?;
    Manifest::decode(&text).ok().map(|man| (entry, man))
}

fn machine_error(msg: String) -> OpError {
    OpError::new(ErrorType::Machine, msg)
}

fn value_error(msg: String) -> OpError {
    OpError::new(ErrorType::Value, msg)
}

/// What the log and the manifest call a snapshot.
fn label(name: &str) -> String {
    format!("snapshot '{name}'")
}

/// A snapshot being saved: the group, and where each machine's entry goes.
#[derive(Debug)]
pub struct SnapshotWork {
    name: String,
    group: Option<SaveGroup>,
    targets: Vec<(usize, PathBuf)>,
    /// Machines that could not begin (the others then do not go).
    refused: Vec<String>,
}

impl SnapshotWork {
    /// Advance; the op's result once it is over.
    pub(super) fn poll<M: Checkpointable>(
        &mut self,
        env: &mut Env<'_, M>,
    ) -> Option<Result<(), OpError>> {
        let group = self.group.as_mut()?;
        match group.poll(env.machines, &mut env.cx, CHECKSUM_STEP, env.trace) {
            GroupState::Holding | GroupState::Released => return None,
            GroupState::Done => {}
        }
        let group = self.group.take()?;
        let began = group.began();
        let outcomes = group.into_outcomes();
        let mut errors = std::mem::take(&mut self.refused);
        for (m, o) in &outcomes {
            let name = env.machines[*m].name();
            match o {
                SaveOutcome::Saved { .. } => {}
                SaveOutcome::Impossible(why) | SaveOutcome::Failed(why) => {
                    errors.push(format!("machine '{name}': {why}"))
                }
            }
        }
        if !errors.is_empty() {
            for (_, o) in &outcomes {
                if let SaveOutcome::Saved { tmp, .. } = o {
                    let _ = std::fs::remove_dir_all(tmp);
                }
            }
            return Some(Err(machine_error(format!(
                "cannot take {}: {}",
                label(&self.name),
                errors.join("; ")
            ))));
        }
        for (m, o) in outcomes {
            let SaveOutcome::Saved { manifest, tmp } = o else {
                continue;
            };
            let Some((_, target)) = self.targets.iter().find(|(j, _)| *j == m) else {
                continue;
            };
            if let Err(e) = commit(&tmp, &manifest, target) {
                let _ = std::fs::remove_dir_all(&tmp);
                return Some(Err(machine_error(format!(
                    "cannot store {}: {e}",
                    label(&self.name)
                ))));
            }
            let size: u64 = manifest.files.iter().map(|f| f.len).sum();
            env.cx.log.machine(
                env.machines[m].name(),
                &format!(
                    "{} saved ({:.1} MB) in {} ms",
                    label(&self.name),
                    size as f64 / 1e6,
                    began.elapsed().as_millis()
                ),
            );
        }
        Some(Ok(()))
    }

    pub(super) fn wake_at(&self) -> Option<Instant> {
        // Checksumming: come back at once.
        self.group
            .as_ref()
            .filter(|g| g.busy())
            .map(SaveGroup::began)
    }
}

/// Write the manifest and put the entry in place of the previous one of that name.
fn commit(tmp: &Path, manifest: &Manifest, target: &Path) -> std::io::Result<()> {
    std::fs::write(tmp.join(MANIFEST), manifest.encode())?;
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if target.exists() {
        std::fs::remove_dir_all(target)?;
    }
    std::fs::rename(tmp, target)
}

/// Where one machine of a restore is.
#[derive(Debug)]
enum Stage {
    /// Its QEMU is being ended (`killed`: SIGKILL was sent).
    Ending {
        killed: bool,
    },
    /// Started from the snapshot; waiting for its shell.
    Restoring,
    Done,
    Failed(String),
}

#[derive(Debug)]
struct Step {
    m: usize,
    /// `None`: only stop it (it was not running at the snapshot).
    plan: Option<RestorePlan>,
    cut: String,
    stage: Stage,
}

/// Machines being put back to a snapshot.
#[derive(Debug)]
pub struct RestoreWork {
    name: String,
    steps: Vec<Step>,
    deadline: Deadline,
}

impl RestoreWork {
    /// Advance; the op's result once every machine is restored (or failed).
    pub(super) fn poll<M: Checkpointable>(
        &mut self,
        env: &mut Env<'_, M>,
    ) -> Option<Result<(), OpError>> {
        let timed_out = self.deadline.passed(Stamp::wall(env.now));
        for s in &mut self.steps {
            let machine = &mut env.machines[s.m];
            s.stage = match std::mem::replace(&mut s.stage, Stage::Done) {
                Stage::Ending { killed } => {
                    if machine.booted() && !killed {
                        machine.kill();
                        Stage::Ending { killed: true }
                    } else if machine.booted() || (machine.exited() && !machine.gone()) {
                        Stage::Ending { killed }
                    } else {
                        if machine.exited() {
                            machine.finish_shutdown(env.cx.registry);
                        }
                        match s.plan.take() {
                            None => Stage::Done,
                            Some(plan) => {
                                machine.set_restore_plan(Some(plan));
                                match machine.start(&mut env.cx, env.extra_env) {
                                    Ok(()) => Stage::Restoring,
                                    Err(e) => Stage::Failed(e.to_string()),
                                }
                            }
                        }
                    }
                }
                Stage::Restoring => {
                    if machine.connected() && machine.restored_cut() == Some(s.cut.as_str()) {
                        Stage::Done
                    } else if machine.exited() {
                        Stage::Failed(
                            machine
                                .take_restore_error()
                                .unwrap_or_else(|| machine.exit_report()),
                        )
                    } else {
                        Stage::Restoring
                    }
                }
                done @ (Stage::Done | Stage::Failed(_)) => done,
            };
            if timed_out && !matches!(s.stage, Stage::Done | Stage::Failed(_)) {
                s.stage = Stage::Failed(format!(
                    "not restored within {} s",
                    RESTORE_PATIENCE.as_secs()
                ));
            }
        }
        if !self
            .steps
            .iter()
            .all(|s| matches!(s.stage, Stage::Done | Stage::Failed(_)))
        {
            return None;
        }
        let errors: Vec<String> = self
            .steps
            .iter()
            .filter_map(|s| match &s.stage {
                Stage::Failed(why) => {
                    Some(format!("machine '{}': {why}", env.machines[s.m].name()))
                }
                _ => None,
            })
            .collect();
        if errors.is_empty() {
            Some(Ok(()))
        } else {
            Some(Err(machine_error(format!(
                "cannot restore {}: {} (the machine is stopped; its next command boots it \
                 normally)",
                label(&self.name),
                errors.join("; ")
            ))))
        }
    }

    pub(super) fn wake_at(&self) -> Option<Instant> {
        self.deadline.wake_at()
    }
}

impl Driver {
    fn snapshots(&mut self) -> Result<&mut Snapshots, OpError> {
        if self.snapshots.is_none() {
            let dir = self
                .tmp_dir
                .join(format!("ntd-snapshots-{}", std::process::id()));
            std::fs::create_dir_all(&dir).map_err(|e| {
                machine_error(format!(
                    "cannot create the snapshot directory {}: {e}",
                    dir.display()
                ))
            })?;
            self.snapshots = Some(Snapshots {
                dir,
                names: Vec::new(),
                views: Vec::new(),
                seq: 0,
            });
        }
        self.snapshots
            .as_mut()
            .ok_or_else(|| machine_error("no snapshot directory".into()))
    }

    /// `machine.snapshot(name)` (`Some(machine)`) or `snapshot_all(name)` (`None`).
    pub(super) fn op_snapshot(
        &mut self,
        machine: Option<&str>,
        name: &str,
    ) -> Result<Box<SnapshotWork>, OpError> {
        if name.is_empty() {
            return Err(value_error("a snapshot needs a name".into()));
        }
        let what = match machine {
            Some(m) => format!("{m}.snapshot('{name}')"),
            None => format!("snapshot_all('{name}')"),
        };
        let set: Vec<usize> = match machine {
            Some(n) => vec![self.machine_index(n)?],
            None => (0..self.machines.len())
                .filter(|&i| self.machines[i].booted())
                .collect(),
        };
        if set.is_empty() {
            return Err(machine_error(format!("{what}: no machine is running")));
        }
        for &i in &set {
            let m = &self.machines[i];
            if m.as_vm().is_none() {
                return Err(machine_error(format!(
                    "{what}: '{}' is a container, which has no saved form (snapshots are of \
                     VMs; a test with containers cannot use snapshot_all)",
                    m.name()
                )));
            }
            if !m.booted() {
                return Err(machine_error(format!(
                    "{what}: machine '{}' is not running (start it first)",
                    m.name()
                )));
            }
            if !m.connected() {
                return Err(machine_error(format!(
                    "{what}: the shell of machine '{}' is not connected yet (call {}.connect() \
                     first)",
                    m.name(),
                    m.name()
                )));
            }
        }
        let cut = store::new_cut();
        let views = machine.is_none().then(|| self.vlan_views());
        let snaps = self.snapshots()?;
        let slot = snaps.slot(name);
        if let Some(views) = views {
            snaps.views.retain(|(n, _, _)| n != name);
            snaps.views.push((name.to_owned(), cut.clone(), views));
        }
        let mut reqs = Vec::new();
        let mut targets = Vec::new();
        for &i in &set {
            snaps.seq += 1;
            let tmp = snaps.dir.join(format!(".tmp-{}", snaps.seq));
            std::fs::create_dir_all(&tmp).map_err(|e| {
                machine_error(format!("{what}: cannot create {}: {e}", tmp.display()))
            })?;
            reqs.push((
                i,
                0,
                SaveRequest {
                    key: label(name),
                    cut: cut.clone(),
                    tmp,
                    codec: Codec::Raw,
                },
            ));
            targets.push((i, slot.join(i.to_string())));
        }
        let mut cx = crate::reactor::Ctx {
            registry: self.poll.registry(),
            log: &mut self.log,
        };
        let (group, refused) = SaveGroup::begin(&mut self.machines, &mut cx, reqs, Instant::now());
        // A machine that cannot begin makes the others give up once they are ready (their
        // shares come back); the op reports all of it.
        let refused: Vec<String> = refused
            .iter()
            .map(|(i, e)| format!("machine '{}': {e}", self.machines[*i].name()))
            .collect();
        if group.is_empty() {
            return Err(machine_error(format!(
                "cannot take {}: {}",
                label(name),
                refused.join("; ")
            )));
        }
        Ok(Box::new(SnapshotWork {
            name: name.to_owned(),
            group: Some(group),
            targets,
            refused,
        }))
    }

    /// `machine.restore(name)` (`Some(machine)`) or `restore_all(name)` (`None`).
    pub(super) fn op_restore(
        &mut self,
        machine: Option<&str>,
        name: &str,
    ) -> Result<Box<RestoreWork>, OpError> {
        let single = match machine {
            Some(n) => Some(self.machine_index(n)?),
            None => None,
        };
        let snaps = self.snapshots()?;
        let slot = snaps.existing_slot(name);
        let mut steps = Vec::new();
        match single {
            Some(i) => {
                let Some((entry, manifest)) = slot.as_deref().and_then(|s| read_entry(s, i)) else {
                    let have = snaps.names_of(i);
                    let have = if have.is_empty() {
                        "none".to_owned()
                    } else {
                        have.join(", ")
                    };
                    return Err(value_error(format!(
                        "machine '{}' has no snapshot named '{name}' (it has: {have})",
                        self.machines[i].name()
                    )));
                };
                steps.push(step(i, entry, manifest));
            }
            None => {
                let Some((_, cut, _)) = snaps.views.iter().find(|(n, _, _)| n == name) else {
                    let names: Vec<String> = snaps
                        .views
                        .iter()
                        .map(|(n, _, _)| format!("'{n}'"))
                        .collect();
                    return Err(value_error(format!(
                        "no snapshot_all('{name}') was taken (snapshot_all names: {})",
                        if names.is_empty() {
                            "none".to_owned()
                        } else {
                            names.join(", ")
                        }
                    )));
                };
                let cut = cut.clone();
                for i in 0..self.machines.len() {
                    match slot.as_deref().and_then(|s| read_entry(s, i)) {
                        Some((entry, manifest)) if manifest.cut == cut => {
                            steps.push(step(i, entry, manifest));
                        }
                        Some(_) => {
                            return Err(value_error(format!(
                                "restore_all('{name}'): the snapshot '{name}' of machine '{}' \
                                 was replaced by {}.snapshot('{name}') after \
                                 snapshot_all('{name}')",
                                self.machines[i].name(),
                                self.machines[i].name()
                            )))
                        }
                        None => steps.push(Step {
                            m: i,
                            plan: None,
                            cut: String::new(),
                            stage: Stage::Ending { killed: false },
                        }),
                    }
                }
            }
        }
        if single.is_none() {
            let views = self
                .snapshots
                .as_ref()
                .and_then(|s| s.views.iter().find(|(n, _, _)| n == name))
                .map(|(_, _, v)| v.clone())
                .unwrap_or_default();
            self.restore_vlan_views(&label(name), &views);
        }
        Ok(Box::new(RestoreWork {
            name: name.to_owned(),
            steps,
            deadline: Deadline::after(Stamp::wall(Instant::now()), RESTORE_PATIENCE),
        }))
    }

    /// At the end of the run: the snapshots go.
    pub(super) fn remove_snapshots(&mut self) {
        if let Some(s) = self.snapshots.take() {
            let _ = std::fs::remove_dir_all(&s.dir);
        }
    }
}

fn step(m: usize, entry: PathBuf, manifest: Manifest) -> Step {
    Step {
        m,
        cut: manifest.cut.clone(),
        plan: Some(RestorePlan {
            entry,
            manifest,
            lock: None,
            fallback: false,
            replay_console: false,
        }),
        stage: Stage::Ending { killed: false },
    }
}

#[cfg(test)]
impl SnapshotWork {
    /// A snapshot's save as `op_snapshot` starts it (the controller's unit tests).
    pub(super) fn for_test(name: &str, group: SaveGroup, targets: Vec<(usize, PathBuf)>) -> Self {
        SnapshotWork {
            name: name.to_owned(),
            group: Some(group),
            targets,
            refused: Vec::new(),
        }
    }
}

#[cfg(test)]
impl RestoreWork {
    /// A restore as `op_restore` starts it: per machine its plan (`None`: only stop it).
    pub(super) fn for_test(
        name: &str,
        plans: Vec<(usize, Option<RestorePlan>)>,
        now: Instant,
    ) -> Self {
        RestoreWork {
            name: name.to_owned(),
            steps: plans
                .into_iter()
                .map(|(m, plan)| Step {
                    m,
                    cut: plan
                        .as_ref()
                        .map(|p| p.manifest.cut.clone())
                        .unwrap_or_default(),
                    plan,
                    stage: Stage::Ending { killed: false },
                })
                .collect(),
            deadline: Deadline::after(Stamp::wall(now), RESTORE_PATIENCE),
        }
    }
}
