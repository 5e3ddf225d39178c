//! The request of every op: one struct each, its fields read by the argument kinds of
//! [`super::args::kind`] (or, for `impair`, by the switch's own validator). Which op a
//! request belongs to and what it answers is the table in [`super::ops`]; what it means is
//! `crate::driver`'s business. Pure data and decoding.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_precision_loss
)]

use super::args::{kind, requests, Arg, ArgSpec, Args, Decode};
use super::{ErrorType, OpError};
use crate::json::Value;
use crate::log::{Level, LineKind};
use crate::machine::waits::WaitCondition;
use crate::vde::impair::{self, Impairment};
use std::time::Duration;

/// A log line's kind, by the name the shim's logger uses.
const LINE_KIND: Arg<LineKind> = Arg {
    py: "str",
    default: Some("\"log\""),
    read: |a, k| {
        Ok(match a.opt_str(k)? {
            Some("info") => LineKind::Info,
            Some("warning") => LineKind::Warning,
            Some("debug") => LineKind::Debug,
            Some("error") => LineKind::Error,
            Some("test_error") => LineKind::TestError,
            _ => LineKind::Log,
        })
    },
    example: r#""warning""#,
};

/// A log level by name.
const LEVEL: Arg<Level> = Arg {
    py: "str",
    default: None,
    read: |a, k| {
        let name = a.str(k)?;
        Level::parse(name).ok_or_else(|| {
            a.error(
                k,
                format!("'{name}' is not one of debug, info, warning, error"),
            )
        })
    },
    example: r#""debug""#,
};

