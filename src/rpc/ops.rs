//! Every request the shim can make, decoded once into a typed [`Op`] with validated values.
//!
//! The shim writes one JSON object per line, `{"id": N, "op": "...", ...}` (`id` first, so a
//! line that is not even JSON can still be answered). [`decode`] turns it into a [`Request`]
//! or a [`DecodeError`] that names the argument and says what was wrong; the rest of the driver
//! never sees JSON. Durations are non-negative finite seconds up to [`MAX_DURATION`];
//! `null` means "no limit" (the shim maps Python's `inf` to `null`). This module does no I/O
//! and holds no state; the defaults both languages share are the constants below, which the
//! shim receives as a generated module (see [`crate::shim`]).
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_precision_loss
)]

use crate::json::Value;
use crate::log::{Level, LineKind};
use crate::machine::waits::WaitCondition;
use crate::rpc::{ErrorType, OpError};
use crate::vde::impair::{self, Impairment};
use std::path::PathBuf;
use std::time::Duration;

/// Upstream's default timeout of `execute` and of every wait: 15 minutes.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(900);
/// Upstream's default timeout of `wait_for_qmp_event`: 10 minutes.
pub const DEFAULT_QMP_EVENT_TIMEOUT: Duration = Duration::from_secs(600);
/// Largest duration accepted anywhere (about 31 years): enough for "forever", small enough
/// that adding it to a clock reading never overflows. `None` says "no limit" explicitly.
pub const MAX_DURATION: Duration = Duration::from_secs(1_000_000_000);
/// While polling conditions are active, waits are cut into slices no shorter than this, so
/// the conditions are checked between slices.
pub const POLLING_SLICE_MIN: Duration = Duration::from_millis(50);
/// Upstream's default interval of a polling condition.
pub const POLLING_INTERVAL: Duration = Duration::from_secs(2);

/// One decoded request: `id` is `None` for notifications, which get no reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: Option<i64>,
    pub op: Op,
}

/// A request that could not be decoded; `id` (when it could be read) gets the error reply.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    pub id: Option<i64>,
    pub error: OpError,
}

/// Everything the shim can ask for.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    // -- log (notifications) --
    Log {
        kind: LineKind,
        machine: Option<String>,
        msg: String,
    },
    Nest {
        machine: Option<String>,
        msg: String,
    },
    Unnest {
        ok: bool,
    },
    Serial {
        on: bool,
    },
    LogLevel {
        level: Level,
    },
    // -- the run --
    Hello,
    ArmTimeout,
    DisarmTimeout,
    CreateMachine {
        start_command: String,
        name: Option<String>,
        keep_machine_state: bool,
    },
    /// The command upstream would run for a start command and socket paths
    /// (`QemuStartCommand.cmd`).
    QemuCommand {
        start_command: String,
        monitor: String,
        qmp: String,
        shell: String,
        allow_reboot: bool,
    },
    Capture {
        vlan: u32,
        path: Option<PathBuf>,
    },
    /// `vlanN.impair(...)`, checked by the switch's own validator.
    Impair {
        vlan: u32,
        impairment: Impairment,
        /// Limit to frames between these two machines (both directions).
        between: Option<(String, String)>,
    },
    /// `vlanN.partition([a, b], [c])`.
    Partition {
        vlan: u32,
        groups: Vec<Vec<String>>,
    },
    /// `vlanN.heal()`.
    Heal {
        vlan: u32,
    },
    // -- machines --
    Start {
        machines: Vec<String>,
        all: bool,
        allow_reboot: bool,
    },
    Connect {
        machine: String,
    },
    Execute {
        machine: String,
        command: String,
        timeout: Option<Duration>,
        check_output: bool,
    },
    Wait {
        machine: String,
        condition: WaitCondition,
        /// How long this call may wait (the shim cuts long waits into slices while polling
        /// conditions are active).
        budget: Duration,
        /// How long the wait has run already (its earlier slices): the schedule's age.
        age: Duration,
    },
    ConsoleWait {
        machine: String,
        timeout: Option<Duration>,
    },
    ConsoleLog {
        machine: String,
    },
    SendConsole {
        machine: String,
        data: String,
    },
    Qmp {
        machine: String,
        execute: String,
        arguments: Option<Value>,
    },
    Hmp {
        machine: String,
        command: String,
    },
    QmpEvent {
        machine: String,
        timeout: Option<Duration>,
    },
    Shutdown {
        machine: String,
        how: ShutdownKind,
        timeout: Option<Duration>,
    },
    State {
        machine: String,
    },
    MarkDisconnected {
        machine: String,
    },
}

