//! The machine's conversations on its channels: bytes read from the shell, QMP and serial
//! fds go into their I/O-free parts ([`super::session`], [`super::qmp`],
//! [`super::console`]); what those say is logged or timed; what they want to send goes out
//! through the stream's [`super::link::Link`]. Requests from the driver's ops enter here too.

use super::boot::Milestone;
use super::qmp::{QmpFailure, QmpNote};
use super::session::{SessionNote, ShellRequest, ShellResult};
use super::{Machine, MachineError, Phase, EARLY_OUTPUT_TAIL, SETUP_PATIENCE, SHELL_LOSS_GRACE};
use crate::json::Value;
use crate::log::{py_bytes_repr, Logger};
use crate::nbio::{self, FdReader};
use crate::reactor::Ctx;
use mio::unix::SourceFd;
use mio::Registry;
use std::os::fd::AsRawFd;
use std::time::Instant;

/// How much of a failed wait attempt's output the debug log quotes.
const ATTEMPT_LOG_MAX: usize = 4096;

/// The warning for a command whose stdout is still open 10 s after it ended: which command,
/// which guest processes hold it (the guest's `<pid> <command line>` lines), and the fix.
pub fn held_stdout_warning(command: &str, report: &[u8]) -> String {
    let mut text = format!(
        "command `{command}` exited more than 10 seconds ago, but its stdout is still open: \
         the call waits until every process holding it has closed it (as upstream's driver \
         does). Still holding it:"
    );
    let mut any = false;
    for line in String::from_utf8_lossy(report).lines() {
        let (pid, cmdline) = line.split_once(' ').unwrap_or((line, ""));
        if pid.is_empty() {
            continue;
        }
        any = true;
        let cmdline = if cmdline.trim().is_empty() {
            "(no command line)"
        } else {
            cmdline.trim_end()
        };
        text.push_str(&format!("\n    pid {pid}: {cmdline}"));
    }
    if !any {
        text.push_str(" (processes that ended meanwhile)");
    }
    text.push_str(
        "\nIf the command should not wait for them, start background processes with their \
         output elsewhere: `cmd >&2 &` (to the log), `cmd >/dev/null 2>&1 &`, or detach them \
         with `setsid -f cmd >/dev/null 2>&1`.",
    );
    text
}

impl Machine {
    pub(super) fn drain_monitor(&mut self, registry: &Registry) {
        // The HMP monitor only prints its banner and prompt; HMP commands go through QMP.
        if let Some(m) = self.monitor.as_mut() {
            if nbio::read_available(m, &mut self.read_buf, |_| {}) {
                let _ = registry.deregister(m);
                self.monitor = None;
            }
        }
    }

    pub(super) fn read_shell(&mut self, cx: &mut Ctx<'_>) {
        let mut notes = Vec::new();
        let session = &mut self.session;
        let eof = self.shell.read(cx.registry, &mut self.read_buf, |b| {
            session.feed(b, &mut notes)
        });
        for note in notes {
            self.session_note(cx.log, note);
        }
        self.flush_session(cx.registry);
        if eof {
            self.session.connection_lost();
            let now = Instant::now();
            self.shell_lost_at = Some(now);
            self.shell_settle_at = Some(now + SHELL_LOSS_GRACE);
        }
    }

