//! Unit tests of the pending-op controller ([`super`]) without QEMU: a scripted machine
//! implements [`Controlled`], time is whatever instant the test passes as the loop's `now`.

use super::*;
use crate::driver::control::ConnectWords;
use crate::hostcpu::parse::Verdict;
use crate::hostcpu::Stamp;
use crate::json::Value;
use crate::log::{Level, LogEvent, Logger, Sink};
use crate::machine::guest::{HostMessage, WaitSpec};
use crate::machine::qmp::QmpFailure;
use crate::machine::session::{ShellRequest, ShellResult};
use crate::machine::waits::WaitCondition;
use crate::machine::waits::{PaceMode, Pacing, Schedule};
use crate::machine::ShellDown;
use crate::machine::{Machine, MachineError};
use crate::reactor::Ctx;
use crate::rpc::requests::WaitLimits;
use mio::{Poll, Registry};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::Path;
use std::rc::Rc;

#[path = "gate_tests.rs"]
mod gate;
use gate::FakeCkpt;

/// A machine whose every answer the test sets.
struct Fake {
    name: String,
    booted: bool,
    exited: bool,
    fully_exited: bool,
    connected: bool,
    ready: bool,
    progress: StartProgress,
    down: ShellDown,
    shell_error: Option<String>,
    starts: u32,
    sent: Vec<ShellRequest>,
    result: Option<ShellResult>,
    abandoned: Option<String>,
    console: Vec<String>,
    events: VecDeque<Value>,
    qmp: Option<Result<Value, QmpFailure>>,
    finished_shutdown: bool,
    /// Saving and restoring (see `gate_tests.rs`).
    ckpt: FakeCkpt,
    words: ConnectWords,
    /// What the host told the request in flight.
    told: Vec<HostMessage>,
    /// The time the host withheld so far (the test moves it).
    withheld: Duration,
    verdict: Verdict,
}

impl Fake {
    fn new(name: &str) -> Fake {
        Fake {
            name: name.into(),
            booted: true,
            exited: false,
            fully_exited: false,
            connected: true,
            ready: true,
            progress: StartProgress::Starting,
            down: ShellDown::No,
            shell_error: None,
            starts: 0,
            sent: Vec::new(),
            result: None,
            abandoned: None,
            console: Vec::new(),
            events: VecDeque::new(),
            qmp: None,
            finished_shutdown: false,
            ckpt: FakeCkpt::default(),
            words: Machine::new("m", 0, Path::new("/"), Path::new("/"), "x").connect_words(),
            told: Vec::new(),
            withheld: Duration::ZERO,
            verdict: Verdict::Contended,
        }
    }

    fn stopped(name: &str) -> Fake {
        Fake {
            booted: false,
            connected: false,
            ready: false,
            ..Fake::new(name)
        }
    }
}

