//! Unit tests of [`super`]: the setup texts, the encoders of runs, waits and fetches.

use super::*;

#[test]
fn format_seconds_writes_what_python_repr_writes() {
    let cases = [
        (Duration::from_secs(900), "900.0"),
        (Duration::from_millis(500), "0.5"),
        (Duration::try_from_secs_f64(0.1).unwrap(), "0.1"),
        (
            Duration::try_from_secs_f64(123.456789).unwrap(),
            "123.456789",
        ),
        (Duration::from_nanos(1), "0.000000001"),
        (Duration::ZERO, "0.0"),
        (Duration::from_secs(1_000_000_000), "1000000000.0"),
    ];
    for (d, want) in cases {
        assert_eq!(format_seconds(d), want, "{d:?}");
    }
}

const N: &[u8; NONCE_LEN] = b"0123456789abcdef";

#[test]
fn host_messages_are_blanks_that_bash_skips_and_the_release_is_a_newline() {
    let all = [
        HostMessage::PaceFast,
        HostMessage::PaceBudget,
        HostMessage::Stop,
        HostMessage::Kill,
    ];
    for m in all {
        let (last, blanks) = m.bytes().split_last().unwrap();
        assert_eq!(*last, b'\n', "{m:?}");
        assert!(!blanks.is_empty(), "{m:?} is not the release");
        assert!(blanks.iter().all(|b| *b == b' ' || *b == b'\t'), "{m:?}");
    }
    let mut lines: Vec<_> = all.iter().map(|m| m.bytes()).collect();
    lines.dedup();
    assert_eq!(lines.len(), 4, "distinct lines");
    assert_eq!(HostMessage::RELEASE, b'\n');
    // The watchdog's case patterns are the same lines, read with mapfile (bash's read
    // builtin reads a console ahead, or changes its modes).
    for (pattern, m) in [
        ("' ')", HostMessage::PaceFast),
        ("'  ')", HostMessage::PaceBudget),
        ("$'\\t')", HostMessage::Stop),
        ("$'\\t\\t')", HostMessage::Kill),
    ] {
        assert!(SETUP_TIMEOUTS.contains(pattern), "{pattern} for {m:?}");
    }
    assert!(SETUP_TIMEOUTS.contains("mapfile -t -n 1 -u 9"));
    assert_eq!(
        SETUP_TIMEOUTS.matches("-u 9").count(),
        SETUP_TIMEOUTS.matches("mapfile -t -n 1 -u 9").count(),
        "the console is read with mapfile only"
    );
}

#[test]
fn encode_run_quotes_single_quotes() {
    let line = encode_run(N, "echo 'a'\"b\"", None).unwrap();
    assert_eq!(
        line,
        "_Nn=0123456789abcdef; _Nc='echo '\\''a'\\''\"b\"'; _Nr\n"
    );
    let t = encode_run(N, "true", Some(Duration::from_secs(900))).unwrap();
    assert_eq!(t, "_Nn=0123456789abcdef; _Nc='true'; _Nt=900.0; _Nrt\n");
    assert_eq!(encode_run(N, "a\0b", None), Err(EncodeError::NulByte));
}

#[test]
fn encode_wait_carries_the_check_the_budget_and_the_pacing() {
    use super::super::waits::{Schedule, UnitWatch};
    let check = GuestCheck {
        guard: "[ -e '/x' ]".into(),
        command: String::new(),
        until_success: false,
        fatal_status: 0,
        watch: None,
    };
    let spec = WaitSpec {
        budget: Duration::from_millis(1500),
        pacing: Pacing::new(
            Schedule::Budget,
            Duration::from_millis(250),
            PaceMode::Fast,
            false,
        ),
    };
    let line = encode_wait(N, &check, spec).unwrap();
    assert_eq!(
        line,
        "_Nwait 0123456789abcdef 2.0 1 1500000 '[ -e '\\''/x'\\'' ]' '' 0 \
         '250000 50000 1000000 20 1000000 3 24 99 250 5000 1 5000 100000' '' 'u'\n"
    );
    let unit = GuestCheck {
        guard: String::new(),
        command: "c".into(),
        until_success: true,
        fatal_status: 201,
        watch: Some(UnitWatch {
            unit: "a.service".into(),
            state: Some("failed".into()),
        }),
    };
    let spec = WaitSpec {
        budget: Duration::from_secs(900),
        pacing: Pacing::new(Schedule::Reference, Duration::ZERO, PaceMode::Budget, false),
    };
    let line = encode_wait(N, &unit, spec).unwrap();
    assert!(
        line.ends_with(
            " 0 900000000 '' 'c' 201 '0 1000000 1000000 1 0 0 0 0 250 0 0 0 0' 'a.service' 'sfailed'\n"
        ),
        "{line}"
    );
    let nul = GuestCheck {
        command: "a\0b".into(),
        ..unit
    };
    assert_eq!(encode_wait(N, &nul, spec), Err(EncodeError::NulByte));
}

#[test]
fn setup_text_keeps_every_command_and_drops_indentation() {
    for (part, source) in [
        (SetupPart::Base, SETUP),
        (SetupPart::Timeouts, SETUP_TIMEOUTS),
        (SetupPart::Waits, SETUP_WAITS),
    ] {
        let text = setup_text(part);
        assert!(text.len() < source.len());
        assert!(!text.lines().any(|l| l.starts_with(' ') || l.is_empty()));
        let words = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(words(text), words(&source.replace("__ntd_", WIRE_PREFIX)));
        assert!(!text.contains("__ntd_"));
    }
}