impl Op {
    /// The wire name of the op (logs, fault injection).
    pub fn name(&self) -> &'static str {
        match self {
            Op::Log { .. } => "log",
            Op::Nest { .. } => "nest",
            Op::Unnest { .. } => "unnest",
            Op::Serial { .. } => "serial",
            Op::LogLevel { .. } => "log_level",
            Op::Hello => "hello",
            Op::ArmTimeout => "arm_timeout",
            Op::DisarmTimeout => "disarm_timeout",
            Op::CreateMachine { .. } => "create_machine",
            Op::QemuCommand { .. } => "qemu_command",
            Op::Capture { .. } => "capture",
            Op::Impair { .. } => "impair",
            Op::Partition { .. } => "partition",
            Op::Heal { .. } => "heal",
            Op::Start { .. } => "start",
            Op::Connect { .. } => "connect",
            Op::Execute { .. } => "execute",
            Op::Wait { .. } => "wait",
            Op::ConsoleWait { .. } => "console_wait",
            Op::ConsoleLog { .. } => "console_log",
            Op::SendConsole { .. } => "send_console",
            Op::Qmp { .. } => "qmp",
            Op::Hmp { .. } => "hmp",
            Op::QmpEvent { .. } => "qmp_event",
            Op::Shutdown {
                how: ShutdownKind::Poweroff,
                ..
            } => "shutdown",
            Op::Shutdown {
                how: ShutdownKind::Crash,
                ..
            } => "crash",
            Op::Shutdown { .. } => "wait_for_shutdown",
            Op::State { .. } => "state",
            Op::MarkDisconnected { .. } => "mark_disconnected",
        }
    }
}

/// How a `Shutdown` op ends the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownKind {
    /// `poweroff` in the guest, then wait.
    Poweroff,
    /// QMP `quit` (SIGKILL if QMP is gone), then wait.
    Crash,
    /// Only wait.
    Wait,
}

/// Decode one line from the shim.
pub fn decode(line: &[u8]) -> Result<Request, DecodeError> {
    let body = Value::parse(line).map_err(|e| DecodeError {
        id: leading_id(line),
        error: OpError::new(
            ErrorType::Value,
            format!("the driver cannot parse the request ({e}); non-finite numbers such as NaN cannot be sent"),
        ),
    })?;
    let id = body.get("id").and_then(Value::as_i64);
    let fail = |error| DecodeError { id, error };
    let op_name = body.get("op").and_then(Value::as_str).ok_or_else(|| {
        fail(OpError::new(
            ErrorType::Value,
            "request without an \"op\" string",
        ))
    })?;
    let args = Args {
        op: op_name,
        body: &body,
    };
    let op = decode_op(&args).map_err(fail)?;
    Ok(Request { id, op })
}