requests! {
    /// A log line of the script (`log.info(...)`, `machine.log(...)`).
    pub struct Log {
        /// `log`, `info`, `warning`, `debug`, `error` or `test_error`.
        pub level: LineKind = LINE_KIND,
        pub machine: Option<String> = kind::OPT_STR,
        pub msg: String = kind::STR,
    }

    /// The test script raised: its traceback (kept for a failure capsule's log; Python
    /// prints it to stderr itself).
    pub struct Failure {
        pub text: String = kind::STR,
    }

    /// Open a nested log block (`with log.nested(msg):`).
    pub struct Nest {
        pub machine: Option<String> = kind::OPT_STR,
        pub msg: String = kind::STR,
    }

    /// Close the innermost log block.
    pub struct Unnest {
        /// Whether the block ended without an exception.
        pub ok: bool = kind::TRUE,
    }

    /// `serial_stdout_on()` / `serial_stdout_off()`.
    pub struct Serial {
        pub on: bool = kind::TRUE,
    }

    /// `log.set_log_level(level)`.
    pub struct LogLevel {
        pub level: Level = LEVEL,
    }

    /// The run as the shim builds its namespace from it (also a round trip that proves every
    /// earlier notification was handled).
    pub struct Hello {
    }

    /// Start the global timeout.
    pub struct ArmTimeout {
    }

    /// Stop the global timeout.
    pub struct DisarmTimeout {
    }

    /// `create_machine(start_command, name=…)`: a machine outside the configured set.
    pub struct CreateMachine {
        pub start_command: String = kind::STR,
        pub name: Option<String> = kind::OPT_STR,
        pub keep_machine_state: bool = kind::FALSE,
    }

    /// Upstream's `QemuStartCommand.cmd(...)`: the command line ntd would run.
    pub struct QemuCommand {
        pub start_command: String = kind::STR,
        pub monitor: String = kind::STR,
        pub qmp: String = kind::STR,
        pub shell: String = kind::STR,
        pub allow_reboot: bool = kind::FALSE,
    }

    /// `vlanN.start_capture(path)` (`None`: stop).
    pub struct Capture {
        pub vlan: u32 = kind::U32,
        pub path: Option<String> = kind::OPT_STR,
    }

    /// `vlanN.partition([a, b], [c])`.
    pub struct Partition {
        pub vlan: u32 = kind::U32,
        pub groups: Vec<Vec<String>> = kind::GROUPS,
    }

    /// `vlanN.heal()`: every impairment and partition of the vlan removed.
    pub struct Heal {
        pub vlan: u32 = kind::U32,
    }

    /// Start machines (`start_all()` sets `all`, which makes the error list every failure).
    pub struct Start {
        pub machines: Vec<String> = kind::NAMES,
        pub all: bool = kind::FALSE,
        pub allow_reboot: bool = kind::FALSE,
    }

    /// Wait for the machine's backdoor shell (booting the machine first if needed).
    pub struct Connect {
        pub machine: String = kind::STR,
    }

    /// `execute(command, timeout=…)`: run a command in the guest shell.
    pub struct Execute {
        pub machine: String = kind::STR,
        pub command: String = kind::STR,
        pub timeout: Option<Duration> = kind::TIMEOUT,
        /// False: return once the command is sent, without its output or status.
        pub check_output: bool = kind::TRUE,
    }

    /// `systemctl(query, user)`: upstream's command for the system or a user's manager.
    pub struct Systemctl {
        pub machine: String = kind::STR,
        /// The arguments after `systemctl`, as shell words.
        pub query: String = kind::STR,
        pub user: Option<String> = kind::OPT_STR,
        pub timeout: Option<Duration> = kind::TIMEOUT,
    }

    /// `wait_until_succeeds` / `wait_until_fails`: repeat a command until it succeeds (fails).
    pub struct WaitCommand {
        pub machine: String = kind::STR,
        pub command: String = kind::STR,
        pub until_success: bool = kind::TRUE,
        pub timeout: Option<Duration> = kind::TIMEOUT,
        /// Guest-available seconds the wait's earlier slices used.
        pub age: Duration = kind::SECONDS,
        /// Seconds the host withheld from the machine during the earlier slices.
        pub withheld: Duration = kind::SECONDS,
        pub slice: Option<Duration> = kind::TIMEOUT,
    }

    /// `wait_for_file(path)`.
    pub struct WaitFile {
        pub machine: String = kind::STR,
        pub path: String = kind::STR,
        pub timeout: Option<Duration> = kind::TIMEOUT,
        /// Guest-available seconds the wait's earlier slices used.
        pub age: Duration = kind::SECONDS,
        /// Seconds the host withheld from the machine during the earlier slices.
        pub withheld: Duration = kind::SECONDS,
        pub slice: Option<Duration> = kind::TIMEOUT,
    }

    /// `wait_for_open_port` / `wait_for_closed_port`.
    pub struct WaitPort {
        pub machine: String = kind::STR,
        pub addr: String = kind::STR,
        pub port: String = kind::PORT,
        pub open: bool = kind::TRUE,
        pub timeout: Option<Duration> = kind::TIMEOUT,
        /// Guest-available seconds the wait's earlier slices used.
        pub age: Duration = kind::SECONDS,
        /// Seconds the host withheld from the machine during the earlier slices.
        pub withheld: Duration = kind::SECONDS,
        pub slice: Option<Duration> = kind::TIMEOUT,
    }

    /// `wait_for_open_unix_socket(path, is_datagram)`.
    pub struct WaitUnixSocket {
        pub machine: String = kind::STR,
        pub path: String = kind::STR,
        pub datagram: bool = kind::FALSE,
        pub timeout: Option<Duration> = kind::TIMEOUT,
        /// Guest-available seconds the wait's earlier slices used.
        pub age: Duration = kind::SECONDS,
        /// Seconds the host withheld from the machine during the earlier slices.
        pub withheld: Duration = kind::SECONDS,
        pub slice: Option<Duration> = kind::TIMEOUT,
    }

    /// `wait_for_unit(unit, user)`.
    pub struct WaitUnit {
        pub machine: String = kind::STR,
        pub unit: String = kind::STR,
        pub user: Option<String> = kind::OPT_STR,
        pub timeout: Option<Duration> = kind::TIMEOUT,
        /// Guest-available seconds the wait's earlier slices used.
        pub age: Duration = kind::SECONDS,
        /// Seconds the host withheld from the machine during the earlier slices.
        pub withheld: Duration = kind::SECONDS,
        pub slice: Option<Duration> = kind::TIMEOUT,
    }

    /// `wait_for_unit_active_state(unit, state, user)`.
    pub struct WaitUnitState {
        pub machine: String = kind::STR,
        pub unit: String = kind::STR,
        pub state: String = kind::STR,
        pub user: Option<String> = kind::OPT_STR,
        pub timeout: Option<Duration> = kind::TIMEOUT,
        /// Guest-available seconds the wait's earlier slices used.
        pub age: Duration = kind::SECONDS,
        /// Seconds the host withheld from the machine during the earlier slices.
        pub withheld: Duration = kind::SECONDS,
        pub slice: Option<Duration> = kind::TIMEOUT,
    }

    /// `wait_for_x()`.
    pub struct WaitX11 {
        pub machine: String = kind::STR,
        pub timeout: Option<Duration> = kind::TIMEOUT,
        /// Guest-available seconds the wait's earlier slices used.
        pub age: Duration = kind::SECONDS,
        /// Seconds the host withheld from the machine during the earlier slices.
        pub withheld: Duration = kind::SECONDS,
        pub slice: Option<Duration> = kind::TIMEOUT,
    }

    /// `retry()` before its next attempt: how long to pause, and whether that attempt is
    /// the last that fits before the deadline (the wait schedule's rule, paced by the host's
    /// CPU; one home for it). The retry's age counts the run's guest-available time: its wall
    /// age minus what the host withheld since it began.
    pub struct RetryStep {
        /// How long the retry has run by the shim's clock (wall time).
        pub age: Duration = kind::SECONDS,
        /// The run's withheld-time counter when the retry began (the `withheld` of the
        /// reply to its first step).
        pub since: Duration = kind::SECONDS,
        /// How long the previous attempt took.
        pub cost: Duration = kind::SECONDS,
        /// The retry's time limit (`None`: no limit, no attempt is the last).
        pub timeout: Option<Duration> = kind::TIMEOUT,
        /// No attempt ran yet (no pause).
        pub first: bool = kind::FALSE,
    }

    /// A reading of a machine's guest clock (seconds of guest-available time since the
    /// driver started), or of the run's (no machine: the most-starved machine's time).
    pub struct GuestClock {
        pub machine: Option<String> = kind::OPT_STR,
    }

    /// Serial lines printed since the last call, once there are some (or the machine
    /// stopped, or the timeout passed).
    pub struct ConsoleWait {
        pub machine: String = kind::STR,
        pub timeout: Option<Duration> = kind::TIMEOUT,
    }

    /// Every serial line since the last start.
    pub struct ConsoleLog {
        pub machine: String = kind::STR,
    }

    /// Write to the serial console (QEMU's stdin).
    pub struct SendConsole {
        pub machine: String = kind::STR,
        pub data: String = kind::STR,
    }

    /// A QMP command; the reply is QEMU's `return` value.
    pub struct Qmp {
        pub machine: String = kind::STR,
        pub execute: String = kind::STR,
        pub arguments: Option<Value> = kind::JSON,
    }

    /// An HMP command through QMP's `human-monitor-command`; the reply is its output.
    pub struct Hmp {
        pub machine: String = kind::STR,
        pub command: String = kind::STR,
    }

    /// The next QMP event, or `None` once the timeout passed (or the machine stopped).
    pub struct QmpEvent {
        pub machine: String = kind::STR,
        pub timeout: Option<Duration> = kind::TIMEOUT,
    }

    /// `shutdown()`: `poweroff` in the guest, then wait for QEMU to exit.
    pub struct Shutdown {
        pub machine: String = kind::STR,
        pub timeout: Option<Duration> = kind::TIMEOUT,
    }

    /// `crash()`: QMP `quit` (SIGKILL if QMP is gone), then wait for QEMU to exit.
    pub struct Crash {
        pub machine: String = kind::STR,
        pub timeout: Option<Duration> = kind::TIMEOUT,
    }

    /// `wait_for_shutdown()`: wait for QEMU to exit (acknowledges an exit nobody asked for).
    pub struct WaitForShutdown {
        pub machine: String = kind::STR,
        pub timeout: Option<Duration> = kind::TIMEOUT,
    }

    /// The machine's state: `booted`, `connected`, `pid`, sockets, boot timings.
    pub struct State {
        pub machine: String = kind::STR,
    }

    /// Forget the shell: the next command waits for a fresh sentinel (reboot, switch_root).
    pub struct MarkDisconnected {
        pub machine: String = kind::STR,
    }

    /// `machine.snapshot(name)`: save the running machine under `name` (run-private).
    pub struct Snapshot {
        pub machine: String = kind::STR,
        pub name: String = kind::STR,
    }

    /// `machine.restore(name)`: put the machine back to its snapshot `name`.
    pub struct RestoreSnapshot {
        pub machine: String = kind::STR,
        pub name: String = kind::STR,
    }

    /// `snapshot_all(name)`: save every running machine at one instant, and the vlans' faults.
    pub struct SnapshotAll {
        pub name: String = kind::STR,
    }

    /// `restore_all(name)`: put every machine and the vlans' faults back to `snapshot_all(name)`.
    pub struct RestoreAll {
        pub name: String = kind::STR,
    }
}

