//! Unit tests of the first-command gate ([`crate::driver::gate`]) and the save group it uses,
//! with the controller's scripted machine ([`Fake`]) made checkpointable: which requests are
//! held, when the machines are saved, when the held request goes, what is committed.

use super::{Fake, World};
use crate::checkpoint::manifest::tests_support::sample_manifest;
use crate::checkpoint::plan::Boot;
use crate::checkpoint::store::Store;
use crate::driver::gate::Checkpoints;
use crate::driver::save_group::Checkpointable;
use crate::machine::{RestorePlan, SaveOutcome, SaveRequest};
use crate::reactor::Ctx;
use crate::rpc::ops::{decode, Request};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where a fake save is.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum SaveStage {
    #[default]
    None,
    Preparing,
    Prepared,
    Going,
    Cancelled,
    Released,
}

/// The checkpoint side of the scripted machine.
#[derive(Default)]
pub(super) struct FakeCkpt {
    pub(super) refuse: Option<String>,
    pub(super) requests: Vec<SaveRequest>,
    pub(super) stage: SaveStage,
    pub(super) outcome: Option<SaveOutcome>,
    pub(super) plan: Option<RestorePlan>,
    pub(super) restoring: Option<String>,
    pub(super) restored: Option<String>,
    pub(super) restore_error: Option<String>,
    pub(super) killed: bool,
    pub(super) gone: bool,
}

impl Checkpointable for Fake {
    fn checkpoint_boot(&self) -> Boot {
        if self.exited {
            Boot::Failed
        } else if !self.booted {
            Boot::Idle
        } else if let Some(cut) = &self.ckpt.restoring {
            Boot::Restoring(cut.clone())
        } else if self.connected {
            Boot::Ready {
                restored: self.ckpt.restored.clone(),
            }
        } else {
            Boot::Starting
        }
    }
    fn begin_save(&mut self, _: &mut Ctx<'_>, req: SaveRequest) -> Result<(), String> {
        if let Some(why) = self.ckpt.refuse.clone() {
            return Err(why);
        }
        self.ckpt.requests.push(req);
        self.ckpt.stage = SaveStage::Preparing;
        Ok(())
    }
    fn save_prepared(&self) -> bool {
        self.ckpt.stage == SaveStage::Prepared
    }
    fn save_go(&mut self, _: &mut Ctx<'_>) {
        if self.ckpt.stage == SaveStage::Prepared {
            self.ckpt.stage = SaveStage::Going;
        }
    }
    fn save_cancel(&mut self, _: &mut Ctx<'_>) {
        if self.ckpt.stage == SaveStage::Prepared {
            self.ckpt.stage = SaveStage::Cancelled;
            self.ckpt.outcome = Some(SaveOutcome::Failed("cancelled".into()));
        }
    }
    fn save_released(&self) -> bool {
        matches!(
            self.ckpt.stage,
            SaveStage::None | SaveStage::Cancelled | SaveStage::Released
        )
    }
    fn take_save_outcome(&mut self) -> Option<SaveOutcome> {
        self.ckpt.outcome.take()
    }
    fn set_restore_plan(&mut self, plan: Option<RestorePlan>) {
        self.ckpt.plan = plan;
    }
    fn has_restore_plan(&self) -> bool {
        self.ckpt.plan.is_some()
    }
    fn take_restore_error(&mut self) -> Option<String> {
        self.ckpt.restore_error.take()
    }
    fn restored_cut(&self) -> Option<&str> {
        self.ckpt.restored.as_deref()
    }
    fn kill(&mut self) {
        self.ckpt.killed = true;
    }
    fn gone(&self) -> bool {
        self.ckpt.gone
    }
}

/// A directory removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("ntd-gate-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn request(line: &str) -> Request {
    decode(line.as_bytes()).unwrap()
}

fn execute(machine: &str) -> Request {
    request(&format!(
        r#"{{"id":9,"op":"execute","machine":"{machine}","command":"true"}}"#
    ))
}

