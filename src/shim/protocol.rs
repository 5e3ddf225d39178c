//! The shim's half of the line protocol, generated: `test_driver/_protocol.py` is written
//! from the driver's protocol table (`rpc::ops::OPS`), its reply records (`rpc::replies`)
//! and its error types, so that the two languages cannot disagree.
//!
//! The module has one keyword-only function per op (parameters and defaults from the op's
//! argument kinds, the return type from its reply type), a `TypedDict` per reply record, the
//! exception each error type raises, and the few values and messages both sides share
//! (`rpc::replies::STATUS_NOT_WAITED`, `rpc::replies::TIMED_OUT`). The
//! shim's own code never names an op or handles an untyped reply; `mypy --strict` checks its
//! calls against this module (`ci/typecheck --shim`). Pure text.

use crate::rpc::ops::{OpSpec, OPS};
use crate::rpc::replies::{self, STATUS_NOT_WAITED, STRETCHED, TIMED_OUT};
use crate::rpc::wire::Record;
use crate::rpc::ErrorType;
use std::fmt::Write as _;

/// The module's text.
pub fn module() -> String {
    let mut py = String::with_capacity(32 * 1024);
    py.push_str(HEADER);
    let _ = write!(
        py,
        r#"
#: `execute`'s status when it did not wait for the command (``check_output=False``).
STATUS_NOT_WAITED = {STATUS_NOT_WAITED}

_TIMED_OUT = ({:?}, {:?}, {:?})


def timed_out_message(elapsed: float, timeout: float) -> str:
    """The message of a call whose time ran out (the driver words its own the same way)."""
    return f"{{_TIMED_OUT[0]}}{{elapsed:.2f}}{{_TIMED_OUT[1]}}{{timeout!r}}{{_TIMED_OUT[2]}}"

_STRETCHED = ({:?}, {:?}, {:?}, {:?})


def stretch_note(timeout: float, wall: float, withheld: float) -> str:
    """How far the host stretched a timeout that counts guest time (the driver's words)."""
    return (
        f"{{_STRETCHED[0]}}{{float(timeout)!r}}{{_STRETCHED[1]}}{{wall:.1f}}"
        f"{{_STRETCHED[2]}}{{withheld:.1f}}{{_STRETCHED[3]}}"
    )
"#,
        TIMED_OUT[0],
        TIMED_OUT[1],
        TIMED_OUT[2],
        STRETCHED[0],
        STRETCHED[1],
        STRETCHED[2],
        STRETCHED[3]
    );
    for record in replies::records() {
        typed_dict(&mut py, &record);
    }
    exceptions(&mut py);
    for op in OPS {
        function(&mut py, op);
    }
    py
}

const HEADER: &str = r#""""The line protocol to the ntd driver, generated from the driver's protocol table
(`rpc::ops`, `rpc::replies`); do not edit.

One function per request: its parameters are the request's arguments, its return type is the
reply's (a TypedDict below, or a plain type). An error reply raises the exception the driver
names. The transport is `test_driver._rpc`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypedDict, cast

from test_driver import _rpc
from test_driver._rpc import ErrorBody, Json
from test_driver.errors import MachineError, QMPAPIError, RequestedAssertionFailed
"#;

/// `text` (a Rust doc comment) as the body of a Python triple-quoted string: one line,
/// intra-doc links as plain code spans.
fn docstring(text: &str) -> String {
    text.trim()
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
        .replace("[`", "`")
        .replace("`]", "`")
        .replace('\\', "\\\\")
        .replace("\"\"\"", "\\\"\\\"\\\"")
}

fn typed_dict(py: &mut String, r: &Record) {
    let _ = write!(
        py,
        "\n\nclass {}(TypedDict):\n    \"\"\"{}\"\"\"\n",
        r.name,
        docstring(r.doc)
    );
    py.push('\n');
    for f in &r.fields {
        let _ = writeln!(py, "    {}: {}", f.name, f.py);
        if !f.doc.trim().is_empty() {
            let _ = writeln!(py, "    \"\"\"{}\"\"\"", docstring(f.doc));
        }
    }
}

