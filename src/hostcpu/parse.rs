//! The pure half of [`super`]: the kernel's text formats (a thread's `schedstat`, the host's
//! `/proc/pressure/cpu`, QMP's `query-cpus-fast` reply) and the arithmetic on their counters
//! (how much time the host withheld from a machine's vCPUs, what share of a window it was,
//! and the host's verdict). No I/O: every function takes bytes or numbers, so the tests feed
//! made-up readings.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_precision_loss
)]

use crate::json::Value;
use std::time::{Duration, Instant};

/// One thread's `/proc/<pid>/task/<tid>/schedstat`: nanoseconds on a CPU, nanoseconds
/// runnable but waiting on a run queue, timeslices run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedstat {
    pub on_cpu_ns: u64,
    pub waiting_ns: u64,
    pub slices: u64,
}

/// Read a `schedstat` line (`"123 456 7\n"`); `None` for anything else.
pub fn parse_schedstat(text: &[u8]) -> Option<Schedstat> {
    let text = std::str::from_utf8(text).ok()?;
    let mut it = text.split_ascii_whitespace().map(|w| w.parse::<u64>().ok());
    let s = Schedstat {
        on_cpu_ns: it.next()??,
        waiting_ns: it.next()??,
        slices: it.next()??,
    };
    it.next().is_none().then_some(s)
}

/// The `some` line of `/proc/pressure/cpu`: the share of the last 10 s in which at least
/// one task waited for a CPU (per mille), and the cumulative such time (microseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Psi {
    pub some_avg10_permille: u32,
    pub some_total_us: u64,
}

/// Read `/proc/pressure/cpu` (`some avg10=1.23 avg60=… avg300=… total=N`, then a `full`
/// line on newer kernels); `None` when there is no valid `some` line.
pub fn parse_psi(text: &[u8]) -> Option<Psi> {
    let text = std::str::from_utf8(text).ok()?;
    let line = text.lines().find(|l| l.starts_with("some "))?;
    let mut avg10 = None;
    let mut total = None;
    for field in line.split_ascii_whitespace().skip(1) {
        match field.split_once('=') {
            Some(("avg10", v)) => avg10 = Some(percent_to_permille(v)?),
            Some(("total", v)) => total = Some(v.parse::<u64>().ok()?),
            _ => {}
        }
    }
    Some(Psi {
        some_avg10_permille: avg10?,
        some_total_us: total?,
    })
}

/// `"43.13"` (a percentage with up to two decimals) as per mille, rounded down: 431.
fn percent_to_permille(v: &str) -> Option<u32> {
    let (whole, frac) = v.split_once('.').unwrap_or((v, "0"));
    let whole: u32 = whole.parse().ok()?;
    let tenth = frac
        .bytes()
        .next()
        .map_or(Some(0), |b| b.is_ascii_digit().then(|| u32::from(b - b'0')))?;
    if whole > 100 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(whole * 10 + tenth)
}

/// The vCPU threads' ids in QMP's `query-cpus-fast` reply (one per vCPU; several vCPUs
/// share one thread under single-threaded TCG, listed once).
pub fn vcpu_threads(reply: &Value) -> Vec<i32> {
    let mut tids: Vec<i32> = reply
        .as_array()
        .unwrap_or_default()
        .iter()
        .filter_map(|cpu| cpu.get("thread-id")?.as_i64())
        .filter_map(|t| i32::try_from(t).ok().filter(|t| *t > 0))
        .collect();
    tids.sort_unstable();
    tids.dedup();
    tids
}

/// The time the host withheld from a machine: the sum, over successive readings of its
/// vCPU threads' run-queue waits, of the largest wait any one vCPU accumulated between two
/// readings (at most the wall time between them).
///
/// For one vCPU this is exactly the time it was runnable but not running. For several it
/// is the time the most-starved vCPU waited, per reading interval: the guest counts as
/// held up while *some* vCPU that wanted to run could not. (The exact measure, the union of
/// every vCPU's waiting intervals, is not in the counters; this is its lower bound, and
/// equal to it when the host starves the whole guest, as a busy builder does.) A vCPU that
/// is idle (halted) or stopped (`SIGSTOP`, QMP `stop`) is not runnable and waits for
/// nothing: that time counts as available.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Withheld {
    last: Option<(Instant, Vec<u64>)>,
    total: Duration,
}

impl Withheld {
    /// The total so far.
    pub fn total(&self) -> Duration {
        self.total
    }