/// The machine's save finished: its stream is in its directory, the outcome is in.
pub(super) fn finish_save(m: &mut Fake) {
    let req = m.ckpt.requests.last().unwrap().clone();
    std::fs::write(req.tmp.join("ram"), b"migration stream").unwrap();
    let mut manifest = sample_manifest();
    manifest.key = req.key.clone();
    manifest.cut = req.cut.clone();
    manifest.files.clear();
    manifest.disks.clear();
    m.ckpt.outcome = Some(SaveOutcome::Saved {
        manifest,
        tmp: req.tmp,
    });
    m.ckpt.stage = SaveStage::Released;
}

struct Gated {
    w: World,
    gate: Checkpoints,
    _dir: TempDir,
}

impl Gated {
    fn new(tag: &str, machines: Vec<Fake>, comp: Vec<usize>) -> Gated {
        let dir = TempDir::new(tag);
        let store = Store::open(&dir.0, 1 << 30).unwrap();
        let keys = (0..machines.len())
            .map(|i| Some(format!("{i:032x}")))
            .collect();
        Gated {
            w: World::new(machines),
            gate: Checkpoints::new(store, keys, comp),
            _dir: dir,
        }
    }

    fn admit(&mut self, req: Request) -> Option<Request> {
        let mut cx = Ctx {
            registry: self.w.poll.registry(),
            log: &mut self.w.log,
        };
        let now = self.w.t0;
        self.gate
            .admit(req, &mut self.w.machines, &mut cx, &[], now)
    }

    fn turn_at(&mut self, secs: u64) {
        let mut cx = Ctx {
            registry: self.w.poll.registry(),
            log: &mut self.w.log,
        };
        let now: Instant = self.w.t0 + Duration::from_secs(secs);
        self.gate.turn(
            &mut self.w.machines,
            &mut cx,
            now,
            Duration::from_secs(100),
            None,
        );
    }
}

