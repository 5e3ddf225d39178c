//! What each wait of the test API waits for, how the guest checks it, and how often.
//!
//! A [`WaitCondition`] is what the test asked for (a file, a port, a unit, a command); its
//! [`GuestCheck`] is what one attempt of the guest-side wait loop ([`super::guest::SETUP_WAITS`])
//! runs: a *guard* evaluated in the loop's own shell (bash builtins only: `[ -e ]`, a
//! `/dev/tcp` connect — no fork), then, if the guard passed, a *command* in a subshell
//! (upstream's `set -euo pipefail` semantics), and for systemd units a D-Bus watcher whose
//! state-change signals end the wait or trigger the next check. [`Pacing`] is the schedule
//! between attempts: a pause that grows with the wait's age and the attempt's cost, fast
//! while the host has idle CPU and stretched by a CPU budget under contention
//! ([`Schedule::Budget`], [`PaceMode`]), or upstream's one attempt a second for comparisons
//! ([`Schedule::Reference`], selected by the bench knob [`SCHEDULE_ENV`]). [`verdict`]
//! turns the loop's final status into met / not yet / an error message with upstream's
//! wording. This module is pure text and arithmetic: it never touches the guest.
//!
//! [`verdict`]: WaitCondition::verdict
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_precision_loss
)]

use super::words::{quoted, systemctl};
use std::time::Duration;

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

/// One attempt of a wait, as the guest runs it: `guard` in the loop's shell, then (if the
/// guard succeeded) `command` in a subshell; the attempt's status is the first non-zero one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestCheck {
    /// Evaluated in the wait loop's own shell: bash builtins and redirections only, so an
    /// attempt costs no fork. Empty: none. It sets `_Nr=1` when it had to exec after all
    /// (a bash without `/dev/tcp`), which puts the attempt under the CPU budget.
    pub guard: String,
    /// Run in a subshell with `set -euo pipefail`, stdout the wait's output. Empty: none.
    pub command: String,
    /// Loop until the attempt succeeds (true) or fails (false).
    pub until_success: bool,
    /// An attempt exiting with this status or higher ends the loop at once; 0: never.
    pub fatal_status: u8,
    /// Watch the unit's state changes on D-Bus between attempts.
    pub watch: Option<UnitWatch>,
}

/// A systemd unit whose `PropertiesChanged` signals the wait loop follows (`busctl monitor`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitWatch {
    /// The unit's full name (`nginx` → `nginx.service`, as `systemctl` mangles it).
    pub unit: String,
    /// The `ActiveState` that ends the wait; `None`: `wait_for_unit`'s rules (`active` ends
    /// it, `failed` is fatal, `inactive` triggers the full check).
    pub state: Option<String>,
}

impl GuestCheck {
    /// What the attempt runs, for logs and error messages.
    pub fn describe(&self) -> &str {
        if self.command.is_empty() {
            &self.guard
        } else {
            &self.command
        }
    }
}

/// `wait_for_unit`'s attempt statuses beyond "not yet" (1).
const UNIT_FAILED: u8 = 201;
const UNIT_INACTIVE_IDLE: u8 = 202;
const UNIT_QUERY_FAILED: u8 = 203;

/// The environment variable that selects the wait schedule: `reference` makes every wait
/// run upstream's command once a second ([`Schedule::Reference`]). A bench knob: it exists so
/// that `benches/waits.rs` can compare both schedules through the same driver and guest.
pub const SCHEDULE_ENV: &str = "NTD_WAIT_SCHEDULE";

