//! Unit tests of [`super`]: the guest checks of every wait, the pause rule, the verdicts.

use super::*;

fn budget(c: &WaitCondition) -> GuestCheck {
    c.guest_check(Schedule::Budget)
}

#[test]
fn reference_port_wait_quotes_the_address_and_keeps_nc_semantics() {
    let c = WaitCondition::Port {
        addr: "a b".into(),
        port: "80".into(),
        open: false,
    }
    .guest_check(Schedule::Reference);
    assert!(c.guard.is_empty());
    assert!(
        c.command
            .contains("'set -euo pipefail; nc -z '\\''a b'\\'' 80'"),
        "{}",
        c.command
    );
    assert!(!c.until_success);
}

#[test]
fn port_wait_with_a_plain_address_connects_in_the_loop_shell() {
    for addr in ["localhost", "127.0.0.1", "::1", "server-1.example"] {
        let c = budget(&WaitCondition::Port {
            addr: addr.into(),
            port: "8080".into(),
            open: true,
        });
        assert_eq!(c.guard, format!("_Nport {addr} 8080"));
        assert!(c.command.is_empty() && c.until_success && c.watch.is_none());
    }
}

#[test]
fn port_wait_with_an_unusual_address_or_port_keeps_nc() {
    for (addr, port) in [
        ("a b", "80"),
        ("[::1]", "80"),
        ("h/x", "80"),
        ("h", "http"),
        ("h", "80-90"),
    ] {
        let c = budget(&WaitCondition::Port {
            addr: addr.into(),
            port: port.into(),
            open: true,
        });
        assert!(c.guard.is_empty(), "{addr} {port}: {c:?}");
        assert!(c.command.starts_with("nc -z "), "{c:?}");
    }
}

#[test]
fn file_wait_tests_plain_paths_inline_and_others_as_upstream() {
    let c = budget(&WaitCondition::File {
        path: "/run/a-b/c.d".into(),
    });
    assert_eq!(
        (c.guard.as_str(), c.command.as_str()),
        ("[ -e '/run/a-b/c.d' ]", "")
    );
    for path in ["$HOME/x", "/tmp/*.x", "~/y", "a b", "/x;y", ""] {
        let c = budget(&WaitCondition::File { path: path.into() });
        assert!(c.guard.is_empty(), "{path}: {c:?}");
        assert_eq!(c.command, format!("test -e {path}"));
    }
}

#[test]
fn unix_socket_wait_runs_nc_only_once_the_socket_exists() {
    let c = budget(&WaitCondition::UnixSocket {
        path: "/run/x y.sock".into(),
        datagram: true,
    });
    assert_eq!(c.guard, "[ -S '/run/x y.sock' ]");
    assert_eq!(c.command, "nc -z -uU '/run/x y.sock'");
}

#[test]
fn user_unit_wait_goes_through_su_with_a_quoted_user_and_no_watcher() {
    let c = budget(&WaitCondition::Unit {
        unit: "x.service".into(),
        user: Some("al'ice".into()),
    });
    assert!(
        c.command.contains("su -l 'al'\\''ice' --shell"),
        "{}",
        c.command
    );
    assert_eq!(c.fatal_status, 201);
    assert_eq!(c.watch, None);
}

#[test]
fn system_unit_waits_watch_the_mangled_unit_name() {
    let c = budget(&WaitCondition::Unit {
        unit: "nginx".into(),
        user: None,
    });
    assert_eq!(
        c.watch,
        Some(UnitWatch {
            unit: "nginx.service".into(),
            state: None
        })
    );
    assert!(c.command.contains("systemctl --no-pager show 'nginx'"));
    let c = budget(&WaitCondition::UnitState {
        unit: "user@1000.service".into(),
        state: "failed".into(),
        user: None,
    });
    assert_eq!(
        c.watch,
        Some(UnitWatch {
            unit: "user@1000.service".into(),
            state: Some("failed".into())
        })
    );
    let reference = WaitCondition::Unit {
        unit: "nginx".into(),
        user: None,
    }
    .guest_check(Schedule::Reference);
    assert_eq!(reference.watch, None);
}

#[test]
fn full_unit_name_mangles_like_systemctl_and_refuses_globs_and_paths() {
    assert_eq!(full_unit_name("a.socket").as_deref(), Some("a.socket"));
    assert_eq!(full_unit_name("a.b").as_deref(), Some("a.b.service"));
    assert_eq!(
        full_unit_name("getty@tty1").as_deref(),
        Some("getty@tty1.service")
    );
    assert_eq!(
        full_unit_name(".service").as_deref(),
        Some(".service.service")
    );
    for bad in ["", "a*", "/dev/sda", "a b", "x'y"] {
        assert_eq!(full_unit_name(bad), None, "{bad}");
    }
}

#[test]
fn budget_pacing_pauses_grow_with_cost_and_age() {
    let p = Pacing::new(Schedule::Budget, Duration::ZERO);
    // Young: at least 20 ms, 3 × cost (25 % of a vCPU).
    assert_eq!(p.pause_us(0, 0), 20_000);
    assert_eq!(p.pause_us(500_000, 10_000), 30_000);
    // Old: at least a twentieth of the age (at most 1 s), 24 × cost (4 % of a vCPU).
    assert_eq!(p.pause_us(1_000_000, 0), 50_000);
    assert_eq!(p.pause_us(10_000_000, 0), 500_000);
    assert_eq!(p.pause_us(600_000_000, 0), 1_000_000);
    assert_eq!(p.pause_us(5_000_000, 100_000), 2_400_000);
    let r = Pacing::new(Schedule::Reference, Duration::from_secs(3));
    assert_eq!(
        (r.pause_us(0, 0), r.pause_us(9_000_000, 500_000)),
        (1_000_000, 1_000_000)
    );
    assert_eq!(r.age_us, 3_000_000);
}

#[test]
fn reference_attempts_cost_what_upstreams_execute_costs_the_guest() {
    let c = WaitCondition::File { path: "/x".into() }.guest_check(Schedule::Reference);
    assert_eq!(
        c.command,
        "timeout 900.0 bash -c 'set -euo pipefail; test -e /x' | (base64 -w 0; echo) | base64 -d"
    );
    assert!(c.guard.is_empty() && c.watch.is_none());
}

#[test]
fn unit_verdicts_use_upstream_wording() {
    let w = WaitCondition::Unit {
        unit: "u".into(),
        user: None,
    };
    assert_eq!(w.verdict(0, true), Verdict::Met);
    assert_eq!(w.verdict(1, true), Verdict::NotYet);
    assert_eq!(w.verdict(0, false), Verdict::NotYet);
    assert_eq!(
        w.verdict(201, true),
        Verdict::Impossible("unit \"u\" reached state \"failed\"".into())
    );
    assert!(
        matches!(w.verdict(202, true), Verdict::Impossible(m) if m.contains("no pending jobs"))
    );
    assert!(matches!(w.verdict(203, true), Verdict::Impossible(m) if m.contains("ActiveState")));
}

#[test]
fn until_failure_is_met_by_a_non_zero_status() {
    let w = WaitCondition::Command {
        command: "false".into(),
        until_success: false,
    };
    assert_eq!(w.verdict(1, true), Verdict::Met);
    assert_eq!(w.verdict(0, true), Verdict::NotYet);
    let closed = WaitCondition::Port {
        addr: "h".into(),
        port: "1".into(),
        open: false,
    };
    assert_eq!(closed.verdict(1, true), Verdict::Met);
}
