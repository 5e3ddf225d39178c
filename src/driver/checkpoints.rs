//! Boot checkpoints in the driver (`--checkpoints DIR`): keying every configured machine and
//! choosing which entry each restores from when the run starts, and the loop's hooks into
//! the first-command gate ([`super::gate`]).
//!
//! The rule and its reasons are in [`crate::checkpoint::plan`]; the machine does the QMP and
//! shell work ([`crate::machine`]'s `checkpoint`); the directory is
//! [`crate::checkpoint::store`]'s. Nothing here fails a test: a checkpoint that cannot be
//! used or written is a warning and a normal boot.

use super::gate::Checkpoints;
use super::node::Node;
use super::save_group::Checkpointable;
use super::Driver;
use crate::checkpoint::key::{self, FileCache, Identity};
use crate::checkpoint::plan::{self, Candidate};
use crate::checkpoint::store::{self, Store};
use crate::machine::RestorePlan;
use crate::reactor::Ctx;
use crate::rpc::ops::Request;
use std::time::Instant;

impl Driver {
    /// Give every machine a vmgenid device when it may be saved and restored: with
    /// `--checkpoints`, `--keep-failed`, or a script that takes snapshots (a resumed capsule
    /// sets what each machine had). The device set
    /// of a saved and a restored QEMU must match, so it is on from the first boot; it makes
    /// a restored guest reseed its random number generator.
    pub(super) fn setup_vmgenid(&mut self) {
        let script_snapshots = self
            .opts
            .test_script
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .is_some_and(|t| memchr::memmem::find(&t, b"snapshot").is_some());
        let saved = self.opts.checkpoints.is_some() || self.opts.keep_failed.is_some();
        if !saved && !script_snapshots {
            return;
        }
        for m in self.machines.iter_mut().filter_map(Node::as_vm_mut) {
            m.set_vmgenid(!key::names_vmgenid(&m.start_command));
        }
    }

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
        if store.read_only() {
            self.log.debug(
                None,
                &format!(
                    "--checkpoints {}: read-only; machines restore from it, nothing is saved",
                    dir.display()
                ),
            );
        }
        let nographic = crate::machine::qemu::wants_nographic();
        let shape = format!("vmgenid{}", if nographic { " nographic" } else { "" });
        let shape_own = format!("own-{shape}");
        let mut cache = FileCache::default();
        let env = |v: &str| std::env::var(v).ok();
        let mut owns = Vec::new();
        let mut vlans = Vec::new();
        for (index, m) in self.machines.iter_mut().enumerate() {
            let Some(m) = m.as_vm_mut() else {
                // A container is not saved (it boots in well under a second); it is no
                // VM's peer in a key either.
                owns.push(None);
                vlans.push(Vec::new());
                continue;
            };
            if !m.extra_args.is_empty() {
                // QEMU refuses to migrate a vhost-user vsock device (the SSH backdoor).
                self.log.warning(
                    Some(&m.name),
                    "no checkpoint: the SSH backdoor's vhost-user vsock device cannot be saved",
                );
                owns.push(None);
                vlans.push(Vec::new());
                continue;
            }
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
                    lock: Some(lock),
                    fallback: true,
                    replay_console: true,
                })),
                Err(e) => self.log.warning(
                    Some(self.machines[i].name()),
                    &format!("the checkpoint is unusable ({e}); booting normally"),
                ),
            }
        }
        for (m, k) in self.machines.iter().zip(&keys) {
            if let Some(k) = k {
                self.log
                    .debug(Some(m.name()), &format!("checkpoint key {k}"));
            }
        }
        self.checkpoints = Some(Checkpoints::new(store, keys, comp));
    }

    /// Let a request through, or hold it as the first command (`None`).
    pub(super) fn checkpoint_admit(&mut self, req: Request) -> Option<Request> {
        let Some(ck) = self.checkpoints.as_mut() else {
            return Some(req);
        };
        let mut cx = Ctx {
            registry: self.poll.registry(),
            log: &mut self.log,
        };
        ck.admit(
            req,
            &mut self.machines,
            &mut cx,
            &self.extra_env,
            Instant::now(),
        )
    }

    /// True while the first command is held.
    pub(super) fn checkpoint_holding(&self) -> bool {
        self.checkpoints.as_ref().is_some_and(Checkpoints::holding)
    }

    /// The held command, once it may run.
    pub(super) fn checkpoint_released(&mut self) -> Option<Request> {
        self.checkpoints.as_mut()?.released()
    }

    /// Advance the gate: decide, save, release, commit.
    pub(super) fn checkpoint_turn(&mut self) {
        let Some(ck) = self.checkpoints.as_mut() else {
            return;
        };
        let mut cx = Ctx {
            registry: self.poll.registry(),
            log: &mut self.log,
        };
        ck.turn(
            &mut self.machines,
            &mut cx,
            Instant::now(),
            self.opts.shell_timeout,
            self.trace.as_ref(),
        );
    }

    /// While saved streams wait for their checksum, the loop must come back at once.
    pub(super) fn checkpoint_deadline(&self) -> Option<Instant> {
        self.checkpoints.as_ref()?.deadline()
    }

    /// At the end of the run (the machines are gone): finish a save whose streams were still
    /// being checksummed, remove what was not committed, release the entries' locks.
    pub(super) fn checkpoint_cleanup(&mut self) {
        let mut cx = Ctx {
            registry: self.poll.registry(),
            log: &mut self.log,
        };
        match self.checkpoints.as_mut() {
            Some(ck) => ck.cleanup(&mut self.machines, &mut cx),
            None => {
                for m in &mut self.machines {
                    m.set_restore_plan(None);
                }
            }
        }
    }
}