/// How long a wait counts as young: under contention it may use [`YOUNG_SHARE_PERCENT`]
/// of a vCPU.
pub const YOUNG_PHASE: Duration = Duration::from_secs(1);
/// The shortest pause between attempts: a young wait notices a condition within ~50 ms.
pub const MIN_PAUSE: Duration = Duration::from_millis(50);
/// The pause is at least the wait's age divided by this: noticing late costs at most 1/20 of
/// the time already waited, and the number of attempts grows only with the logarithm of the
/// wait's length. Under TCG one wakeup of the loop (timer interrupt, `read -t`, a builtin
/// guard) costs the host 1–2 ms of CPU, a `/dev/tcp` connect ~2 ms (measured), so a
/// guard-only wait stays below 4 % of a vCPU from its first second on and below 1 % after
/// five.
pub const AGE_DIVISOR: u32 = 20;
/// The age-driven pause grows to this and no further: upstream's interval. While the host
/// is idle no pause is longer.
pub const MAX_AGE_PAUSE: Duration = Duration::from_secs(1);
/// How much more guest CPU one attempt of upstream's once-a-second schedule costs than one
/// attempt of ntd's loop running the same command, as ntd's loop measures its attempts: the
/// guest's busy time since its previous reading, so the cost `c` an attempt reports already
/// holds the loop's own work (the subshell's fork, the cost reading, the wakeup from idle).
/// Upstream's attempt adds its pipeline (`timeout`, `bash -c`, a subshell with `base64`:
/// 22 ms per attempt of a `grep` in a TCG guest, measured in a loop) and the console round
/// trips of the command and its status (its whole attempt: 31 ms, 3.1 % of a vCPU over a
/// 10 s wait measured with `benches/waits.rs --peer`), where ntd's attempt of that `grep`
/// reports 20–25 ms. So upstream's attempt costs `c` + 5–10 ms; this constant takes the low
/// end, which errs towards longer pauses, the cheap side.
/// While the host has idle CPU, an attempt that cost `c` is followed by a pause of at least
/// `1 s × c / (c + extra)`: then ntd's attempts cost the guest no larger share of a vCPU than
/// upstream's (`(c + extra) / (c + extra + 1 s)`) — a 20 ms `grep` attempts every 0.8 s, a
/// 0.2 s `curl` every 0.98 s (upstream: every 1.23 s, attempt included), never slower than
/// once a second — and the age-driven pause makes a whole wait cheaper still.
pub const UPSTREAM_ATTEMPT_OVERHEAD_TCG: Duration = Duration::from_millis(5);
/// [`UPSTREAM_ATTEMPT_OVERHEAD_TCG`] under KVM, where a fork+exec costs a tenth as much (an
/// estimate: no KVM on this project's machines).
pub const UPSTREAM_ATTEMPT_OVERHEAD_KVM: Duration = Duration::from_micros(500);
/// What one builtin connect that a listener accepts costs the guest, in a TCG guest: the
/// attempts of a `wait_for_closed_port` while the port is still open (the loop does not read
/// `/proc` for builtin attempts: the reading would cost as much as the probe). Measured with
/// `benches/waits.rs`: such a wait used 3.3 ms more per attempt than a `wait_for_file`,
/// whose `[ -e ]` costs next to nothing; rounded up. It enters the fast rule as the
/// attempt's cost (a pause of at least 0.5 s), so a closed-port wait does not make the
/// listener answer twenty times a second.
pub const LISTENER_PROBE_COST_TCG: Duration = Duration::from_millis(5);
/// [`LISTENER_PROBE_COST_TCG`] under KVM (an estimate, a tenth).
pub const LISTENER_PROBE_COST_KVM: Duration = Duration::from_micros(500);
/// While the host is idle, the longest pause after an attempt whose builtin guard refused
/// before a command (`_Nurl` in front of a `curl`, `[ -S ]` in front of upstream's `nc -U`):
/// once the guard passes, the command itself still has to start (a TCG `curl`: ~0.3 s), so
/// an age-driven pause of up to a second would add to that. Such an attempt costs a wakeup
/// and a refused connect (~2–4 ms of a TCG guest's CPU), so ten a second stay below 4 % of a
/// vCPU, where upstream runs the command itself once a second (a TCG `curl`: ~20 %).
/// Under contention the age rule applies as to any attempt.
pub const GUARD_MAX_PAUSE: Duration = Duration::from_millis(100);
/// Under contention, the largest share of one guest vCPU a young wait's attempts may use
/// (the pause is at least cost × (100/share − 1) = 3 × cost).
pub const YOUNG_SHARE_PERCENT: u32 = 25;
/// Under contention, the largest share of one guest vCPU a wait's attempts may use after
/// [`YOUNG_PHASE`] (pause ≥ 24 × cost). The promise is 5 %; the guest's own accounting misses
/// a little (the console copier's wakeups, emulation overhead on the host), hence the margin.
pub const OLD_SHARE_PERCENT: u32 = 4;
/// While a unit wait's D-Bus watcher runs, its polling (only a safety net for a bus where no
/// one subscribed to systemd's signals: events carry the state) uses [`OLD_SHARE_PERCENT`]
/// divided by this (1 %, pause ≥ 99 × cost), whatever the host's verdict.
pub const WATCHED_SHARE_DIVISOR: u32 = 4;
/// An attempt's cost is at most this share of the CPU its own processes and PID 1 used. On an
/// otherwise idle guest the guest's busy time during an attempt that execs is up to ~2.3
/// times what its processes are charged (interrupts, the console copier, exec and exit work
/// charged to no process; measured with benches/waits.rs: at 150 % a `grep` wait used 6 %
/// instead of 4 %), so on an idle guest the busy time decides; on a busy one (booting) this
/// bound does.
pub const OWN_COST_PERCENT: u32 = 250;
/// Upstream's `retry`: one attempt, then a one-second sleep.
pub const REFERENCE_INTERVAL: Duration = Duration::from_secs(1);
/// Upstream's `execute` timeout, which every attempt of its waits carries (`timeout 900.0`).
const REFERENCE_ATTEMPT_TIMEOUT: &str = "900.0";

