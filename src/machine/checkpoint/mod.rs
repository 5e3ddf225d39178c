//! Saving a running machine into a checkpoint ([`save`]) and starting a machine from one
//! ([`restore`]): small state machines advanced by the machine's own events and timers, never
//! blocking (QMP answers and migration progress are awaited, the migration stream is
//! checksummed a few megabytes per loop turn).
//!
//! While either runs, the machine is not `connected()` for the test: its shell carries ntd's
//! own commands (9p shares, clock, entropy). The driver decides when to save and what to
//! restore (`driver::checkpoints`, by the rule of [`crate::checkpoint::plan`]); what goes on
//! disk is [`crate::checkpoint::store`]'s business.

mod restore;
mod save;

use super::boot::Milestone;
use super::session::ShellRequest;
use super::{Machine, Phase};
use crate::checkpoint::manifest::Manifest;
use crate::checkpoint::plan::Boot;
use crate::checkpoint::store::EntryLock;
use crate::child::ExitInfo;
use crate::json::{obj, Value};
use crate::reactor::Ctx;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

pub(crate) use save::{SaveOutcome, SaveRequest};

/// How often migration progress is polled (`query-migrate`; a QMP round trip is cheap).
const POLL_MIGRATION: Duration = Duration::from_millis(10);
/// Longest wait for one step (a QMP answer, one of ntd's shell commands).
const STEP_PATIENCE: Duration = Duration::from_secs(60);
/// Longest migration (a stream of a few hundred MB takes seconds).
const MIGRATION_PATIENCE: Duration = Duration::from_secs(600);
/// Bytes checksummed per loop turn (~1 ms from the page cache).
const CHECKSUM_BUDGET: usize = 4 << 20;
/// QMP events of ntd's own save and restore, kept from the test.
const OWN_EVENTS: &[&str] = &["STOP", "RESUME", "MIGRATION", "MIGRATION_PASS"];

/// A checkpoint to start the machine from (chosen by the driver; the lock keeps the entry
/// from being evicted while it is read).
#[derive(Debug)]
pub(crate) struct RestorePlan {
    pub entry: PathBuf,
    pub manifest: Manifest,
    /// Held (never read): its shared `flock` keeps the entry from eviction (`None`: a
    /// run-private snapshot or a capsule, which nobody evicts).
    #[allow(dead_code)]
    pub lock: Option<EntryLock>,
    /// A boot checkpoint: when the restore fails, boot normally. Otherwise (a named
    /// snapshot, a capsule) the machine stays stopped and the failure is reported.
    pub fallback: bool,
    /// Replay the saved console lines into the log and console buffer (a boot checkpoint:
    /// its boot's lines; a named snapshot continues the run's own console instead).
    pub replay_console: bool,
}

/// The machine's checkpoint state (one field of [`Machine`]).
#[derive(Default)]
pub(crate) struct Checkpointing {
    /// Restore from this at the next start.
    pub plan: Option<RestorePlan>,
    /// Append `-device vmgenid` to every boot (checkpoints are on: the device set of a saved
    /// and a restored QEMU must match, and the restored guest reseeds its CRNG from it).
    pub vmgenid: bool,
    op: Option<Op>,
    /// The environment of the last start (a failed restore boots again with it).
    env: Vec<(String, String)>,
    outcome: Option<SaveOutcome>,
    /// The cut this boot was restored from.
    restored: Option<String>,
    /// Why the last restore without fallback failed (taken by whoever asked for it).
    restore_error: Option<String>,
}

enum Op {
    Save(Box<save::Save>),
    Restore(Box<restore::Restore>),
}

impl Checkpointing {
    /// True while ntd's own checkpoint work owns the machine's shell.
    pub fn busy(&self) -> bool {
        match &self.op {
            None => false,
            Some(Op::Save(s)) => s.owns_machine(),
            Some(Op::Restore(_)) => true,
        }
    }
}

/// Where one QMP command of a step is.
#[derive(Debug, Clone, Copy)]
struct Pending {
    id: u64,
    give_up: Instant,
}

impl Machine {
    /// Submit one of ntd's own QMP commands.
    fn ckpt_qmp(
        &mut self,
        cx: &mut Ctx<'_>,
        name: &str,
        args: Option<Value>,
    ) -> Result<Pending, String> {
        self.qmp_execute(cx.registry, name, args)
            .map(|id| Pending {
                id,
                give_up: Instant::now() + STEP_PATIENCE,
            })
            .map_err(|e| format!("QMP {name}: {e}"))
    }

