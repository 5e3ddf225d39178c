//! The Python shim: the `test_driver` package embedded in the binary, written out at start,
//! and the `python3` child that runs the testScript with it.
//!
//! The package is the thin Python face of ntd (upstream names, signatures and failure
//! reports); this module only writes its files and starts the interpreter with the two pipes
//! of the line protocol. It never interprets a request.

pub mod protocol;

use crate::child::{self, Child, SpawnOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why the shim could not start.
#[derive(Debug)]
pub enum ShimError {
    /// The private directory for the package could not be made.
    PackageDir { dir: PathBuf, source: io::Error },
    /// The package could not be written.
    Package(io::Error),
    /// The interpreter could not be started.
    Spawn(io::Error),
}

impl std::fmt::Display for ShimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShimError::PackageDir { dir, source } => {
                write!(f, "cannot create {}: {source}", dir.display())
            }
            ShimError::Package(e) | ShimError::Spawn(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ShimError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ShimError::PackageDir { source, .. } => Some(source),
            ShimError::Package(e) | ShimError::Spawn(e) => Some(e),
        }
    }
}

/// (path inside the package directory, contents)
pub const FILES: &[(&str, &str)] = &[
    (
        "test_driver/__init__.py",
        include_str!("test_driver/__init__.py"),
    ),
    (
        "test_driver/__main__.py",
        include_str!("test_driver/__main__.py"),
    ),
    ("test_driver/_rpc.py", include_str!("test_driver/_rpc.py")),
    (
        "test_driver/_retry.py",
        include_str!("test_driver/_retry.py"),
    ),
    (
        "test_driver/errors.py",
        include_str!("test_driver/errors.py"),
    ),
    (
        "test_driver/logger.py",
        include_str!("test_driver/logger.py"),
    ),
    (
        "test_driver/driver.py",
        include_str!("test_driver/driver.py"),
    ),
    ("test_driver/vlan.py", include_str!("test_driver/vlan.py")),
    (
        "test_driver/polling_condition.py",
        include_str!("test_driver/polling_condition.py"),
    ),
    ("test_driver/debug.py", include_str!("test_driver/debug.py")),
    ("test_driver/efi.py", include_str!("test_driver/efi.py")),
    (
        "test_driver/duration.py",
        include_str!("test_driver/duration.py"),
    ),
    (
        "test_driver/machine/__init__.py",
        include_str!("test_driver/machine/__init__.py"),
    ),
    (
        "test_driver/machine/base.py",
        include_str!("test_driver/machine/base.py"),
    ),
    (
        "test_driver/machine/qemu.py",
        include_str!("test_driver/machine/qemu.py"),
    ),
    (
        "test_driver/machine/nspawn.py",
        include_str!("test_driver/machine/nspawn.py"),
    ),
    (
        "test_driver/machine/qmp.py",
        include_str!("test_driver/machine/qmp.py"),
    ),
    ("test_driver/py.typed", ""),
];

/// The general names of the testScript namespace (upstream's `generate-driver-symbols` lists
/// them for pyflakes); the end-to-end tests check them against what the shim prints.
pub const DRIVER_SYMBOLS: &[&str] = &[
    "start_all",
    "test_script",
    "machines",
    "machines_qemu",
    "machines_nspawn",
    "vlans",
    "driver",
    "log",
    "os",
    "create_machine",
    "subtest",
    "run_tests",
    "join_all",
    "retry",
    "serial_stdout_off",
    "serial_stdout_on",
    "polling_condition",
    "BaseMachine",
    "QemuMachine",
    "NspawnMachine",
    "Machine",
    "t",
    "debug",
    "dump_machine_ssh",
    "snapshot_all",
    "restore_all",
];