/// Which schedule waits follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// The CPU budget (the default): builtin guards, unit events, pauses that grow with the
    /// attempt's cost and the wait's age.
    Budget,
    /// Upstream's per-attempt guest work (`timeout 900.0 bash -c '…' | (base64 -w 0; echo)`,
    /// plus a `base64 -d` so that the output still comes back) once a second, no guards, no
    /// events. A bench knob: it exists so that both schedules run through the same driver
    /// and guest in one run.
    Reference,
}

impl Schedule {
    /// The schedule [`SCHEDULE_ENV`] selects (read once per run).
    pub fn from_env() -> Schedule {
        use std::sync::OnceLock;
        static SCHEDULE: OnceLock<Schedule> = OnceLock::new();
        *SCHEDULE.get_or_init(|| match std::env::var(SCHEDULE_ENV).as_deref() {
            Ok("reference") => Schedule::Reference,
            _ => Schedule::Budget,
        })
    }
}

/// How the host wants a wait to poll: its verdict on the host's CPU
/// ([`crate::hostcpu::parse::verdict`]), sent with the wait and again whenever it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaceMode {
    /// The host has idle CPU: the fast rule.
    Fast,
    /// Tasks wait for CPU (or ntd cannot tell): the CPU budget stretches pauses.
    Budget,
}

impl PaceMode {
    /// The mode of a host verdict.
    pub fn of(v: crate::hostcpu::parse::Verdict) -> PaceMode {
        match v {
            crate::hostcpu::parse::Verdict::Idle => PaceMode::Fast,
            crate::hostcpu::parse::Verdict::Contended => PaceMode::Budget,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PaceMode::Fast => "fast",
            PaceMode::Budget => "budget",
        }
    }
}

