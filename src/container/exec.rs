//! What a container command is, as text and as a result: upstream's command wrapper, the
//! `nsenter` argument list, the script of a guest-side wait loop (the very loop ntd sends to
//! VM guests, `machine::guest::SETUP_WAITS`, run by the container's `/bin/sh`), and
//! the collection of one command's stdout into its result ([`OutputCollector`]).
//!
//! Every command is one `nsenter --target <leader> --mount --uts --ipc --net --pid --cgroup
//! /bin/sh -c <script>` child with an empty environment, as upstream runs it. A plain command's
//! script is upstream's wrapper around it and its result is the child's stdout and exit
//! status. A wait's script defines the loop and runs it once; the loop reports failed
//! attempts (`\x01A<nonce> <status>\x01`) and its end (`\x01D…`, then `\x01E…`) on stdout, which
//! `machine::shell::ShellFraming` cuts, exactly as for a VM. This module is pure.

use crate::machine::guest::{self, EncodeError, SetupPart, WaitSpec, WIRE_PREFIX};
use crate::machine::session::{ShellRequest, ShellResult};
use crate::machine::shell::{ShellEvent, ShellFraming, MAX_OUTPUT, NONCE_LEN};
use crate::machine::waits::GuestCheck;
use std::time::Duration;

/// What upstream's `NspawnMachine._execute` puts in front of every command (it sources
/// `/etc/profile` each time: the container's environment, `PATH` included).
pub const UPSTREAM_PREFIX: &str =
    "set -eo pipefail; export USER=root HOME=/root DISPLAY=:0.0; source /etc/profile; set -u; ";

/// The namespaces every command enters, in upstream's order.
pub const NSENTER_NAMESPACES: [&str; 6] =
    ["--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup"];

/// Upstream's script for `command`.
pub fn wrap_command(command: &str) -> String {
    let mut s = String::with_capacity(UPSTREAM_PREFIX.len() + command.len());
    s.push_str(UPSTREAM_PREFIX);
    s.push_str(command);
    s
}

