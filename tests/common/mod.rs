//! Shared helpers for end-to-end tests: build the tiny guest once, write start scripts and a
//! driver configuration into a short per-test directory, run the real `ntd` binary, and check
//! that nothing the run started is still alive afterwards.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const NTD: &str = env!("CARGO_BIN_EXE_ntd");

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The tiny guest's build directory (kernel, initrd), built or reused once per test binary.
pub fn tiny_guest() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new(repo().join("ci/build-tiny-guest"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run ci/build-tiny-guest");
        assert!(out.status.success(), "ci/build-tiny-guest failed");
        let text = String::from_utf8(out.stdout).unwrap();
        PathBuf::from(text.lines().last().expect("build dir").trim())
    })
}

/// The tiny guest with a framebuffer console (the bochs DRM driver, loaded at boot): what a
/// screenshot or OCR sees is the guest's tty1, not the firmware's last text screen (a PVH-booted
/// kernel never takes over the VGA text console). Built or reused once per test binary.
pub fn screen_guest() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new(repo().join("ci/build-tiny-guest"))
            .args(["--module", "bochs"])
            .stderr(Stdio::inherit())
            .output()
            .expect("run ci/build-tiny-guest");
        assert!(
            out.status.success(),
            "ci/build-tiny-guest --module bochs failed"
        );
        let text = String::from_utf8(out.stdout).unwrap();
        PathBuf::from(text.lines().last().expect("build dir").trim())
    })
}

/// The systemd-nspawn container root (`ci/build-container-root`), built or reused once per
/// test binary.
pub fn container_root() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new(repo().join("ci/build-container-root"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run ci/build-container-root");
        assert!(out.status.success(), "ci/build-container-root failed");
        let text = String::from_utf8(out.stdout).unwrap();
        PathBuf::from(text.lines().last().expect("image dir").trim())
    })
}

/// Containers need root and the host's container packages (ci/lib.sh's
/// `NTD_CONTAINER_PACKAGES`, installed here if missing); anything else fails the test.
pub fn require_containers() {
    assert_eq!(
        rustix::process::geteuid().as_raw(),
        0,
        "systemd-nspawn containers need root"
    );
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let status = Command::new("bash")
            .args([
                "-c",
                "set -euo pipefail; source \"$0\"; ensure_packages \"${NTD_CONTAINER_PACKAGES[@]}\"",
            ])
            .arg(repo().join("ci/lib.sh"))
            .stdout(Stdio::null())
            .status()
            .expect("run bash");
        assert!(status.success(), "cannot install the container packages");
    });
    for tool in ["systemd-nspawn", "nsenter", "journalctl", "ip", "unshare"] {
        ensure_host_tool(tool, "systemd-container");
    }
}

/// Make sure a host tool is there: install its Debian package with ci/lib.sh's
/// `ensure_packages` (as root, else through sudo), else fail with what to install.
pub fn ensure_host_tool(tool: &str, package: &str) {
    let found = |t: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if found(tool) {
        return;
    }
    static APT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = APT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if found(tool) {
        return;
    }
    let status = Command::new("bash")
        .args([
            "-c",
            "set -euo pipefail; source \"$0\"; ensure_packages \"$@\"",
        ])
        .arg(repo().join("ci/lib.sh"))
        .arg(package)
        .stdout(Stdio::null())
        .status()
        .expect("run bash");
    assert!(
        status.success() && found(tool),
        "{tool} is missing: install the Debian package {package}"
    );
}

/// The keys of a test script's header lines (`# machines: a, b`, `# vlans: 1`,
/// `# placeholder: @NAME@ example`, `# typecheck: skip (why)`): ci/typecheck reads them, the
/// driver never sees them.
pub const SCRIPT_HEADER_KEYS: &[&str] = &[
    "machines",
    "containers",
    "vlans",
    "placeholder",
    "typecheck",
];