/// The pause rule the guest loop applies after a failed attempt (times in microseconds):
///
/// ```text
/// fast    = clamp(max(age / age_divisor, 1 s × cost / (cost + overhead)), min_us, max_age_us)
/// pause   = fast                                          host idle (PaceMode::Fast)
///         = max(fast, factor(age) × cost)                 contended (PaceMode::Budget)
///         = max(clamp(age / age_divisor, min_us, max_age_us), watched(age) × cost)
///                                                         while a unit watcher runs
/// after a guard refused in front of a command, host idle: min(fast(cost 0), guard_max_us)
/// factor(age)  = young_factor while age < young_us, else old_factor
/// watched(age) = young_factor while age < young_us, else watched_factor
/// ```
///
/// where cost is the CPU time the attempt used: the guest's busy time while it ran (all
/// vCPUs, `/proc/stat`: the attempt's own work and what it made others do — PID 1 answering
/// `systemctl`, the console copier, the kernel), but at most `own_cost_percent` of what the
/// attempt's processes and PID 1 used (`/proc/<pid>/stat`), so that a guest busy with other
/// work (booting) does not make its waits poll less. Only attempts that forked are measured;
/// a builtin probe that a listener accepted (a closed-port wait's attempt while the port is
/// open) costs `probe_us`; other builtin-only attempts cost nothing. While the host is idle no pause is
/// longer than `max_age_us`; under contention the budget may stretch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// How long the wait has run already (earlier slices of the same wait).
    pub age_us: u64,
    pub min_us: u64,
    pub max_age_us: u64,
    pub age_divisor: u32,
    pub young_us: u64,
    pub young_factor: u32,
    pub old_factor: u32,
    pub watched_factor: u32,
    pub own_cost_percent: u32,
    /// Upstream's per-attempt overhead on this machine (see
    /// [`UPSTREAM_ATTEMPT_OVERHEAD_TCG`]); 0: no cost term in the fast rule.
    pub overhead_us: u64,
    /// The cost of a builtin attempt whose probe a listener accepted (see
    /// [`LISTENER_PROBE_COST_TCG`]); 0: such attempts count as free.
    pub probe_us: u64,
    /// While the host is idle, the longest pause after a guard refused in front of a
    /// command ([`GUARD_MAX_PAUSE`]); 0: no such bound.
    pub guard_max_us: u64,
    /// The host's verdict when the wait was sent.
    pub mode: PaceMode,
}

impl Pacing {
    /// The pacing of `schedule` for a wait that began `age` ago on a machine that runs under
    /// KVM (`kvm`) or not, the host's verdict `mode`.
    pub fn new(schedule: Schedule, age: Duration, mode: PaceMode, kvm: bool) -> Pacing {
        let us = micros;
        let factor = |share: u32| 100 / share - 1;
        match schedule {
            Schedule::Budget => Pacing {
                age_us: us(age),
                min_us: us(MIN_PAUSE),
                max_age_us: us(MAX_AGE_PAUSE),
                age_divisor: AGE_DIVISOR,
                young_us: us(YOUNG_PHASE),
                young_factor: factor(YOUNG_SHARE_PERCENT),
                old_factor: factor(OLD_SHARE_PERCENT),
                watched_factor: 100 * WATCHED_SHARE_DIVISOR / OLD_SHARE_PERCENT - 1,
                own_cost_percent: OWN_COST_PERCENT,
                overhead_us: us(if kvm {
                    UPSTREAM_ATTEMPT_OVERHEAD_KVM
                } else {
                    UPSTREAM_ATTEMPT_OVERHEAD_TCG
                }),
                probe_us: us(if kvm {
                    LISTENER_PROBE_COST_KVM
                } else {
                    LISTENER_PROBE_COST_TCG
                }),
                guard_max_us: us(GUARD_MAX_PAUSE),
                mode,
            },
            Schedule::Reference => Pacing {
                age_us: us(age),
                min_us: us(REFERENCE_INTERVAL),
                max_age_us: us(REFERENCE_INTERVAL),
                age_divisor: 1,
                young_us: 0,
                young_factor: 0,
                old_factor: 0,
                watched_factor: 0,
                own_cost_percent: OWN_COST_PERCENT,
                overhead_us: 0,
                probe_us: 0,
                guard_max_us: 0,
                mode,
            },
        }
    }

