//! `ci/upstream-peer`, the launcher of the real upstream Python driver (whose sources are not
//! in this repository), checked with a stand-in `test_driver` package that reports what the
//! launcher promises: the Python 3.13 shims, bash as the shell of `Popen(shell=True)`, the
//! `ovmfvartool` stand-in, `nixos-test-driver`'s argv, the exit status passed through, and the
//! driver's whole process group ended after it exits. Also its errors for missing sources or
//! virtualenv. The virtualenv is ci/pyvenv's (typing_extensions, from PyPI).

// Tests may unwrap and panic: a failing assertion is their report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);

/// The modules ci/upstream-peer requires in a source directory.
const MODULES: &[&str] = &[
    "config.py",
    "debug.py",
    "display.py",
    "driver.py",
    "duration.py",
    "efi.py",
    "errors.py",
    "logger.py",
    "polling_condition.py",
    "vlan.py",
    "machine/__init__.py",
    "machine/nspawn_display.py",
    "machine/ocr.py",
    "machine/qmp.py",
];

/// A stand-in for upstream's `test_driver/__init__.py`: its `main()` checks the shims, leaves
/// a `sleep` running in its process group (its pid in `sleeper.pid`) and exits with status 3.
const FAKE_MAIN: &str = r#"
import subprocess, sys, typing, warnings

def main():
    assert callable(warnings.deprecated), "warnings.deprecated missing"
    typing.Generator[str]  # one argument: PEP 696 defaults, as in 3.13
    from ovmfvartool import AuthenticatedVariable, resolveUUID
    class EfiVariable(AuthenticatedVariable):
        pass
    try:
        resolveUUID("x")
        raise SystemExit("the ovmfvartool stand-in did not fail")
    except RuntimeError as e:
        assert "not installed" in str(e), e
    shell = subprocess.run('echo "bash=${BASH_VERSION:-none}"', shell=True,
                           capture_output=True, text=True).stdout.strip()
    sleeper = subprocess.Popen(["sleep", "300"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    with open("sleeper.pid", "w") as f:
        f.write(str(sleeper.pid))
    print("ARGV", " ".join(sys.argv), shell, flush=True)
    sys.exit(3)
"#;

/// ci/pyvenv's virtualenv with typing_extensions, made once per test binary (ci/pyvenv is not
/// safe to run twice at once on a new virtualenv).
fn venv() -> PathBuf {
    static VENV: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    VENV.get_or_init(|| {
        let out = Command::new(repo().join("ci/pyvenv"))
            .args(["upstream-peer-test", "typing_extensions"])
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run ci/pyvenv");
        assert!(out.status.success(), "ci/pyvenv failed");
        let python = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        python.parent().unwrap().parent().unwrap().to_path_buf()
    })
    .clone()
}

fn fake_sources(dir: &TestDir) -> PathBuf {
    let src = dir.path.join("src");
    let pkg = src.join("test_driver");
    std::fs::create_dir_all(pkg.join("machine")).unwrap();
    for m in MODULES {
        std::fs::write(pkg.join(m), "").unwrap();
    }
    std::fs::write(pkg.join("__init__.py"), FAKE_MAIN).unwrap();
    src
}

fn launcher(src: Option<&Path>, venv: &Path, cwd: &Path) -> Command {
    let mut c = Command::new(repo().join("ci/upstream-peer"));
    if let Some(src) = src {
        c.arg("--src").arg(src);
    }
    c.arg("--venv")
        .arg(venv)
        .current_dir(cwd)
        .env_remove("NTD_UPSTREAM_SRC")
        .env_remove("NTD_UPSTREAM_VENV");
    c
}

fn alive(pid: i32) -> bool {
    // A zombie is as good as gone: the group was killed, nobody reaps the grandchild yet.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

#[test]
fn launcher_runs_upstream_main_with_shims_and_ends_its_process_group() {
    let dir = TestDir::new("upeer");
    let src = fake_sources(&dir);
    let venv = venv();

    let mut cmd = launcher(Some(&src), &venv, &dir.path);
    cmd.args(["--config", "/x/driver.json", "--log-level", "debug"]);
    let r = run_with_limit(cmd, LIMIT);

    r.assert_code(3);
    assert!(
        r.stdout
            .contains("ARGV nixos-test-driver --config /x/driver.json --log-level debug bash="),
        "{}",
        r.log()
    );
    assert!(!r.stdout.contains("bash=none"), "{}", r.log());
    let pid: i32 = std::fs::read_to_string(dir.path.join("sleeper.pid"))
        .unwrap()
        .parse()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while alive(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !alive(pid),
        "the driver's child {pid} outlived the launcher"
    );
    dir.assert_clean();
}

#[test]
fn launcher_without_sources_says_how_to_get_them() {
    let dir = TestDir::new("upeer");
    let venv = venv();

    let r = run_with_limit(launcher(None, &venv, &dir.path), LIMIT);
    let r2 = run_with_limit(launcher(Some(&dir.path), &venv, &dir.path), LIMIT);

    assert_ne!(r.code, Some(0));
    assert!(r.stderr.contains("NTD_UPSTREAM_SRC"), "{}", r.log());
    assert_ne!(r2.code, Some(0));
    assert!(
        r2.stderr.contains("missing test_driver/__init__.py"),
        "{}",
        r2.log()
    );
}

#[test]
fn launcher_without_virtualenv_says_to_run_setup() {
    let dir = TestDir::new("upeer");
    let src = fake_sources(&dir);

    let r = run_with_limit(
        launcher(Some(&src), &dir.path.join("no-venv"), &dir.path),
        LIMIT,
    );

    assert_ne!(r.code, Some(0));
    assert!(r.stderr.contains("--setup"), "{}", r.log());
}