/// A testScript of `tests/scripts/` as the driver runs it: the file without its leading header
/// lines, so that line numbers in the driver's reports count from the script's own first line.
/// A placeholder (`@PORT@`) is left for the test to replace.
#[allow(unused_macros)]
macro_rules! test_script {
    ($file:literal) => {
        $crate::common::strip_script_header(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/scripts/",
            $file
        )))
    };
}
#[allow(unused_imports)]
pub(crate) use test_script;

/// The host as the benches print it: cores, CPU model, and that guests run under TCG.
pub fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores, {cpu}; guests under TCG")
}

/// `text` without its leading header lines (see [`SCRIPT_HEADER_KEYS`]).
pub fn strip_script_header(text: &str) -> &str {
    let mut rest = text;
    while let Some((line, after)) = rest.split_once('\n') {
        let key = line
            .strip_prefix('#')
            .and_then(|l| l.split_once(':'))
            .map(|(k, _)| k.trim());
        match key {
            Some(k) if SCRIPT_HEADER_KEYS.contains(&k) => rest = after,
            _ => break,
        }
    }
    rest
}

/// A per-test directory with a short path (unix socket paths must stay under 108 bytes).
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    pub fn new(tag: &str) -> TestDir {
        let base = std::env::var("NTD_TEST_TMP").unwrap_or_else(|_| "/tmp".into());
        let path = PathBuf::from(base).join(format!(
            "ntd-{}-{}-{}",
            tag,
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
                % 100000
        ));
        std::fs::create_dir_all(path.join("run")).unwrap();
        TestDir { path }
    }

    pub fn run_dir(&self) -> PathBuf {
        self.path.join("run")
    }

    /// Write `run-<name>-vm` for the tiny guest; returns its path.
    pub fn tiny_vm(&self, name: &str, extra: &[&str]) -> PathBuf {
        self.vm_with(tiny_guest(), name, extra)
    }

    /// Write `run-<name>-vm` for the guest built in `guest` (kernel, initrd); returns its path.
    pub fn vm_with(&self, guest: &Path, name: &str, extra: &[&str]) -> PathBuf {
        // The kernel parameters the guest is built for (console=ttyS0, the boot-time tuning);
        // `ci/mkvm --guest tiny` adds them itself, --kernel/--initrd does not.
        let params = std::fs::read_to_string(guest.join("cmdline")).unwrap_or_default();
        let append = format!("--append={}", params.trim());
        let status = Command::new(repo().join("ci/mkvm"))
            .arg(&append)
            .args(["--name", name, "--out"])
            .arg(self.path.join("vms"))
            .arg("--kernel")
            .arg(guest.join("kernel"))
            .arg("--initrd")
            .arg(guest.join("initrd"))
            .args(["--memory", "256"])
            .args(extra)
            .stdout(Stdio::null())
            .status()
            .expect("run ci/mkvm");
        assert!(status.success(), "ci/mkvm failed");
        self.path.join(format!("vms/bin/run-{name}-vm"))
    }

    /// Write `run-<name>-nspawn` (`ci/mknspawn`) for a container of [`container_root`] on
    /// `vlans` (eth1, eth2, … in that order) with addresses `192.168.<vlan>.<index>` and
    /// `hosts` (`name:ip,…`) in its /etc/hosts; returns its path.
    pub fn container(&self, name: &str, vlans: &[u32], index: u32, hosts: &str) -> PathBuf {
        let mut cmd = Command::new(repo().join("ci/mknspawn"));
        cmd.args(["--name", name, "--out"])
            .arg(self.path.join("containers"))
            .arg("--root")
            .arg(container_root())
            .args(["--index", &index.to_string(), "--hosts", hosts]);
        for v in vlans {
            cmd.args(["--vlan", &v.to_string()]);
        }
        let status = cmd.stdout(Stdio::null()).status().expect("run ci/mknspawn");
        assert!(status.success(), "ci/mknspawn failed");
        self.path.join(format!("containers/bin/run-{name}-nspawn"))
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// A driver configuration (newest CLI form, every key nixpkgs' driver-configuration.nix
    /// writes, so the real upstream driver loads it too) for `machines` and a script.
    pub fn config(
        &self,
        machines: &[(&str, &Path)],
        vlans: &[u32],
        timeout: u32,
        script: &str,
    ) -> PathBuf {
        self.config_with(machines, &[], vlans, timeout, script)
    }

    /// [`TestDir::config`] with systemd-nspawn `containers` too.
    pub fn config_with(
        &self,
        machines: &[(&str, &Path)],
        containers: &[(&str, &Path)],
        vlans: &[u32],
        timeout: u32,
        script: &str,
    ) -> PathBuf {
        let script_path = self.write("test.py", script);
        let entries = |list: &[(&str, &Path)]| -> String {
            let v: Vec<String> = list
                .iter()
                .map(|(n, p)| {
                    format!(
                        "\"{n}\": {{\"name\": \"{n}\", \"start_script\": \"{}\"}}",
                        p.display()
                    )
                })
                .collect();
            v.join(", ")
        };
        let vl: Vec<String> = vlans.iter().map(|v| v.to_string()).collect();
        self.write(
            "driver.json",
            &format!(
                "{{\"vms\": {{{}}}, \"containers\": {{{}}}, \"vlans\": [{}], \"global_timeout\": {timeout}, \"enable_ssh_backdoor\": false, \"test_script\": \"{}\"}}",
                entries(machines),
                entries(containers),
                vl.join(", "),
                script_path.display()
            ),
        )
    }

    /// The `ntd` command with this directory as its runtime directory.
    pub fn ntd(&self) -> Command {
        let mut c = Command::new(NTD);
        c.current_dir(&self.path)
            .env("XDG_RUNTIME_DIR", self.run_dir())
            .env("NTD_COLOR", "never")
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY");
        c
    }

    /// Another driver: `peer` (a command line, word-split by sh) run as `PEER --config CONFIG`
    /// with this directory as its runtime directory, as `ci/bench --peer` runs one.
    pub fn peer(&self, peer: &str, config: &Path) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!("exec {peer} --config \"$0\""))
            .arg(config)
            .current_dir(&self.path)
            .env("XDG_RUNTIME_DIR", self.run_dir());
        c
    }

    /// Run `ntd` with `args`; panics if it runs longer than `limit`.
    pub fn run(&self, args: &[&str], limit: Duration) -> RunResult {
        let mut cmd = self.ntd();
        cmd.args(args);
        run_with_limit(cmd, limit)
    }

    /// Processes still alive whose command line mentions this directory, or whose working or
    /// root directory lies in it (a container's processes).
    pub fn leftovers(&self) -> Vec<String> {
        let needle = self.path.to_string_lossy().into_owned();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if pid == std::process::id() {
                continue;
            }
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let inside = |link: &str| {
                std::fs::read_link(entry.path().join(link))
                    .is_ok_and(|p| p.starts_with(&self.path) && p != Path::new("/"))
            };
            if text.contains(&needle) || inside("cwd") || inside("root") {
                found.push(format!("{pid}: {text}"));
            }
        }
        found
    }

    pub fn assert_clean(&self) {
        let left = self.leftovers();
        assert!(left.is_empty(), "processes left behind: {left:#?}");
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

pub struct RunResult {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl RunResult {
    pub fn log(&self) -> String {
        format!("--- stdout\n{}\n--- stderr\n{}", self.stdout, self.stderr)
    }

    pub fn assert_code(&self, code: i32) {
        assert_eq!(
            self.code,
            Some(code),
            "unexpected exit status\n{}",
            self.log()
        );
    }
}

pub fn run_with_limit(cmd: Command, limit: Duration) -> RunResult {
    run_with_input(cmd, limit, None)
}

/// Like [`run_with_limit`]; with `input`, the child's stdin is a pipe that gets `input` and
/// is then closed (EOF), else stdin is inherited.
pub fn run_with_input(mut cmd: Command, limit: Duration, input: Option<&str>) -> RunResult {
    let start = Instant::now();
    if input.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ntd");
    if let Some(text) = input {
        let mut w = child.stdin.take().unwrap();
        let text = text.to_owned();
        std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut w, text.as_bytes());
        });
    }
    let out_pipe = child.stdout.take().unwrap();
    let err_pipe = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || read_all(out_pipe));
    let t_err = std::thread::spawn(move || read_all(err_pipe));
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ntd ran longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    RunResult {
        code,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
        elapsed: start.elapsed(),
    }
}