    /// The pause after an attempt that cost `cost_us` of CPU, `age_us` into the wait, in
    /// `mode` (`watched`: a unit watcher runs): the rule the guest loop applies in bash
    /// ([`super::guest::SETUP_WAITS`], `__ntd_pace`, from this struct's fields), and
    /// `retry()` through [`retry_pause`].
    pub fn pause_us(&self, age_us: u64, cost_us: u64, mode: PaceMode, watched: bool) -> u64 {
        let (lo, hi) = (self.min_us, self.max_age_us.max(self.min_us));
        let by_age = age_us / u64::from(self.age_divisor.max(1));
        let young = age_us < self.young_us;
        let cost = |k: u32| cost_us.saturating_mul(u64::from(k));
        if watched {
            let k = if young {
                self.young_factor
            } else {
                self.watched_factor
            };
            return by_age.clamp(lo, hi).max(cost(k));
        }
        // 1 s × c / (c + overhead), in microseconds.
        let by_cost = match self.overhead_us {
            0 => 0,
            o => cost_us.saturating_mul(1_000_000) / cost_us.saturating_add(o),
        };
        let fast = by_age.max(by_cost).clamp(lo, hi);
        match mode {
            PaceMode::Fast => fast,
            PaceMode::Budget => {
                let k = if young {
                    self.young_factor
                } else {
                    self.old_factor
                };
                fast.max(cost(k))
            }
        }
    }
}

impl Pacing {
    /// The pause after an attempt whose guard refused in front of a command (the command
    /// did not run: the attempt cost nothing measurable), `age_us` into the wait, in `mode`:
    /// [`Self::pause_us`] of a free attempt, at most `guard_max_us` while the host is idle.
    pub fn guard_pause_us(&self, age_us: u64, mode: PaceMode) -> u64 {
        let p = self.pause_us(age_us, 0, mode, false);
        match (mode, self.guard_max_us) {
            (PaceMode::Fast, cap) if cap > 0 => p.min(cap.max(self.min_us)),
            _ => p,
        }
    }
}

/// `retry()`'s cost is the callable's wall-clock time (it cannot tell guest work from host
/// work such as OCR), so a slow callable would pause for 24 times as long under contention;
/// this bounds that pause. Callables that take longer than this / 24 (0.21 s) use more than
/// 4 %.
pub const RETRY_MAX_COST_PAUSE: Duration = Duration::from_secs(5);

/// The pause of the shim's `retry()` after an attempt that took `cost`, `age` into the
/// retry, in `mode`: the wait schedule's rule ([`Pacing::pause_us`]), its cost term capped at
/// [`RETRY_MAX_COST_PAUSE`]; upstream's fixed second under [`Schedule::Reference`].
pub fn retry_pause(
    schedule: Schedule,
    age: Duration,
    cost: Duration,
    mode: PaceMode,
    kvm: bool,
) -> Duration {
    let p = Pacing::new(schedule, Duration::ZERO, mode, kvm);
    let floor = p.pause_us(micros(age), 0, mode, false);
    let cost_term = p
        .pause_us(micros(age), micros(cost), mode, false)
        .min(micros(RETRY_MAX_COST_PAUSE));
    Duration::from_micros(floor.max(cost_term))
}

/// How long before `retry()`'s deadline the attempt flagged last starts at the latest: the
/// pause before it ends this early, so that a host that oversleeps a pause a little (a
/// loaded machine) still runs it before the deadline. At least the attempt's cost, at most a
/// fourth of the timeout (short retries do not give up early).
pub const RETRY_LAST_MARGIN: Duration = Duration::from_millis(50);

/// What `retry()` does before its next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryStep {
    /// How long to pause first.
    pub pause: Duration,
    /// The attempt is the last that fits before the deadline (the truth value an old
    /// `fn(last_try)` callback sees; `retry()` gives up when it fails).
    pub last: bool,
}