    pub(super) fn session_note(&mut self, log: &mut Logger, note: SessionNote) {
        let name = &self.name;
        match note {
            SessionNote::Greeting(bytes) => {
                log.machine(name, &format!("Guest shell says: {}", py_bytes_repr(&bytes)))
            }
            SessionNote::Sentinel => self.boot.mark(Milestone::Sentinel),
            SessionNote::Ready => {
                self.boot.mark(Milestone::ShellReady);
                self.setup_deadline = None;
            }
            SessionNote::SetupFailed { reason } => {
                self.setup_deadline = None;
                log.warning(Some(name), &reason);
            }
            SessionNote::NoSpool => log.warning(
                Some(name),
                "the guest has no /dev/fd or no tee: ntd cannot spool command output there, so \
                 output the virtio console drops can be neither detected nor fetched again",
            ),
            SessionNote::Stray(bytes) => log.machine(
                name,
                &format!(
                    "output after its command finished (a background process kept stdout?): {}",
                    py_bytes_repr(&bytes)
                ),
            ),
            SessionNote::StdoutHeld { command, report } => {
                log.warning(Some(name), &held_stdout_warning(&command, &report))
            }
            SessionNote::Attempt {
                attempt,
                status,
                cost_us,
                pause_us,
            } => log.debug(
                Some(name),
                &format!(
                    "wait attempt {attempt} failed (status {status}); it cost {:.1} ms of CPU, \
                     next one in {:.0} ms",
                    cost_us as f64 / 1e3,
                    pause_us as f64 / 1e3
                ),
            ),
            SessionNote::AttemptOutput {
                attempt,
                status,
                output,
            } => log.debug(
                Some(name),
                &format!(
                    "wait attempt {attempt} failed (status {status}); it printed {}",
                    py_bytes_repr(&output[..output.len().min(ATTEMPT_LOG_MAX)])
                ),
            ),
            SessionNote::Dropped { bytes } => log.machine(
                name,
                &format!(
                    "the console dropped {bytes} bytes of output; fetching them again from the guest"
                ),
            ),
            SessionNote::Recovered { bytes } => log.machine(
                name,
                &format!("recovered the full output ({bytes} bytes) from the guest's spool"),
            ),
        }
    }

    /// Move what the session wants to say into the shell's write buffer.
    fn flush_session(&mut self, registry: &Registry) {
        let out = self.session.take_outbox();
        self.shell.send(registry, &out);
    }

    /// Send a request to the guest shell; its result arrives via [`Self::take_shell_result`].
    pub fn send_shell(
        &mut self,
        registry: &Registry,
        req: &ShellRequest,
    ) -> Result<(), MachineError> {
        self.session.submit(req).map_err(MachineError::Session)?;
        if self.session.in_setup() && self.setup_deadline.is_none() {
            // The first request of this shell went behind ntd's setup.
            self.setup_deadline = Some(Instant::now() + SETUP_PATIENCE);
            self.boot.mark(Milestone::SetupSent);
        }
        self.flush_session(registry);
        Ok(())
    }

    /// Tell the timed request in flight something (see [`super::guest::HostMessage`]); false
    /// when none runs under the guest's watchdog.
    pub fn tell_shell(&mut self, registry: &Registry, m: super::guest::HostMessage) -> bool {
        let told = self.session.tell(m);
        self.flush_session(registry);
        told
    }

    /// Write raw bytes to the shell (upstream's `shutdown()` sends `poweroff\n` this way).
    pub fn send_shell_raw(&mut self, registry: &Registry, bytes: &[u8]) -> bool {
        self.shell.send(registry, bytes)
    }

    pub fn take_shell_result(&mut self) -> Option<ShellResult> {
        self.session.take_result()
    }

    /// Guest shell ready for a command.
    pub fn shell_ready(&self) -> bool {
        self.session.ready() && !self.ckpt.busy()
    }

    /// Forget the shell so the next connect waits for a fresh sentinel (reboot, switch_root).
    pub fn mark_disconnected(&mut self) {
        self.session.await_sentinel();
    }

    pub(super) fn read_qmp(&mut self, cx: &mut Ctx<'_>) {
        let mut notes = Vec::new();
        let client = &mut self.qmp_client;
        let eof = self.qmp.read(cx.registry, &mut self.read_buf, |b| {
            client.feed(b, &mut notes)
        });
        for note in notes {
            self.qmp_note(cx.log, note);
        }
        self.flush_qmp(cx.registry);
        if eof {
            self.qmp_client.closed();
        }
    }