    /// The answer to `p`, an error when it failed or never came in time.
    fn ckpt_qmp_result(&mut self, p: Pending) -> Option<Result<Value, String>> {
        match self.take_qmp_result(p.id) {
            Some(r) => Some(r.map_err(|e| e.to_string())),
            None if Instant::now() >= p.give_up => Some(Err("QEMU did not answer in time".into())),
            None => None,
        }
    }

    /// Submit one of ntd's own shell commands (no guest-side timeout: the step's patience
    /// applies on the host).
    fn ckpt_shell(&mut self, cx: &mut Ctx<'_>, command: String) -> Result<Instant, String> {
        let req = ShellRequest::Run {
            command,
            timeout: None,
        };
        self.send_shell(cx.registry, &req)
            .map(|()| Instant::now() + STEP_PATIENCE)
            .map_err(|e| e.to_string())
    }

    /// The result of ntd's own shell command: `(status, output)`; an error when the shell
    /// did not answer by `give_up` (the request is abandoned).
    fn ckpt_shell_result(&mut self, give_up: Instant) -> Option<Result<(i32, Vec<u8>), String>> {
        if let Some(r) = self.session.take_result() {
            return Some(Ok((r.status, r.output)));
        }
        if self.session.lost() || Instant::now() >= give_up {
            self.session
                .abandon("ntd's checkpoint command got no answer".into());
            return Some(Err("the guest shell did not answer ntd's command".into()));
        }
        None
    }

    /// `query-migrate`'s status, for the polling steps: `Ok(true)` completed, `Ok(false)`
    /// still running, `Err` failed.
    fn migration_status(v: &Value) -> Result<bool, String> {
        match v.get("status").and_then(Value::as_str) {
            Some("completed") => Ok(true),
            Some(s @ ("failed" | "cancelled")) => Err(format!(
                "migration {s}: {}",
                v.get("error-desc")
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given")
            )),
            _ => Ok(false),
        }
    }