/// The id of a line that is not valid JSON, when it starts like every shim line
/// (`{"id":<digits>,`).
fn leading_id(line: &[u8]) -> Option<i64> {
    let rest = line.strip_prefix(b"{\"id\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if rest.get(digits) != Some(&b',') {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

fn decode_op(a: &Args<'_>) -> Result<Op, OpError> {
    Ok(match a.op {
        "log" => Op::Log {
            kind: match a.opt_str("level")? {
                Some("info") => LineKind::Info,
                Some("warning") => LineKind::Warning,
                Some("debug") => LineKind::Debug,
                Some("error") => LineKind::Error,
                Some("test_error") => LineKind::TestError,
                _ => LineKind::Log,
            },
            machine: a.opt_string("machine")?,
            msg: a.string("msg")?,
        },
        "nest" => Op::Nest {
            machine: a.opt_string("machine")?,
            msg: a.string("msg")?,
        },
        "unnest" => Op::Unnest {
            ok: a.bool_or("ok", true)?,
        },
        "serial" => Op::Serial {
            on: a.bool_or("on", true)?,
        },
        "log_level" => {
            let name = a.str("level")?;
            Op::LogLevel {
                level: Level::parse(name).ok_or_else(|| {
                    a.error(
                        "level",
                        format!("'{name}' is not one of debug, info, warning, error"),
                    )
                })?,
            }
        }
        "hello" => Op::Hello,
        "arm_timeout" => Op::ArmTimeout,
        "disarm_timeout" => Op::DisarmTimeout,
        "create_machine" => Op::CreateMachine {
            start_command: a.string("start_command")?,
            name: a.opt_string("name")?,
            keep_machine_state: a.bool_or("keep_machine_state", false)?,
        },
        "qemu_command" => Op::QemuCommand {
            start_command: a.string("start_command")?,
            monitor: a.string("monitor")?,
            qmp: a.string("qmp")?,
            shell: a.string("shell")?,
            allow_reboot: a.bool_or("allow_reboot", false)?,
        },
        "capture" => Op::Capture {
            vlan: a.u32("vlan")?,
            path: a.opt_string("path")?.map(PathBuf::from),
        },
        "impair" => Op::Impair {
            vlan: a.u32("vlan")?,
            impairment: decode_impairment(a)?,
            between: match a.get("between") {
                None => None,
                Some(v) => match a.names(v, "between")?.as_slice() {
                    [x, y] => Some((x.clone(), y.clone())),
                    _ => return Err(a.error("between", "must be a pair of machines")),
                },
            },
        },
        "partition" => Op::Partition {
            vlan: a.u32("vlan")?,
            groups: match a.get("groups") {
                Some(Value::Array(groups)) => groups
                    .iter()
                    .map(|g| a.names(g, "groups"))
                    .collect::<Result<_, _>>()?,
                _ => return Err(a.error("groups", "must be lists of machines")),
            },
        },
        "heal" => Op::Heal {
            vlan: a.u32("vlan")?,
        },
        "start" => Op::Start {
            machines: match a.body.get("machines") {
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| a.error("machines", "must be a list of names"))
                    })
                    .collect::<Result<_, _>>()?,
                Some(v) if !v.is_null() => {
                    return Err(a.error("machines", "must be a list of names"))
                }
                _ => vec![a.string("machine")?],
            },
            all: a.bool_or("all", false)?,
            allow_reboot: a.bool_or("allow_reboot", false)?,
        },
        "connect" => Op::Connect {
            machine: a.machine()?,
        },
        "execute" => Op::Execute {
            machine: a.machine()?,
            command: a.string("command")?,
            timeout: a.duration("timeout")?,
            check_output: a.bool_or("check_output", true)?,
        },
        "wait" => Op::Wait {
            machine: a.machine()?,
            condition: decode_condition(a)?,
            budget: a.duration("budget")?.unwrap_or(MAX_DURATION),
            age: a.duration("age")?.unwrap_or(Duration::ZERO),
        },
        "console_wait" => Op::ConsoleWait {
            machine: a.machine()?,
            timeout: a.duration("timeout")?,
        },
        "console_log" => Op::ConsoleLog {
            machine: a.machine()?,
        },
        "send_console" => Op::SendConsole {
            machine: a.machine()?,
            data: a.string("data")?,
        },
        "qmp" => Op::Qmp {
            machine: a.machine()?,
            execute: a.string("execute")?,
            arguments: a.body.get("arguments").filter(|v| !v.is_null()).cloned(),
        },
        "hmp" => Op::Hmp {
            machine: a.machine()?,
            command: a.string("command")?,
        },
        "qmp_event" => Op::QmpEvent {
            machine: a.machine()?,
            timeout: a.duration("timeout")?,
        },
        "shutdown" | "crash" | "wait_for_shutdown" => Op::Shutdown {
            machine: a.machine()?,
            how: match a.op {
                "shutdown" => ShutdownKind::Poweroff,
                "crash" => ShutdownKind::Crash,
                _ => ShutdownKind::Wait,
            },
            timeout: a.duration("timeout")?,
        },
        "state" => Op::State {
            machine: a.machine()?,
        },
        "mark_disconnected" => Op::MarkDisconnected {
            machine: a.machine()?,
        },
        other => {
            return Err(OpError::new(
                ErrorType::Runtime,
                format!("unknown request '{other}' (shim and driver versions differ?)"),
            ))
        }
    })
}

/// The arguments of `impair` as the switch's [`Impairment`], checked by its one validator
/// ([`impair::seconds`], [`Impairment::validate`]); its messages name the argument.
fn decode_impairment(a: &Args<'_>) -> Result<Impairment, OpError> {
    let refused = |e: impair::ImpairError| OpError::new(ErrorType::Value, e.to_string());
    let seconds = |key: &'static str| -> Result<Duration, OpError> {
        impair::seconds(key, a.number_or(key, 0.0)?).map_err(refused)
    };
    let rate = match a.get("rate") {
        None => None,
        Some(Value::Str(s)) => Some(impair::parse_rate(s).map_err(refused)?),
        Some(v) => Some(
            v.as_i64()
                .and_then(|n| u64::try_from(n).ok())
                .ok_or_else(|| {
                    a.error(
                        "rate",
                        "must be a bandwidth such as \"1mbit\" or bits per second",
                    )
                })?,
        ),
    };
    let impairment = Impairment {
        loss: a.number_or("loss", 0.0)?,
        delay: seconds("delay")?,
        jitter: seconds("jitter")?,
        duplicate: a.number_or("duplicate", 0.0)?,
        reorder: a.number_or("reorder", 0.0)?,
        rate,
    };
    impairment.validate().map_err(refused)?;
    Ok(impairment)
}

