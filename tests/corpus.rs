//! The corpus of real-world style testScripts (tests/corpus/*.py, written the way NixOS users
//! write them, in the argument forms of all three upstream generations): every file runs
//! unchanged on real guests and must pass (or fail with its expected report line), and the
//! whole corpus must type-check the way NixOS' driver.nix checks scripts (ci/typecheck).
//!
//! A file's leading comments describe how to run it:
//! `# machines: a, b` (the nodes), `# vlans: 1, 2` (every node is on every listed vlan; node
//! numbers follow the sorted names, as in NixOS), `# guest: debian` (Debian systemd guests
//! described by `<file>.nodes.toml`, run through ci/run-test; default: tiny guests with a
//! framebuffer console), `# expect: fail` plus `# expect-line: <text>` lines.

// Tests may unwrap and panic: a failing assertion is their report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(400);

struct Header {
    machines: Vec<String>,
    vlans: Vec<u32>,
    debian: bool,
    expect_fail: bool,
    expect_lines: Vec<String>,
}

fn corpus_dir() -> PathBuf {
    repo().join("tests/corpus")
}

fn header(text: &str) -> Header {
    let mut h = Header {
        machines: Vec::new(),
        vlans: Vec::new(),
        debian: false,
        expect_fail: false,
        expect_lines: Vec::new(),
    };
    let list = |v: &str| -> Vec<String> {
        v.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    for line in text.lines().take_while(|l| l.starts_with('#')) {
        let Some((key, value)) = line.trim_start_matches('#').split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "machines" => h.machines = list(value),
            "vlans" => {
                h.vlans = list(value)
                    .iter()
                    .map(|v| v.parse().expect("vlan number"))
                    .collect()
            }
            "guest" => h.debian = value == "debian",
            "expect" => h.expect_fail = value == "fail",
            "expect-line" => h.expect_lines.push(value.to_owned()),
            _ => {}
        }
    }
    assert!(!h.machines.is_empty(), "corpus file without '# machines:'");
    h
}

/// Run one corpus file on tiny guests.
fn run_tiny(name: &str, script: &str, h: &Header) -> (TestDir, RunResult) {
    let dir = TestDir::new(&format!("c{}", &name[..name.len().min(8)]));
    std::fs::create_dir_all(dir.path.join("out")).unwrap();
    let mut names = h.machines.clone();
    names.sort();
    let hosts = match h.vlans.first() {
        Some(v) => names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{n}:192.168.{v}.{}", i + 1))
            .collect::<Vec<_>>()
            .join(","),
        None => String::new(),
    };
    let mut vms = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let index = (i + 1).to_string();
        let vlan_args: Vec<String> = h.vlans.iter().map(|v| v.to_string()).collect();
        let mut args = vec!["--index", index.as_str()];
        if !hosts.is_empty() {
            args.extend(["--hosts", hosts.as_str()]);
        }
        for v in &vlan_args {
            args.extend(["--vlan", v.as_str()]);
        }
        vms.push((n.clone(), dir.vm_with(screen_guest(), n, &args)));
    }
    let machines: Vec<(&str, &Path)> = vms.iter().map(|(n, p)| (n.as_str(), p.as_path())).collect();
    let cfg = dir.config(&machines, &h.vlans, 300, script);
    let r = dir.run(&["-c", cfg.to_str().unwrap(), "-o", "out"], LIMIT);
    (dir, r)
}

/// Run one corpus file on Debian guests: `<name>.nodes.toml` and the script in a test
/// directory for ci/run-test.
fn run_debian(name: &str, script: &str) -> (TestDir, RunResult) {
    let dir = TestDir::new(&format!("d{}", &name[..name.len().min(8)]));
    let test_dir = dir.path.join("test");
    std::fs::create_dir_all(&test_dir).unwrap();
    std::fs::copy(
        corpus_dir().join(format!("{name}.nodes.toml")),
        test_dir.join("nodes.toml"),
    )
    .unwrap_or_else(|e| panic!("{name}.nodes.toml: {e}"));
    std::fs::write(test_dir.join("test.py"), script).unwrap();
    let mut cmd = Command::new(repo().join("ci/run-test"));
    cmd.arg(&test_dir)
        .env("NTD", NTD)
        .env("TMPDIR", &dir.path)
        .env("NTD_COLOR", "never")
        .stdin(Stdio::null());
    (dir, run_with_limit(cmd, LIMIT))
}

fn run_corpus_file(name: &str) {
    let path = corpus_dir().join(format!("{name}.py"));
    let script = std::fs::read_to_string(&path).unwrap();
    let h = header(&script);
    if script.contains("get_screen_text") || script.contains("wait_for_text") {
        ensure_host_tool("tesseract", "tesseract-ocr");
    }
    let (dir, r) = if h.debian {
        run_debian(name, &script)
    } else {
        run_tiny(name, &script, &h)
    };
    eprintln!(
        "{name}: exit {:?} in {:.1} s",
        r.code,
        r.elapsed.as_secs_f64()
    );
    if h.expect_fail {
        assert_eq!(r.code, Some(1), "expected a failure report\n{}", r.log());
        for line in &h.expect_lines {
            assert!(
                r.stderr.contains(line.as_str()),
                "missing {line:?}\n{}",
                r.log()
            );
        }
    } else {
        r.assert_code(0);
        assert!(r.stderr.contains("test script finished in"), "{}", r.log());
    }
    dir.assert_clean();
}

macro_rules! corpus {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_corpus_file(stringify!($name));
            }
        )*
        const LISTED: &[&str] = &[$(stringify!($name)),*];
    };
}

corpus!(
    l_webserver_retry,
    l_create_machine,
    l_polling_condition,
    l_legacy_forms,
    m_timeout_seconds,
    m_subtests_logging,
    n_timedeltas,
    n_screen_ocr,
    n_keyboard_tty,
    n_qmp,
    n_files,
    n_power,
    n_network,
    n_forward_port,
    n_console,
    n_two_vlans,
    n_namespace,
    n_machine_subclass,
    fail_succeed,
    fail_wait_timeout,
    d_nginx,
    d_postgres,
    d_user_units,
);

#[test]
fn every_corpus_file_has_a_test() {
    let mut files: Vec<String> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".py").map(str::to_owned)
        })
        .collect();
    files.sort();
    let mut listed: Vec<String> = LISTED.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(files, listed, "tests/corpus and the corpus! list differ");
}

/// The corpus type-checks against the shim the way driver.nix checks a script (prepend,
/// machine and vlan declarations, `mypy --no-implicit-optional`).
#[test]
fn corpus_type_checks() {
    let out = Command::new(repo().join("ci/typecheck"))
        .args(["--corpus", "--ntd", NTD])
        .output()
        .expect("run ci/typecheck");
    assert!(
        out.status.success(),
        "ci/typecheck --corpus failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