impl Controlled for Fake {
    fn name(&self) -> &str {
        &self.name
    }
    fn process_name(&self) -> &'static str {
        "QEMU"
    }
    fn connect_words(&self) -> ConnectWords {
        self.words.clone()
    }
    fn booted(&self) -> bool {
        self.booted
    }
    fn exited(&self) -> bool {
        self.exited
    }
    fn fully_exited(&self) -> bool {
        self.fully_exited
    }
    fn start(&mut self, _: &mut Ctx<'_>, _: &[(String, String)]) -> Result<(), MachineError> {
        self.starts += 1;
        self.booted = true;
        Ok(())
    }
    fn start_progress(&self) -> StartProgress {
        self.progress.clone()
    }
    fn finish_shutdown(&mut self, _: &Registry) {
        self.finished_shutdown = true;
    }
    fn exit_report(&self) -> String {
        format!("machine '{}': QEMU exited (exit code 1)", self.name)
    }
    fn connected(&self) -> bool {
        self.connected
    }
    fn shell_ready(&self) -> bool {
        self.ready
    }
    fn shell_down(&self, _: Instant) -> ShellDown {
        self.down.clone()
    }
    fn shell_error(&self) -> Option<String> {
        self.shell_error.clone()
    }
    fn send_shell(&mut self, _: &Registry, req: &ShellRequest) -> Result<(), MachineError> {
        self.sent.push(req.clone());
        self.ready = false;
        Ok(())
    }
    fn take_shell_result(&mut self) -> Option<ShellResult> {
        self.result.take()
    }
    fn abandon_shell(&mut self, reason: String) {
        self.abandoned = Some(reason);
    }
    fn tell_shell(&mut self, _: &Registry, m: HostMessage) -> bool {
        self.told.push(m);
        true
    }
    fn clock(&mut self, now: Instant, _: &mut Logger) -> Stamp {
        Stamp {
            wall: now,
            withheld: self.withheld,
        }
    }
    fn pace_verdict(&mut self, _: Option<u32>) -> Verdict {
        self.verdict
    }
    fn vcpu_waiting_share(&self) -> Option<u32> {
        None
    }
    fn console_report(&self) -> String {
        format!("machine '{}'; its last console lines: …", self.name)
    }
    fn console_tail_text(&self) -> String {
        "; its last console lines: …".into()
    }
    fn take_console_lines(&mut self) -> Vec<String> {
        std::mem::take(&mut self.console)
    }
    fn next_qmp_event(&mut self) -> Option<Value> {
        self.events.pop_front()
    }
    fn take_qmp_result(&mut self, _: u64) -> Option<Result<Value, QmpFailure>> {
        self.qmp.take()
    }
}

/// Every log line and block as text.
#[derive(Clone, Default)]
struct Lines(Rc<RefCell<Vec<String>>>);

impl Sink for Lines {
    fn event(&mut self, ev: &LogEvent<'_>) {
        let text = match ev {
            LogEvent::Line { msg, .. } => msg.to_string(),
            LogEvent::NestBegin { msg, .. } => format!("begin {msg}"),
            LogEvent::NestEnd { msg, ok, .. } => format!("end {msg} ok={ok}"),
            LogEvent::Serial { line, .. } => line.to_string(),
        };
        self.0.borrow_mut().push(text);
    }
}

impl Lines {
    fn contains(&self, needle: &str) -> bool {
        self.0.borrow().iter().any(|l| l.contains(needle))
    }
    fn count(&self, needle: &str) -> usize {
        self.0
            .borrow()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }
}

/// The controller's world: machines, a log that records, a poller nobody polls.
struct World {
    machines: Vec<Fake>,
    poll: Poll,
    log: Logger,
    lines: Lines,
    t0: Instant,
}

impl World {
    fn new(machines: Vec<Fake>) -> World {
        let lines = Lines::default();
        World {
            machines,
            poll: Poll::new().unwrap(),
            log: Logger::new(Level::Debug, vec![Box::new(lines.clone())]),
            lines,
            t0: Instant::now(),
        }
    }

    /// Poll `op` at `secs` after the start.
    fn poll_at(&mut self, op: Pending, secs: f64) -> Polled {
        let mut env = Env {
            machines: &mut self.machines,
            cx: Ctx {
                registry: self.poll.registry(),
                log: &mut self.log,
            },
            now: self.t0 + Duration::from_secs_f64(secs),
            extra_env: &[],
            shell_timeout: Duration::from_secs(100),
            trace: None,
            host_psi: None,
            epoch: self.t0,
        };
        op.poll(&mut env)
    }

    fn at(&self, secs: f64) -> Instant {
        self.t0 + Duration::from_secs_f64(secs)
    }

    /// A reading of a clock nothing withholds, at the start.
    fn start(&self) -> Stamp {
        Stamp::wall(self.t0)
    }
}

fn waiting(p: Polled) -> Pending {
    match p {
        Polled::Waiting(op) => op,
        Polled::Done(a) => panic!("finished early: {a:?}"),
    }
}

fn line(p: Polled) -> String {
    match p {
        Polled::Done(Answer::Line(l)) => l,
        other => panic!("not a reply line: {other:?}"),
    }
}