/// The arguments of `nsenter` that run `script` in the container whose PID 1 is `leader`.
pub fn nsenter_args(leader: i32, script: &str) -> Vec<String> {
    let mut a = vec!["--target".to_owned(), leader.to_string()];
    a.extend(NSENTER_NAMESPACES.iter().map(|s| (*s).to_owned()));
    a.extend(["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()]);
    a
}

/// `__ntd_kill` (the process-tree killer the wait loop uses to end its unit watcher), cut out
/// of [`guest::SETUP_TIMEOUTS`]; the rest of that part (the watchdog coprocess) is not
/// needed: ntd ends a container command by killing its process group.
fn kill_function() -> &'static str {
    let text = guest::setup_text(SetupPart::Timeouts);
    let start = text.find("_Nkill() {").unwrap_or(0);
    let end = text[start..]
        .find("\n}\n")
        .map_or(text.len(), |i| start + i + 3);
    &text[start..end]
}

/// The script of a wait: bash out of POSIX mode, the environment every upstream command gets,
/// fds 3 (the loop's output: stdout), 5 (every attempt's stdin: `/dev/null`) and 7 (what the
/// loop pauses on, `read -t … -u 7`: an anonymous pipe the shell holds both ends of, so every
/// pause times out without a fork; in a VM it is the watchdog's), the loop's functions, then
/// one run of the loop and its end marker. ntd ends a loop that overruns by killing its
/// process group.
pub fn wait_script(
    nonce: &[u8; NONCE_LEN],
    check: &GuestCheck,
    spec: WaitSpec,
) -> Result<String, EncodeError> {
    let line = guest::encode_wait(nonce, check, spec)?;
    let call = line
        .strip_prefix(&format!("{WIRE_PREFIX}wait "))
        .unwrap_or(&line);
    let nonce = std::str::from_utf8(nonce).unwrap_or("0000000000000000");
    let mut s = String::with_capacity(4096 + call.len());
    // /bin/sh is bash in POSIX mode, where a failed redirection of a special builtin (the
    // loop's `: </dev/tcp/…` port probe) ends the whole shell: the loop runs as plain bash.
    s.push_str("set +o posix\n");
    s.push_str("export USER=root HOME=/root DISPLAY=:0.0; source /etc/profile\n");
    s.push_str("exec 3>&1 5</dev/null 7<> <(:)\n");
    s.push_str(kill_function());
    s.push_str(guest::setup_text(SetupPart::Waits));
    s.push_str(&format!("{WIRE_PREFIX}loop {call}"));
    s.push_str(&format!("printf '\\001E%s %d\\001' {nonce} \"$?\"\n"));
    Ok(s)
}

/// How long ntd lets the child of `request` run before it kills it (status 124): the
/// command's timeout, or a wait's budget plus the grace the VM watchdog gives a hanging attempt.
pub fn time_limit(request: &ShellRequest) -> Option<Duration> {
    match request {
        ShellRequest::Run { timeout, .. } => *timeout,
        ShellRequest::Wait { spec, .. } => Some(spec.budget.saturating_add(guest::WAIT_GRACE)),
    }
}

/// Turns one command's stdout into its result. A plain command's bytes are its output; a
/// wait's go through the VM framing. Failed attempts' output comes back from
/// [`OutputCollector::take_attempts`] for the debug log.
#[derive(Debug)]
pub struct OutputCollector {
    framing: Option<ShellFraming>,
    output: Vec<u8>,
    truncated: usize,
    attempts: u32,
    attempt_output: Vec<(i32, Vec<u8>)>,
    done: Option<(i32, bool)>,
}

impl OutputCollector {
    pub fn plain() -> OutputCollector {
        OutputCollector {
            framing: None,
            output: Vec::new(),
            truncated: 0,
            attempts: 0,
            attempt_output: Vec::new(),
            done: None,
        }
    }

    /// For a wait framed with `nonce`.
    pub fn framed(nonce: [u8; NONCE_LEN]) -> OutputCollector {
        let mut f = ShellFraming::new_connected();
        f.expect(nonce);
        OutputCollector {
            framing: Some(f),
            ..OutputCollector::plain()
        }
    }

    pub fn feed(&mut self, data: &[u8]) {
        let Some(framing) = self.framing.as_mut() else {
            let room = MAX_OUTPUT.saturating_sub(self.output.len());
            let keep = room.min(data.len());
            self.output.extend_from_slice(&data[..keep]);
            self.truncated += data.len() - keep;
            return;
        };
        let mut events = Vec::new();
        framing.feed(data, &mut events);
        for ev in events {
            match ev {
                ShellEvent::Attempt { status, output, .. } => {
                    self.attempts += 1;
                    self.attempt_output.push((status, output));
                }
                ShellEvent::Done {
                    status,
                    output,
                    truncated,
                    looped,
                    ..
                } if self.done.is_none() => {
                    self.output = output;
                    self.truncated = truncated;
                    self.done = Some((status, looped));
                }
                // After the end marker: a background process's late bytes.
                ShellEvent::Stray(bytes) | ShellEvent::Greeting(bytes) => {
                    self.attempt_output.push((-1, bytes))
                }
                _ => {}
            }
        }
    }

    /// Failed attempts (status, output) since the last call; status -1: bytes outside frames.
    pub fn take_attempts(&mut self) -> Vec<(i32, Vec<u8>)> {
        std::mem::take(&mut self.attempt_output)
    }

    /// The result, once the child has exited with `exit_status` (shell style). `killed`: ntd
    /// ended it at its time limit.
    pub fn finish(self, exit_status: i32, killed: bool) -> ShellResult {
        let (status, looped) = match (self.framing.is_some(), self.done) {
            (_, _) if killed => (124, false),
            (false, _) => (exit_status, true),
            (true, Some((status, looped))) => (status, looped),
            // The loop's shell died without its end marker.
            (true, None) => (exit_status, false),
        };
        ShellResult {
            status,
            output: self.output,
            truncated: self.truncated,
            attempts: self.attempts,
            looped,
            lost: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::waits::{PaceMode, Pacing, Schedule};

    const N: &[u8; NONCE_LEN] = b"0123456789abcdef";

    #[test]
    fn nsenter_args_are_upstreams() {
        let a = nsenter_args(4242, &wrap_command("echo hi"));
        assert_eq!(
            a.join(" "),
            "--target 4242 --mount --uts --ipc --net --pid --cgroup /bin/sh -c \
             set -eo pipefail; export USER=root HOME=/root DISPLAY=:0.0; source /etc/profile; \
             set -u; echo hi"
        );
        assert_eq!(a.len(), 11, "the script stays one argument");
    }

    #[test]
    fn kill_function_is_the_whole_function() {
        let f = kill_function();
        assert!(f.starts_with("_Nkill() {\n"), "{f}");
        assert!(f.ends_with("\n}\n"), "{f}");
        assert!(!f.contains("_Nwatch"), "{f}");
    }

    fn file_check() -> GuestCheck {
        GuestCheck {
            guard: "[ -e /x ]".into(),
            command: String::new(),
            until_success: true,
            fatal_status: 0,
            watch: None,
        }
    }

    #[test]
    fn wait_script_defines_the_loop_and_calls_it_once() {
        let spec = WaitSpec {
            budget: Duration::from_secs(2),
            pacing: Pacing::new(Schedule::Budget, Duration::ZERO, PaceMode::Budget, false),
        };
        let s = wait_script(N, &file_check(), spec).unwrap();
        assert!(s.starts_with(
            "set +o posix\nexport USER=root HOME=/root DISPLAY=:0.0; source /etc/profile\n"
        ));
        assert!(s.contains("\nexec 3>&1 5</dev/null 7<> <(:)\n"));
        assert!(s.contains("_Nloop() {"));
        assert!(s.contains("_Nkill() {"));
        assert!(s.contains("\n_Nloop 0123456789abcdef 2.5 0 2000000 '[ -e /x ]' '' 0 "));
        assert!(s.ends_with("printf '\\001E%s %d\\001' 0123456789abcdef \"$?\"\n"));
        assert!(
            !s.contains("coproc"),
            "no watchdog: ntd kills the process group"
        );
    }

    #[test]
    fn time_limit_of_a_wait_is_its_budget_plus_the_grace() {
        let wait = ShellRequest::Wait {
            check: Box::new(file_check()),
            spec: Box::new(WaitSpec {
                budget: Duration::from_secs(3),
                pacing: Pacing::new(Schedule::Budget, Duration::ZERO, PaceMode::Budget, false),
            }),
        };
        assert_eq!(time_limit(&wait), Some(Duration::from_millis(3500)));
        let run = ShellRequest::Run {
            command: "true".into(),
            timeout: None,
        };
        assert_eq!(time_limit(&run), None);
    }

    #[test]
    fn plain_output_is_byte_exact_and_status_is_the_childs() {
        let mut c = OutputCollector::plain();
        c.feed(b"a\x00\x01E");
        c.feed(b"\xff\n");
        let r = c.finish(3, false);
        assert_eq!(r.output, b"a\x00\x01E\xff\n");
        assert_eq!((r.status, r.looped), (3, true));
    }

    #[test]
    fn a_killed_command_reports_124() {
        let mut c = OutputCollector::plain();
        c.feed(b"partial");
        let r = c.finish(143, true);
        assert_eq!(
            (r.status, r.output.as_slice(), r.looped),
            (124, &b"partial"[..], false)
        );
    }

    #[test]
    fn framed_output_counts_attempts_and_takes_the_loops_status() {
        let mut c = OutputCollector::framed(*N);
        c.feed(b"try1\x01A0123456789abcdef 1\x01");
        c.feed(b"found\x01D0123456789abcdef 0\x01\x01E0123456789abcdef 0\x01");
        c.feed(b"late");
        let attempts = c.take_attempts();
        assert_eq!(attempts[0], (1, b"try1".to_vec()));
        let r = c.finish(0, false);
        assert_eq!((r.status, r.attempts, r.looped), (0, 1, true));
        assert_eq!(r.output, b"found");
    }

    #[test]
    fn framed_output_without_end_marker_is_not_looped() {
        let mut c = OutputCollector::framed(*N);
        c.feed(b"half");
        let r = c.finish(137, false);
        assert_eq!((r.status, r.looped), (137, false));
    }
}