    /// New threads (a new QEMU process): the next reading is their baseline.
    pub fn forget_threads(&mut self) {
        self.last = None;
    }

    /// A reading at `at` of every vCPU's cumulative wait (nanoseconds, in a fixed order).
    pub fn add(&mut self, at: Instant, waiting_ns: &[u64]) {
        if let Some((then, before)) = self.last.as_ref() {
            if before.len() == waiting_ns.len() {
                let most = waiting_ns
                    .iter()
                    .zip(before)
                    .map(|(now, was)| now.saturating_sub(*was))
                    .max()
                    .unwrap_or(0);
                let wall = at.saturating_duration_since(*then);
                self.total += Duration::from_nanos(most).min(wall);
            }
        }
        self.last = Some((at, waiting_ns.to_vec()));
    }
}

/// How much of a recent window a cumulative counter grew, as a share of the window's wall
/// time (per mille): the share is renewed once a window of at least [`Share::WINDOW`] is
/// complete, so it changes at most that often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    start: Option<(Instant, Duration)>,
    permille: Option<u32>,
}

impl Share {
    /// The length of a window.
    pub const WINDOW: Duration = Duration::from_secs(1);

    /// No reading yet; `initial` until the first window completes.
    pub fn new(initial: Option<u32>) -> Share {
        Share {
            start: None,
            permille: initial,
        }
    }

    /// The counter read `value` at `at`.
    pub fn add(&mut self, at: Instant, value: Duration) {
        match self.start {
            Some((then, was)) if at.saturating_duration_since(then) >= Share::WINDOW => {
                let wall = at.saturating_duration_since(then).as_micros().max(1);
                let grew = value.saturating_sub(was).as_micros();
                let pm = (grew.saturating_mul(1000) / wall).min(1000);
                self.permille = u32::try_from(pm).ok();
                self.start = Some((at, value));
            }
            Some((_, was)) if value < was => self.start = Some((at, value)),
            Some(_) => {}
            None => self.start = Some((at, value)),
        }
    }

    /// The last complete window's share (per mille), or the initial value.
    pub fn permille(&self) -> Option<u32> {
        self.permille
    }
}

/// The host's verdict for a waiting machine's polling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The host has idle CPU: poll soon after each attempt (the fast rule).
    Idle,
    /// Tasks wait for a CPU (or ntd cannot tell): the CPU budget stretches pauses.
    Contended,
}

/// Host PSI `some` at or above this share (per mille) means contention.
pub const PSI_CONTENDED: u32 = 200;
/// … and the host counts as idle again below this one (hysteresis).
pub const PSI_IDLE: u32 = 100;
/// The waiting machine's vCPUs queued for at least this share of the window: contention.
pub const VCPU_CONTENDED: u32 = 100;
/// … idle again below this one.
pub const VCPU_IDLE: u32 = 50;

