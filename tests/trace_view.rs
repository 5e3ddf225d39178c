//! The `--trace` timeline page in a real browser: headless Chromium (Debian's `chromium`,
//! installed through ci/lib.sh when missing) loads a page built from a two-machine trace (one
//! cold boot, one restored from a checkpoint), runs its script, and the DOM it leaves must
//! hold the drawn timeline, fitted to the window (no horizontal scrollbar) at a narrow and a
//! wide size; a screenshot is written next to it (`NTD_TRACE_SCREENSHOT_DIR` keeps it for a
//! look).

// Tests may unwrap and panic: a failing assertion is their report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use ntd::json::Value;
use ntd::trace::Trace;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A four-second, two-machine run: `server` boots cold and is saved, `client` is restored.
fn sample_page(dir: &Path) -> PathBuf {
    let o = Instant::now();
    let at = |ms: u64| o + Duration::from_millis(ms);
    let t = Trace::new(dir.join("run.json"), o);
    for (ms, m) in [
        (10, "QEMU spawned"),
        (120, "QMP ready"),
        (300, "first serial line"),
        (2400, "backdoor sentinel"),
        (2450, "shell ready"),
    ] {
        t.instant("server", m, at(ms));
    }
    for (ms, m) in [
        (12, "QEMU spawned"),
        (150, "QMP ready"),
        (520, "restored from checkpoint"),
        (700, "shell ready"),
    ] {
        t.instant("client", m, at(ms));
    }
    t.span("server", "saving checkpoint", at(2460), at(3300), vec![]);
    let cmd = |c: &str, s: i64| {
        vec![
            ("command".to_owned(), Value::from(c)),
            ("status".to_owned(), Value::Int(s)),
        ]
    };
    t.span(
        "server",
        "wait",
        at(3300),
        at(3600),
        cmd("systemctl is-active nginx", 0),
    );
    t.span(
        "client",
        "command",
        at(3610),
        at(3700),
        cmd("curl server", 0),
    );
    t.span(
        "client",
        "command",
        at(3710),
        at(3900),
        cmd("curl server/missing", 22),
    );
    t.span("driver", "start all VMs", at(5), at(200), vec![]);
    t.instant("driver", "!!! something failed", at(3950));
    t.write().unwrap()
}

fn chromium(profile: &Path, args: &[&str], page: &Path) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn timeline_page_renders_fitted_to_the_window_in_chromium() {
    ensure_host_tool("chromium", "chromium");
    let dir = TestDir::new("tview");
    let page = sample_page(&dir.path);
    for (w, h) in [(800, 600), (1600, 900)] {
        let size = format!("--window-size={w},{h}");
        let dom = chromium(
            &dir.path.join(format!("profile-{w}")),
            &[&size, "--virtual-time-budget=2000", "--dump-dom"],
            &page,
        );
        assert!(
            dom.contains("data-rendered=\"1\""),
            "the script did not run:\n{dom}"
        );
        assert!(
            dom.contains("data-fits=\"yes\""),
            "wider than the {w}px window:\n{dom}"
        );
        for label in [
            "QEMU start",
            "kernel and init",
            "loading che",
            "saving checkpoint",
            "systemctl is-active",
        ] {
            assert!(dom.contains(label), "{label:?} not drawn at {w}px:\n{dom}");
        }
        assert!(
            dom.contains("class=\"it fail\""),
            "the failed command is marked"
        );
        assert!(
            dom.contains("0.69 s (restored from checkpoint)"),
            "summary:\n{dom}"
        );
        let shot_dir = std::env::var("NTD_TRACE_SCREENSHOT_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| dir.path.clone());
        let shot = shot_dir.join(format!("timeline-{w}.png"));
        chromium(
            &dir.path.join(format!("shot-{w}")),
            &[
                &size,
                "--virtual-time-budget=2000",
                &format!("--screenshot={}", shot.display()),
            ],
            &page,
        );
        let png = std::fs::read(&shot).unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{} bytes",
            png.len()
        );
    }
}
