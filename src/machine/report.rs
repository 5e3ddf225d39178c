//! What a machine says when it cannot do what the test asked: how QEMU ended, why the guest
//! shell is gone or unusable, and the console's last lines (a kernel panic's headline first).
//! Pure formatting of the machine's state; it changes nothing but the shell's abandoned
//! request.

use super::{Machine, EXIT_REPORT_LINES, PANIC_SEARCH_LINES, SHELL_LOSS_GRACE};
use std::time::Instant;

/// Whether the guest shell can still answer, as [`Machine::shell_down`] tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellDown {
    /// Connected, or may still connect.
    No,
    /// The connection just ended; QEMU may be about to exit (ask again by this instant).
    Settling(Instant),
    /// Gone for good; the message says how and quotes the console.
    Yes(String),
}

impl Machine {
    /// Why the guest shell cannot be used (its setup failed, or it stopped answering), with
    /// the console's last lines.
    pub fn shell_error(&self) -> Option<String> {
        let reason = self.session.unusable()?;
        let mut s = format!("machine '{}': {reason}", self.name);
        s.push_str(&self.console_tail_text());
        Some(s)
    }

    /// Whether the shell is gone, waiting [`SHELL_LOSS_GRACE`] for QEMU's exit after the
    /// connection ended so that the report can say how QEMU ended.
    pub fn shell_down(&self, now: Instant) -> ShellDown {
        if !self.booted() {
            return ShellDown::Yes(self.exit_report());
        }
        match self.shell_lost_at.filter(|_| self.session.lost()) {
            None => ShellDown::No,
            Some(at) if now < at + SHELL_LOSS_GRACE => ShellDown::Settling(at + SHELL_LOSS_GRACE),
            Some(_) => ShellDown::Yes(format!(
                "machine '{}': the guest closed its root shell (QEMU still runs){}",
                self.name,
                self.console_tail_text()
            )),
        }
    }

    /// Give up on the request in flight: the guest did not answer in time.
    pub fn abandon_shell(&mut self, reason: String) {
        self.session.abandon(reason);
    }

    /// `; its last console lines:` and the lines (empty if the console said nothing).
    pub fn console_tail_text(&self) -> String {
        let mut s = String::new();
        // A kernel panic's headline is followed by a long register dump: name it first.
        let window: Vec<&str> = self.console.tail(PANIC_SEARCH_LINES).collect();
        let recent = window.len().saturating_sub(EXIT_REPORT_LINES);
        if let Some(headline) = window[..recent]
            .iter()
            .rev()
            .find(|l| l.contains("Kernel panic - not syncing"))
        {
            s.push_str("; the guest kernel panicked: ");
            s.push_str(headline.trim());
        }
        let tail: Vec<&str> = self.console.tail(EXIT_REPORT_LINES).collect();
        if !tail.is_empty() {
            s.push_str("; its last console lines:");
            for l in tail {
                s.push_str("\n    ");
                s.push_str(l);
            }
        }
        s
    }

    /// `machine '<name>'` and the console's last lines, for errors about a guest that does
    /// not answer.
    pub fn console_report(&self) -> String {
        let mut s = format!("machine '{}'", self.name);
        s.push_str(&self.console_tail_text());
        s
    }

    /// Why the machine is not running, for errors: how QEMU ended and what the console
    /// showed last.
    pub fn exit_report(&self) -> String {
        let how = match self.exit {
            Some(info) => format!("QEMU exited ({info})"),
            None => "QEMU is not running".to_owned(),
        };
        let mut s = format!("machine '{}': {how}", self.name);
        s.push_str(&self.console_tail_text());
        s
    }
}
