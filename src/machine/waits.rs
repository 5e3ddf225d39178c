//! What each wait of the test API waits for, and how the guest checks it.
//!
//! A [`WaitCondition`] is what the test asked for (a file, a port, a unit, a command); its
//! [`GuestCheck`] is the shell command one attempt of the guest-side wait loop runs, whether the
//! loop waits for success or failure, and which exit statuses end the wait at once because the
//! condition can no longer become true (a unit that failed). [`verdict`] turns the loop's final
//! status into met / not yet / an error message with upstream's wording. This module is pure
//! text; the loop itself is [`super::guest::SETUP_WAITS`].

use super::guest::shell_quote;

/// What a wait waits for.
#[derive(Debug, Clone, PartialEq)]
pub enum WaitCondition {
    /// `wait_until_succeeds` / `wait_until_fails`.
    Command {
        command: String,
        until_success: bool,
    },
    /// `wait_for_file`: the path as upstream passes it (shell words, unquoted).
    File { path: String },
    /// `wait_for_open_port` / `wait_for_closed_port`.
    Port {
        addr: String,
        port: String,
        open: bool,
    },
    /// `wait_for_open_unix_socket`.
    UnixSocket { path: String, datagram: bool },
    /// `wait_for_unit`: active; fails at once if failed, or inactive with no jobs pending.
    Unit { unit: String, user: Option<String> },
    /// `wait_for_unit_active_state`.
    UnitState {
        unit: String,
        state: String,
        user: Option<String>,
    },
    /// `wait_for_x`.
    X11,
}

/// One attempt of a wait, as the guest runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestCheck {
    pub command: String,
    /// Loop until the command succeeds (true) or fails (false).
    pub until_success: bool,
    /// An attempt exiting with this status or higher ends the loop at once; 0: never.
    pub fatal_status: u8,
}

/// `wait_for_unit`'s attempt statuses beyond "not yet" (1).
const UNIT_FAILED: i32 = 201;
const UNIT_INACTIVE_IDLE: i32 = 202;
const UNIT_QUERY_FAILED: i32 = 203;

/// How the final status of a wait loop reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The condition holds.
    Met,
    /// The loop's time ran out (or the watchdog stopped a hanging attempt).
    NotYet,
    /// The condition can never hold; the message says why (upstream's wording).
    Impossible(String),
}

/// `systemctl`, or for a user manager the `su` wrapper upstream's `systemctl(q, user)` uses,
/// taking the arguments that follow as `"$@"` (the word after `--` is the inner shell's `$0`).
fn systemctl(user: Option<&str>) -> String {
    match user {
        None => "systemctl".into(),
        Some(u) => {
            let mut s = String::from("su -l ");
            shell_quote(u, &mut s);
            s.push_str(
                " --shell /bin/sh -c 'XDG_RUNTIME_DIR=/run/user/$(id -u) exec systemctl --user \"$@\"' -- systemctl",
            );
            s
        }
    }
}

fn quoted(s: &str) -> String {
    let mut q = String::new();
    shell_quote(s, &mut q);
    q
}