/// `vlanN.impair(...)`: an [`Impairment`] checked by the switch's own validator
/// ([`impair::seconds`], [`Impairment::validate`]), whose messages name the argument.
#[derive(Debug, Clone, PartialEq)]
pub struct Impair {
    pub vlan: u32,
    pub impairment: Impairment,
    /// Limit to frames between these two machines (both directions).
    pub between: Option<(String, String)>,
}

impl Decode for Impair {
    const DOC: &'static str = "`vlanN.impair(...)`: impair the frames the vlan forwards.\n";
    const ARGS: &'static [ArgSpec] = &[
        spec("vlan", kind::U32),
        spec("loss", kind::ZERO),
        spec("delay", kind::ZERO),
        spec("jitter", kind::ZERO),
        spec("duplicate", kind::ZERO),
        spec("reorder", kind::ZERO),
        spec("rate", kind::RATE),
        spec("between", kind::PAIR),
    ];

    fn decode(a: &Args<'_>) -> Result<Self, OpError> {
        let refused = |e: impair::ImpairError| OpError::new(ErrorType::Value, e.to_string());
        let number = |k| (kind::ZERO.read)(a, k);
        let seconds = |k: &'static str| impair::seconds(k, number(k)?).map_err(refused);
        let rate =
            match (kind::RATE.read)(a, "rate")? {
                None => None,
                Some(Value::Str(s)) => Some(impair::parse_rate(&s).map_err(refused)?),
                Some(v) => Some(v.as_i64().and_then(|n| u64::try_from(n).ok()).ok_or_else(
                    || {
                        a.error(
                            "rate",
                            "must be a bandwidth such as \"1mbit\" or bits per second",
                        )
                    },
                )?),
            };
        let impairment = Impairment {
            loss: number("loss")?,
            delay: seconds("delay")?,
            jitter: seconds("jitter")?,
            duplicate: number("duplicate")?,
            reorder: number("reorder")?,
            rate,
        };
        impairment.validate().map_err(refused)?;
        Ok(Impair {
            vlan: (kind::U32.read)(a, "vlan")?,
            impairment,
            between: (kind::PAIR.read)(a, "between")?,
        })
    }
}