/// The module `test_driver/_constants.py`: the defaults the shim shares with the driver,
/// generated from the driver's constants so the two languages cannot disagree. (The wait
/// schedule is not here: `retry()` asks the driver for each pause.)
pub fn constants_module() -> String {
    use crate::rpc::ops;
    let secs = |d: std::time::Duration| d.as_secs_f64();
    format!(
        r#""""Defaults shared with the ntd driver, generated from its Rust constants
(`rpc::ops`); do not edit."""

from datetime import timedelta

#: Upstream's default timeout of `execute` and of every wait.
DEFAULT_TIMEOUT = timedelta(seconds={})
#: Upstream's default timeout of `wait_for_qmp_event`.
DEFAULT_QMP_EVENT_TIMEOUT = timedelta(seconds={})
#: Largest duration the driver accepts (seconds); None means no limit.
MAX_DURATION_SECONDS = {:.1}
#: Shortest slice a wait is cut into while polling conditions are active (seconds).
POLLING_SLICE_MIN_SECONDS = {}
#: Upstream's default interval of a polling condition (seconds).
POLLING_INTERVAL_SECONDS = {}
"#,
        secs(ops::DEFAULT_TIMEOUT),
        secs(ops::DEFAULT_QMP_EVENT_TIMEOUT),
        secs(ops::MAX_DURATION),
        secs(ops::POLLING_SLICE_MIN),
        secs(ops::POLLING_INTERVAL),
    )
}

/// Write the package below `dir` (creating it).
pub fn write_package(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let constants = constants_module();
    let protocol = protocol::module();
    let generated = [
        ("test_driver/_constants.py", constants.as_str()),
        ("test_driver/_protocol.py", protocol.as_str()),
    ];
    for (rel, text) in FILES.iter().chain(generated.iter()) {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, text)?;
    }
    Ok(())
}

/// A running shim with the driver's ends of both pipes.
pub struct SpawnedShim {
    pub child: Child,
    /// Requests from the shim (non-blocking).
    pub from_shim: OwnedFd,
    /// Replies to the shim (non-blocking).
    pub to_shim: OwnedFd,
}

/// Start `python3 -m test_driver` (interpreter from `NTD_PYTHON`, else the one named at build
/// time by `NTD_DEFAULT_PYTHON`, else `python3` from `PATH`) with the
/// package directory first on `PYTHONPATH`, the protocol pipes announced in `NTD_RPC_FDS` and
/// `env` added (the `QEMU_VDE_SOCKET_<n>` variables upstream puts into its own environment).
/// The shim stays in the driver's process group: an interactive REPL gets the terminal's
/// Ctrl-C itself.
pub fn spawn(package_dir: &Path, env: &[(String, String)]) -> io::Result<SpawnedShim> {
    use rustix::pipe::{pipe_with, PipeFlags};
    // The child's ends must survive exec, ours must not; both pipes are created inheritable
    // and our ends are marked close-on-exec before anything else can be spawned.
    let (to_shim_r, to_shim_w) = pipe_with(PipeFlags::empty())?;
    let (from_shim_r, from_shim_w) = pipe_with(PipeFlags::empty())?;
    for fd in [&to_shim_w, &from_shim_r] {
        rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC)?;
        child::set_nonblocking(fd)?;
    }
    let python = std::env::var("NTD_PYTHON")
        .ok()
        .or_else(|| option_env!("NTD_DEFAULT_PYTHON").map(str::to_owned))
        .unwrap_or_else(|| "python3".into());
    let mut pythonpath = package_dir.as_os_str().to_owned();
    if let Some(old) = std::env::var_os("PYTHONPATH").filter(|p| !p.is_empty()) {
        pythonpath.push(":");
        pythonpath.push(old);
    }
    let mut cmd = Command::new(&python);
    cmd.args(["-m", "test_driver"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("PYTHONPATH", pythonpath)
        .env(
            "NTD_RPC_FDS",
            format!("{},{}", to_shim_r.as_raw_fd(), from_shim_w.as_raw_fd()),
        );
    let child = child::spawn(&mut cmd, SpawnOptions::default())
        .map_err(|e| io::Error::new(e.kind(), format!("{python}: {e}")))?;
    drop(to_shim_r);
    drop(from_shim_w);
    Ok(SpawnedShim {
        child,
        from_shim: from_shim_r,
        to_shim: to_shim_w,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seam is the generated module: the shim's own files reach the driver only through
    /// it, so they name no op and handle no untyped reply.
    #[test]
    fn shim_files_reach_the_driver_only_through_the_generated_module() {
        for (path, text) in FILES {
            if path.ends_with("_rpc.py") {
                assert!(!text.contains("Any"), "{path}: the transport has no Any");
                continue;
            }
            for needle in ["_rpc.channel()", ".call(", ".notify(", ".request("] {
                assert!(!text.contains(needle), "{path} uses {needle}");
            }
        }
        let protocol = protocol::module();
        assert!(protocol.contains("from test_driver import _rpc"));
    }

    #[test]
    fn package_has_every_file_and_both_generated_modules() {
        let dir = std::env::temp_dir().join(format!("ntd-shim-test-{}", std::process::id()));
        write_package(&dir).unwrap();
        for rel in FILES
            .iter()
            .map(|(rel, _)| *rel)
            .chain(["test_driver/_constants.py", "test_driver/_protocol.py"])
        {
            assert!(dir.join(rel).is_file(), "{rel}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
