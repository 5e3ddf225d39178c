//! Which machines restore from which checkpoint, which machines are saved, and when the
//! script may go on: the rule that keeps every effect of the testScript out of a checkpoint.
//! Pure decisions; the driver does what they say.
//!
//! **The rule.** A checkpoint holds the machines started before the script's first command,
//! saved together at one instant once every one of them has opened its backdoor shell; the
//! first command waits for that save. Requests that cannot reach a guest (logging, `start`,
//! `connect`, reading the console, …: `rpc::reach`) do not count as a command;
//! everything else does, network impairments included (a fast boot would have been over
//! before them). A
//! machine started after the first command is not saved in that run.
//!
//! **Networks.** Machines sharing a vlan (transitively: a *component*) are restored only
//! from one save (one *cut*), so that whatever one saw of the other at the save is true of
//! the other too. Per component the cut covering the most of its members wins; the others
//! boot normally, and then every started machine of the component is saved again as a new
//! cut, the restored ones included (their state holds no effect of the script yet).

use std::time::SystemTime;

/// The component of each machine: machines sharing a vlan, transitively, get the same number
/// (the smallest index among them).
pub fn components(vlans: &[Vec<u32>]) -> Vec<usize> {
    let mut comp: Vec<usize> = (0..vlans.len()).collect();
    let mut changed = true;
    while changed {
        changed = false;
        for a in 0..vlans.len() {
            for b in a + 1..vlans.len() {
                let shared = vlans[a].iter().any(|v| vlans[b].contains(v));
                if shared && comp[a] != comp[b] {
                    let low = comp[a].min(comp[b]);
                    comp[a] = low;
                    comp[b] = low;
                    changed = true;
                }
            }
        }
    }
    comp
}

/// A checkpoint a machine could restore from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub cut: String,
    pub last_used: SystemTime,
}

/// Per machine, the cut to restore from (see the module documentation): within each
/// component the cut that most members have, the most recently used on a tie.
pub fn choose_cuts(comp: &[usize], candidates: &[Vec<Candidate>]) -> Vec<Option<String>> {
    let mut chosen = vec![None; comp.len()];
    let mut roots: Vec<usize> = comp.to_vec();
    roots.sort_unstable();
    roots.dedup();
    for root in roots {
        let members: Vec<usize> = (0..comp.len()).filter(|&i| comp[i] == root).collect();
        let mut best: Option<(usize, SystemTime, &str)> = None;
        for &i in &members {
            for c in &candidates[i] {
                let count = members
                    .iter()
                    .filter(|&&j| candidates[j].iter().any(|o| o.cut == c.cut))
                    .count();
                let better = match best {
                    None => true,
                    Some((n, t, _)) => count > n || (count == n && c.last_used > t),
                };
                if better {
                    best = Some((count, c.last_used, &c.cut));
                }
            }
        }
        if let Some((_, _, cut)) = best {
            for &i in &members {
                if candidates[i].iter().any(|c| c.cut == cut) {
                    chosen[i] = Some(cut.to_owned());
                }
            }
        }
    }
    chosen
}

/// Where a started machine is, as the save decision sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// Not started (or stopped again).
    Idle,
    /// Booting: not ready yet.
    Starting,
    /// Being restored from this cut.
    Restoring(String),
    /// Its shell answers; `restored` names the cut it came from.
    Ready { restored: Option<String> },
    /// Exited or failed before its shell was ready.
    Failed,
}

/// What to do with the held first command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Some started machine is still booting.
    Wait,
    /// Save these machines (all at one instant), then release the command.
    Save(Vec<usize>),
    /// Nothing to save: release the command.
    Release,
}

/// The cut a machine came (or is coming) from.
fn restored_from(b: &Boot) -> Option<&str> {
    match b {
        Boot::Ready { restored } => restored.as_deref(),
        Boot::Restoring(cut) => Some(cut),
        _ => None,
    }
}

/// Decide once the first command arrived. `keyed[i]`: machine `i` has a checkpoint key.
///
/// When every started machine is restored or being restored, one cut per component, nothing
/// will be saved: the command may go at once (a restore that fails boots normally, and that
/// machine is then not saved in this run).
pub fn decide(comp: &[usize], boot: &[Boot], keyed: &[bool]) -> Decision {
    let restoring_only = boot
        .iter()
        .all(|b| matches!(b, Boot::Idle) || restored_from(b).is_some());
    if restoring_only && one_cut_per_component(comp, boot) {
        return Decision::Release;
    }
    if boot
        .iter()
        .any(|b| matches!(b, Boot::Starting | Boot::Restoring(_)))
    {
        return Decision::Wait;
    }
    let mut save = Vec::new();
    let mut roots: Vec<usize> = comp.to_vec();
    roots.sort_unstable();
    roots.dedup();
    for root in roots {
        let members: Vec<usize> = (0..comp.len()).filter(|&i| comp[i] == root).collect();
        let started: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&i| boot[i] != Boot::Idle)
            .collect();
        let failed = started.iter().any(|&i| boot[i] == Boot::Failed);
        let unkeyed = members.iter().any(|&i| !keyed[i]);
        if started.is_empty() || failed || unkeyed {
            continue;
        }
        let cuts: Vec<Option<&str>> = started.iter().map(|&i| restored_from(&boot[i])).collect();
        let one_cut = cuts[0].is_some() && cuts.iter().all(|c| *c == cuts[0]);
        if !one_cut {
            save.extend(started);
        }
    }
    if save.is_empty() {
        Decision::Release
    } else {
        Decision::Save(save)
    }
}

/// Every component's started machines come from a single cut.
fn one_cut_per_component(comp: &[usize], boot: &[Boot]) -> bool {
    (0..comp.len()).all(|i| {
        (0..comp.len())
            .filter(|&j| comp[j] == comp[i] && boot[j] != Boot::Idle)
            .all(|j| restored_from(&boot[j]) == restored_from(&boot[i]) || boot[i] == Boot::Idle)
    })
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
