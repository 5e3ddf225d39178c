//! Real clients against `ntd vde-switch`: Debian's `vde_plug` (check with `ldd`: on Debian 12
//! it is vdeplug4's, like QEMU's libvdeplug) and a QEMU `-netdev vde` bridged through a QEMU hub
//! to slirp (`-netdev user,restrict=on`), so that an ARP request for 10.0.2.2 injected with
//! vde_plug is answered by slirp through the whole libvdeplug path. No guest kernel: the
//! machine is `-M none` (not `-S`: a stopped VM holds QEMU's net queues). Skips with a message
//! only when a program is missing (NTD_REQUIRE_INTEROP=1 turns that into a failure).

// Tests may unwrap and panic: a failing assertion is their report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod vdecommon;

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use vdecommon::vdeclient::*;
use vdecommon::{require_program, Scratch, SwitchKind, SwitchProc};

const T: Duration = Duration::from_secs(3);

/// `vde_plug DIR`: frames on stdin/stdout as a 2-byte big-endian length plus the frame.
struct VdePlug {
    child: Child,
    stdin: Option<ChildStdin>,
    frames: Receiver<Vec<u8>>,
}

impl VdePlug {
    fn start(dir: &std::path::Path) -> VdePlug {
        let mut child = Command::new("vde_plug")
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn vde_plug");
        let mut out = child.stdout.take().unwrap();
        let (tx, frames) = channel();
        std::thread::spawn(move || loop {
            let mut len = [0u8; 2];
            if out.read_exact(&mut len).is_err() {
                break;
            }
            let mut f = vec![0u8; u16::from_be_bytes(len) as usize];
            if out.read_exact(&mut f).is_err() || tx.send(f).is_err() {
                break;
            }
        });
        let stdin = child.stdin.take();
        VdePlug {
            child,
            stdin,
            frames,
        }
    }