    /// Host wall clock in microseconds since the epoch.
    fn now_us() -> i64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64)
    }

    /// Advance the checkpoint work after events or timers.
    pub(super) fn advance_checkpoint(&mut self, cx: &mut Ctx<'_>) {
        self.ckpt.op = match self.ckpt.op.take() {
            None => None,
            Some(Op::Save(mut s)) => (!self.advance_save(cx, &mut s)).then_some(Op::Save(s)),
            Some(Op::Restore(mut r)) => {
                (!self.advance_restore(cx, &mut r)).then_some(Op::Restore(r))
            }
        };
    }

    /// The next moment the checkpoint work needs the loop.
    pub(super) fn checkpoint_deadline(&self) -> Option<Instant> {
        match &self.ckpt.op {
            None => None,
            Some(Op::Save(s)) => s.deadline(),
            Some(Op::Restore(r)) => r.deadline(),
        }
    }

    /// QEMU exited while a restore ran: boot normally instead (true), or nothing to do here.
    pub(super) fn checkpoint_exit(&mut self, cx: &mut Ctx<'_>, info: ExitInfo) -> bool {
        let restoring = matches!(&self.ckpt.op, Some(Op::Restore(_)));
        let Some(Op::Restore(mut r)) = self.ckpt.op.take() else {
            return false;
        };
        if !r.falling_back() && self.killed {
            // Ended by ntd (cleanup, timeout): no second boot.
            return false;
        }
        debug_assert!(restoring);
        if !r.fallback() {
            // A named snapshot or a capsule: no normal boot instead; the machine stops here.
            r.remove_disk_copies(&self.paths.state_dir);
            let why = r
                .error
                .take()
                .unwrap_or_else(|| format!("QEMU exited ({info}) while restoring"));
            cx.log.warning(
                Some(&self.name),
                &format!(
                    "cannot restore from {}: {why}; the machine is stopped",
                    r.key()
                ),
            );
            self.ckpt.restore_error = Some(why);
            return false;
        }
        if !r.falling_back() {
            cx.log.warning(
                Some(&self.name),
                &format!("QEMU exited ({info}) while restoring the checkpoint; booting normally"),
            );
        }
        self.boot.mark(Milestone::Exited);
        self.release_fds(cx.registry);
        self.phase = Phase::Stopped;
        r.remove_disk_copies(&self.paths.state_dir);
        drop(r);
        let env = std::mem::take(&mut self.ckpt.env);
        if let Err(e) = self.start(cx, &env) {
            cx.log.error(&format!("{}: {e}", self.name));
            self.phase = Phase::Exited;
            self.exit = Some(info);
        }
        true
    }

    /// Arguments to append for checkpoints, and the restore's preparation (disk overlays
    /// copied back, the migration stream opened for checking). Called by `start` before it
    /// spawns QEMU.
    pub(super) fn checkpoint_args(
        &mut self,
        cx: &mut Ctx<'_>,
        env: &[(String, String)],
    ) -> Vec<String> {
        self.ckpt.env = env.to_vec();
        self.ckpt.restored = None;
        self.ckpt.restore_error = None;
        self.ckpt.op = None;
        let mut args = Vec::new();
        if self.ckpt.vmgenid {
            args.extend(["-device".to_owned(), "vmgenid,guid=auto".to_owned()]);
        }
        if let Some(plan) = self.ckpt.plan.take() {
            match restore::Restore::prepare(plan, &self.paths.state_dir) {
                Ok(r) => {
                    args.extend(["-incoming".to_owned(), "defer".to_owned()]);
                    self.ckpt.op = Some(Op::Restore(Box::new(r)));
                }
                Err(e) => cx.log.warning(
                    Some(&self.name),
                    &format!("cannot use the checkpoint ({e}); booting normally"),
                ),
            }
        }
        args
    }

    /// After `start` spawned QEMU: a restore of a boot checkpoint replays the boot's console
    /// lines.
    pub(super) fn checkpoint_spawned(&mut self, cx: &mut Ctx<'_>) {
        if let Some(Op::Restore(r)) = &mut self.ckpt.op {
            if !r.replays_console() {
                return;
            }
            let text = std::mem::take(&mut r.console);
            let mut lines = Vec::new();
            self.console.feed(text.as_bytes(), &mut lines);
            for l in lines {
                cx.log.serial(&self.name, &l);
            }
        }
    }

    /// Where this machine is, for the driver's save decision.
    pub(crate) fn checkpoint_boot(&self) -> Boot {
        match self.phase {
            Phase::Stopped => Boot::Idle,
            Phase::Exited => Boot::Failed,
            Phase::Spawned | Phase::Running => {
                let restoring = match &self.ckpt.op {
                    Some(Op::Restore(r)) if !r.falling_back() => Some(r.cut().to_owned()),
                    _ => None,
                };
                if let Some(cut) = restoring {
                    Boot::Restoring(cut)
                } else if self.session.unusable().is_some() {
                    Boot::Failed
                } else if self.connected() {
                    Boot::Ready {
                        restored: self.ckpt.restored.clone(),
                    }
                } else {
                    Boot::Starting
                }
            }
        }
    }

    /// Hand a checkpoint to restore at the next start (or take it back: `None`).
    pub(crate) fn set_restore_plan(&mut self, plan: Option<RestorePlan>) {
        self.ckpt.plan = plan;
    }

    pub(crate) fn has_restore_plan(&self) -> bool {
        self.ckpt.plan.is_some()
    }

    /// Why the last restore without fallback failed, once.
    pub(crate) fn take_restore_error(&mut self) -> Option<String> {
        self.ckpt.restore_error.take()
    }

    /// The cut the running machine was restored from, if it was.
    pub(crate) fn restored_cut(&self) -> Option<&str> {
        self.ckpt.restored.as_deref()
    }

    /// Append `-device vmgenid` to every boot from now on.
    pub(crate) fn set_vmgenid(&mut self, on: bool) {
        self.ckpt.vmgenid = on;
    }

    /// Whether ntd appends `-device vmgenid` to its boots.
    pub(crate) fn vmgenid(&self) -> bool {
        self.ckpt.vmgenid
    }
}

/// `{"uri": …}` for QMP's migrate commands: QEMU runs an `exec:` command with `/bin/sh -c`
/// (the commands are [`crate::checkpoint::codec`]'s).
fn exec_uri(command: String) -> Value {
    obj([("uri", Value::from(format!("exec:{command}")))])
}
