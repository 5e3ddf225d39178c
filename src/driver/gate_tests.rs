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