/// `retry()`'s next step, `age` into a retry of `timeout` (`None`: no limit) whose previous
/// attempt took `cost` (`first`: none ran yet, no pause), paced in `mode` for a run whose
/// machines all have KVM or not (`kvm`). The pause is [`retry_pause`], cut
/// to end [`RETRY_LAST_MARGIN`] before the deadline; the attempt after it is the last if,
/// costing as much as the previous one and followed by its own pause, the one after it
/// could not start by then.
pub fn retry_step(
    schedule: Schedule,
    first: bool,
    age: Duration,
    cost: Duration,
    timeout: Option<Duration>,
    (mode, kvm): (PaceMode, bool),
) -> RetryStep {
    let pause = if first {
        Duration::ZERO
    } else {
        retry_pause(schedule, age, cost, mode, kvm)
    };
    let Some(total) = timeout else {
        return RetryStep { pause, last: false };
    };
    let margin = RETRY_LAST_MARGIN.max(cost).min(total / 4);
    let latest_start = total.saturating_sub(margin);
    let pause = pause.min(latest_start.saturating_sub(age));
    let ends = age + pause + cost;
    let last = ends + retry_pause(schedule, ends, cost, mode, kvm) + margin >= total;
    RetryStep { pause, last }
}

/// Whole microseconds of `d`, the unit of the guest loop's arithmetic (saturating: a wait
/// longer than half a million years waits that long).
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

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

/// A path that means the same quoted or not: no expansion, globbing or word splitting.
fn is_plain_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('~')
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+,:@%=".contains(&b))
}

/// An address bash's `/dev/tcp/ADDR/PORT` takes as is (a host name or an IP literal).
fn is_plain_address(addr: &str) -> bool {
    !addr.is_empty()
        && addr
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

/// Unit types `systemctl` recognises as a name's suffix.
const UNIT_SUFFIXES: &[&str] = &[
    "service",
    "socket",
    "target",
    "device",
    "mount",
    "automount",
    "swap",
    "timer",
    "path",
    "slice",
    "scope",
];

/// The unit's full name as `systemctl` mangles it (`nginx` → `nginx.service`), or `None`
/// when it is not a plain unit name (a path, a glob): such waits poll without a watcher.
pub fn full_unit_name(unit: &str) -> Option<String> {
    let valid = !unit.is_empty()
        && unit.len() <= 255
        && unit
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b));
    if !valid {
        return None;
    }
    let typed = unit
        .rsplit_once('.')
        .is_some_and(|(stem, suffix)| !stem.is_empty() && UNIT_SUFFIXES.contains(&suffix));
    Some(if typed {
        unit.to_owned()
    } else {
        format!("{unit}.service")
    })
}

impl WaitCondition {
    /// Upstream's command for one attempt (what `retry` runs once a second upstream).
    fn upstream_command(&self) -> String {
        match self {
            WaitCondition::Command { command, .. } => command.clone(),
            WaitCondition::File { path } => format!("test -e {path}"),
            WaitCondition::Port { addr, port, .. } => format!("nc -z {} {port}", quoted(addr)),
            WaitCondition::UnixSocket { path, datagram } => {
                let flags = if *datagram { "-uU" } else { "-U" };
                format!("nc -z {flags} {}", quoted(path))
            }
            WaitCondition::Unit { unit, user } => {
                let sc = |args: &str| systemctl(args, user.as_deref());
                let q = quoted(unit);
                let show = sc(&format!("--no-pager show {q} --property=ActiveState --value"));
                let jobs = sc("list-jobs --full");
                format!(
                    "s=$({show}) || exit {UNIT_QUERY_FAILED}; \
                     case \"$s\" in active) exit 0;; failed) exit {UNIT_FAILED};; inactive) \
                     if {jobs} 2>&1 | grep -q 'No jobs'; then \
                     s=$({show}) || exit {UNIT_QUERY_FAILED}; \
                     [ \"$s\" = inactive ] && exit {UNIT_INACTIVE_IDLE}; fi; exit 1;; *) exit 1;; esac"
                )
            }
            WaitCondition::UnitState { unit, state, user } => format!(
                "[ \"$({})\" = {} ]",
                systemctl(
                    &format!("--no-pager show {} --property=ActiveState --value", quoted(unit)),
                    user.as_deref()
                ),
                quoted(state)
            ),
            WaitCondition::X11 => "journalctl -b SYSLOG_IDENTIFIER=systemd | grep -q \"Reached target Current graphical\" \
                 && [ -e /tmp/.X11-unix/X0 ]"
                .into(),
        }
    }