fn run(w: &World, command: &str, timeout: Option<Duration>, check_output: bool) -> Pending {
    let req = ShellRequest::Run {
        command: command.into(),
        timeout,
    };
    Pending::Run {
        op: ShellOp::new(0, req, w.t0),
        check_output,
        out: Responder::new(Some(7)),
    }
}

fn result(status: i32, output: &[u8]) -> ShellResult {
    ShellResult {
        status,
        output: output.to_vec(),
        truncated: 0,
        attempts: 0,
        looped: true,
        lost: 0,
    }
}

#[test]
fn connect_boots_a_stopped_machine_reminds_every_30_s_and_gives_up_at_the_shell_timeout() {
    let mut w = World::new(vec![Fake::stopped("m")]);
    let op = Pending::Connect {
        m: 0,
        stage: None,
        out: Responder::new(Some(1)),
    };
    let op = waiting(w.poll_at(op, 0.0));
    assert_eq!(w.machines[0].starts, 1);
    assert!(w
        .lines
        .contains("begin waiting for the VM to finish booting"));
    assert_eq!(op.wake_at(), Some(w.at(30.0)));
    let op = waiting(w.poll_at(op, 29.0));
    assert_eq!(w.lines.count("did not produce any data yet"), 0);
    let op = waiting(w.poll_at(op, 31.0));
    assert_eq!(w.lines.count("did not produce any data yet"), 1);
    assert_eq!(op.wake_at(), Some(w.at(61.0)));
    let op = waiting(w.poll_at(op, 61.0));
    let op = waiting(w.poll_at(op, 91.0));
    assert_eq!(w.lines.count("did not produce any data yet"), 3);
    assert_eq!(
        op.wake_at(),
        Some(w.at(100.0)),
        "the give-up comes before the next one"
    );
    let reply = line(w.poll_at(op, 100.0));
    assert!(reply.contains("\"RuntimeError\""), "{reply}");
    assert!(
        reply.contains("Shell did not start in time (100 s)"),
        "{reply}"
    );
    assert!(w
        .lines
        .contains("end waiting for the VM to finish booting ok=false"));
    assert_eq!(w.machines[0].starts, 1);
}

#[test]
fn connect_without_give_up_reminds_with_its_own_words_until_ready() {
    let mut stopped = Fake::stopped("c");
    stopped.words = ConnectWords {
        waiting: "waiting for the container",
        connected: "container ready",
        reminder_every: Duration::from_secs(10),
        reminder: vec!["still waiting for container 'c'".into()],
        gives_up: false,
    };
    let mut w = World::new(vec![stopped]);
    let op = Pending::Connect {
        m: 0,
        stage: None,
        out: Responder::new(Some(1)),
    };
    let op = waiting(w.poll_at(op, 0.0));
    assert!(w.lines.contains("begin waiting for the container"));
    assert_eq!(op.wake_at(), Some(w.at(10.0)));
    let op = waiting(w.poll_at(op, 10.0));
    let op = waiting(w.poll_at(op, 500.0));
    assert_eq!(w.lines.count("still waiting for container 'c'"), 2);
    assert_eq!(
        op.wake_at(),
        Some(w.at(510.0)),
        "no give-up at the shell timeout"
    );
    w.machines[0].connected = true;
    assert_eq!(line(w.poll_at(op, 501.0)), "{\"id\":1,\"ok\":null}\n");
    assert!(w.lines.contains("container ready"));
}

#[test]
fn connect_finishes_once_connected_and_says_how_long_it_took() {
    let mut w = World::new(vec![Fake::stopped("m")]);
    let op = Pending::Connect {
        m: 0,
        stage: None,
        out: Responder::new(Some(1)),
    };
    let op = waiting(w.poll_at(op, 0.0));
    w.machines[0].connected = true;
    assert_eq!(line(w.poll_at(op, 2.5)), "{\"id\":1,\"ok\":null}\n");
    assert!(w.lines.contains("(connecting took 2.50 seconds)"));
    assert!(w
        .lines
        .contains("end waiting for the VM to finish booting ok=true"));
}

