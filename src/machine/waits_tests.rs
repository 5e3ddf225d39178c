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
fn fast_pacing_follows_the_age_within_50_ms_and_1_s_and_costs_no_more_than_upstream() {
    let p = Pacing::new(Schedule::Budget, Duration::ZERO, PaceMode::Fast, false);
    let fast = |age, cost| p.pause_us(age, cost, PaceMode::Fast, false);
    // Builtin-only attempts: max(50 ms, age / 20), at most 1 s.
    assert_eq!(fast(0, 0), 50_000);
    assert_eq!(fast(3_000_000, 0), 150_000);
    assert_eq!(fast(600_000_000, 0), 1_000_000);
    // A 10 ms grep: 1 s × 10 / (10 + 5), then the age once it is longer.
    assert_eq!(fast(500_000, 10_000), 666_666);
    assert_eq!(fast(14_000_000, 10_000), 700_000);
    // A 0.2 s curl: 1 s × 200 / 205; never slower than once a second while the host is idle.
    assert_eq!(fast(0, 200_000), 975_609);
    assert_eq!(fast(30_000_000, 200_000), 1_000_000);
    assert_eq!(fast(0, 5_000_000), 999_000);
    // A closed-port wait's probe that a listener accepted: 1 s × 5 / (5 + 5).
    assert_eq!(fast(0, p.probe_us), 500_000);
    // Under KVM upstream's pipeline is cheaper, and so are ntd's pauses longer.
    let kvm = Pacing::new(Schedule::Budget, Duration::ZERO, PaceMode::Fast, true);
    assert_eq!(kvm.pause_us(0, 1_000, PaceMode::Fast, false), 666_666);
    // Per attempt (and so over a whole wait, at any age), the share of a vCPU is never above
    // what upstream's once-a-second schedule spends on the same command: its attempt costs
    // the command plus its pipeline's overhead, then it sleeps 1 s (to the microsecond the
    // integer division rounds off).
    for (p, overhead) in [(p, 5_000u64), (kvm, 500)] {
        for cost in [
            1u64, 1_000, 7_000, 10_000, 60_000, 200_000, 1_000_000, 30_000_000,
        ] {
            for age in [0, 500_000, 1_000_000, 8_000_000, 600_000_000] {
                let pause = p.pause_us(age, cost, PaceMode::Fast, false);
                // cost / (cost + pause + 1) ≤ (cost + o) / (cost + o + 1 s), cross-multiplied.
                let (c, o) = (u128::from(cost), u128::from(overhead));
                let ours = c * (c + o + 1_000_000);
                let upstream = (c + o) * (c + u128::from(pause) + 1);
                assert!(
                    ours <= upstream,
                    "overhead {overhead}, cost {cost}, age {age}: {pause}"
                );
            }
        }
    }
}

#[test]
fn a_refused_guard_before_a_command_is_tried_again_within_100_ms_while_the_host_is_idle() {
    let p = Pacing::new(Schedule::Budget, Duration::ZERO, PaceMode::Fast, false);
    assert_eq!(p.guard_pause_us(0, PaceMode::Fast), 50_000);
    assert_eq!(p.guard_pause_us(1_000_000, PaceMode::Fast), 50_000);
    assert_eq!(p.guard_pause_us(16_000_000, PaceMode::Fast), 100_000);
    // Under contention the age rule, as for any free attempt.
    assert_eq!(p.guard_pause_us(16_000_000, PaceMode::Budget), 800_000);
    // Upstream's schedule has no guards.
    let r = Pacing::new(Schedule::Reference, Duration::ZERO, PaceMode::Fast, false);
    assert_eq!(r.guard_pause_us(16_000_000, PaceMode::Fast), 1_000_000);
}

