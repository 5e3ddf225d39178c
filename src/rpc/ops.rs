//! Every request the shim can make, its reply type, and the one decoder: the protocol table.
//!
//! The shim writes one JSON object per line, `{"id": N, "op": "...", ...}` (`id` first, so a
//! line that is not even JSON can still be answered). [`decode`] turns it into a [`Request`]
//! whose [`Op`] holds the op's typed request (one struct per op, declared in
//! [`super::requests`] with the argument kinds of [`super::args`]), or a [`DecodeError`] that
//! names the argument and says what was wrong; the rest of the driver never sees JSON.
//!
//! The table at the bottom (`protocol!`) pairs each wire name with its request and reply
//! types. From it come the [`Op`] enum, the decoder, the [`Serve`] trait (one method per op,
//! whose [`Responder`] only takes that op's reply type), [`dispatch`] and [`OPS`], from which
//! the shim's Python module is generated ([`crate::shim::protocol`]). This module does no I/O
//! and holds no state; the defaults both languages share are the constants below.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_precision_loss
)]

pub use super::args::{parse_duration, MAX_DURATION};
use super::args::{ArgSpec, Args, Decode};
use super::replies::*;
use super::requests::*;
use super::wire::{Responder, Seconds, Wire};
use super::{ErrorType, OpError};
use crate::json::Value;
use std::time::Duration;

/// Upstream's default timeout of `execute` and of every wait: 15 minutes.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(900);
/// Upstream's default timeout of `wait_for_qmp_event`: 10 minutes.
pub const DEFAULT_QMP_EVENT_TIMEOUT: Duration = Duration::from_secs(600);
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

/// One op of the protocol as the generated Python module declares it.
#[derive(Debug, Clone, Copy)]
pub struct OpSpec {
    /// The wire name, also the Python function's name and the [`Serve`] method's.
    pub name: &'static str,
    pub doc: &'static str,
    pub args: &'static [ArgSpec],
    /// The reply's Python type.
    pub reply: fn() -> String,
    /// Sent without an id and never answered (log lines, nesting).
    pub notification: bool,
}

/// The protocol table: `wire_name: Request -> Reply;` (`, notification` for requests sent
/// without an id). Generates [`Op`], [`Op::name`], the decoder, [`OPS`], [`Serve`] and
/// [`dispatch`].
macro_rules! protocol {
    ($( $name:ident : $req:ident -> $reply:ty $(, $flag:ident)? ; )*) => {
        /// Everything the shim can ask for, decoded.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Op {
            $( $req($req), )*
        }

        impl Op {
            /// The wire name of the op (logs, fault injection).
            pub fn name(&self) -> &'static str {
                match self {
                    $( Op::$req(_) => stringify!($name), )*
                }
            }
        }

        fn decode_op(a: &Args<'_>) -> Result<Op, OpError> {
            match a.op {
                $( stringify!($name) => <$req as Decode>::decode(a).map(Op::$req), )*
                other => Err(OpError::new(
                    ErrorType::Runtime,
                    format!("unknown request '{other}' (shim and driver versions differ?)"),
                )),
            }
        }

        /// Every op, in table order: what the generated Python module is made from.
        pub const OPS: &[OpSpec] = &[$(
            OpSpec {
                name: stringify!($name),
                doc: <$req as Decode>::DOC,
                args: <$req as Decode>::ARGS,
                reply: <$reply as Wire>::py_type,
                notification: protocol!(@notification $($flag)?),
            },
        )*];

        /// What serves the ops: one method per op, answered through its [`Responder`] (at once,
        /// or later by a pending operation that keeps it).
        pub trait Serve {
            /// What serving a request yields (answered now, or pending).
            type Served;
            $( fn $name(&mut self, req: $req, out: Responder<$reply>) -> Self::Served; )*
        }

        /// Hand a decoded request to the method of its op, with a responder for its id.
        pub fn dispatch<S: Serve>(s: &mut S, req: Request) -> S::Served {
            match req.op {
                $( Op::$req(r) => s.$name(r, Responder::new(req.id)), )*
            }
        }
    };
    (@notification notification) => { true };
    (@notification) => { false };
}

protocol! {
    log: Log -> (), notification;
    failure: Failure -> (), notification;
    nest: Nest -> (), notification;
    unnest: Unnest -> (), notification;
    serial: Serial -> (), notification;
    log_level: LogLevel -> (), notification;
    hello: Hello -> HelloReply;
    arm_timeout: ArmTimeout -> ();
    disarm_timeout: DisarmTimeout -> ();
    create_machine: CreateMachine -> MachineInfo;
    qemu_command: QemuCommand -> String;
    capture: Capture -> ();
    impair: Impair -> ();
    partition: Partition -> ();
    heal: Heal -> ();
    start: Start -> ();
    connect: Connect -> ();
    execute: Execute -> RunReply;
    systemctl: Systemctl -> RunReply;
    wait_command: WaitCommand -> WaitReply;
    wait_file: WaitFile -> WaitReply;
    wait_port: WaitPort -> WaitReply;
    wait_unix_socket: WaitUnixSocket -> WaitReply;
    wait_unit: WaitUnit -> WaitReply;
    wait_unit_state: WaitUnitState -> WaitReply;
    wait_x11: WaitX11 -> WaitReply;
    retry_step: RetryStep -> NextAttempt;
    guest_clock: GuestClock -> Seconds;
    console_wait: ConsoleWait -> ConsoleChunk;
    console_log: ConsoleLog -> String;
    send_console: SendConsole -> ();
    qmp: Qmp -> Value;
    hmp: Hmp -> String;
    qmp_event: QmpEvent -> Option<Value>;
    shutdown: Shutdown -> ();
    crash: Crash -> ();
    wait_for_shutdown: WaitForShutdown -> ();
    state: State -> MachineState;
    mark_disconnected: MarkDisconnected -> ();
    snapshot: Snapshot -> ();
    restore: RestoreSnapshot -> ();
    snapshot_all: SnapshotAll -> ();
    restore_all: RestoreAll -> ();
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
    let op = decode_op(&Args::new(op_name, &body)).map_err(fail)?;
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

#[cfg(test)]
#[path = "ops_tests.rs"]
mod tests;
