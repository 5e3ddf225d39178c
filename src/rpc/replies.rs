//! The reply records of the protocol: what the ops of [`super::ops`] answer when the answer
//! is more than a plain value. Each is declared once; its JSON writer and its TypedDict in
//! the generated Python module come from that declaration ([`super::wire::reply_records`]).
//! Pure data.

use super::wire::{reply_records, Base64, Seconds};
use crate::machine::guest::format_seconds;
use std::path::PathBuf;
use std::time::Duration;

/// `execute`'s status when it did not wait for the command (`check_output=False`):
/// upstream's `-2`. The shim returns it in place of the `None` the reply carries.
pub const STATUS_NOT_WAITED: i32 = -2;

/// The message of a call whose time ran out (upstream's wording), in the pieces that the
/// generated Python module joins the same way for the shim's own loops: `[0]`, the elapsed
/// seconds with two decimals, `[1]`, the timeout as Python's `repr` writes it, `[2]`.
pub const TIMED_OUT: [&str; 3] = ["action timed out after ", " seconds (timeout=", ")"];

/// [`TIMED_OUT`] for a call that ran `elapsed` of its `timeout` (`None`: no limit).
pub fn timed_out(elapsed: Duration, timeout: Option<Duration>) -> String {
    let limit = timeout.map_or_else(|| "inf".to_owned(), format_seconds);
    format!(
        "{}{:.2}{}{limit}{}",
        TIMED_OUT[0],
        elapsed.as_secs_f64(),
        TIMED_OUT[1],
        TIMED_OUT[2]
    )
}

/// The words for a timeout the host stretched, in pieces the generated module joins the
/// same way (`stretch_note`): `[0]`, the timeout as Python's `repr` writes it, `[1]`, the
/// wall seconds with one decimal, `[2]`, the withheld seconds with one decimal, `[3]`.
pub const STRETCHED: [&str; 4] = [
    "timeout ",
    " s reached after ",
    " s wall; the host withheld the CPU for ",
    " s",
];

/// [`STRETCHED`] for a timeout `limit` that was reached after `wall`, of which the host
/// withheld `withheld` from the machine.
pub fn stretch_note(limit: Duration, wall: Duration, withheld: Duration) -> String {
    format!(
        "{}{}{}{:.1}{}{:.1}{}",
        STRETCHED[0],
        format_seconds(limit),
        STRETCHED[1],
        wall.as_secs_f64(),
        STRETCHED[2],
        withheld.as_secs_f64(),
        STRETCHED[3]
    )
}

reply_records! {
    /// The run, as the shim builds its namespace from it.
    pub struct HelloReply {
        pub machines: Vec<MachineInfo>,
        pub vlans: Vec<VlanInfo>,
        /// The testScript's path, if the run has one.
        pub test_script: Option<String>,
        pub out_dir: String,
        pub tmp_dir: String,
        pub interactive: bool,
        pub global_timeout: Seconds,
        /// `--debug-hook-attach`'s command.
        pub debug_hook: Option<String>,
        /// The legacy command line (`--keep-vm-state`).
        pub legacy: bool,
        /// The SSH backdoor, when the test has one (`enable_ssh_backdoor`, `--dump-vsocks`).
        pub ssh_backdoor: Option<SshBackdoor>,
    }

    /// What `dump_machine_ssh` prints and `driver.vhost_vsock` offers.
    pub struct SshBackdoor {
        /// The newest generation (`enable_ssh_backdoor`): each machine's vhost-device-vsock
        /// sockets, in configuration order (`None` when no machine is configured).
        pub sockets: Option<Vec<VsockSockets>>,
        /// The mid generation (`--dump-vsocks OFFSET`): the machines' native vsock CIDs are
        /// OFFSET + 1, OFFSET + 2, ….
        pub vsock_offset: Option<u32>,
    }

    /// One machine's SSH-backdoor sockets (upstream's `VsockPair`).
    pub struct VsockSockets {
        pub machine: String,
        /// QEMU's vhost-user socket.
        pub guest: PathBuf,
        /// The hybrid-vsock socket the host connects to (`ssh vsock-mux/<host>`).
        pub host: PathBuf,
        /// The guest's CID (3, 4, … in configuration order).
        pub cid: u32,
    }

    /// What a machine object of the shim is built from.
    pub struct MachineInfo {
        pub name: String,
        /// `qemu` (a `QemuMachine`) or `nspawn` (an `NspawnMachine`).
        pub kind: String,
        pub start_command: String,
        pub state_dir: String,
        pub shared_dir: String,
        pub keep_machine_state: bool,
    }

    /// One vlan of the run.
    pub struct VlanInfo {
        pub nr: u32,
        /// Where its switch listens (the driver decides; a short directory if needed).
        pub socket_dir: String,
    }

    /// A machine's state.
    pub struct MachineState {
        pub booted: bool,
        pub connected: bool,
        pub pid: Option<i32>,
        /// `kvm` or `tcg`, once QMP is ready.
        pub accelerator: Option<String>,
        /// From spawning QEMU to the backdoor's sentinel.
        pub boot_secs: Option<Seconds>,
        /// From sending ntd's setup (with the first command) to the shell's answer.
        pub setup_secs: Option<Seconds>,
        pub monitor_path: String,
        pub shell_path: String,
        pub qmp_path: String,
    }

    /// What a command in the guest shell returned.
    pub struct RunReply {
        /// Its exit status (124: stopped by its timeout); `None` when the output was not
        /// waited for (the shim then returns [`STATUS_NOT_WAITED`]).
        pub status: Option<i32>,
        /// stdout, byte for byte.
        pub output: Base64,
        /// Bytes of output dropped beyond the driver's limit.
        pub truncated: usize,
    }

    /// How a slice of a wait ended (a wait that can never be met, or whose timeout ran out,
    /// is an error instead).
    pub struct WaitReply {
        /// The condition holds.
        pub met: bool,
        /// The output of the attempt that met it (`wait_until_succeeds` returns it).
        pub output: Base64,
        /// The machine's guest clock when the wait began (the shim measures the age of
        /// later slices from it).
        pub started: Seconds,
    }

    /// What `retry()` does next ([`crate::machine::waits::retry_step`]).
    pub struct NextAttempt {
        /// Seconds to pause before the attempt.
        pub pause: Seconds,
        /// The attempt is the last that fits before the deadline.
        pub last: bool,
        /// The run's withheld-time counter now: the host withheld this much CPU from the
        /// run's machines since the driver started (the shim subtracts the reading at the
        /// retry's start from its wall age).
        pub withheld: Seconds,
    }

    /// Serial lines since the last call.
    pub struct ConsoleChunk {
        pub lines: Vec<String>,
        /// The machine is not running.
        pub exited: bool,
        /// The call's timeout passed.
        pub timed_out: bool,
        /// The machine's guest clock now (the shim counts the timeout of its loop with it).
        pub clock: Seconds,
    }
}