    fn send(&mut self, frame: &[u8]) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin
            .write_all(&(frame.len() as u16).to_be_bytes())
            .unwrap();
        stdin.write_all(frame).unwrap();
        stdin.flush().unwrap();
    }

    /// The next frame satisfying `want` within `timeout` (others are skipped).
    fn recv_matching(&self, timeout: Duration, want: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.frames.recv_timeout(left) {
                Ok(f) if want(&f) => return Some(f),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Close stdin: vde_plug exits and its port closes.
    fn close(mut self) -> std::process::ExitStatus {
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for VdePlug {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Collect "port N opened"/"closed" lines from the switch's stderr until `n` match `what`.
fn wait_for_log(sw: &SwitchProc, log: &mut Vec<String>, what: &str, n: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if log.iter().filter(|l| l.contains(what)).count() >= n {
            return true;
        }
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return false;
        };
        if let Ok(line) = sw.stderr.recv_timeout(left) {
            log.push(line);
        }
    }
}

struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn vde_plug_and_qemu_exchange_frames_through_ntd_switch() {
    let (Some(_), Some(_)) = (
        require_program("vde_plug"),
        require_program("qemu-system-x86_64"),
    ) else {
        return;
    };
    let s = Scratch::new("interop");
    let dir = s.join("vde1.ctl");
    let sw = SwitchProc::start(SwitchKind::Ntd, &dir, &[]);
    let mut log = Vec::new();

    let mut p1 = VdePlug::start(&dir);
    let mut p2 = VdePlug::start(&dir);
    let qemu = Qemu(
        Command::new("qemu-system-x86_64")
            .args(["-M", "none,accel=tcg", "-nodefaults", "-display", "none"])
            .args(["-netdev", &format!("vde,id=v0,sock={}", dir.display())])
            .args(["-netdev", "user,id=u0,restrict=on"])
            .args(["-netdev", "hubport,id=h0,hubid=0,netdev=v0"])
            .args(["-netdev", "hubport,id=h1,hubid=0,netdev=u0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn qemu"),
    );
    assert!(
        wait_for_log(&sw, &mut log, " opened (", 3),
        "3 clients connect: {log:?}"
    );
    assert_eq!(
        log.iter()
            .filter(|l| l.contains("opened") && l.contains("\"QEMU user="))
            .count(),
        1,
        "{log:?}"
    );
    assert_eq!(
        log.iter()
            .filter(|l| l.contains("opened") && l.contains("vdeplug"))
            .count(),
        2,
        "{log:?}"
    );

    // vde_plug <-> vde_plug, byte for byte, tagged and full-size frames included.
    let me = mac(0x31);
    for f in [
        patterned(60, me, 1),
        tagged(me, 10),
        patterned(1514, me, 2),
        patterned(1518, me, 3),
    ] {
        p1.send(&f);
        let got = p2
            .recv_matching(T, |g| g[6..12] == me)
            .expect("frame reaches the other vde_plug");
        assert_eq!(got, f);
    }
    let other = mac(0x32);
    let back = patterned(100, other, 4);
    p2.send(&back);
    assert_eq!(p1.recv_matching(T, |g| g[6..12] == other), Some(back));

    // vde_plug -> switch -> QEMU (vdeplug4) -> hub -> slirp, and the ARP reply all the way back.
    let arp = arp_request(me, [10, 0, 2, 15], [10, 0, 2, 2]);
    p1.send(&arp);
    let reply = p1.recv_matching(T, |g| is_arp_reply(g, me, [10, 0, 2, 2]));
    assert!(
        reply.is_some(),
        "slirp's ARP reply came back through QEMU's libvdeplug and the switch"
    );
    assert_eq!(
        p2.recv_matching(T, |g| is_arp_reply(g, me, [10, 0, 2, 2])),
        reply,
        "hub mode: the third port sees the reply too"
    );

    // Disconnects: QEMU killed, one vde_plug closed; both ports go away.
    drop(qemu);
    assert!(wait_for_log(&sw, &mut log, " closed (", 1), "{log:?}");
    assert!(
        log.iter()
            .any(|l| l.contains(" closed (") && l.contains("QEMU")),
        "{log:?}"
    );
    assert!(p1.close().success());
    assert!(wait_for_log(&sw, &mut log, " closed (", 2), "{log:?}");
    let last = patterned(64, other, 5);
    p2.send(&last);

    drop(p2);
    let (status, out, _) = sw.stop();
    eprintln!("switch log: {log:#?}\nstdout: {out:#?}");
    assert!(status.success(), "{status:?}");
    let stats = out
        .iter()
        .find(|l| l.contains("stats"))
        .expect("counters at exit");
    assert!(
        stats.contains("accepted=3") && stats.contains("rejected=0"),
        "{stats}"
    );
    assert!(!dir.exists(), "switch removed its directory");
}

#[test]
fn vde_plug_refused_by_missing_switch_and_served_after_start() {
    let Some(_) = require_program("vde_plug") else {
        return;
    };
    let s = Scratch::new("late");
    let dir = s.join("sw");
    std::fs::create_dir(&dir).unwrap();

    let early = Command::new("vde_plug")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(
        !early.success(),
        "no switch yet: vde_plug fails (as QEMU would)"
    );

    let sw = SwitchProc::start(SwitchKind::Ntd, &dir, &[]);
    let mut a = VdePlug::start(&dir);
    let dir2 = dir.clone();
    let b = VdeClient::connect(
        &dir2,
        ClientOptions::described("rust client"),
        &mut vdecommon::sleepy(),
    )
    .unwrap();
    let f = patterned(1514, mac(0x41), 9);
    // vde_plug may still be connecting; resend until the rust client hears it.
    let mut got = None;
    for _ in 0..30 {
        a.send(&f);
        got = b.recv(Duration::from_millis(100), &mut vdecommon::sleepy());
        if got.is_some() {
            break;
        }
    }
    assert_eq!(got, Some(f));
    let g = patterned(64, mac(0x42), 1);
    b.send(&g).unwrap();
    assert_eq!(a.recv_matching(T, |x| x[6..12] == mac(0x42)), Some(g));
    drop(b);
    assert!(a.close().success());
    let (status, _, _) = sw.stop();
    assert!(status.success());
}
