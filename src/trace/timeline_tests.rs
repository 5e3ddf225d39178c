//! Unit tests of the timeline layout ([`super`]): boot segments, lanes, the summary.

use super::super::Trace;
use super::*;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn ms(origin: Instant, n: u64) -> Instant {
    origin + Duration::from_millis(n)
}

fn status(n: i64) -> Vec<(String, Value)> {
    vec![
        ("command".into(), Value::from("echo hi")),
        ("status".into(), Value::Int(n)),
    ]
}

fn layout_of(t: &Trace) -> Layout {
    layout(&t.data.borrow())
}

fn labels(row: &Row) -> Vec<(&str, &str)> {
    row.items
        .iter()
        .map(|i| (i.label.as_str(), i.class))
        .collect()
}

#[test]
fn a_cold_boot_is_three_labelled_segments_then_commands_and_log_blocks() {
    let o = Instant::now();
    let t = Trace::new(PathBuf::from("/dev/null"), o);
    for (at, m) in [
        (0, SPAWNED),
        (100, QMP_READY),
        (300, FIRST_SERIAL_LINE),
        (2000, SENTINEL),
        (2150, SETUP_SENT),
        (2200, SHELL_READY),
    ] {
        t.instant("server", m, ms(o, at));
    }
    t.span("server", "command", ms(o, 2200), ms(o, 2300), status(0));
    t.span("server", "wait", ms(o, 2300), ms(o, 2800), status(0));
    t.span("server", "command", ms(o, 2900), ms(o, 3000), status(1));
    t.span(
        "server",
        "must succeed: echo hi",
        ms(o, 2200),
        ms(o, 2300),
        vec![],
    );
    let l = layout_of(&t);
    let server = l.tracks.iter().find(|t| t.name == "server").unwrap();
    assert_eq!(server.rows[0].kind, "boot");
    assert_eq!(
        labels(&server.rows[0]),
        [
            ("QEMU start", "qemu"),
            ("kernel and init", "kernel"),
            ("shell setup", "shell")
        ]
    );
    let boot = &server.rows[0].items;
    assert_eq!((boot[1].start_us, boot[1].end_us), (300_000, 2_000_000));
    // The shell idles from the sentinel until the first command takes ntd's setup along.
    assert_eq!((boot[2].start_us, boot[2].end_us), (2_150_000, 2_200_000));
    assert_eq!(server.rows[1].kind, "commands");
    assert_eq!(
        labels(&server.rows[1]),
        [("echo hi", "ok"), ("echo hi", "wait"), ("echo hi", "fail")]
    );
    assert_eq!(server.rows[2].kind, "log");
    let s = &l.summary[0];
    assert_eq!(s.machine, "server");
    assert_eq!(s.boot_us, Some(2_000_000), "up at the sentinel");
    assert!(!s.restored);
    assert_eq!(s.first_command_us, Some(2_200_000));
    assert_eq!((s.commands, s.command_us), (2, 200_000));
    assert_eq!((s.waits, s.wait_us), (1, 500_000));
    // Alive from the sentinel (2.0 s) to the trace's end (3.0 s), minus 0.7 s of work.
    assert_eq!(s.idle_us, 300_000);
}

#[test]
fn a_restore_is_labelled_as_such_and_a_save_sits_in_the_boot_row() {
    let o = Instant::now();
    let t = Trace::new(PathBuf::from("/dev/null"), o);
    for (at, m) in [
        (0, SPAWNED),
        (150, QMP_READY),
        (600, RESTORED),
        (700, FIRST_SERIAL_LINE),
        (900, SHELL_READY),
        (5000, EXITED),
    ] {
        t.instant("db", m, ms(o, at));
    }
    t.span("db", SAVE_SPAN, ms(o, 1000), ms(o, 1800), vec![]);
    let l = layout_of(&t);
    let db = &l.tracks[0];
    assert_eq!(
        labels(&db.rows[0]),
        [
            ("QEMU start (restoring)", "qemu"),
            ("loading checkpoint", "load"),
            ("resuming (clock, entropy, shares)", "resume"),
            ("saving checkpoint", "save"),
        ]
    );
    assert!(l.summary[0].restored);
    assert_eq!(l.summary[0].boot_us, Some(900_000));
    let mut html = String::new();
    l.summary_html(&mut html);
    assert!(
        html.contains("<td>db</td><td>0.90 s (restored from checkpoint)</td><td>—</td>"),
        "{html}"
    );
}

#[test]
fn a_reboot_draws_two_boots_and_an_unfinished_one_runs_to_the_end() {
    let o = Instant::now();
    let t = Trace::new(PathBuf::from("/dev/null"), o);
    for (at, m) in [
        (0, SPAWNED),
        (10, FIRST_SERIAL_LINE),
        (20, SENTINEL),
        (25, SETUP_SENT),
        (30, SHELL_READY),
        (40, EXITED),
        (50, SPAWNED),
        (60, FIRST_SERIAL_LINE),
    ] {
        t.instant("m", m, ms(o, at));
    }
    t.span("m", "command", ms(o, 70), ms(o, 90), status(0));
    let l = layout_of(&t);
    let boot = labels(&l.tracks[0].rows[0]);
    assert_eq!(boot.len(), 5, "{boot:?}");
    let last = l.tracks[0].rows[0].items.last().unwrap();
    assert_eq!(
        (last.label.as_str(), last.end_us),
        ("kernel and init", 90_000)
    );
}

#[test]
fn overlapping_spans_take_separate_lanes() {
    let o = Instant::now();
    let t = Trace::new(PathBuf::from("/dev/null"), o);
    t.span("driver", "subtest: a", ms(o, 0), ms(o, 100), vec![]);
    t.span("driver", "inner", ms(o, 10), ms(o, 20), vec![]);
    t.span("driver", "after", ms(o, 100), ms(o, 120), vec![]);
    let l = layout_of(&t);
    let rows = &l.tracks[0].rows;
    assert_eq!(rows.len(), 2);
    assert_eq!(labels(&rows[0]), [("subtest: a", "log"), ("after", "log")]);
    assert_eq!(labels(&rows[1]), [("inner", "log")]);
    assert!(l.summary.is_empty(), "the driver is not a machine");
}

#[test]
fn the_page_carries_the_layout_without_a_raw_end_tag() {
    let o = Instant::now();
    let t = Trace::new(PathBuf::from("/tmp/x.json"), o);
    t.instant("m", SPAWNED, o);
    t.span(
        "m",
        "command",
        ms(o, 1),
        ms(o, 2),
        vec![("command".into(), Value::from("echo '</script><!--'"))],
    );
    let html = t.to_html();
    assert_eq!(
        html.matches("</script>").count(),
        2,
        "only the page's own end tags"
    );
    assert!(html.contains("echo '\\u003c/script>\\u003c!--'"), "{html}");
    assert!(html.contains("<table class=\"summary\">"));
    assert!(!html.contains("<!--DATA-->") && !html.contains("<!--SCRIPT-->"));
}