/// The verdict from the host's PSI share and the machine's vCPU waiting share (per mille;
/// `None`: unknown), given the previous verdict (hysteresis: between the two thresholds
/// nothing changes). Neither signal known: contended (today's budget, which is safe on a
/// busy host).
pub fn verdict(psi: Option<u32>, vcpu: Option<u32>, previous: Verdict) -> Verdict {
    if psi.is_none() && vcpu.is_none() {
        return Verdict::Contended;
    }
    let high = psi.is_some_and(|p| p >= PSI_CONTENDED) || vcpu.is_some_and(|v| v >= VCPU_CONTENDED);
    let low = !psi.is_some_and(|p| p >= PSI_IDLE) && !vcpu.is_some_and(|v| v >= VCPU_IDLE);
    match (high, low) {
        (true, _) => Verdict::Contended,
        (false, true) => Verdict::Idle,
        (false, false) => previous,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_reads_three_counters_and_nothing_else() {
        assert_eq!(
            parse_schedstat(b"2589523700 1720786654 6143\n"),
            Some(Schedstat {
                on_cpu_ns: 2_589_523_700,
                waiting_ns: 1_720_786_654,
                slices: 6143
            })
        );
        for bad in [&b""[..], b"1 2", b"1 2 3 4", b"1 x 3", b"-1 2 3", b"\xff"] {
            assert_eq!(parse_schedstat(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn psi_reads_the_some_line_in_per_mille_and_microseconds() {
        let text = b"some avg10=43.13 avg60=67.31 avg300=51.72 total=5850055198\n\
                     full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(
            parse_psi(text),
            Some(Psi {
                some_avg10_permille: 431,
                some_total_us: 5_850_055_198
            })
        );
        let old_kernel = b"some avg10=0.00 avg60=0.00 avg300=0.00 total=12\n";
        assert_eq!(
            parse_psi(old_kernel).map(|p| p.some_avg10_permille),
            Some(0)
        );
        assert_eq!(
            parse_psi(b"some avg10=100.00 total=1\n").map(|p| p.some_avg10_permille),
            Some(1000)
        );
        for bad in [
            &b""[..],
            b"full avg10=1.00 total=3\n",
            b"some avg10=1.00\n",
            b"some total=3\n",
            b"some avg10=x total=3\n",
            b"some avg10=101.0 total=3\n",
            b"some avg10=1.0 total=-3\n",
        ] {
            assert_eq!(parse_psi(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn vcpu_threads_come_from_query_cpus_fast_once_each() {
        let reply = Value::parse(
            br#"[{"cpu-index":0,"thread-id":11221,"target":"x86_64"},
                 {"cpu-index":1,"thread-id":11222},{"cpu-index":2,"thread-id":11222},
                 {"cpu-index":3},{"thread-id":-4}]"#,
        )
        .unwrap();
        assert_eq!(vcpu_threads(&reply), vec![11221, 11222]);
        assert!(vcpu_threads(&Value::parse(b"{}").unwrap()).is_empty());
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn withheld_adds_the_most_starved_vcpus_wait_per_interval_bounded_by_the_wall() {
        let t0 = Instant::now();
        let mut w = Withheld::default();
        w.add(t0, &[5_000_000_000, 0]);
        assert_eq!(w.total(), Duration::ZERO, "the first reading is a baseline");
        // 1 s later: vCPU 0 waited 0.3 s, vCPU 1 0.5 s.
        w.add(t0 + secs(1.0), &[5_300_000_000, 500_000_000]);
        assert_eq!(w.total(), secs(0.5));
        // A counter that cannot have grown more than the wall time is cut to it.
        w.add(t0 + secs(1.5), &[9_000_000_000, 500_000_000]);
        assert_eq!(w.total(), secs(1.0));
        // New threads (a new QEMU): the next reading is a baseline again.
        w.forget_threads();
        w.add(t0 + secs(3.0), &[7]);
        w.add(t0 + secs(4.0), &[250_000_007]);
        assert_eq!(w.total(), secs(1.25));
        // A counter that went backwards (a reused thread id) adds nothing.
        w.add(t0 + secs(5.0), &[1]);
        assert_eq!(w.total(), secs(1.25));
    }

    #[test]
    fn share_is_renewed_once_per_complete_window() {
        let t0 = Instant::now();
        let mut s = Share::new(Some(431));
        s.add(t0, secs(10.0));
        assert_eq!(
            s.permille(),
            Some(431),
            "the initial value until a window completes"
        );
        s.add(t0 + secs(0.5), secs(10.4));
        assert_eq!(s.permille(), Some(431));
        s.add(t0 + secs(1.0), secs(10.5));
        assert_eq!(s.permille(), Some(500));
        s.add(t0 + secs(3.0), secs(10.5));
        assert_eq!(s.permille(), Some(0));
        let mut unknown = Share::new(None);
        unknown.add(t0, Duration::ZERO);
        assert_eq!(unknown.permille(), None);
    }

    #[test]
    fn verdict_needs_both_signals_low_for_idle_and_keeps_itself_between_thresholds() {
        use Verdict::*;
        assert_eq!(verdict(Some(0), Some(0), Contended), Idle);
        assert_eq!(verdict(Some(250), Some(0), Idle), Contended);
        assert_eq!(verdict(Some(0), Some(120), Idle), Contended);
        assert_eq!(verdict(Some(150), Some(0), Idle), Idle, "hysteresis");
        assert_eq!(verdict(Some(150), Some(0), Contended), Contended);
        assert_eq!(verdict(Some(50), Some(70), Contended), Contended);
        assert_eq!(
            verdict(None, Some(10), Contended),
            Idle,
            "no PSI: the vCPUs decide"
        );
        assert_eq!(
            verdict(Some(10), None, Contended),
            Idle,
            "no schedstat: PSI decides"
        );
        assert_eq!(
            verdict(None, None, Idle),
            Contended,
            "blind: today's budget"
        );
    }
}