#[test]
fn connect_to_a_machine_that_stopped_by_itself_fails_instead_of_booting_it() {
    let mut w = World::new(vec![Fake {
        exited: true,
        ..Fake::stopped("m")
    }]);
    let op = Pending::Connect {
        m: 0,
        stage: None,
        out: Responder::new(Some(1)),
    };
    let reply = line(w.poll_at(op, 0.0));
    assert!(reply.contains("\"MachineError\""), "{reply}");
    assert!(reply.contains("call m.start() to boot it again"), "{reply}");
    assert_eq!(w.machines[0].starts, 0);
}

#[test]
fn command_is_sent_once_the_shell_is_ready_and_answered_with_its_result() {
    let mut w = World::new(vec![Fake {
        ready: false,
        ..Fake::new("m")
    }]);
    let op = waiting(w.poll_at(run(&w, "echo hi", None, true), 0.0));
    assert!(w.machines[0].sent.is_empty(), "the shell was busy");
    w.machines[0].ready = true;
    let op = waiting(w.poll_at(op, 0.1));
    assert_eq!(w.machines[0].sent.len(), 1);
    assert_eq!(op.wake_at(), None, "no timeout: no deadline");
    w.machines[0].result = Some(result(0, b"hi\n"));
    assert_eq!(
        line(w.poll_at(op, 0.2)),
        "{\"id\":7,\"ok\":{\"status\":0,\"output\":\"aGkK\",\"truncated\":0}}\n"
    );
}

#[test]
fn command_without_check_output_answers_once_sent_without_a_status() {
    let mut w = World::new(vec![Fake::new("m")]);
    assert_eq!(
        line(w.poll_at(run(&w, "reboot", None, false), 0.0)),
        "{\"id\":7,\"ok\":{\"status\":null,\"output\":\"\",\"truncated\":0}}\n"
    );
    assert_eq!(w.machines[0].sent.len(), 1);
}

#[test]
fn unanswered_command_is_killed_at_its_timeout_and_abandoned_after_the_grace() {
    let mut w = World::new(vec![Fake::new("m")]);
    let op = run(&w, "sleep 99", Some(Duration::from_secs(10)), true);
    let op = waiting(w.poll_at(op, 0.0));
    assert_eq!(op.wake_at(), Some(w.at(10.0)));
    let op = waiting(w.poll_at(op, 10.0));
    assert_eq!(w.machines[0].told, vec![HostMessage::Kill]);
    assert!(!w.lines.contains("withheld"), "not stretched, not said");
    // Then 15 s, plus 1/20 of 10 s, for the answer.
    assert_eq!(op.wake_at(), Some(w.at(25.5)));
    let op = waiting(w.poll_at(op, 25.4));
    assert!(w.machines[0].abandoned.is_none());
    let reply = line(w.poll_at(op, 25.5));
    assert!(reply.contains("\"MachineError\""), "{reply}");
    assert!(
        reply.contains("did not answer `sleep 99` within 26 s"),
        "{reply}"
    );
    assert!(w.machines[0].abandoned.is_some());
    assert_eq!(w.machines[0].told.len(), 1, "killed once");
}

#[test]
fn lost_shell_waits_for_qemu_to_settle_then_fails_the_command() {
    let mut w = World::new(vec![Fake::new("m")]);
    let op = waiting(w.poll_at(run(&w, "cat /x", None, true), 0.0));
    w.machines[0].down = ShellDown::Settling(w.at(3.0));
    let op = waiting(w.poll_at(op, 1.0));
    w.machines[0].down = ShellDown::Yes("machine 'm': QEMU exited (signal 9)".into());
    let reply = line(w.poll_at(op, 3.0));
    assert!(
        reply.contains("Shell disconnected while running `cat /x`: machine 'm': QEMU exited"),
        "{reply}"
    );
}

