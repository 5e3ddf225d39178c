//! End-to-end tests of boot checkpoints (`--checkpoints DIR`) on real tiny guests: a cold run
//! saves, a later run restores (working shell, the host's clock, fresh entropy, ntd's 9p
//! shares, vlan traffic), anything that changes the key boots cold, a damaged checkpoint
//! boots cold with a warning, concurrent runs share one directory, and nothing is left
//! behind (no process, no temporary entry).

// Tests may unwrap and panic: a failing assertion is their report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(240);
const SAVED: &str = "checkpoint saved (key ";
const RESTORED: &str = "restored from checkpoint (key ";

/// One machine's directory of test files, its checkpoint directory and its configuration.
struct Setup {
    dir: TestDir,
    ck: PathBuf,
    cfg: PathBuf,
}

impl Setup {
    fn new(tag: &str, machines: &[(&str, &[&str])], vlans: &[u32], script: &str) -> Setup {
        let dir = TestDir::new(tag);
        let vms: Vec<(String, PathBuf)> = machines
            .iter()
            .map(|(name, extra)| (name.to_string(), dir.tiny_vm(name, extra)))
            .collect();
        let refs: Vec<(&str, &Path)> = vms.iter().map(|(n, p)| (n.as_str(), p.as_path())).collect();
        let cfg = dir.config(&refs, vlans, 200, script);
        let ck = dir.path.join("ck");
        Setup { dir, ck, cfg }
    }

    fn run(&self) -> RunResult {
        self.run_with(&[])
    }

    fn run_with(&self, env: &[(&str, &str)]) -> RunResult {
        let mut cmd = self.dir.ntd();
        cmd.args(["-c", self.cfg.to_str().unwrap(), "--checkpoints"])
            .arg(&self.ck);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let r = run_with_limit(cmd, LIMIT);
        r.assert_code(0);
        self.dir.assert_clean();
        r
    }

    /// Entry directories in DIR; asserts that no temporary or trash directory is left.
    fn entries(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.ck)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        for p in &v {
            let name = p.file_name().unwrap().to_string_lossy();
            assert!(!name.starts_with('.'), "left behind in DIR: {name}");
        }
        v
    }
}

fn count(r: &RunResult, what: &str) -> usize {
    r.stderr.matches(what).count()
}

/// The value after `key ` on the script's output line starting with `key`.
fn printed<'a>(r: &'a RunResult, key: &str) -> &'a str {
    r.stdout
        .lines()
        .find_map(|l| l.strip_prefix(key).map(str::trim))
        .unwrap_or_else(|| panic!("no {key:?} line\n{}", r.log()))
}

#[test]
fn restore_gives_a_working_shell_the_hosts_clock_fresh_entropy_and_the_shares() {
    let s = Setup::new(
        "ckone",
        &[("machine", &[])],
        &[],
        test_script!("checkpoints/one_machine_reports_clock_entropy_and_shares.py"),
    );
    let cold = s.run();
    assert_eq!(count(&cold, SAVED), 1, "{}", cold.log());
    assert_eq!(count(&cold, RESTORED), 0, "{}", cold.log());
    assert_eq!(s.entries().len(), 1);

    let mut randoms = vec![printed(&cold, "urandom").to_owned()];
    for _ in 0..2 {
        let warm = s.run();
        assert_eq!(count(&warm, RESTORED), 1, "{}", warm.log());
        assert_eq!(
            count(&warm, SAVED),
            0,
            "a restored run saves nothing\n{}",
            warm.log()
        );
        assert!(!warm.stderr.contains("warning"), "{}", warm.log());
        assert_eq!(printed(&warm, "shell"), "works");
        // Within 1 s of the host (the tiny guest's busybox date sets whole seconds).
        let clock: Vec<f64> = printed(&warm, "clock-offset")
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        let (offset, rtt) = (clock[0], clock[1]);
        assert!(
            offset.abs() < 1.0 - rtt / 2.0,
            "clock {offset} s off (rtt {rtt})\n{}",
            warm.log()
        );
        randoms.push(printed(&warm, "urandom").to_owned());
        // The shares are this run's: the guest wrote into the new run's shared directory.
        let shared = s.dir.run_dir().join("shared-xchg/hello");
        assert_eq!(std::fs::read_to_string(&shared).unwrap(), "from-guest\n");
        std::fs::remove_file(shared).unwrap();
    }
    assert_ne!(
        randoms[1], randoms[2],
        "two restores read the same /dev/urandom bytes"
    );
    assert_ne!(randoms[0], randoms[1]);
    assert_eq!(s.entries().len(), 1);
}