fn exceptions(py: &mut String) {
    py.push_str("\n\n_EXCEPTIONS: dict[str, type[Exception]] = {\n");
    for t in ErrorType::ALL {
        let _ = writeln!(py, "    {:?}: {},", t.name(), t.name());
    }
    py.push_str(
        r#"}


def _exception(err: ErrorBody) -> Exception:
    qmp = err.get("qmp")
    if qmp is not None:
        return QMPAPIError({"error": {"class": qmp["class"], "desc": qmp["desc"]}})
    return _EXCEPTIONS.get(err["type"], RuntimeError)(err["msg"])


def _call(op: str, args: Mapping[str, object]) -> Json:
    reply = _rpc.channel().request(op, args)
    err = reply.get("err")
    if err is not None:
        raise _exception(err)
    return reply.get("ok")


def _notify(op: str, args: Mapping[str, object]) -> None:
    _rpc.channel().notify(op, args)
"#,
    );
}

fn function(py: &mut String, op: &OpSpec) {
    let reply = (op.reply)();
    let mut params = Vec::new();
    for a in op.args {
        params.push(match a.default {
            Some(d) => format!("{}: {} = {d}", a.name, a.py),
            None => format!("{}: {}", a.name, a.py),
        });
    }
    let signature = if params.is_empty() {
        String::new()
    } else {
        format!("*, {}", params.join(", "))
    };
    let args: Vec<String> = op
        .args
        .iter()
        .map(|a| format!("{:?}: {}", a.name, a.name))
        .collect();
    let args = format!("{{{}}}", args.join(", "));
    let _ = write!(
        py,
        "\n\ndef {}({signature}) -> {reply}:\n    \"\"\"{}\"\"\"\n",
        op.name,
        docstring(op.doc)
    );
    let call = if op.notification {
        format!("_notify({:?}, {args})", op.name)
    } else {
        format!("_call({:?}, {args})", op.name)
    };
    let _ = match reply.as_str() {
        "None" => writeln!(py, "    {call}"),
        "Json" | "Json | None" => writeln!(py, "    return {call}"),
        other => writeln!(py, "    return cast({other}, {call})"),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_is_one_typed_function_and_every_record_a_typed_dict() {
        let py = module();
        for op in OPS {
            assert!(py.contains(&format!("\ndef {}(", op.name)), "{}", op.name);
            assert!(py.contains(&format!("{:?}, {{", op.name)), "{}", op.name);
        }
        for r in replies::records() {
            assert!(py.contains(&format!("\nclass {}(TypedDict):", r.name)));
        }
        assert!(py.contains(
            "def execute(*, machine: str, command: str, timeout: float | None = None, \
             check_output: bool = True) -> RunReply:"
        ));
        assert!(py.contains("    return cast(RunReply, _call(\"execute\", {\"machine\": machine, "));
        assert!(py.contains(
            "def log(*, level: str = \"log\", machine: str | None = None, msg: str) -> None:\n"
        ));
        assert!(py.contains("    _notify(\"log\", {"));
        assert!(py.contains(
            "def qmp_event(*, machine: str, timeout: float | None = None) -> Json | None:"
        ));
        assert!(py.contains("    \"QMPAPIError\": QMPAPIError,\n"));
        assert!(!py.contains("Any"), "no Any at the seam");
    }

    #[test]
    fn timed_out_message_has_the_drivers_pieces() {
        let py = module();
        assert!(py
            .contains("_TIMED_OUT = (\"action timed out after \", \" seconds (timeout=\", \")\")"));
        assert_eq!(
            replies::timed_out(
                std::time::Duration::from_millis(2500),
                Some(std::time::Duration::from_secs(2))
            ),
            "action timed out after 2.50 seconds (timeout=2.0)"
        );
        assert_eq!(
            replies::timed_out(std::time::Duration::ZERO, None),
            "action timed out after 0.00 seconds (timeout=inf)"
        );
    }
}