fn read_all(mut r: impl std::io::Read) -> String {
    let mut v = Vec::new();
    let _ = r.read_to_end(&mut v);
    String::from_utf8_lossy(&v).into_owned()
}

/// Check a JUnit XML file against the JUnit schema CI reporters read
/// (`tests/common/junit_schema.py`, the rules of Jenkins' junit-10.xsd).
#[allow(dead_code)]
pub fn assert_junit_valid(path: &Path) {
    let out = Command::new("python3")
        .arg(repo().join("tests/common/junit_schema.py"))
        .arg(path)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{} does not follow the JUnit schema: {}\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(path).unwrap_or_default()
    );
}

/// rust-vmm's vhost-device-vsock, built once by `ci/ensure-vhost-device-vsock` (cached).
#[allow(dead_code)]
pub fn vhost_device_vsock() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let out = Command::new(repo().join("ci/ensure-vhost-device-vsock"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run ci/ensure-vhost-device-vsock");
        assert!(out.status.success(), "ci/ensure-vhost-device-vsock failed");
        let text = String::from_utf8(out.stdout).unwrap();
        PathBuf::from(text.lines().last().expect("a path").trim())
    })
    .clone()
}

/// One line a child printed, with the time it arrived since the child was spawned.
pub struct TimedLine {
    pub at: Duration,
    pub text: String,
}