impl WaitCondition {
    /// The guest-side check of this condition.
    pub fn guest_check(&self) -> GuestCheck {
        let until = |command: String, until_success: bool| GuestCheck {
            command,
            until_success,
            fatal_status: 0,
        };
        match self {
            WaitCondition::Command {
                command,
                until_success,
            } => until(command.clone(), *until_success),
            WaitCondition::File { path } => until(format!("test -e {path}"), true),
            WaitCondition::Port { addr, port, open } => {
                until(format!("nc -z {} {port}", quoted(addr)), *open)
            }
            WaitCondition::UnixSocket { path, datagram } => {
                let flags = if *datagram { "-uU" } else { "-U" };
                until(format!("nc -z {flags} {}", quoted(path)), true)
            }
            WaitCondition::Unit { unit, user } => {
                let sc = systemctl(user.as_deref());
                let q = quoted(unit);
                GuestCheck {
                    command: format!(
                        "s=$({sc} --no-pager show {q} --property=ActiveState --value) || exit {UNIT_QUERY_FAILED}; \
                         case \"$s\" in active) exit 0;; failed) exit {UNIT_FAILED};; inactive) \
                         if {sc} list-jobs --full 2>&1 | grep -q 'No jobs'; then \
                         s=$({sc} --no-pager show {q} --property=ActiveState --value) || exit {UNIT_QUERY_FAILED}; \
                         [ \"$s\" = inactive ] && exit {UNIT_INACTIVE_IDLE}; fi; exit 1;; *) exit 1;; esac"
                    ),
                    until_success: true,
                    fatal_status: UNIT_FAILED as u8,
                }
            }
            WaitCondition::UnitState { unit, state, user } => until(
                format!(
                    "[ \"$({} --no-pager show {} --property=ActiveState --value)\" = {} ]",
                    systemctl(user.as_deref()),
                    quoted(unit),
                    quoted(state)
                ),
                true,
            ),
            WaitCondition::X11 => until(
                "journalctl -b SYSLOG_IDENTIFIER=systemd | grep -q \"Reached target Current graphical\" \
                 && [ -e /tmp/.X11-unix/X0 ]"
                    .into(),
                true,
            ),
        }
    }

    /// Read the final status of a wait loop. `looped` is false when the watchdog had to stop
    /// a hanging attempt (then the status is the watchdog's 124).
    pub fn verdict(&self, status: i32, looped: bool) -> Verdict {
        let check = self.guest_check();
        if !looped {
            return Verdict::NotYet;
        }
        if (status == 0) == check.until_success {
            return Verdict::Met;
        }
        if check.fatal_status == 0 || status < i32::from(check.fatal_status) {
            return Verdict::NotYet;
        }
        let WaitCondition::Unit { unit, user } = self else {
            return Verdict::Impossible(format!("the wait ended with status {status}"));
        };
        Verdict::Impossible(match status {
            UNIT_FAILED => format!("unit \"{unit}\" reached state \"failed\""),
            UNIT_INACTIVE_IDLE => {
                format!("unit \"{unit}\" is inactive and there are no pending jobs")
            }
            _ => {
                let under = user
                    .as_deref()
                    .map(|u| format!(" under user \"{u}\""))
                    .unwrap_or_default();
                format!(
                    "retrieving systemctl property \"ActiveState\" for unit \"{unit}\"{under} failed"
                )
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_wait_quotes_the_address_and_keeps_nc_semantics() {
        let c = WaitCondition::Port {
            addr: "a b".into(),
            port: "80".into(),
            open: false,
        }
        .guest_check();
        assert_eq!(c.command, "nc -z 'a b' 80");
        assert!(!c.until_success);
    }

    #[test]
    fn user_unit_wait_goes_through_su_with_a_quoted_user() {
        let c = WaitCondition::Unit {
            unit: "x.service".into(),
            user: Some("al'ice".into()),
        }
        .guest_check();
        assert!(
            c.command.contains("su -l 'al'\\''ice' --shell"),
            "{}",
            c.command
        );
        assert_eq!(c.fatal_status, 201);
    }

    #[test]
    fn unit_verdicts_use_upstream_wording() {
        let w = WaitCondition::Unit {
            unit: "u".into(),
            user: None,
        };
        assert_eq!(w.verdict(0, true), Verdict::Met);
        assert_eq!(w.verdict(1, true), Verdict::NotYet);
        assert_eq!(w.verdict(0, false), Verdict::NotYet);
        assert_eq!(
            w.verdict(201, true),
            Verdict::Impossible("unit \"u\" reached state \"failed\"".into())
        );
        assert!(
            matches!(w.verdict(202, true), Verdict::Impossible(m) if m.contains("no pending jobs"))
        );
        assert!(
            matches!(w.verdict(203, true), Verdict::Impossible(m) if m.contains("ActiveState"))
        );
    }

    #[test]
    fn until_failure_is_met_by_a_non_zero_status() {
        let w = WaitCondition::Command {
            command: "false".into(),
            until_success: false,
        };
        assert_eq!(w.verdict(1, true), Verdict::Met);
        assert_eq!(w.verdict(0, true), Verdict::NotYet);
    }
}
