//! The container as the driver's pending ops use it: one command at a time that the op waits
//! for ([`Container::send`], [`Container::take_sent_result`]), given up on
//! ([`Container::abandon_in_flight`]) or left to finish unobserved (a later `send`), and the words for
//! why it cannot run one. The commands themselves are [`super::command`]'s; several may run
//! at once, this only tracks the one the driver waits for.

use super::{Container, ContainerError, Phase};
use crate::machine::session::{ShellRequest, ShellResult};
use mio::Registry;

impl Container {
    /// Start `request` as the driver's command. A command sent before whose result was not
    /// taken keeps running; its result is dropped when it comes (upstream runs every command
    /// in a process of its own, so nothing queues behind it).
    pub fn send(
        &mut self,
        registry: &Registry,
        request: &ShellRequest,
    ) -> Result<(), ContainerError> {
        if let Some(old) = self.in_flight.take() {
            self.discard(old);
        }
        self.in_flight = Some(self.run(registry, request)?);
        Ok(())
    }

    /// The result of the driver's command, once it has finished.
    pub fn take_sent_result(&mut self) -> Option<ShellResult> {
        let id = self.in_flight?;
        let result = self.take_result(id)?;
        self.in_flight = None;
        Some(result)
    }

    /// Give up on the driver's command: its process group is killed, its result dropped (its
    /// pipes close and deregister as they reach their end).
    pub fn abandon_in_flight(&mut self) {
        let Some(id) = self.in_flight.take() else {
            return;
        };
        for c in self.commands.iter_mut().flatten().filter(|c| c.id == id) {
            c.discard();
            c.kill();
        }
    }

    fn discard(&mut self, id: u64) {
        for slot in self.commands.iter_mut() {
            if let Some(c) = slot.as_mut().filter(|c| c.id == id) {
                c.discard();
                if c.done() {
                    *slot = None;
                }
            }
        }
    }

    /// Ready for commands: the notify socket named the leader and said READY.
    pub fn connected(&self) -> bool {
        self.phase == Phase::Ready && self.leader.is_some()
    }

    /// How the start script ended (upstream's words first), with its last output.
    pub fn exit_report(&self) -> String {
        match self.phase {
            Phase::Exited => ContainerError::ExitedEarly {
                exit: self.exit.unwrap_or(crate::child::ExitInfo::Code(-1)),
                output: self.console_text(),
            }
            .to_string(),
            _ => format!("container '{}' is not running", self.name),
        }
    }

    /// `; its last console lines:` and the start script's last output, if any.
    pub fn console_tail_text(&self) -> String {
        let text = self.console_text();
        if text.is_empty() {
            String::new()
        } else {
            format!("; its start script's last output:\n{text}")
        }
    }

    /// The start script's output has been read to its end (or never was a pipe).
    pub fn console_closed(&self) -> bool {
        self.process.as_ref().map_or(true, |p| p.console.is_none())
    }
}