#[test]
fn vlan_traffic_works_between_restored_machines() {
    let s = Setup::new(
        "ckvlan",
        &[
            ("alpha", &["--vlan", "1", "--index", "1"]),
            ("beta", &["--vlan", "1", "--index", "2"]),
        ],
        &[1],
        test_script!("checkpoints/vlan_pair_pings.py"),
    );
    let cold = s.run();
    assert_eq!(count(&cold, SAVED), 2, "{}", cold.log());
    let warm = s.run();
    assert_eq!(count(&warm, RESTORED), 2, "{}", warm.log());
    assert!(warm.stdout.contains("pinged both ways"), "{}", warm.log());
    // Both came from one save (one cut).
    let cuts: Vec<String> = s
        .entries()
        .iter()
        .map(|p| p.extension().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(cuts.len(), 2);
    assert_eq!(cuts[0], cuts[1]);
}

#[test]
fn a_changed_start_script_or_kernel_parameter_boots_cold_and_saves_anew() {
    let s = Setup::new(
        "ckkey",
        &[("machine", &[])],
        &[],
        "start_all()\nmachine.succeed('true')\n",
    );
    assert_eq!(count(&s.run(), SAVED), 1);
    assert_eq!(count(&s.run(), RESTORED), 1);
    // A kernel parameter through the environment the start script reads.
    let r = s.run_with(&[("QEMU_KERNEL_PARAMS", "ntd.test=1")]);
    assert_eq!(count(&r, RESTORED), 0, "{}", r.log());
    assert_eq!(count(&r, SAVED), 1, "{}", r.log());
    assert_eq!(s.entries().len(), 2);
    // The start script itself.
    let script = s.dir.path.join("vms/bin/run-machine-vm");
    let text = std::fs::read_to_string(&script).unwrap();
    std::fs::write(&script, text.replace("-m 256", "-m 320")).unwrap();
    let r = s.run();
    assert_eq!(count(&r, RESTORED), 0, "{}", r.log());
    assert_eq!(count(&r, SAVED), 1, "{}", r.log());
    assert_eq!(s.entries().len(), 3);
}

#[test]
fn a_corrupt_or_truncated_checkpoint_boots_cold_with_a_warning() {
    let s = Setup::new(
        "ckbad",
        &[("machine", &[])],
        &[],
        "start_all()\nprint(machine.succeed('echo fine'))\n",
    );
    s.run();
    let entry = s.entries().remove(0);
    let ram = entry.join("ram");
    // One flipped byte in the middle of the migration stream.
    let mut bytes = std::fs::read(&ram).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&ram, &bytes).unwrap();
    let r = s.run();
    assert!(
        r.stderr
            .contains("cannot restore from the checkpoint: ram: CRC-32"),
        "{}",
        r.log()
    );
    assert!(r.stderr.contains("booting normally"), "{}", r.log());
    assert_eq!(count(&r, RESTORED), 0, "{}", r.log());
    assert!(r.stdout.contains("fine"), "{}", r.log());
    // A truncated stream of the new entry.
    for e in s.entries() {
        let ram = e.join("ram");
        let len = std::fs::metadata(&ram).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&ram).unwrap();
        f.set_len(len / 3).unwrap();
    }
    let r = s.run();
    assert!(r.stderr.contains("(truncated?)"), "{}", r.log());
    assert_eq!(count(&r, RESTORED), 0, "{}", r.log());
    // A damaged manifest: every entry's.
    for e in s.entries() {
        let m = e.join("manifest");
        let text = std::fs::read_to_string(&m).unwrap();
        std::fs::write(&m, text.replacen("name machine", "name machinf", 1)).unwrap();
    }
    let r = s.run();
    assert!(
        r.stderr.contains("the checkpoint is unusable"),
        "{}",
        r.log()
    );
    assert!(r.stderr.contains("checksum does not match"), "{}", r.log());
    assert_eq!(count(&r, RESTORED), 0, "{}", r.log());
}

