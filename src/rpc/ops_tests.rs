//! Unit tests of [`super`], byte by byte (kept beside the module to keep it short).

use super::*;
use crate::json::Value;
use crate::log::LineKind;
use crate::machine::waits::WaitCondition;
use crate::vde::impair::Impairment;

fn ok(line: &str) -> Request {
    decode(line.as_bytes()).unwrap_or_else(|e| panic!("{line}: {e:?}"))
}

fn err(line: &str) -> DecodeError {
    decode(line.as_bytes()).expect_err(line)
}

/// A request line for `op` with the given arguments (JSON texts).
fn line(op: &str, args: &[(&str, &str)]) -> String {
    let mut s = format!(r#"{{"id":1,"op":"{op}""#);
    for (k, v) in args {
        s.push_str(&format!(r#","{k}":{v}"#));
    }
    s.push('}');
    s
}

#[test]
fn every_op_of_the_table_decodes_from_its_declared_arguments() {
    for spec in OPS {
        // Every argument as its kind's example: the op decodes, under its own name.
        let all: Vec<(&str, &str)> = spec.args.iter().map(|a| (a.name, a.example)).collect();
        let r = ok(&line(spec.name, &all));
        assert_eq!(r.op.name(), spec.name);
        // Only the required ones: the declared defaults suffice.
        let required: Vec<(&str, &str)> = spec
            .args
            .iter()
            .filter(|a| a.default.is_none())
            .map(|a| (a.name, a.example))
            .collect();
        assert_eq!(ok(&line(spec.name, &required)).op.name(), spec.name);
        // Without a required argument: an error naming it.
        for missing in spec.args.iter().filter(|a| a.default.is_none()) {
            let rest: Vec<(&str, &str)> = required
                .iter()
                .copied()
                .filter(|(k, _)| *k != missing.name)
                .collect();
            let e = err(&line(spec.name, &rest));
            assert_eq!(e.error.kind, ErrorType::Value, "{}", spec.name);
            assert!(
                e.error.msg.contains(&format!("'{}'", missing.name)),
                "{}: {}",
                spec.name,
                e.error.msg
            );
        }
    }
}

#[test]
fn the_table_has_one_entry_per_wire_name_and_notifications_reply_nothing() {
    let mut names: Vec<&str> = OPS.iter().map(|o| o.name).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(names.len(), before, "a wire name twice");
    for op in OPS.iter().filter(|o| o.notification) {
        assert_eq!((op.reply)(), "None", "{}", op.name);
    }
}

#[test]
fn execute_decodes_typed_fields() {
    let r = ok(r#"{"id":3,"op":"execute","machine":"m","command":"true","timeout":900.0}"#);
    assert_eq!(r.id, Some(3));
    assert_eq!(
        r.op,
        Op::Execute(Execute {
            machine: "m".into(),
            command: "true".into(),
            timeout: Some(Duration::from_secs(900)),
            check_output: true
        })
    );
}

#[test]
fn null_timeout_is_no_limit() {
    let r = ok(r#"{"id":1,"op":"execute","machine":"m","command":"x","timeout":null}"#);
    assert!(matches!(r.op, Op::Execute(Execute { timeout: None, .. })));
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
fn wait_requests_decode_to_conditions_and_limits_and_ports_are_checked() {
    use crate::rpc::requests::{WaitLimits, WaitRequest};
    let r = ok(
        r#"{"id":1,"op":"wait_port","machine":"m","addr":"10.0.0.1","port":80,"timeout":5,"withheld":0.25,"slice":1.5}"#,
    );
    let Op::WaitPort(w) = r.op else {
        panic!("{:?}", r.op)
    };
    assert_eq!(
        w.into_wait(),
        (
            "m".to_owned(),
            WaitCondition::Port {
                addr: "10.0.0.1".into(),
                port: "80".into(),
                open: true
            },
            WaitLimits {
                timeout: Some(Duration::from_secs(5)),
                age: Duration::ZERO,
                withheld: Duration::from_millis(250),
                slice: Some(Duration::from_millis(1500)),
            }
        )
    );
    let r = ok(r#"{"id":1,"op":"wait_file","machine":"m","path":"/x","timeout":2,"age":1.5}"#);
    assert!(matches!(r.op, Op::WaitFile(ref w) if w.age == Duration::from_millis(1500)));
    for bad in ["70000", "-1", "\"80; rm\"", "1.5"] {
        let e = err(&format!(
            r#"{{"id":1,"op":"wait_port","machine":"m","addr":"h","port":{bad}}}"#
        ));
        assert!(e.error.msg.contains("'port'"), "{bad}: {}", e.error.msg);
    }
}

#[test]
fn start_takes_a_list_of_machines() {
    let r = ok(r#"{"id":1,"op":"start","machines":["a","b"],"all":true}"#);
    assert!(matches!(r.op, Op::Start(ref s) if s.machines.len() == 2 && s.all));
    let r = ok(r#"{"id":1,"op":"start","machines":["a"],"allow_reboot":true}"#);
    assert!(matches!(r.op, Op::Start(ref s) if s.allow_reboot && !s.all));
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
        Op::Impair(Impair {
            vlan: 1,
            impairment: Impairment {
                loss: 0.1,
                delay: Duration::from_millis(50),
                rate: Some(1_000_000),
                ..Impairment::default()
            },
            between: Some(("a".into(), "b".into()))
        })
    );
    let r = ok(r#"{"id":1,"op":"partition","vlan":2,"groups":[["a","b"],["c"]]}"#);
    assert!(matches!(r.op, Op::Partition(ref p) if p.vlan == 2 && p.groups.len() == 2));
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
        Op::Log(Log {
            level: LineKind::Warning,
            ..
        })
    ));
}

#[test]
fn qmp_arguments_pass_through_as_they_are() {
    let r =
        ok(r#"{"id":1,"op":"qmp","machine":"m","execute":"x","arguments":{"a":[1,{"b":null}]}}"#);
    let Op::Qmp(q) = r.op else { panic!() };
    assert_eq!(
        q.arguments.map(|v| v.to_json()),
        Some(r#"{"a":[1,{"b":null}]}"#.to_owned())
    );
    assert!(Value::parse(b"{}").is_ok());
}

#[test]
fn parse_duration_accepts_the_documented_range() {
    assert_eq!(parse_duration(0.0), Ok(Duration::ZERO));
    assert_eq!(parse_duration(1e9), Ok(MAX_DURATION));
    assert!(parse_duration(1e9 + 1.0).is_err());
    assert!(parse_duration(f64::INFINITY).is_err());
    assert!(parse_duration(f64::NAN).is_err());
}
