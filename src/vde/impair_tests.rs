//! Unit tests of the fault parameters: validation, parsing, rendering.

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn parse_rate_tc_units_give_bits_per_second() {
    let cases = [
        ("1mbit", 1_000_000),
        ("500kbit", 500_000),
        ("1.5Mbit", 1_500_000),
        ("10mbps", 80_000_000),
        ("10kibit", 10_240),
        ("2gbit", 2_000_000_000),
        ("100kbps", 800_000),
        ("1mibps", 8 * 1_048_576),
        ("64000", 64_000),
        ("64000bit", 64_000),
        (" 1MBIT ", 1_000_000),
    ];
    for (input, want) in cases {
        assert_eq!(parse_rate(input), Ok(want), "{input}");
    }
}

#[test]
fn parse_rate_bad_strings_are_refused_with_the_input() {
    for bad in ["", "fast", "1 megabit", "mbit", "1.2.3mbit", "-1mbit", "1%"] {
        let err = parse_rate(bad).unwrap_err();
        assert!(
            matches!(err, ImpairError::RateSyntax { .. }),
            "{bad}: {err:?}"
        );
        assert!(err.to_string().contains("1mbit"), "{err}");
    }
}

#[test]
fn parse_rate_out_of_range_is_refused() {
    assert_eq!(
        parse_rate("100bit"),
        Err(ImpairError::RateOutOfRange { bps: 100 })
    );
    assert!(matches!(
        parse_rate("2tbit"),
        Err(ImpairError::RateOutOfRange { .. })
    ));
    assert!(parse_rate("0").is_err());
}

#[test]
fn format_rate_picks_the_largest_exact_unit() {
    assert_eq!(format_rate(1_000_000), "1mbit");
    assert_eq!(format_rate(1_500_000), "1500kbit");
    assert_eq!(format_rate(8_000), "8kbit");
    assert_eq!(format_rate(1024), "1024bit");
}

#[test]
fn validate_bad_values_name_the_argument() {
    let bad = [
        (
            Impairment {
                loss: 1.5,
                ..Default::default()
            },
            "loss",
        ),
        (
            Impairment {
                duplicate: -0.1,
                ..Default::default()
            },
            "duplicate",
        ),
        (
            Impairment {
                reorder: f64::NAN,
                ..Default::default()
            },
            "reorder",
        ),
        (
            Impairment {
                delay: ms(10),
                jitter: ms(20),
                ..Default::default()
            },
            "jitter",
        ),
        (
            Impairment {
                delay: Duration::from_secs(59),
                jitter: Duration::from_secs(2),
                ..Default::default()
            },
            "delay",
        ),
        (
            Impairment {
                rate: Some(10),
                ..Default::default()
            },
            "rate",
        ),
    ];
    for (imp, arg) in bad {
        let err = imp.validate().unwrap_err();
        assert!(err.to_string().starts_with(arg), "{arg}: {err}");
    }
}

#[test]
fn validate_edges_are_accepted() {
    let imp = Impairment {
        loss: 1.0,
        duplicate: 0.0,
        reorder: 1.0,
        delay: ms(50_000),
        jitter: ms(10_000),
        rate: Some(MIN_RATE),
    };
    assert_eq!(imp.validate(), Ok(()));
    assert!(Impairment::default().is_none());
}

#[test]
fn seconds_negative_nan_and_huge_are_refused() {
    assert_eq!(seconds("delay", 0.05), Ok(ms(50)));
    assert!(matches!(
        seconds("delay", -0.1),
        Err(ImpairError::Seconds { arg: "delay", .. })
    ));
    assert!(matches!(
        seconds("jitter", f64::NAN),
        Err(ImpairError::Seconds { arg: "jitter", .. })
    ));
    assert!(matches!(
        seconds("delay", 1e300),
        Err(ImpairError::TooLong { .. })
    ));
}

#[test]
fn parse_duration_and_probability_accept_units() {
    assert_eq!(parse_duration("delay", "50ms"), Ok(ms(50)));
    assert_eq!(parse_duration("delay", "0.05"), Ok(ms(50)));
    assert_eq!(parse_duration("delay", "2s"), Ok(ms(2000)));
    assert_eq!(
        parse_duration("delay", "250us"),
        Ok(Duration::from_micros(250))
    );
    assert!(parse_duration("delay", "soon").is_err());
    assert!(parse_duration("delay", "-5ms").is_err());
    assert_eq!(parse_probability("loss", "10%"), Ok(0.1));
    assert_eq!(parse_probability("loss", "0.25"), Ok(0.25));
    assert!(parse_probability("loss", "150%").is_err());
    assert!(parse_probability("loss", "half").is_err());
}

#[test]
fn rule_describe_renders_the_log_line() {
    let names = |l: Label| ["", "alice", "bob", "carol"][l as usize].to_string();
    let rule = Rule {
        scope: Scope::between(2, 1),
        impairment: Impairment {
            loss: 0.1,
            ..Default::default()
        },
    };
    let all = Rule {
        scope: Scope::All,
        impairment: Impairment {
            delay: ms(50),
            jitter: ms(5),
            rate: Some(1_000_000),
            duplicate: 0.025,
            ..Default::default()
        },
    };

    assert_eq!(rule.describe(1, &names), "vlan1: loss 10% alice<->bob");
    assert_eq!(
        all.describe(2, &names),
        "vlan2: delay 50ms ± 5ms, duplicate 2.5%, rate 1mbit"
    );
    let none = Rule {
        scope: Scope::between(1, 3),
        impairment: Impairment::default(),
    };
    assert_eq!(
        none.describe(1, &names),
        "vlan1: no impairment alice<->carol"
    );
}

#[test]
fn scope_between_same_host_is_refused() {
    let rule = Rule {
        scope: Scope::Between(4, 4),
        impairment: Impairment::default(),
    };
    assert_eq!(rule.validate(), Err(ImpairError::SameHost { label: 4 }));
    assert_eq!(Scope::between(9, 2), Scope::Between(2, 9));
}

#[test]
fn partition_label_in_two_groups_or_single_group_is_refused() {
    assert_eq!(
        Partition::new(vec![vec![1, 2], vec![2, 3]]),
        Err(ImpairError::LabelInTwoGroups { label: 2 })
    );
    assert_eq!(
        Partition::new(vec![vec![1, 2], vec![]]),
        Err(ImpairError::TooFewGroups { groups: 1 })
    );
    let p = Partition::new(vec![vec![1, 1, 2], vec![3]]).unwrap();
    let names = |l: Label| format!("m{l}");
    assert_eq!(p.describe(1, &names), "vlan1: partition m1, m1, m2 | m3");
}

#[test]
fn describe_error_uses_machine_names() {
    let names = |_: Label| "alice".to_string();
    let err = ImpairError::LabelInTwoGroups { label: 1 };
    assert!(err.describe(&names).contains("alice is in two groups"));
}