#[test]
fn a_changed_read_only_disk_image_boots_cold_with_a_warning() {
    let s = Setup::new(
        "ckro",
        &[("machine", &[])],
        &[],
        "start_all()\nprint(machine.succeed('echo fine'))\n",
    );
    // A read-only image the checkpoint does not copy (like a Nix store image).
    let image = s.dir.path.join("ro.img");
    std::fs::write(&image, vec![1u8; 3 << 20]).unwrap();
    let opts = format!(
        "-drive file={},format=raw,readonly=on,if=virtio",
        image.display()
    );
    let env = [("QEMU_OPTS", opts.as_str())];
    assert_eq!(count(&s.run_with(&env), SAVED), 1);
    let entry = s.entries().remove(0);
    let manifest = std::fs::read_to_string(entry.join("manifest")).unwrap();
    assert!(manifest.contains("\nrodisk 0 "), "{manifest}");
    assert_eq!(count(&s.run_with(&env), RESTORED), 1);
    // Same length, other bytes at its end: the same key, but not the same image.
    let mut bytes = std::fs::read(&image).unwrap();
    let last = bytes.len() - 1;
    bytes[last] = 2;
    std::fs::write(&image, bytes).unwrap();
    let r = s.run_with(&env);
    assert_eq!(count(&r, RESTORED), 0, "{}", r.log());
    assert!(
        r.stderr
            .contains("is not the one the checkpoint was saved with"),
        "{}",
        r.log()
    );
    assert!(r.stdout.contains("fine"), "{}", r.log());
}

#[test]
fn a_read_only_checkpoint_directory_restores_and_saves_nothing() {
    // What a Nix store path is to a test (nix/checkpoint.nix): DIR on a read-only mount.
    let s = Setup::new(
        "ckro-dir",
        &[("machine", &[])],
        &[],
        "start_all()\nprint(machine.succeed('echo fine'))\n",
    );
    assert_eq!(count(&s.run(), SAVED), 1);
    let before = s.entries();
    let mut cmd = std::process::Command::new("unshare");
    cmd.current_dir(&s.dir.path)
        .env("XDG_RUNTIME_DIR", s.dir.run_dir())
        .env("NTD_COLOR", "never")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            "mount --bind \"$1\" \"$1\" && mount -o remount,bind,ro \"$1\" && \
             touch \"$1/probe\" 2>/dev/null && exit 97; \
             exec \"$2\" -c \"$3\" --checkpoints \"$1\"",
        )
        .arg("sh")
        .arg(&s.ck)
        .arg(NTD)
        .arg(&s.cfg);
    let r = run_with_limit(cmd, LIMIT);
    r.assert_code(0);
    s.dir.assert_clean();
    assert_eq!(count(&r, RESTORED), 1, "{}", r.log());
    assert!(r.stdout.contains("fine"), "{}", r.log());
    assert!(!r.stderr.contains("warning"), "{}", r.log());
    assert_eq!(s.entries(), before);
}

