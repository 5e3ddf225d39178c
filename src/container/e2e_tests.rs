//! End to end, before the driver knows containers: a real systemd-nspawn container (built by
//! `ci/build-container-root`, started by a `ci/mknspawn` script) and a real TCG VM (the tiny
//! guest) on vlan 1 of ntd's in-process switch, joined by ntd's tap and bridge, driven by a
//! small poll loop of the same members the driver uses. It needs root, `systemd-nspawn`,
//! `nsenter`, QEMU and `unshare`; a missing one fails the test (it never skips).
//!
//! The outer test builds the images and scripts, then runs the inner one (`#[ignore]`d: it
//! only runs that way) in fresh network and mount namespaces (`unshare --net --mount`), as
//! ntd's driver will isolate a run with containers; afterwards it checks that no process of
//! the run is left. The inner one checks commands (byte-exact output, status, timeout 124),
//! a guest-side wait loop, pings both ways through the switch (and the tap's counters),
//! shutdown and restart with a new leader, and cleanup of bridge, veths and netns.

use super::hostenv;
use super::{Container, ExecRequest, ExecResult, Phase, Readiness, Tools};
use crate::log::terminal::Terminal;
use crate::log::{Level, Logger};
use crate::machine::guest::WaitSpec;
use crate::machine::session::{ShellRequest, ShellResult};
use crate::machine::waits::{Pacing, Schedule, WaitCondition};
use crate::machine::Machine;
use crate::netlink::Netlink;
use crate::reactor::{self, Ctx, LoopMember, Owner};
use crate::vde::tap::VlanLink;
use crate::vde::{Switch, SwitchConfig, SwitchEvent};
use mio::{Events, Poll};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DIR_ENV: &str = "NTD_CONTAINER_E2E_DIR";
/// Set: the inner test isolates itself with [`hostenv::isolate`] (it runs single-threaded).
const ISOLATE_ENV: &str = "NTD_CONTAINER_E2E_ISOLATE";
const INNER: &str = "container::e2e_tests::inner_container_and_vm_on_one_vlan";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn last_line(cmd: &mut Command) -> String {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .expect("run a ci script");
    assert!(out.status.success(), "{cmd:?} failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .to_owned()
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Processes whose command line mentions `dir`.
fn processes_mentioning(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&needle) {
                found.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
    }
    found
}

#[test]
fn container_and_vm_reach_each_other_through_the_switch() {
    assert_eq!(
        rustix::process::geteuid().as_raw(),
        0,
        "containers need root"
    );
    let status = Command::new("bash")
        .args([
            "-c",
            "source \"$0\" && ensure_packages \"${NTD_CONTAINER_PACKAGES[@]}\"",
        ])
        .arg(repo().join("ci/lib.sh"))
        .status()
        .expect("bash");
    assert!(status.success(), "cannot install systemd-container");
    for tool in ["systemd-nspawn", "nsenter", "unshare", "journalctl", "ip"] {
        assert!(have(tool), "{tool} is missing");
    }
    let image = last_line(&mut Command::new(repo().join("ci/build-container-root")));
    let guest = last_line(&mut Command::new(repo().join("ci/build-tiny-guest")));
    let dir = PathBuf::from(format!("/tmp/ntd-e2e-nspawn-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let hosts = "vm1:192.168.1.1,c1:192.168.1.2,c2:192.168.1.3";
    let out = dir.to_string_lossy().into_owned();
    for (name, index) in [("c1", "2"), ("c2", "3")] {
        let args = [
            "--name", name, "--out", &out, "--root", &image, "--vlan", "1",
        ];
        let more = ["--index", index, "--hosts", hosts];
        last_line(
            Command::new(repo().join("ci/mknspawn"))
                .args(args)
                .args(more),
        );
    }
    // A start script that fails at once: upstream's message and its output, within seconds.
    let bad = dir.join("bin/run-bad-nspawn");
    std::fs::write(&bad, "#!/bin/sh\necho 'no container for you' >&2\nexit 3\n").unwrap();
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o755)).unwrap();
    last_line(Command::new(repo().join("ci/mkvm")).args([
        "--name",
        "vm1",
        "--out",
        &dir.to_string_lossy(),
        "--kernel",
        &format!("{guest}/kernel"),
        "--initrd",
        &format!("{guest}/initrd"),
        "--vlan",
        "1",
        "--index",
        "1",
        "--hosts",
        hosts,
        "--memory",
        "256",
    ]));

    // Once in namespaces made by `unshare`, once in the ones ntd makes itself (hostenv::isolate).
    let exe = std::env::current_exe().unwrap();
    let inner = |via_unshare: bool| {
        let mut cmd = if via_unshare {
            let mut c = Command::new("unshare");
            c.args(["--net", "--mount", "--propagation", "private", "--"])
                .arg(&exe);
            c
        } else {
            let mut c = Command::new(&exe);
            c.env(ISOLATE_ENV, "1");
            c
        };
        cmd.args([
            INNER,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_ENV, &dir);
        run_with_limit(cmd, Duration::from_secs(300))
    };
    let first = inner(true);
    let second = inner(false);
    let left = processes_mentioning(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        first.success(),
        "the inner test (under unshare) failed ({first})"
    );
    assert!(
        second.success(),
        "the inner test (isolating itself) failed ({second})"
    );
    assert!(left.is_empty(), "processes left behind: {left:?}");
    assert!(
        !Path::new("/run/netns/nixos-nspawn-c1").exists() && !have_link("br1"),
        "the host's network namespace was touched"
    );
}

fn have_link(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn run_with_limit(mut cmd: Command, limit: Duration) -> std::process::ExitStatus {
    let mut child = cmd.spawn().expect("spawn the inner test");
    let end = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the inner test did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The members of the mini driver and its loop.
struct Rig {
    poll: Poll,
    log: Logger,
    switch: Switch,
    vm: Machine,
    c: Container,
    c2: Container,
    bad: Container,
    /// Endpoints the switch opened for a process (the VM's QEMU).
    opened_by_pid: Vec<u32>,
}

impl Rig {
    /// One turn of the loop: wait for events (at most `max`), route them, run due timers.
    fn turn(&mut self, max: Duration) {
        let mut events = Events::with_capacity(256);
        let now = Instant::now();
        let deadline = [
            self.switch.next_deadline(),
            self.vm.next_deadline(),
            self.c.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min();
        let timeout = deadline.map_or(max, |d| d.saturating_duration_since(now).min(max));
        self.poll.poll(&mut events, Some(timeout)).expect("poll");
        let mut cx = Ctx {
            registry: self.poll.registry(),
            log: &mut self.log,
        };
        for ev in events.iter() {
            let (owner, slot) = reactor::split(ev.token());
            match Owner::from(owner) {
                Owner::Switch(0) => self.switch.handle_event(cx.registry, slot, ev),
                Owner::Machine(0) => self.vm.on_event(&mut cx, slot, ev),
                Owner::Machine(1) => self.c.on_event(&mut cx, slot, ev),
                Owner::Machine(2) => self.c2.on_event(&mut cx, slot, ev),
                Owner::Machine(3) => self.bad.on_event(&mut cx, slot, ev),
                other => panic!("event for {other:?}"),
            }
        }
        let now = Instant::now();
        if self.switch.next_deadline().is_some_and(|d| now >= d) {
            self.switch.on_timer(cx.registry, now);
        }
        if self.vm.next_deadline().is_some_and(|d| now >= d) {
            self.vm.on_timer(&mut cx, now);
        }
        for c in [&mut self.c, &mut self.c2, &mut self.bad] {
            if c.next_deadline().is_some_and(|d| now >= d) {
                c.on_timer(&mut cx, now);
            }
        }
        for ev in self.switch.drain_events() {
            if let SwitchEvent::PortOpened {
                endpoint,
                pid: Some(_),
                ..
            } = ev
            {
                self.opened_by_pid.push(endpoint);
            }
        }
    }

    fn until(&mut self, what: &str, limit: Duration, mut done: impl FnMut(&mut Rig) -> bool) {
        let end = Instant::now() + limit;
        while !done(self) {
            assert!(Instant::now() < end, "{what}: not within {limit:?}");
            self.turn(Duration::from_millis(100));
        }
    }

    fn run_in_container(&mut self, req: ExecRequest) -> ExecResult {
        self.run_in(1, req)
    }

    fn container(&mut self, n: usize) -> &mut Container {
        match n {
            1 => &mut self.c,
            2 => &mut self.c2,
            _ => &mut self.bad,
        }
    }

    fn run_in(&mut self, n: usize, req: ExecRequest) -> ExecResult {
        let mut cx = Ctx {
            registry: self.poll.registry(),
            log: &mut self.log,
        };
        let c = match n {
            1 => &mut self.c,
            2 => &mut self.c2,
            _ => &mut self.bad,
        };
        let id = c.run(&mut cx, &req).expect("run in the container");
        let mut result = None;
        self.until(req.describe(), Duration::from_secs(60), |r| {
            result = r.container(n).take_result(id);
            result.is_some()
        });
        result.unwrap()
    }

    fn sh(&mut self, command: &str) -> ExecResult {
        self.run_in_container(ExecRequest::Run {
            command: command.into(),
            timeout: Some(Duration::from_secs(30)),
        })
    }

    fn in_vm(&mut self, command: &str) -> ShellResult {
        let req = ShellRequest::Run {
            command: command.into(),
            timeout: Some(30.0),
        };
        self.vm
            .send_shell(self.poll.registry(), &req)
            .expect("send to the VM");
        let mut result = None;
        self.until(command, Duration::from_secs(60), |r| {
            result = r.vm.take_shell_result();
            result.is_some()
        });
        result.unwrap()
    }

    fn leader(&self) -> Option<i32> {
        leader_of(&self.c)
    }
}

fn leader_of(c: &Container) -> Option<i32> {
    match c.readiness() {
        Readiness::Ready(pid) => Some(pid),
        _ => None,
    }
}

#[test]
#[ignore = "run by container_and_vm_reach_each_other_through_the_switch in its own namespaces"]
fn inner_container_and_vm_on_one_vlan() {
    let dir = PathBuf::from(std::env::var_os(DIR_ENV).expect("run through the outer test"));
    if std::env::var_os(ISOLATE_ENV).is_some() {
        hostenv::isolate().expect("isolate the run (ntd's own namespaces)");
    } else {
        hostenv::after_new_netns().expect("prepare the new network namespace");
    }
    let mut notes = Vec::new();
    hostenv::prepare(&mut notes).expect("upstream's host preparation");
    let poll = Poll::new().unwrap();
    let log = Logger::new(Level::Debug, vec![Box::new(Terminal::stderr())]);
    let config = SwitchConfig::default();
    let owner = Owner::Switch(0).id();
    let mut switch =
        Switch::create(1, &dir.join("vde1.ctl"), owner, poll.registry(), config).expect("switch");
    let mut nl = Netlink::open().unwrap();
    let link = VlanLink::create(&mut switch, poll.registry(), &mut nl).expect("bridge and tap");
    let vm_script = dir.join("bin/run-vm1-vm");
    let vm = Machine::new("vm1", 0, &dir, &dir, &vm_script.to_string_lossy());
    let container = |name: &str, n: usize| {
        let script = dir.join(format!("bin/run-{name}-nspawn"));
        Container::new(
            name,
            n,
            &dir,
            &dir,
            &script.to_string_lossy(),
            Tools::from_env(),
        )
    };
    let (c, c2, bad) = (container("c1", 1), container("c2", 2), container("bad", 3));
    let opened_by_pid = Vec::new();
    let mut r = Rig {
        poll,
        log,
        switch,
        vm,
        c,
        c2,
        bad,
        opened_by_pid,
    };
    let capture = dir.join("vlan1.pcap");
    r.switch.start_capture(&capture).expect("capture");
    {
        let mut cx = Ctx {
            registry: r.poll.registry(),
            log: &mut r.log,
        };
        let vde = r.switch.dir().to_string_lossy().into_owned();
        r.vm.start(&mut cx, &[("QEMU_VDE_SOCKET_1".into(), vde)])
            .expect("start the VM");
        for c in [&mut r.c, &mut r.c2, &mut r.bad] {
            c.start(&mut cx).expect("start a container");
        }
    }
    r.until("containers ready", Duration::from_secs(60), |r| {
        r.leader().is_some() && leader_of(&r.c2).is_some()
    });
    let first_leader = r.leader();
    r.until(
        "the failing script reported",
        Duration::from_secs(10),
        |r| matches!(r.bad.readiness(), Readiness::Failed(_)),
    );
    let Readiness::Failed(msg) = r.bad.readiness() else {
        unreachable!()
    };
    assert!(
        msg.starts_with("systemd-nspawn process exited unexpectedly (code 3)"),
        "{msg}"
    );
    assert!(msg.contains("no container for you"), "{msg}");

    // Commands: byte-exact output, statuses, a timeout that ends the command's tree.
    let out = r.sh("echo hello; printf '\\000\\001\\377'; hostname");
    assert_eq!(
        (out.status, out.output.as_slice()),
        (0, &b"hello\n\x00\x01\xffc1\n"[..])
    );
    assert_eq!(r.sh("exit 3").status, 3);
    assert_eq!(
        r.sh("false | true").status,
        1,
        "pipefail, as upstream's wrapper sets it"
    );
    let t0 = Instant::now();
    let slow = r.run_in_container(ExecRequest::Run {
        command: "sleep 60; echo never".into(),
        timeout: Some(Duration::from_secs(1)),
    });
    assert_eq!((slow.status, slow.output.as_slice()), (124, &b""[..]));
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(
        r.sh("pgrep -x sleep || true").output,
        b"",
        "the timed-out sleep was killed"
    );

    // A guest-side wait loop, the VM's own, inside the container.
    r.sh("(sleep 0.5; touch /tmp/flag) >/dev/null 2>&1 &");
    let cond = WaitCondition::File {
        path: "/tmp/flag".into(),
    };
    let spec = WaitSpec {
        budget_secs: 20.0,
        pacing: Pacing::new(Schedule::Budget, Duration::ZERO),
    };
    let waited = r.run_in_container(ExecRequest::Wait {
        check: Box::new(cond.guest_check(Schedule::Budget)),
        spec: Box::new(spec),
    });
    assert!(waited.looped && waited.status == 0, "{waited:?}");
    // A wait whose condition never holds ends by itself when its budget is spent.
    let never = WaitCondition::File {
        path: "/nonexistent".into(),
    };
    let spec = WaitSpec {
        budget_secs: 1.0,
        pacing: Pacing::new(Schedule::Budget, Duration::ZERO),
    };
    let t0 = Instant::now();
    let gave_up = r.run_in_container(ExecRequest::Wait {
        check: Box::new(never.guest_check(Schedule::Budget)),
        spec: Box::new(spec),
    });
    assert!(gave_up.looped && gave_up.status != 0, "{gave_up:?}");
    assert!(t0.elapsed() >= Duration::from_secs(1) && t0.elapsed() < Duration::from_secs(10));

    // Both ways through bridge, tap and switch.
    r.until("VM shell ready", Duration::from_secs(120), |r| {
        r.vm.shell_ready()
    });
    let ping = r.sh("ping -c 1 -W 10 vm1");
    assert_eq!(
        ping.status,
        0,
        "container → VM: {}",
        String::from_utf8_lossy(&ping.output)
    );
    let ping = r.in_vm("ping -c 1 -W 10 192.168.1.2");
    assert_eq!(
        ping.status,
        0,
        "VM → container: {}",
        String::from_utf8_lossy(&ping.output)
    );
    let ports = r.switch.ports();
    let tap = ports
        .iter()
        .find(|p| p.endpoint == link.endpoint())
        .expect("tap port");
    assert!(
        tap.counters.frames_in > 0 && tap.counters.frames_out > 0,
        "{:?}",
        tap.counters
    );

    // Container to container: through the bridge alone.
    assert_eq!(r.sh("ping -c 1 -W 10 c2").status, 0, "c1 → c2");
    let back = r.run_in(
        2,
        ExecRequest::Run {
            command: "ping -c 1 -W 10 c1".into(),
            timeout: None,
        },
    );
    assert_eq!(back.status, 0, "c2 → c1");
    // Each container's systemd has a cgroup of its own (not one shared `payload`).
    let cg = |r: &mut Rig, n: usize| {
        let req = ExecRequest::Run {
            command: "cat /proc/1/cgroup".into(),
            timeout: None,
        };
        r.run_in(n, req).output
    };
    let (cg1, cg2) = (cg(&mut r, 1), cg(&mut r, 2));
    let host_view = |pid: Option<i32>| {
        std::fs::read_to_string(format!("/proc/{}/cgroup", pid.unwrap_or(0))).unwrap_or_default()
    };
    let (h1, h2) = (host_view(r.leader()), host_view(leader_of(&r.c2)));
    assert!(!cg1.is_empty() && !cg2.is_empty());
    assert_ne!(h1, h2, "both containers in one cgroup");
    // The shared directory is /tmp/shared inside.
    r.sh("echo from-c1 > /tmp/shared/hello");
    assert_eq!(
        std::fs::read(dir.join("shared-xchg/hello")).unwrap(),
        b"from-c1\n"
    );

    // Network faults see the tap like any port: a partition between the containers' tap and
    // the VM cuts container ↔ VM traffic; container ↔ container traffic keeps flowing.
    let vm_port = *r.opened_by_pid.first().expect("the VM's port");
    r.switch.label_endpoint(vm_port, 1).unwrap();
    r.switch.label_endpoint(link.endpoint(), 2).unwrap();
    r.switch.partition(vec![vec![1], vec![2]]).unwrap();
    assert_ne!(
        r.sh("ping -c 1 -W 2 vm1").status,
        0,
        "the partition let frames through"
    );
    assert_eq!(
        r.sh("ping -c 1 -W 10 c2").status,
        0,
        "c1 → c2 under the partition"
    );
    r.switch.heal();
    assert_eq!(r.sh("ping -c 1 -W 10 vm1").status, 0, "after heal");
    r.switch.stop_capture();
    let pcap = std::fs::read(&capture).unwrap();
    assert!(
        pcap.len() > 24 + 4 * (16 + 98),
        "the capture lacks the pings: {} bytes",
        pcap.len()
    );

    // Shutdown as upstream (systemctl poweroff), then a restart that finds the new leader.
    r.sh("systemctl poweroff");
    r.until("container exited", Duration::from_secs(60), |r| {
        r.c.phase() == Phase::Exited
    });
    r.c.finish_shutdown(r.poll.registry());
    {
        let mut cx = Ctx {
            registry: r.poll.registry(),
            log: &mut r.log,
        };
        r.c.start(&mut cx).expect("restart the container");
    }
    r.until("container ready again", Duration::from_secs(60), |r| {
        r.leader().is_some()
    });
    assert_ne!(r.leader(), first_leader);
    assert_eq!(r.sh("ping -c 1 -W 10 vm1").status, 0, "after the restart");

    // Cleanup: nothing of the run may be left.
    for c in [&mut r.c, &mut r.c2, &mut r.bad] {
        c.terminate(&mut r.log, r.poll.registry(), Duration::from_secs(30));
    }
    r.vm.terminate(&mut r.log, Duration::from_secs(10));
    r.until("everything gone", Duration::from_secs(60), |r| {
        r.c.gone() && r.c2.gone() && r.bad.gone() && r.vm.gone()
    });
    for c in [&mut r.c, &mut r.c2, &mut r.bad] {
        let problems = c.remove_files(r.poll.registry());
        assert!(problems.is_empty(), "{problems:?}");
    }
    r.vm.finish_shutdown(r.poll.registry());
    r.vm.remove_files();
    let Rig { poll, switch, .. } = r;
    let _ = switch.shutdown(poll.registry());
    link.remove(&mut nl).expect("remove the bridge");
    for name in ["br1", "vde-tap1", "c1-eth1", "c2-eth1"] {
        assert_eq!(nl.link_index(name).unwrap(), None, "{name} left behind");
    }
    for c in ["c1", "c2"] {
        let netns = format!("/run/netns/nixos-nspawn-{c}");
        assert!(!Path::new(&netns).exists(), "{netns} left behind");
    }
}