#[test]
fn output_the_console_lost_is_an_error() {
    let mut w = World::new(vec![Fake::new("m")]);
    let op = waiting(w.poll_at(run(&w, "cat big", None, true), 0.0));
    w.machines[0].result = Some(ShellResult {
        lost: 10,
        ..result(0, b"partial")
    });
    let reply = line(w.poll_at(op, 1.0));
    assert!(
        reply.contains("10 bytes of the output of `cat big` never arrived"),
        "{reply}"
    );
}

fn wait_op(w: &World, limits: WaitLimits) -> Pending {
    let condition = WaitCondition::File { path: "/x".into() };
    let (budget, final_slice) = WaitOp::slice(limits);
    let req = ShellRequest::Wait {
        check: Box::new(condition.guest_check(Schedule::Budget)),
        spec: Box::new(WaitSpec {
            budget,
            pacing: Pacing::new(Schedule::Budget, limits.age, PaceMode::Budget, false),
        }),
    };
    Pending::Wait {
        op: ShellOp::new(0, req, w.t0),
        wait: WaitOp {
            condition,
            limits,
            final_slice,
        },
        out: Responder::new(Some(3)),
    }
}

#[test]
fn wait_slice_is_the_time_left_or_a_polling_slice() {
    let limits = |timeout: Option<u64>, age: u64, slice: Option<u64>| WaitLimits {
        timeout: timeout.map(Duration::from_secs),
        age: Duration::from_secs(age),
        withheld: Duration::ZERO,
        slice: slice.map(Duration::from_secs),
    };
    assert_eq!(
        WaitOp::slice(limits(Some(10), 4, None)),
        (Duration::from_secs(6), true)
    );
    assert_eq!(
        WaitOp::slice(limits(Some(10), 4, Some(2))),
        (Duration::from_secs(2), false)
    );
    assert_eq!(
        WaitOp::slice(limits(Some(10), 9, Some(2))),
        (Duration::from_secs(1), true)
    );
    assert_eq!(
        WaitOp::slice(limits(Some(10), 12, None)),
        (Duration::ZERO, true)
    );
    assert!(WaitOp::slice(limits(None, 0, None)).1);
}

#[test]
fn wait_met_not_yet_and_timed_out_are_a_reply_a_reply_and_an_error() {
    let mut w = World::new(vec![Fake::new("m")]);
    let sliced = WaitLimits {
        timeout: Some(Duration::from_secs(10)),
        age: Duration::from_secs(1),
        withheld: Duration::ZERO,
        slice: Some(Duration::from_secs(2)),
    };
    let op = waiting(w.poll_at(wait_op(&w, sliced), 0.0));
    w.machines[0].result = Some(result(1, b""));
    assert_eq!(
        line(w.poll_at(op, 2.0)),
        "{\"id\":3,\"ok\":{\"met\":false,\"output\":\"\",\"started\":0.0}}\n"
    );
    w.machines[0].ready = true;
    let op = waiting(w.poll_at(wait_op(&w, sliced), 0.0));
    w.machines[0].result = Some(result(0, b"x"));
    assert!(line(w.poll_at(op, 0.5)).contains("\"met\":true"));
    w.machines[0].ready = true;
    let last = WaitLimits {
        slice: None,
        ..sliced
    };
    let op = waiting(w.poll_at(wait_op(&w, last), 0.0));
    w.machines[0].result = Some(result(1, b""));
    let reply = line(w.poll_at(op, 9.0));
    assert!(reply.contains("\"RequestedAssertionFailed\""), "{reply}");
    assert!(
        reply.contains("action timed out after 10.00 seconds (timeout=10.0)"),
        "{reply}"
    );
}

#[test]
fn console_wait_answers_lines_an_exit_or_its_timeout() {
    let mut w = World::new(vec![Fake::new("m")]);
    let op = |w: &World| Pending::ConsoleWait {
        m: 0,
        deadline: Deadline::within(w.start(), Some(Duration::from_secs(2))),
        out: Responder::new(Some(4)),
    };
    let pending = waiting(w.poll_at(op(&w), 1.0));
    assert_eq!(pending.wake_at(), Some(w.at(2.0)));
    assert_eq!(
        line(w.poll_at(pending, 2.0)),
        "{\"id\":4,\"ok\":{\"lines\":[],\"exited\":false,\"timed_out\":true,\"clock\":2.0}}\n"
    );
    w.machines[0].console.push("login:".into());
    assert!(line(w.poll_at(op(&w), 0.5))
        .contains("\"lines\":[\"login:\"],\"exited\":false,\"timed_out\":false"));
    w.machines[0].booted = false;
    assert!(line(w.poll_at(op(&w), 0.5)).contains("\"exited\":true"));
}

