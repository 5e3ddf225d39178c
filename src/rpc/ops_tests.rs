//! Unit tests of [`super`], byte by byte (kept beside the module to keep it short).

use super::*;

fn ok(line: &str) -> Request {
    decode(line.as_bytes()).unwrap_or_else(|e| panic!("{line}: {e:?}"))
}

fn err(line: &str) -> DecodeError {
    decode(line.as_bytes()).expect_err(line)
}

#[test]
fn execute_decodes_typed_fields() {
    let r = ok(r#"{"id":3,"op":"execute","machine":"m","command":"true","timeout":900.0}"#);
    assert_eq!(r.id, Some(3));
    assert_eq!(
        r.op,
        Op::Execute {
            machine: "m".into(),
            command: "true".into(),
            timeout: Some(Duration::from_secs(900)),
            check_output: true
        }
    );
}

#[test]
fn null_timeout_is_no_limit() {
    let r = ok(r#"{"id":1,"op":"execute","machine":"m","command":"x","timeout":null}"#);
    assert!(matches!(r.op, Op::Execute { timeout: None, .. }));
}

#[test]
fn huge_negative_and_non_numeric_timeouts_name_the_argument() {
    for (t, want) in [
        ("1e300", "out of range"),
        ("-1", "must not be negative"),
        ("\"soon\"", "must be a number of seconds"),
    ] {
        let e = err(&format!(
            r#"{{"id":9,"op":"execute","machine":"m","command":"x","timeout":{t}}}"#
        ));
        assert_eq!(e.id, Some(9));
        assert_eq!(e.error.kind, ErrorType::Value);
        assert!(e.error.msg.contains("'timeout'"), "{}", e.error.msg);
        assert!(e.error.msg.contains(want), "{}", e.error.msg);
    }
}

#[test]
fn invalid_json_with_leading_id_is_still_answerable() {
    let e = err(r#"{"id":12,"op":"execute","machine":"m","timeout":Infinity}"#);
    assert_eq!(e.id, Some(12));
    assert!(e.error.msg.contains("cannot parse"), "{}", e.error.msg);
    assert_eq!(err("garbage").id, None);
    assert_eq!(err(r#"{"id":12x"#).id, None);
}

#[test]
fn missing_and_mistyped_arguments_are_value_errors() {
    let e = err(r#"{"id":1,"op":"execute","machine":"m"}"#);
    assert!(
        e.error.msg.contains("'command' is missing"),
        "{}",
        e.error.msg
    );
    let e = err(r#"{"id":1,"op":"execute","machine":"m","command":"x","check_output":1}"#);
    assert!(e.error.msg.contains("'check_output'"), "{}", e.error.msg);
    let e = err(r#"{"id":1,"op":"nope"}"#);
    assert_eq!(e.error.kind, ErrorType::Runtime);
    let e = err(r#"{"id":1}"#);
    assert!(e.error.msg.contains("\"op\""));
}

#[test]
fn wait_conditions_decode_and_ports_are_checked() {
    let r = ok(
        r#"{"id":1,"op":"wait","machine":"m","until":"open_port","addr":"10.0.0.1","port":80,"budget":5}"#,
    );
    assert_eq!(
        r.op,
        Op::Wait {
            machine: "m".into(),
            condition: WaitCondition::Port {
                addr: "10.0.0.1".into(),
                port: "80".into(),
                open: true
            },
            budget: Duration::from_secs(5),
            age: Duration::ZERO,
        }
    );
    let r =
        ok(r#"{"id":1,"op":"wait","machine":"m","until":"closed_port","addr":"h","port":"http"}"#);
    assert!(matches!(r.op, Op::Wait { budget, .. } if budget == MAX_DURATION));
    let r =
        ok(r#"{"id":1,"op":"wait","machine":"m","until":"file","path":"/x","budget":2,"age":1.5}"#);
    assert!(matches!(r.op, Op::Wait { age, .. } if age == Duration::from_millis(1500)));
    for bad in ["70000", "-1", "\"80; rm\"", "1.5"] {
        let e = err(&format!(
            r#"{{"id":1,"op":"wait","machine":"m","until":"open_port","addr":"h","port":{bad}}}"#
        ));
        assert!(e.error.msg.contains("'port'"), "{bad}: {}", e.error.msg);
    }
    let e = err(r#"{"id":1,"op":"wait","machine":"m","until":"moon"}"#);
    assert!(e.error.msg.contains("'until'"));
}

#[test]
fn start_takes_a_list_or_one_machine() {
    let r = ok(r#"{"id":1,"op":"start","machines":["a","b"],"all":true}"#);
    assert!(matches!(r.op, Op::Start { ref machines, all: true, .. } if machines.len() == 2));
    let r = ok(r#"{"id":1,"op":"start","machine":"a","allow_reboot":true}"#);
    assert!(matches!(
        r.op,
        Op::Start {
            allow_reboot: true,
            ..
        }
    ));
    assert!(err(r#"{"id":1,"op":"start","machines":[1]}"#)
        .error
        .msg
        .contains("'machines'"));
}

#[test]
fn impair_and_partition_decode_names_and_numbers() {
    let r = ok(
        r#"{"id":1,"op":"impair","vlan":1,"loss":0.1,"delay":0.05,"rate":"1mbit","between":["a","b"]}"#,
    );
    assert_eq!(
        r.op,
        Op::Impair {
            vlan: 1,
            impairment: Impairment {
                loss: 0.1,
                delay: Duration::from_millis(50),
                rate: Some(1_000_000),
                ..Impairment::default()
            },
            between: Some(("a".into(), "b".into()))
        }
    );
    let r = ok(r#"{"id":1,"op":"partition","vlan":2,"groups":[["a","b"],["c"]]}"#);
    assert!(matches!(r.op, Op::Partition { vlan: 2, ref groups } if groups.len() == 2));
    for bad in [
        r#""loss":"lots""#,
        r#""rate":-5"#,
        r#""between":["a"]"#,
        r#""between":"a""#,
    ] {
        let e = err(&format!(r#"{{"id":1,"op":"impair","vlan":1,{bad}}}"#));
        assert_eq!(e.error.kind, ErrorType::Value, "{bad}");
    }
    // The switch's own validator, with its messages naming the argument.
    for (bad, needle) in [
        (r#""loss":1.5"#, "loss must be a probability"),
        (
            r#""delay":-1"#,
            "delay must be a finite, non-negative number of seconds",
        ),
        (
            r#""delay":0.01,"jitter":0.02"#,
            "jitter (20ms) must not exceed delay (10ms)",
        ),
        (r#""delay":61"#, "delay of 61s is too long"),
        (r#""rate":"fast""#, "rate \"fast\" is not a bandwidth"),
        (r#""rate":10"#, "rate of 10bit is out of range"),
    ] {
        let e = err(&format!(r#"{{"id":1,"op":"impair","vlan":1,{bad}}}"#));
        assert_eq!(e.error.kind, ErrorType::Value, "{bad}");
        assert!(e.error.msg.starts_with(needle), "{bad}: {}", e.error.msg);
    }
    assert!(
        err(r#"{"id":1,"op":"partition","vlan":1,"groups":[["a"],[1]]}"#)
            .error
            .msg
            .contains("'groups'")
    );
}

#[test]
fn notifications_have_no_id() {
    let r = ok(r#"{"op":"log","level":"warning","msg":"hi"}"#);
    assert_eq!(r.id, None);
    assert!(matches!(
        r.op,
        Op::Log {
            kind: LineKind::Warning,
            ..
        }
    ));
}

#[test]
fn parse_duration_accepts_the_documented_range() {
    assert_eq!(parse_duration(0.0), Ok(Duration::ZERO));
    assert_eq!(parse_duration(1e9), Ok(MAX_DURATION));
    assert!(parse_duration(1e9 + 1.0).is_err());
    assert!(parse_duration(f64::INFINITY).is_err());
    assert!(parse_duration(f64::NAN).is_err());
}
