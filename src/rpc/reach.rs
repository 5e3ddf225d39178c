//! What each op of the protocol table can do to the guests: nothing ([`Reach::Passive`]:
//! logging, reading, starting a machine or waiting for its shell), or change what a guest is
//! or sees ([`Reach::Guest`]: a command, a QMP command, a network fault, a snapshot). Boot
//! checkpoints hold the script's first op that reaches a guest until the machines are saved
//! (`driver::checkpoints`), so that no checkpoint contains an effect of the script.
//!
//! The match below names every [`Op`] variant without a wildcard: an op added to the table
//! does not compile until somebody decides its reach here.

use super::ops::Op;

/// What an op can do to the guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach<'a> {
    /// Cannot change a guest or what it sees.
    Passive,
    /// May change a guest or what it sees. `Some(machine)`: it runs in that machine's shell,
    /// booting the machine first when it is not running.
    Guest(Option<&'a str>),
}

impl Op {
    /// See [`Reach`].
    pub fn reach(&self) -> Reach<'_> {
        use Reach::{Guest, Passive};
        match self {
            Op::Log(_)
            | Op::Failure(_)
            | Op::Nest(_)
            | Op::Unnest(_)
            | Op::Serial(_)
            | Op::LogLevel(_)
            | Op::Hello(_)
            | Op::ArmTimeout(_)
            | Op::DisarmTimeout(_)
            | Op::CreateMachine(_)
            | Op::QemuCommand(_)
            | Op::Capture(_)
            | Op::Start(_)
            | Op::Connect(_)
            | Op::RetryStep(_)
            | Op::GuestClock(_)
            | Op::ConsoleWait(_)
            | Op::ConsoleLog(_)
            | Op::QmpEvent(_)
            | Op::WaitForShutdown(_)
            | Op::State(_) => Passive,
            Op::Execute(r) => Guest(Some(&r.machine)),
            Op::Systemctl(r) => Guest(Some(&r.machine)),
            Op::WaitCommand(r) => Guest(Some(&r.machine)),
            Op::WaitFile(r) => Guest(Some(&r.machine)),
            Op::WaitPort(r) => Guest(Some(&r.machine)),
            Op::WaitUnixSocket(r) => Guest(Some(&r.machine)),
            Op::WaitUnit(r) => Guest(Some(&r.machine)),
            Op::WaitUnitState(r) => Guest(Some(&r.machine)),
            Op::WaitX11(r) => Guest(Some(&r.machine)),
            // A network fault changes what the guests see; the console, QMP and shutdowns
            // act on the machine; forgetting the shell changes how the next command runs.
            Op::Impair(_)
            | Op::Partition(_)
            | Op::Heal(_)
            | Op::SendConsole(_)
            | Op::Qmp(_)
            | Op::Hmp(_)
            | Op::Shutdown(_)
            | Op::Crash(_)
            | Op::MarkDisconnected(_) => Guest(None),
            // A snapshot holds the guests' state: none may be taken of a booting run before
            // its boot checkpoint; a restore changes the guests.
            Op::Snapshot(_) | Op::RestoreSnapshot(_) | Op::SnapshotAll(_) | Op::RestoreAll(_) => {
                Guest(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::ops::decode;

    fn op(line: &str) -> Op {
        decode(line.as_bytes()).unwrap().op
    }

    #[test]
    fn commands_and_waits_reach_their_machine() {
        let o = op(r#"{"id":1,"op":"execute","machine":"a","command":"true"}"#);
        assert_eq!(o.reach(), Reach::Guest(Some("a")));
        let o = op(r#"{"id":1,"op":"wait_file","machine":"b","path":"/x"}"#);
        assert_eq!(o.reach(), Reach::Guest(Some("b")));
    }

    #[test]
    fn logging_starting_and_connecting_are_passive_faults_are_not() {
        for line in [
            r#"{"op":"log","msg":"x"}"#,
            r#"{"id":1,"op":"start","machines":["a"]}"#,
            r#"{"id":1,"op":"connect","machine":"a"}"#,
            r#"{"id":1,"op":"console_log","machine":"a"}"#,
        ] {
            assert_eq!(op(line).reach(), Reach::Passive, "{line}");
        }
        let o = op(r#"{"id":1,"op":"heal","vlan":1}"#);
        assert_eq!(o.reach(), Reach::Guest(None));
    }
}