#[test]
fn budget_pacing_stretches_pauses_by_cost_under_contention() {
    let p = Pacing::new(Schedule::Budget, Duration::ZERO, PaceMode::Budget, false);
    let budget = |age, cost| p.pause_us(age, cost, PaceMode::Budget, false);
    // Never faster than the fast rule.
    assert_eq!(budget(0, 0), 50_000);
    assert_eq!(budget(500_000, 10_000), 666_666);
    // Young: 3 × cost (25 % of a vCPU), which the fast rule covers up to a 0.33 s attempt.
    assert_eq!(budget(500_000, 300_000), 983_606);
    assert_eq!(budget(500_000, 400_000), 1_200_000);
    // Old: 24 × cost (4 % of a vCPU), beyond 1 s if need be.
    assert_eq!(budget(1_000_000, 0), 50_000);
    assert_eq!(budget(10_000_000, 0), 500_000);
    assert_eq!(budget(5_000_000, 10_000), 666_666);
    assert_eq!(budget(5_000_000, 100_000), 2_400_000);
    assert_eq!(budget(5_000_000, 200_000), 4_800_000);
    // A unit watcher's safety net: 3 × cost in the first second, 99 × after, either way.
    assert_eq!(p.pause_us(5_000_000, 10_000, PaceMode::Fast, true), 990_000);
    assert_eq!(p.pause_us(500_000, 30_000, PaceMode::Fast, true), 90_000);
    let r = Pacing::new(
        Schedule::Reference,
        Duration::from_secs(3),
        PaceMode::Fast,
        false,
    );
    for mode in [PaceMode::Fast, PaceMode::Budget] {
        assert_eq!(
            (
                r.pause_us(0, 0, mode, false),
                r.pause_us(9_000_000, 500_000, mode, false)
            ),
            (1_000_000, 1_000_000)
        );
    }
    assert_eq!(r.age_us, 3_000_000);
}

#[test]
fn retry_pauses_like_a_wait_and_caps_the_cost_term_under_contention() {
    let s = |x: f64| Duration::from_secs_f64(x);
    assert_eq!(
        retry_pause(Schedule::Budget, s(0.0), s(0.01), PaceMode::Fast, false),
        Duration::from_micros(666_666)
    );
    // A slow callable: 1 s × 2 / 2.005 while the host is idle, at most 1 s (the age's).
    assert_eq!(
        retry_pause(Schedule::Budget, s(10.0), s(2.0), PaceMode::Fast, false),
        Duration::from_micros(997_506)
    );
    assert_eq!(
        retry_pause(Schedule::Budget, s(30.0), s(2.0), PaceMode::Fast, false),
        s(1.0)
    );
    // Under KVM: 1 s × 10 / 10.5.
    assert_eq!(
        retry_pause(Schedule::Budget, s(0.0), s(0.01), PaceMode::Fast, true),
        Duration::from_micros(952_380)
    );
    assert_eq!(
        retry_pause(Schedule::Budget, s(10.0), s(2.0), PaceMode::Budget, false),
        RETRY_MAX_COST_PAUSE
    );
    assert_eq!(
        retry_pause(
            Schedule::Reference,
            s(10.0),
            s(2.0),
            PaceMode::Budget,
            false
        ),
        s(1.0)
    );
}