    fn qmp_note(&mut self, log: &mut Logger, note: QmpNote) {
        match note {
            QmpNote::Ready { kvm: false } if self.force_accel => {
                // Upstream's forceAccel: fail at start instead of running slowly.
                let why = super::accel::refused_tcg(&self.name, &self.output_tail());
                log.warning(Some(&self.name), &why);
                self.accel_refused = Some(why);
                self.kill_now();
            }
            QmpNote::Ready { kvm } => {
                self.phase = Phase::Running;
                self.boot.mark(Milestone::QmpReady);
                if let Some(pid) = self.pid() {
                    log.machine(&self.name, &format!("QEMU running (pid {pid})"));
                }
                if kvm {
                    log.info(&format!("{}: accelerator: KVM", self.name));
                } else {
                    log.warning(
                        Some(&self.name),
                        "running under TCG (software emulation, KVM is not in use): \
                         the guest is 10-50x slower than with KVM",
                    );
                }
            }
            QmpNote::VcpuThreads(tids) => {
                log.debug(
                    Some(&self.name),
                    &format!("vCPU threads (timeouts count their guest time): {tids:?}"),
                );
                self.vcpu_clock.set_threads(&tids);
            }
            QmpNote::Protocol(e) => log.warning(Some(&self.name), &e.to_string()),
            QmpNote::UnsolicitedError(e) => {
                log.warning(Some(&self.name), &format!("QMP error: {e}"))
            }
        }
    }

    fn flush_qmp(&mut self, registry: &Registry) {
        let out = self.qmp_client.take_outbox();
        self.qmp.send(registry, &out);
    }

    /// Send a QMP command; its result arrives via [`Self::take_qmp_result`].
    pub fn qmp_execute(
        &mut self,
        registry: &Registry,
        name: &str,
        args: Option<Value>,
    ) -> Result<u64, MachineError> {
        let id = self
            .qmp_client
            .execute(name, args)
            .map_err(|_| MachineError::QmpNotReady)?;
        self.flush_qmp(registry);
        Ok(id)
    }

    pub fn take_qmp_result(&mut self, id: u64) -> Option<Result<Value, QmpFailure>> {
        self.qmp_client.take_result(id)
    }

    pub fn qmp_ready(&self) -> bool {
        self.qmp_client.ready()
    }

    /// Take the oldest queued QMP event.
    pub fn next_qmp_event(&mut self) -> Option<Value> {
        self.qmp_client.next_event()
    }

    pub(super) fn read_stdout(&mut self, cx: &mut Ctx<'_>) {
        let Some(p) = self.process.as_ref() else {
            return;
        };
        let mut lines = Vec::new();
        let (console, early, running) = (
            &mut self.console,
            &mut self.early_output,
            self.phase == Phase::Running,
        );
        let eof = nbio::read_available(&mut FdReader(&p.stdout), &mut self.read_buf, |chunk| {
            console.feed(chunk, &mut lines);
            if !running {
                early.extend(chunk);
                let excess = early.len().saturating_sub(EARLY_OUTPUT_TAIL);
                early.drain(..excess);
            }
        });
        if eof {
            self.console.flush(&mut lines);
            let _ = cx.registry.deregister(&mut SourceFd(&p.stdout.as_raw_fd()));
            self.stdout_open = false;
        }
        if !lines.is_empty() {
            self.boot.mark_once(Milestone::FirstSerialLine);
        }
        for l in lines {
            cx.log.serial(&self.name, &l);
        }
    }

    /// Lines printed on the serial console since the last call (upstream's queue semantics).
    pub fn take_console_lines(&mut self) -> Vec<String> {
        self.console.take_unconsumed()
    }

    pub fn console_log(&self) -> String {
        self.console.log_text()
    }

    /// Write bytes to QEMU's stdin (`send_console`).
    pub fn send_console(&mut self, registry: &Registry, bytes: &[u8]) -> bool {
        match self.process.as_ref().filter(|_| self.booted()) {
            Some(p) => {
                self.stdin_out.send(&p.stdin, registry, bytes);
                true
            }
            None => false,
        }
    }

    pub(super) fn flush_stdin(&mut self, registry: &Registry) {
        if let Some(p) = self.process.as_ref() {
            self.stdin_out.flush(&p.stdin, registry);
        }
    }
}