    fn until_success(&self) -> bool {
        match self {
            WaitCondition::Command { until_success, .. } => *until_success,
            WaitCondition::Port { open, .. } => *open,
            _ => true,
        }
    }

    fn fatal_status(&self) -> u8 {
        match self {
            WaitCondition::Unit { .. } => UNIT_FAILED,
            _ => 0,
        }
    }

    /// The guest-side check of this condition under `schedule`.
    pub fn guest_check(&self, schedule: Schedule) -> GuestCheck {
        let mut check = GuestCheck {
            guard: String::new(),
            command: self.upstream_command(),
            until_success: self.until_success(),
            fatal_status: self.fatal_status(),
            watch: None,
        };
        if schedule == Schedule::Reference {
            let mut inner = String::from("set -euo pipefail; ");
            inner.push_str(&check.command);
            check.command = format!(
                "timeout {REFERENCE_ATTEMPT_TIMEOUT} bash -c {} | (base64 -w 0; echo) | base64 -d",
                quoted(&inner)
            );
            return check;
        }
        match self {
            WaitCondition::File { path } if is_plain_path(path) => {
                check.guard = format!("[ -e {} ]", quoted(path));
                check.command.clear();
            }
            WaitCondition::Port { addr, port, .. }
                if is_plain_address(addr) && port.bytes().all(|b| b.is_ascii_digit()) =>
            {
                // `_Nport` connects with bash's /dev/tcp (exactly `nc -z`: success ⇔ a TCP
                // connect to one of the addresses succeeds), or runs `nc -z` where bash
                // has no /dev/tcp.
                check.guard = format!("_Nport {addr} {port}");
                check.command.clear();
            }
            WaitCondition::Command {
                command,
                until_success: true,
            } => {
                // A `curl` that would find nothing listening: a builtin connect says so
                // without the fork and exec (see `super::curl`).
                if let Some(t) = super::curl::target(command) {
                    check.guard = format!("_Nurl {} {}", t.host, t.port);
                }
            }
            WaitCondition::UnixSocket { path, .. } => {
                // bash cannot connect a unix socket; it can see that there is none yet.
                check.guard = format!("[ -S {} ]", quoted(path));
            }
            WaitCondition::Unit { unit, user: None } => {
                check.watch = full_unit_name(unit).map(|unit| UnitWatch { unit, state: None });
            }
            WaitCondition::UnitState {
                unit,
                state,
                user: None,
            } => {
                check.watch = full_unit_name(unit).map(|unit| UnitWatch {
                    unit,
                    state: Some(state.clone()),
                });
            }
            _ => {}
        }
        check
    }

    /// Read the final status of a wait loop. `looped` is false when the watchdog had to stop
    /// a hanging attempt (then the status is the watchdog's 124).
    pub fn verdict(&self, status: i32, looped: bool) -> Verdict {
        if !looped {
            return Verdict::NotYet;
        }
        if (status == 0) == self.until_success() {
            return Verdict::Met;
        }
        let fatal = self.fatal_status();
        if fatal == 0 || status < i32::from(fatal) {
            return Verdict::NotYet;
        }
        let WaitCondition::Unit { unit, user } = self else {
            return Verdict::Impossible(format!("the wait ended with status {status}"));
        };
        Verdict::Impossible(match u8::try_from(status) {
            Ok(UNIT_FAILED) => format!("unit \"{unit}\" reached state \"failed\""),
            Ok(UNIT_INACTIVE_IDLE) => {
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
#[path = "waits_tests.rs"]
mod tests;