/// The guest loop's `__ntd_pace` (bash) and [`Pacing::pause_us`] agree on a grid of ages,
/// costs and modes (bash is run once, without a guest).
#[test]
fn bash_pause_rule_is_the_rust_one() {
    let text = super::super::guest::SETUP_WAITS;
    let start = text.find("__ntd_pace() {").unwrap();
    let end = start + text[start..].find("\n}\n").unwrap() + 3;
    let mut script = text[start..end].to_owned();
    let mut want = Vec::new();
    for (schedule, kvm) in [
        (Schedule::Budget, false),
        (Schedule::Budget, true),
        (Schedule::Reference, false),
    ] {
        let p = Pacing::new(schedule, Duration::ZERO, PaceMode::Fast, kvm);
        script.push_str(&format!(
            "__ntd_q=({} {} {} {} {} {} {} {} {} {} 0 {} {})\n",
            p.age_us,
            p.min_us,
            p.max_age_us,
            p.age_divisor,
            p.young_us,
            p.young_factor,
            p.old_factor,
            p.watched_factor,
            p.own_cost_percent,
            p.overhead_us,
            p.probe_us,
            p.guard_max_us
        ));
        assert_eq!(
            p.overhead_us,
            if kvm {
                500
            } else if schedule == Schedule::Budget {
                5_000
            } else {
                0
            }
        );
        for age in [0, 300_000, 999_999, 1_000_000, 4_000_000, 30_000_000] {
            for cost in [0, 1_000, 7_000, 10_000, 60_000, 200_000, 400_000, 2_000_000] {
                for (mode, md) in [(PaceMode::Fast, 1), (PaceMode::Budget, 0)] {
                    for (watched, e) in [(false, 7), (true, 4)] {
                        script.push_str(&format!(
                            "__ntd_gc=0 __ntd_a={age} __ntd_x={cost} __ntd_md={md} __ntd_e={e}; __ntd_pace; echo $__ntd_p\n"
                        ));
                        want.push(p.pause_us(age, cost, mode, watched).to_string());
                    }
                }
            }
            // A guard that refused in front of a command: the attempt is free.
            for (mode, md) in [(PaceMode::Fast, 1), (PaceMode::Budget, 0)] {
                script.push_str(&format!(
                    "__ntd_gc=1 __ntd_a={age} __ntd_x=0 __ntd_md={md} __ntd_e=7; __ntd_pace; echo $__ntd_p\n"
                ));
                want.push(p.guard_pause_us(age, mode).to_string());
            }
        }
    }
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(got, want);
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

#[test]
fn retry_steps_pause_by_the_schedule_and_flag_the_last_attempt_that_fits() {
    let ms = Duration::from_millis;
    let step = |first, age, cost, timeout| {
        retry_step(
            Schedule::Budget,
            first,
            age,
            cost,
            timeout,
            (PaceMode::Budget, false),
        )
    };
    // Before the first attempt: no pause; it is the last only if nothing could follow it.
    assert_eq!(
        step(true, ms(0), ms(0), Some(ms(60_000))),
        RetryStep {
            pause: ms(0),
            last: false
        }
    );
    assert!(step(true, ms(0), ms(0), Some(ms(20))).last);
    // No limit: the schedule's pause (capped cost term), never the last.
    assert_eq!(
        step(false, ms(5_000), ms(1_000), None),
        RetryStep {
            pause: RETRY_MAX_COST_PAUSE,
            last: false
        }
    );
    // The pause ends the margin before the deadline at the latest, and the attempt after it
    // is then the last (the next one could not start in time).
    let s = step(false, ms(9_800), ms(10), Some(ms(10_000)));
    assert_eq!(s.pause, ms(150));
    assert!(s.last);
    // Far from the deadline: the schedule's own pause (the fast rule's 1 s × 10 / (10 + 5)
    // beats the budget's 24 × 10 ms), not the last.
    let s = step(false, ms(2_000), ms(10), Some(ms(10_000)));
    assert_eq!(s.pause, Duration::from_micros(666_666));
    assert!(!s.last);
    // An attempt slower than the margin widens it: it must start a cost before the end.
    let s = step(false, ms(9_000), ms(500), Some(ms(10_000)));
    assert_eq!(s.pause, ms(500));
    assert!(s.last);
    // Past the latest start: no pause at all.
    assert_eq!(
        step(false, ms(11_000), ms(10), Some(ms(10_000))).pause,
        ms(0)
    );
}

/// The guest loop itself (run by the host's bash, on its fallback path without a watchdog)
/// paces a closed-port wait whose connects a listener keeps accepting by the listener's
/// cost: over 1.2 s a handful of connects, not one every 50 ms.
#[test]
fn a_closed_port_wait_does_not_make_the_listener_answer_twenty_times_a_second() {
    use super::super::guest::{encode_wait, setup_text, SetupPart, WaitSpec};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let condition = WaitCondition::Port {
        addr: "127.0.0.1".into(),
        port: port.to_string(),
        open: false,
    };
    let spec = WaitSpec {
        budget: Duration::from_millis(1200),
        pacing: Pacing::new(Schedule::Budget, Duration::ZERO, PaceMode::Fast, false),
    };
    let line = encode_wait(b"0123456789abcdef", &budget(&condition), spec).unwrap();
    let script = format!(
        "exec 3>&1 5</dev/null\n{}{}{line}",
        setup_text(SetupPart::Waits),
        "_Nkill() { :; }\n"
    );
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Ended by its deadline, the port still open ("not yet": status 0 of a closed-port wait).
    assert!(
        stdout.contains("\u{1}D0123456789abcdef 0\u{1}"),
        "{stdout:?}"
    );
    let n = accepted.load(Ordering::SeqCst);
    // 1 s × 5 ms / (5 ms + 5 ms) between connects: at 0, 0.5 and 1 s (before: every 50 ms).
    assert!((1..=4).contains(&n), "{n} connects in 1.2 s");
}

#[test]
fn curl_command_waits_get_a_connect_guard_that_fails_only_when_curl_would() {
    let c = WaitCondition::Command {
        command: "curl --fail --silent http://server:3000/todos".into(),
        until_success: true,
    };
    let check = budget(&c);
    assert_eq!(check.guard, "_Nurl server 3000");
    assert_eq!(
        check.command,
        "curl --fail --silent http://server:3000/todos"
    );
    for c in [
        WaitCondition::Command {
            command: "curl -x http://p:1 http://server:3000/".into(),
            until_success: true,
        },
        WaitCondition::Command {
            command: "curl http://server:3000/".into(),
            until_success: false,
        },
    ] {
        assert_eq!(budget(&c).guard, "", "{c:?}");
    }
    assert_eq!(c.guest_check(Schedule::Reference).guard, "");

    // The guard itself, in the host's bash.
    let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open_port = open.local_addr().unwrap().port();
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let home = std::env::temp_dir().join(format!("ntd-curlrc-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    let run = |env: &[(&str, &str)], host: &str, port: u16| -> i32 {
        let script = format!(
            "{}_Nurl {host} {port}",
            super::super::guest::setup_text(super::super::guest::SetupPart::Waits)
        );
        let mut cmd = std::process::Command::new("bash");
        cmd.arg("-c").arg(&script).env("HOME", &home);
        for v in [
            "http_proxy",
            "HTTP_PROXY",
            "https_proxy",
            "HTTPS_PROXY",
            "all_proxy",
            "ALL_PROXY",
            "CURL_HOME",
            "XDG_CONFIG_HOME",
        ] {
            cmd.env_remove(v);
        }
        cmd.envs(env.iter().copied());
        cmd.output().unwrap().status.code().unwrap_or(-1)
    };
    assert_eq!(run(&[], "127.0.0.1", open_port), 0);
    assert_eq!(run(&[], "localhost", open_port), 0);
    assert_ne!(run(&[], "127.0.0.1", closed_port), 0);
    assert_ne!(run(&[], "localhost", closed_port), 0);
    // Where curl would not connect there directly, curl decides.
    assert_eq!(
        run(&[("http_proxy", "http://p:1")], "127.0.0.1", closed_port),
        0
    );
    assert_eq!(
        run(&[("ALL_PROXY", "socks5://p:1")], "127.0.0.1", closed_port),
        0
    );
    std::fs::write(home.join(".curlrc"), "proxy = http://p:1\n").unwrap();
    assert_eq!(run(&[], "127.0.0.1", closed_port), 0);
    std::fs::remove_dir_all(&home).unwrap();
    drop(open);
}