#[test]
fn qmp_event_and_results_answer_the_event_none_or_qemus_error() {
    let mut w = World::new(vec![Fake::new("m")]);
    let event = |w: &World| Pending::QmpEvent {
        m: 0,
        deadline: Deadline::within(w.start(), Some(Duration::from_secs(1))),
        out: Responder::new(Some(5)),
    };
    let pending = waiting(w.poll_at(event(&w), 0.5));
    assert_eq!(line(w.poll_at(pending, 1.0)), "{\"id\":5,\"ok\":null}\n");
    w.machines[0]
        .events
        .push_back(Value::parse(b"{\"event\":\"STOP\"}").unwrap());
    assert_eq!(
        line(w.poll_at(event(&w), 0.0)),
        "{\"id\":5,\"ok\":{\"event\":\"STOP\"}}\n"
    );
    w.machines[0].qmp = Some(Err(QmpFailure::Error {
        class: "GenericError".into(),
        desc: "no".into(),
    }));
    let reply = line(w.poll_at(
        Pending::Hmp {
            m: 0,
            qid: 1,
            out: Responder::new(Some(6)),
        },
        0.0,
    ));
    assert!(
        reply.contains("\"qmp\":{\"class\":\"GenericError\",\"desc\":\"no\"}"),
        "{reply}"
    );
}

#[test]
fn wait_exit_drains_output_then_forgets_the_process_or_times_out() {
    let mut w = World::new(vec![Fake::new("m")]);
    let op = |w: &World| Pending::WaitExit {
        m: 0,
        deadline: Deadline::within(w.start(), Some(Duration::from_secs(5))),
        drain: None,
        out: Responder::new(Some(8)),
    };
    let reply = line(w.poll_at(op(&w), 5.0));
    assert!(reply.contains("\"TimeoutError\""), "{reply}");
    assert!(reply.contains("m: QEMU did not exit in time"), "{reply}");
    w.machines[0].exited = true;
    let pending = waiting(w.poll_at(op(&w), 1.0));
    assert_eq!(
        pending.wake_at(),
        Some(w.at(3.0)),
        "its output is read 2 s more"
    );
    assert!(!w.machines[0].finished_shutdown);
    assert_eq!(line(w.poll_at(pending, 3.0)), "{\"id\":8,\"ok\":null}\n");
    assert!(w.machines[0].finished_shutdown);
}

#[test]
fn start_waits_for_every_machine_and_lists_every_failure_for_start_all() {
    let mut w = World::new(vec![Fake::new("a"), Fake::new("b")]);
    let op = |all| Pending::Start {
        machines: vec![0, 1],
        all,
        errors: Vec::new(),
        out: Responder::new(Some(9)),
    };
    w.machines[0].progress = StartProgress::Up;
    let pending = waiting(w.poll_at(op(true), 0.0));
    w.machines[1].progress = StartProgress::Failed("QEMU process exited with code 1".into());
    let reply = line(w.poll_at(pending, 1.0));
    assert!(
        reply.contains("Failed to start the following machines:\\nb: QEMU process exited"),
        "{reply}"
    );
    let reply = line(w.poll_at(op(false), 0.0));
    assert!(
        reply.contains("\"msg\":\"QEMU process exited with code 1\""),
        "{reply}"
    );
    w.machines[1].progress = StartProgress::Up;
    assert_eq!(line(w.poll_at(op(false), 0.0)), "{\"id\":9,\"ok\":null}\n");
}

#[path = "pending_time_tests.rs"]
mod time;