#[test]
fn the_first_guest_op_waits_for_its_booted_and_saved_machine_and_the_entry_is_committed() {
    let mut g = Gated::new("commit", vec![Fake::stopped("a")], vec![0]);
    let passive = [
        r#"{"op":"log","msg":"x"}"#,
        r#"{"id":1,"op":"start","machines":["a"]}"#,
        r#"{"id":2,"op":"console_log","machine":"a"}"#,
    ];
    for line in passive {
        assert!(g.admit(request(line)).is_some(), "{line} passes");
    }
    assert!(g.admit(execute("a")).is_none(), "the first command is held");
    assert!(g.gate.holding());
    assert_eq!(g.w.machines[0].starts, 1, "its machine boots now");
    assert!(
        g.admit(request(r#"{"id":3,"op":"state","machine":"a"}"#))
            .is_some(),
        "later passive ops still pass"
    );

    g.turn_at(1);
    assert!(g.w.machines[0].ckpt.requests.is_empty(), "still booting");
    g.w.machines[0].connected = true;
    g.turn_at(2);
    assert_eq!(g.w.machines[0].ckpt.requests.len(), 1, "saved once ready");
    assert!(g.gate.released().is_none());

    g.w.machines[0].ckpt.stage = SaveStage::Prepared;
    g.turn_at(3);
    assert_eq!(g.w.machines[0].ckpt.stage, SaveStage::Going);
    assert!(g.gate.released().is_none(), "held while stopped");

    finish_save(&mut g.w.machines[0]);
    g.turn_at(4);
    let released = g.gate.released().expect("released once running again");
    assert_eq!(released.id, Some(9));
    assert!(!g.gate.holding());
    let key = format!("{:032x}", 0);
    assert_eq!(g.gate.store().find(&key).len(), 1, "committed");
    assert!(g.w.lines.contains("checkpoint saved (key"));
    assert!(
        g.admit(execute("a")).is_some(),
        "the gate is closed: commands pass"
    );
}

#[test]
fn a_machine_that_cannot_be_saved_cancels_its_vlan_neighbour_and_nothing_is_committed() {
    let ready = |n: &str| Fake::new(n);
    let mut g = Gated::new(
        "tie",
        vec![ready("a"), ready("b"), ready("c")],
        vec![0, 0, 2],
    );
    assert!(g.admit(execute("a")).is_none());
    g.turn_at(0);
    for m in &g.w.machines {
        assert_eq!(m.ckpt.requests.len(), 1, "{} is saved", m.name);
    }
    g.w.machines[0].ckpt.stage = SaveStage::Prepared;
    g.w.machines[1].ckpt.outcome = Some(SaveOutcome::Impossible("a 9p Nix store".into()));
    g.w.machines[1].ckpt.stage = SaveStage::None;
    g.w.machines[2].ckpt.stage = SaveStage::Prepared;
    g.turn_at(1);
    assert_eq!(g.w.machines[0].ckpt.stage, SaveStage::Cancelled);
    assert_eq!(
        g.w.machines[2].ckpt.stage,
        SaveStage::Going,
        "another component goes"
    );
    finish_save(&mut g.w.machines[2]);
    g.turn_at(2);
    assert!(g.gate.released().is_some());
    assert!(g.gate.store().find(&format!("{:032x}", 0)).is_empty());
    assert!(g.gate.store().find(&format!("{:032x}", 1)).is_empty());
    assert_eq!(g.gate.store().find(&format!("{:032x}", 2)).len(), 1);
    assert!(g.w.lines.contains("no checkpoint: a 9p Nix store"));
    assert!(
        !g.w.machines[0].ckpt.requests[0].tmp.exists(),
        "the cancelled save's directory is gone"
    );
}

#[test]
fn restored_machines_of_one_cut_let_the_command_go_at_once() {
    let mut a = Fake::new("a");
    a.ckpt.restored = Some("c1".into());
    let mut b = Fake::new("b");
    b.ckpt.restoring = Some("c1".into());
    let mut g = Gated::new("restored", vec![a, b], vec![0, 0]);
    assert!(g.admit(execute("a")).is_none());
    g.turn_at(0);
    assert!(g.gate.released().is_some());
    assert!(g.w.machines.iter().all(|m| m.ckpt.requests.is_empty()));
}

#[test]
fn a_machine_that_never_opens_its_shell_releases_the_command_after_the_shell_timeout() {
    let mut g = Gated::new(
        "timeout",
        vec![Fake {
            connected: false,
            ..Fake::new("a")
        }],
        vec![0],
    );
    assert!(g.admit(execute("a")).is_none());
    g.turn_at(99);
    assert!(g.gate.released().is_none());
    g.turn_at(100);
    assert!(g.gate.released().is_some());
    assert!(g.w.lines.contains("did not open its shell in time"));
}

#[test]
fn a_machine_that_refuses_to_begin_is_reported_and_the_others_are_saved() {
    let mut a = Fake::new("a");
    a.ckpt.refuse = Some("the machine is not idle".into());
    let mut g = Gated::new("refuse", vec![a, Fake::new("b")], vec![0, 1]);
    assert!(g.admit(execute("b")).is_none());
    g.turn_at(0);
    assert!(g.w.lines.contains("no checkpoint: the machine is not idle"));
    assert_eq!(g.w.machines[1].ckpt.requests.len(), 1);
    g.w.machines[1].ckpt.stage = SaveStage::Prepared;
    g.turn_at(1);
    finish_save(&mut g.w.machines[1]);
    g.turn_at(2);
    assert!(g.gate.released().is_some());
}

#[test]
fn machines_not_started_before_the_gate_closed_lose_their_restore_plan_once() {
    let plan = || RestorePlan {
        entry: PathBuf::from("/nonexistent"),
        manifest: sample_manifest(),
        lock: None,
        fallback: true,
        replay_console: true,
    };
    let mut late = Fake::stopped("late");
    late.ckpt.plan = Some(plan());
    let mut a = Fake::new("a");
    a.ckpt.restored = Some("c".into());
    let mut g = Gated::new("plans", vec![a, late], vec![0, 1]);
    assert!(g.admit(execute("a")).is_none());
    g.turn_at(0);
    assert!(g.gate.released().is_some());
    assert!(!g.w.machines[1].has_restore_plan(), "a late machine boots");
    g.w.machines[1].ckpt.plan = Some(plan());
    g.turn_at(1);
    assert!(
        g.w.machines[1].has_restore_plan(),
        "a plan set later (a named restore) stays"
    );
}

#[test]
fn the_end_of_the_run_abandons_a_save_in_progress_and_removes_its_directory() {
    let mut g = Gated::new("abandon", vec![Fake::new("a")], vec![0]);
    assert!(g.admit(execute("a")).is_none());
    g.turn_at(0);
    let tmp = g.w.machines[0].ckpt.requests[0].tmp.clone();
    assert!(tmp.exists());
    let mut cx = Ctx {
        registry: g.w.poll.registry(),
        log: &mut g.w.log,
    };
    g.gate.cleanup(&mut g.w.machines, &mut cx);
    assert!(!tmp.exists());
    assert!(!g.gate.holding());
}

// -- named snapshots through the controller ------------------------------------------------

use crate::driver::pending::{Pending, Polled};
use crate::driver::save_group::SaveGroup;
use crate::driver::snapshots::{RestoreWork, SnapshotWork};
use crate::rpc::wire::{Answer, Responder};

fn reply(p: Polled) -> String {
    match p {
        Polled::Done(Answer::Line(l)) => l,
        other => panic!("not a reply line: {other:?}"),
    }
}

fn pending(p: Polled) -> Pending {
    match p {
        Polled::Waiting(op) => op,
        Polled::Done(a) => panic!("finished early: {a:?}"),
    }
}

fn plan(cut: &str) -> RestorePlan {
    let mut manifest = sample_manifest();
    manifest.cut = cut.into();
    RestorePlan {
        entry: PathBuf::from("/nonexistent"),
        manifest,
        lock: None,
        fallback: false,
        replay_console: false,
    }
}

#[test]
fn restore_ends_the_running_qemu_waits_until_it_is_gone_then_starts_from_the_snapshot() {
    let mut w = World::new(vec![Fake::new("m")]);
    let work = RestoreWork::for_test("s", vec![(0, Some(plan("c1")))], w.t0);
    let op = Pending::Restore {
        work: Box::new(work),
        out: Responder::new(Some(4)),
    };
    let op = pending(w.poll_at(op, 0.0));
    assert!(w.machines[0].ckpt.killed);
    assert_eq!(w.machines[0].starts, 0);
    // QEMU exited; its process group is not gone yet (a restore replaces its disk files).
    w.machines[0].booted = false;
    w.machines[0].exited = true;
    let op = pending(w.poll_at(op, 0.1));
    assert_eq!(w.machines[0].starts, 0);
    w.machines[0].ckpt.gone = true;
    let op = pending(w.poll_at(op, 0.2));
    assert!(w.machines[0].finished_shutdown);
    assert_eq!(w.machines[0].starts, 1, "started from the snapshot");
    assert_eq!(w.machines[0].ckpt.plan.as_ref().unwrap().manifest.cut, "c1");
    w.machines[0].exited = false;
    w.machines[0].connected = false;
    let op = pending(w.poll_at(op, 0.5));
    w.machines[0].connected = true;
    w.machines[0].ckpt.restored = Some("c1".into());
    assert_eq!(reply(w.poll_at(op, 1.0)), "{\"id\":4,\"ok\":null}\n");
}

#[test]
fn a_failed_restore_is_an_error_that_names_the_machine_and_a_stopped_one_only_stops() {
    let mut w = World::new(vec![Fake::stopped("a"), Fake::new("b")]);
    let work = RestoreWork::for_test("s", vec![(0, Some(plan("c1"))), (1, None)], w.t0);
    let op = Pending::Restore {
        work: Box::new(work),
        out: Responder::new(Some(5)),
    };
    let op = pending(w.poll_at(op, 0.0));
    assert_eq!(w.machines[0].starts, 1, "a stopped machine starts at once");
    assert!(
        w.machines[1].ckpt.killed,
        "b was not running at the snapshot"
    );
    w.machines[0].exited = true;
    w.machines[0].ckpt.restore_error = Some("this QEMU is version 8.2.0".into());
    w.machines[1].booted = false;
    w.machines[1].exited = true;
    w.machines[1].ckpt.gone = true;
    let line = reply(w.poll_at(op, 1.0));
    assert!(line.contains("\"MachineError\""), "{line}");
    assert!(
        line.contains("cannot restore snapshot 's': machine 'a': this QEMU is version 8.2.0"),
        "{line}"
    );
    assert_eq!(w.machines[1].starts, 0);
}

#[test]
fn a_restore_that_never_finishes_fails_at_its_deadline() {
    let mut w = World::new(vec![Fake::stopped("m")]);
    let work = RestoreWork::for_test("s", vec![(0, Some(plan("c1")))], w.t0);
    let op = pending(w.poll_at(
        Pending::Restore {
            work: Box::new(work),
            out: Responder::new(Some(6)),
        },
        0.0,
    ));
    assert_eq!(op.wake_at(), Some(w.at(600.0)));
    let op = pending(w.poll_at(op, 599.0));
    let line = reply(w.poll_at(op, 600.0));
    assert!(line.contains("not restored within 600 s"), "{line}");
}

#[test]
fn a_snapshot_is_committed_in_place_of_the_previous_one_or_fails_whole() {
    let dir = TempDir::new("snapshot");
    let mut w = World::new(vec![Fake::new("a"), Fake::new("b")]);
    let target = |m: usize| dir.0.join("0").join(m.to_string());
    std::fs::create_dir_all(target(0)).unwrap();
    std::fs::write(target(0).join("old"), b"previous snapshot").unwrap();
    let reqs = |dir: &TempDir, n: u32| {
        (0..2)
            .map(|m| {
                let tmp = dir.0.join(format!(".tmp-{n}-{m}"));
                std::fs::create_dir_all(&tmp).unwrap();
                let req = SaveRequest {
                    key: "snapshot 's'".into(),
                    cut: format!("cut{n}"),
                    tmp,
                    codec: crate::checkpoint::codec::Codec::Raw,
                };
                (m, 0, req)
            })
            .collect::<Vec<_>>()
    };
    let begin = |w: &mut World, n: u32| {
        let mut cx = Ctx {
            registry: w.poll.registry(),
            log: &mut w.log,
        };
        let (group, refused) = SaveGroup::begin(&mut w.machines, &mut cx, reqs(&dir, n), w.t0);
        assert!(refused.is_empty());
        Pending::Snapshot {
            work: Box::new(SnapshotWork::for_test(
                "s",
                group,
                (0..2).map(|m| (m, target(m))).collect(),
            )),
            out: Responder::new(Some(7)),
        }
    };

    let op = begin(&mut w, 1);
    let op = pending(w.poll_at(op, 0.0));
    for m in &mut w.machines {
        m.ckpt.stage = SaveStage::Prepared;
    }
    let op = pending(w.poll_at(op, 0.1));
    assert!(w.machines.iter().all(|m| m.ckpt.stage == SaveStage::Going));
    finish_save(&mut w.machines[0]);
    finish_save(&mut w.machines[1]);
    assert_eq!(reply(w.poll_at(op, 0.2)), "{\"id\":7,\"ok\":null}\n");
    assert!(target(0).join("manifest").exists() && target(0).join("ram").exists());
    assert!(!target(0).join("old").exists(), "replaced");
    assert!(w.lines.contains("snapshot 's' saved"));

    let op = begin(&mut w, 2);
    let op = pending(w.poll_at(op, 1.0));
    w.machines[0].ckpt.stage = SaveStage::Prepared;
    w.machines[1].ckpt.stage = SaveStage::None;
    w.machines[1].ckpt.outcome = Some(SaveOutcome::Impossible("a foreign 9p share".into()));
    let op = pending(w.poll_at(op, 1.1));
    assert_eq!(w.machines[0].ckpt.stage, SaveStage::Cancelled);
    let line = reply(w.poll_at(op, 1.2));
    assert!(
        line.contains("cannot take snapshot 's': ")
            && line.contains("machine 'b': a foreign 9p share"),
        "{line}"
    );
    let kept = std::fs::read_to_string(target(0).join("manifest")).unwrap();
    assert!(
        kept.contains("cut cut1"),
        "the earlier snapshot stays: {kept}"
    );
}