fn decode_condition(a: &Args<'_>) -> Result<WaitCondition, OpError> {
    let kind = a.str("until")?;
    Ok(match kind {
        "success" | "failure" => WaitCondition::Command {
            command: a.string("command")?,
            until_success: kind == "success",
        },
        "file" => WaitCondition::File {
            path: a.string("path")?,
        },
        "open_port" | "closed_port" => WaitCondition::Port {
            addr: a.string("addr")?,
            port: a.port("port")?,
            open: kind == "open_port",
        },
        "unix_socket" => WaitCondition::UnixSocket {
            path: a.string("path")?,
            datagram: a.bool_or("datagram", false)?,
        },
        "unit" => WaitCondition::Unit {
            unit: a.string("unit")?,
            user: a.opt_string("user")?,
        },
        "unit_state" => WaitCondition::UnitState {
            unit: a.string("unit")?,
            state: a.string("state")?,
            user: a.opt_string("user")?,
        },
        "x11" => WaitCondition::X11,
        other => return Err(a.error("until", format!("unknown wait condition '{other}'"))),
    })
}

/// The arguments of one request, with typed accessors whose errors name the argument.
struct Args<'a> {
    op: &'a str,
    body: &'a Value,
}

impl<'a> Args<'a> {
    fn error(&self, key: &str, what: impl std::fmt::Display) -> OpError {
        OpError::new(
            ErrorType::Value,
            format!("{}: argument '{key}' {what}", self.op),
        )
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.body.get(key).filter(|v| !v.is_null())
    }

    fn str(&self, key: &str) -> Result<&'a str, OpError> {
        self.opt_str(key)?
            .ok_or_else(|| self.error(key, "is missing (a string is needed)"))
    }

    fn opt_str(&self, key: &str) -> Result<Option<&'a str>, OpError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.error(key, "must be a string")),
        }
    }

    fn string(&self, key: &str) -> Result<String, OpError> {
        self.str(key).map(str::to_owned)
    }

    fn opt_string(&self, key: &str) -> Result<Option<String>, OpError> {
        Ok(self.opt_str(key)?.map(str::to_owned))
    }

    fn machine(&self) -> Result<String, OpError> {
        self.string("machine")
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool, OpError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.error(key, "must be true or false")),
        }
    }

    fn u32(&self, key: &str) -> Result<u32, OpError> {
        self.get(key)
            .and_then(Value::as_i64)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| self.error(key, "must be a non-negative integer"))
    }

    /// A number (probabilities, seconds) with a default when absent.
    fn number_or(&self, key: &str, default: f64) -> Result<f64, OpError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.error(key, format!("must be a number, not {}", v.to_json()))),
        }
    }

    /// A list of machine names.
    fn names(&self, v: &Value, key: &str) -> Result<Vec<String>, OpError> {
        v.as_array()
            .and_then(|items| {
                items
                    .iter()
                    .map(|i| i.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| self.error(key, "must be a list of machines"))
    }

    /// A TCP port: an integer 0..=65535 or a service name (what `nc` and bash accept).
    fn port(&self, key: &str) -> Result<String, OpError> {
        match self.get(key) {
            Some(Value::Int(n)) if (0..=65535).contains(n) => Ok(n.to_string()),
            Some(Value::Str(s))
                if !s.is_empty()
                    && s.len() <= 64
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                Ok(s.clone())
            }
            _ => Err(self.error(key, "must be a port number (0-65535) or a service name")),
        }
    }

    /// Seconds as a [`Duration`]; absent or `null` is `None` (no limit).
    fn duration(&self, key: &str) -> Result<Option<Duration>, OpError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let secs = v.as_f64().ok_or_else(|| {
            self.error(
                key,
                format!("must be a number of seconds, not {}", v.to_json()),
            )
        })?;
        parse_duration(secs)
            .map(Some)
            .map_err(|why| self.error(key, why))
    }
}

/// Validate a number of seconds (shared with the command line).
pub fn parse_duration(secs: f64) -> Result<Duration, String> {
    if secs.is_nan() {
        return Err("is not a number".into());
    }
    if secs < 0.0 {
        return Err(format!("must not be negative (got {secs} s)"));
    }
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        _ => Err(format!(
            "is out of range ({secs} s; at most {} s; pass None for no limit)",
            MAX_DURATION.as_secs()
        )),
    }
}

#[cfg(test)]
#[path = "ops_tests.rs"]
mod tests;