/// What [`run_timed`] saw: the exit status, every line of stdout and stderr in arrival order
/// (ANSI colour sequences removed), and the child's wall time from spawn to exit.
pub struct TimedRun {
    pub code: Option<i32>,
    pub lines: Vec<TimedLine>,
    pub elapsed: Duration,
}

impl TimedRun {
    pub fn log(&self) -> String {
        let lines: Vec<&str> = self.lines.iter().map(|l| l.text.as_str()).collect();
        lines.join("\n")
    }

    /// The first line containing `needle`.
    pub fn first(&self, needle: &str) -> Option<&TimedLine> {
        self.lines.iter().find(|l| l.text.contains(needle))
    }
}

/// Run `cmd` (stdin from /dev/null) and time-stamp each output line as it arrives (a reader
/// thread per pipe). Past `limit` the child gets SIGTERM, 10 s later SIGKILL, and this panics.
pub fn run_timed(mut cmd: Command, limit: Duration) -> TimedRun {
    use std::io::BufRead;
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the driver");
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    let pipes: [Box<dyn std::io::Read + Send>; 2] = [
        Box::new(child.stdout.take().unwrap()),
        Box::new(child.stderr.take().unwrap()),
    ];
    let readers: Vec<_> = pipes
        .into_iter()
        .map(|pipe| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(pipe);
                let mut line = Vec::new();
                while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                    let _ = tx.send((Instant::now(), std::mem::take(&mut line)));
                }
            })
        })
        .collect();
    drop(tx);
    let mut terminated_at: Option<Instant> = None;
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        match terminated_at {
            None if start.elapsed() > limit => {
                let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                terminated_at = Some(Instant::now());
            }
            Some(t) if t.elapsed() > Duration::from_secs(10) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the driver ran longer than {limit:?} (killed)");
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    for r in readers {
        let _ = r.join();
    }
    if terminated_at.is_some() {
        panic!("the driver ran longer than {limit:?} (ended by SIGTERM)");
    }
    let mut lines: Vec<TimedLine> = rx
        .into_iter()
        .map(|(at, bytes)| TimedLine {
            at: at.saturating_duration_since(start),
            text: strip_ansi(String::from_utf8_lossy(&bytes).trim_end()),
        })
        .collect();
    lines.sort_by_key(|l| l.at);
    TimedRun {
        code,
        lines,
        elapsed,
    }
}

/// `text` without ANSI escape sequences (upstream's logger colours lines whatever the output).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte (0x40..=0x7e)
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