#[test]
fn a_machine_started_after_the_first_command_is_not_saved() {
    let s = Setup::new(
        "cklate",
        &[("early", &[]), ("late", &[])],
        &[],
        test_script!("checkpoints/late_machine_is_not_saved.py"),
    );
    let r = s.run();
    assert_eq!(count(&r, SAVED), 1, "{}", r.log());
    assert!(r.stderr.contains("early: checkpoint saved"), "{}", r.log());
    let r = s.run();
    assert!(
        r.stderr.contains("early: restored from checkpoint"),
        "{}",
        r.log()
    );
    assert!(!r.stderr.contains("late: restored"), "{}", r.log());
}

#[test]
fn two_runs_at_once_share_one_directory() {
    let s = Setup::new(
        "ckpair",
        &[("machine", &[])],
        &[],
        "start_all()\nmachine.succeed('true')\n",
    );
    // Two runtime directories (one per run), one checkpoint directory.
    let other = TestDir::new("ckpair2");
    let run = |dir: &TestDir| {
        let mut cmd = dir.ntd();
        cmd.args(["-c", s.cfg.to_str().unwrap(), "--checkpoints"])
            .arg(&s.ck);
        run_with_limit(cmd, LIMIT)
    };
    let (a, b) = std::thread::scope(|scope| {
        let ta = scope.spawn(|| run(&s.dir));
        let b = run(&other);
        other.assert_clean();
        (ta.join().unwrap(), b)
    });
    a.assert_code(0);
    b.assert_code(0);
    s.dir.assert_clean();
    // Both saved (the same key, two cuts) or one lost the race; either way DIR is whole.
    let n = s.entries().len();
    assert!((1..=2).contains(&n), "{n} entries");
    let r = s.run();
    assert_eq!(count(&r, RESTORED), 1, "{}", r.log());
}

#[test]
fn an_unusable_checkpoint_directory_warns_and_boots_normally() {
    let s = Setup::new(
        "ckdir",
        &[("machine", &[])],
        &[],
        "start_all()\nprint(machine.succeed('echo fine'))\n",
    );
    std::fs::write(&s.ck, "a file, not a directory").unwrap();
    let r = s.run();
    assert!(r.stderr.contains("--checkpoints: "), "{}", r.log());
    assert!(r.stderr.contains("machines boot normally"), "{}", r.log());
    assert!(r.stdout.contains("fine"));
}

#[test]
fn a_debian_node_restores_with_its_disk_overlay_and_services() {
    // ci/run-test --work keeps the start scripts (and so their key) from run to run.
    let dir = TestDir::new("ckdeb");
    let work = dir.path.join("work");
    let ck = dir.path.join("ck");
    let run = || {
        let mut cmd = std::process::Command::new(repo().join("ci/run-test"));
        cmd.arg(repo().join("tests/scenarios/hello-world"))
            .arg("--work")
            .arg(&work)
            .args(["--", "--checkpoints"])
            .arg(&ck)
            .env("NTD", NTD)
            .env("NTD_COLOR", "never")
            .stdin(std::process::Stdio::null());
        let r = run_with_limit(cmd, Duration::from_secs(400));
        r.assert_code(0);
        dir.assert_clean();
        r
    };
    let cold = run();
    assert_eq!(count(&cold, SAVED), 1, "{}", cold.log());
    let warm = run();
    assert_eq!(count(&warm, RESTORED), 1, "{}", warm.log());
    assert!(!warm.stderr.contains("warning"), "{}", warm.log());
    // The root file system came back as the saved overlay (the start script found it in
    // place and did not create a fresh one), and the test's service answered on it.
    let entry = std::fs::read_dir(&ck)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let manifest = std::fs::read_to_string(entry.join("manifest")).unwrap();
    assert!(
        manifest.contains("\ndisk disk0 node1.qcow2\n"),
        "{manifest}"
    );
    eprintln!(
        "Debian hello-world: cold {:.1} s, restored {:.1} s",
        cold.elapsed.as_secs_f64(),
        warm.elapsed.as_secs_f64()
    );
}