/// The spec of argument `name` of kind `k` (for hand-written [`Decode`] impls).
const fn spec<T>(name: &'static str, k: Arg<T>) -> ArgSpec {
    ArgSpec {
        name,
        py: k.py,
        default: k.default,
        doc: "",
        example: k.example,
    }
}

/// How long a wait may take, as the shim asks: its timeout (`None`: no limit), how much
/// guest-available time it has used already (earlier slices) and how much the host withheld
/// meanwhile, and the slice this call may take at most while polling conditions are active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitLimits {
    pub timeout: Option<Duration>,
    pub age: Duration,
    pub withheld: Duration,
    pub slice: Option<Duration>,
}

/// A wait request as the driver serves it: the machine, the condition and the limits.
pub trait WaitRequest {
    fn into_wait(self) -> (String, WaitCondition, WaitLimits);
}

macro_rules! wait_requests {
    ($( $req:ident { $($field:ident),* } => $cond:expr; )*) => {$(
        impl WaitRequest for $req {
            fn into_wait(self) -> (String, WaitCondition, WaitLimits) {
                let $req { machine, timeout, age, withheld, slice, $($field),* } = self;
                let limits = WaitLimits { timeout, age, withheld, slice };
                (machine, $cond, limits)
            }
        }
    )*};
}

wait_requests! {
    WaitCommand { command, until_success } => WaitCondition::Command { command, until_success };
    WaitFile { path } => WaitCondition::File { path };
    WaitPort { addr, port, open } => WaitCondition::Port { addr, port, open };
    WaitUnixSocket { path, datagram } => WaitCondition::UnixSocket { path, datagram };
    WaitUnit { unit, user } => WaitCondition::Unit { unit, user };
    WaitUnitState { unit, state, user } => WaitCondition::UnitState { unit, state, user };
    WaitX11 { } => WaitCondition::X11;
}
