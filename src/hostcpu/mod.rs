//! Guest time and host pressure: how much CPU the host is giving each machine, read from the
//! kernel, so that per-call timeouts count the time a machine could run and waits poll fast
//! only while the host has CPU to spare.
//!
//! - **Guest-available time** ([`VcpuClock`], [`Stamp`]): wall time minus the time the host
//!   *withheld* from the machine, that is the time its QEMU vCPU threads were runnable but
//!   waiting on a run queue (`/proc/<tid>/task/<tid>/schedstat`, thread ids from QMP's
//!   `query-cpus-fast`). Running and idle time count; so does time a vCPU is stopped
//!   (`SIGSTOP`, QMP `stop`): a stopped machine is not starved, it was stopped, and its
//!   timeouts run out as upstream's do. Several vCPUs: see [`parse::Withheld`].
//! - **Run time** ([`RunClock`]): for calls that belong to no machine (`retry`), the time
//!   the most-starved running machine got, interval by interval.
//! - **Host pressure** ([`HostPressure`]): the share of time in which some task waited for a
//!   CPU (`/proc/pressure/cpu`, PSI `some`), which with the waiting machine's own vCPU
//!   waiting share decides the pacing verdict ([`parse::verdict`]).
//!
//! Where the kernel has no `schedstat` (or the first reading fails) a machine's time is wall
//! time; where it has no PSI only the vCPUs decide; where it has neither, waits keep the
//! CPU budget. Each is said once at debug level ([`VcpuClock::take_note`],
//! [`HostPressure::take_note`]). [`PROC_ROOT_ENV`] points all reading at another directory
//! (the tests give it an empty one). Readings are taken on demand and reused for
//! [`MAX_READING_AGE`]: a few small file reads per machine and loop turn at most.

pub mod parse;

use parse::{Share, Verdict, Withheld};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where `/proc` is (default `/proc`): a test knob to make the kernel's files vanish.
pub const PROC_ROOT_ENV: &str = "NTD_PROC_ROOT";
/// A reading is reused for this long.
pub const MAX_READING_AGE: Duration = Duration::from_millis(20);
/// The host's PSI file is read at most this often.
pub const PSI_READ_EVERY: Duration = Duration::from_millis(100);

/// The `/proc` ntd reads ([`PROC_ROOT_ENV`], read once).
pub fn proc_root() -> &'static Path {
    use std::sync::OnceLock;
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        std::env::var_os(PROC_ROOT_ENV)
            .filter(|v| !v.is_empty())
            .map_or_else(|| PathBuf::from("/proc"), PathBuf::from)
    })
}

/// A reading of a machine's clock: the wall instant and how much time the host had withheld
/// from the machine by then (cumulative since the machine was created).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub wall: Instant,
    pub withheld: Duration,
}

impl Stamp {
    /// A reading of a clock that nothing withholds (no machine, or none known yet).
    pub fn wall(at: Instant) -> Stamp {
        Stamp {
            wall: at,
            withheld: Duration::ZERO,
        }
    }

    /// Guest-available time from `earlier` to this reading.
    pub fn available_since(&self, earlier: &Stamp) -> Duration {
        self.wall
            .saturating_duration_since(earlier.wall)
            .saturating_sub(self.withheld_since(earlier))
    }

    /// Time withheld from `earlier` to this reading.
    pub fn withheld_since(&self, earlier: &Stamp) -> Duration {
        self.withheld.saturating_sub(earlier.withheld)
    }

    /// The guest clock's reading in seconds: available time since `epoch` (the driver's
    /// start), as the shim measures ages with it.
    pub fn guest_since(&self, epoch: Instant) -> Duration {
        self.wall
            .saturating_duration_since(epoch)
            .saturating_sub(self.withheld)
    }
}

/// Read a small file into `buf`; the bytes read.
fn read_small<'a>(path: &Path, buf: &'a mut [u8]) -> Option<&'a [u8]> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    Some(&buf[..n])
}

/// Whether a machine's time can be measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// No vCPU threads known (not booted, or QMP has not answered yet): wall time.
    NoThreads,
    /// Reading the threads' schedstat.
    Threads,
    /// The first reading failed (no schedstat on this kernel): wall time from now on.
    Unavailable,
}

/// A machine's guest-available time. See the module documentation.
#[derive(Debug)]
pub struct VcpuClock {
    paths: Vec<PathBuf>,
    withheld: Withheld,
    share: Share,
    source: Source,
    /// No reading succeeded since the threads were set.
    first: bool,
    read_at: Option<Instant>,
    note: Option<String>,
    noted: bool,
    verdict: Verdict,
}

impl Default for VcpuClock {
    fn default() -> Self {
        VcpuClock::new()
    }
}

impl VcpuClock {
    pub fn new() -> VcpuClock {
        VcpuClock {
            paths: Vec::new(),
            withheld: Withheld::default(),
            share: Share::new(None),
            source: Source::NoThreads,
            first: false,
            read_at: None,
            note: None,
            noted: false,
            verdict: Verdict::Contended,
        }
    }

    /// The vCPU threads of a new QEMU process (from `query-cpus-fast`).
    pub fn set_threads(&mut self, tids: &[i32]) {
        if self.source == Source::Unavailable {
            return;
        }
        let root = proc_root();
        self.paths = tids
            .iter()
            .map(|t| root.join(format!("{t}/task/{t}/schedstat")))
            .collect();
        self.withheld.forget_threads();
        self.share = Share::new(None);
        self.source = if self.paths.is_empty() {
            Source::NoThreads
        } else {
            Source::Threads
        };
        self.first = true;
        self.read_at = None;
    }

    /// The process ended: its thread ids may be reused by anybody now.
    pub fn clear_threads(&mut self) {
        if self.source == Source::Threads {
            self.source = Source::NoThreads;
        }
        self.paths.clear();
        self.withheld.forget_threads();
    }

    /// The clock at `now` (reading the threads unless a reading is fresh enough).
    pub fn stamp(&mut self, now: Instant) -> Stamp {
        let fresh = self
            .read_at
            .is_some_and(|t| now.saturating_duration_since(t) < MAX_READING_AGE && t <= now);
        if self.source == Source::Threads && !fresh {
            self.read(now);
        }
        Stamp {
            wall: now,
            withheld: self.withheld.total(),
        }
    }

    fn read(&mut self, now: Instant) {
        let mut buf = [0u8; 128];
        let mut waits = Vec::with_capacity(self.paths.len());
        for p in &self.paths {
            match read_small(p, &mut buf).and_then(parse::parse_schedstat) {
                Some(s) => waits.push(s.waiting_ns),
                None => {
                    if self.first {
                        self.source = Source::Unavailable;
                        self.note_once(format!(
                            "no run-queue statistics for this machine's vCPU threads ({} \
                             missing or unreadable): its timeouts count wall time",
                            p.display()
                        ));
                    } else {
                        // The process is going away; its exit clears the threads.
                        self.source = Source::NoThreads;
                    }
                    self.paths.clear();
                    return;
                }
            }
        }
        self.first = false;
        self.read_at = Some(now);
        self.withheld.add(now, &waits);
        self.share.add(now, self.withheld.total());
    }

    fn note_once(&mut self, msg: String) {
        if !self.noted {
            self.noted = true;
            self.note = Some(msg);
        }
    }

    /// The share of the last complete window (per mille) in which the machine's vCPUs
    /// waited for a host CPU; `None` when unknown.
    pub fn waiting_share(&self) -> Option<u32> {
        (self.source == Source::Threads)
            .then(|| self.share.permille())
            .flatten()
    }

    /// The pacing verdict for this machine given the host's PSI share (see
    /// [`parse::verdict`]); it starts contended and keeps its last value between the
    /// thresholds.
    pub fn verdict(&mut self, host_psi: Option<u32>) -> Verdict {
        self.verdict = parse::verdict(host_psi, self.waiting_share(), self.verdict);
        self.verdict
    }

    /// A message to log once at debug level (the fallback to wall time), if there is one.
    pub fn take_note(&mut self) -> Option<String> {
        self.note.take()
    }
}

/// The host's CPU pressure (PSI `some`). See the module documentation.
#[derive(Debug)]
pub struct HostPressure {
    path: PathBuf,
    share: Option<Share>,
    read_at: Option<Instant>,
    missing: bool,
    note: Option<String>,
}

impl Default for HostPressure {
    fn default() -> Self {
        HostPressure::new()
    }
}

impl HostPressure {
    pub fn new() -> HostPressure {
        HostPressure {
            path: proc_root().join("pressure/cpu"),
            share: None,
            read_at: None,
            missing: false,
            note: None,
        }
    }

    /// Read the PSI file unless it was read less than [`PSI_READ_EVERY`] ago.
    pub fn sample(&mut self, now: Instant) {
        if self.missing
            || self
                .read_at
                .is_some_and(|t| now.saturating_duration_since(t) < PSI_READ_EVERY && t <= now)
        {
            return;
        }
        let mut buf = [0u8; 256];
        match read_small(&self.path, &mut buf).and_then(parse::parse_psi) {
            Some(psi) => {
                let share = self
                    .share
                    .get_or_insert_with(|| Share::new(Some(psi.some_avg10_permille)));
                share.add(now, Duration::from_micros(psi.some_total_us));
                self.read_at = Some(now);
            }
            None => {
                self.missing = true;
                self.share = None;
                self.note = Some(format!(
                    "no CPU pressure information ({} missing or unreadable: a kernel without \
                     PSI): waits pace by their machine's vCPU run-queue delay alone",
                    self.path.display()
                ));
            }
        }
    }

    /// The share (per mille) of the last window in which some task waited for a CPU.
    pub fn permille(&self) -> Option<u32> {
        self.share.as_ref().and_then(Share::permille)
    }

    /// A message to log once at debug level, if there is one.
    pub fn take_note(&mut self) -> Option<String> {
        self.note.take()
    }
}

/// The run's clock for calls that belong to no machine: between two readings it advances by
/// the wall time minus the most any one machine was withheld in between.
#[derive(Debug, Default)]
pub struct RunClock {
    withheld: Duration,
    seen: Vec<Duration>,
}

impl RunClock {
    /// Read the run clock at `now`, given every machine's cumulative withheld time (in the
    /// same order every time; a machine added later joins the end).
    pub fn stamp(&mut self, now: Instant, machines: impl Iterator<Item = Duration>) -> Stamp {
        let mut most = Duration::ZERO;
        for (i, w) in machines.enumerate() {
            match self.seen.get_mut(i) {
                Some(s) => {
                    most = most.max(w.saturating_sub(*s));
                    *s = w;
                }
                None => self.seen.push(w),
            }
        }
        self.withheld += most;
        Stamp {
            wall: now,
            withheld: self.withheld,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_tell_available_and_withheld_time() {
        let t0 = Instant::now();
        let a = Stamp {
            wall: t0,
            withheld: Duration::from_secs(3),
        };
        let b = Stamp {
            wall: t0 + Duration::from_secs(95),
            withheld: Duration::from_secs(38),
        };
        assert_eq!(b.available_since(&a), Duration::from_secs(60));
        assert_eq!(b.withheld_since(&a), Duration::from_secs(35));
        assert_eq!(a.available_since(&b), Duration::ZERO);
        assert_eq!(b.guest_since(t0), Duration::from_secs(57));
    }

    #[test]
    fn run_clock_takes_the_most_starved_machine_of_each_interval() {
        let t0 = Instant::now();
        let s = |x: u64| Duration::from_secs(x);
        let mut run = RunClock::default();
        // Withheld before the first reading does not count.
        assert_eq!(run.stamp(t0, [s(100), s(0)].into_iter()).withheld, s(0));
        assert_eq!(run.stamp(t0, [s(102), s(5)].into_iter()).withheld, s(5));
        assert_eq!(run.stamp(t0, [s(110), s(6)].into_iter()).withheld, s(13));
        // A machine created later starts from its first reading.
        assert_eq!(
            run.stamp(t0, [s(110), s(6), s(50)].into_iter()).withheld,
            s(13)
        );
        assert_eq!(
            run.stamp(t0, [s(111), s(6), s(54)].into_iter()).withheld,
            s(17)
        );
    }

    #[test]
    fn a_clock_without_threads_is_wall_time_and_one_without_schedstat_says_so_once() {
        let t0 = Instant::now();
        let mut c = VcpuClock::new();
        assert_eq!(c.stamp(t0).withheld, Duration::ZERO);
        assert_eq!(c.take_note(), None);
        // A thread id that has no /proc entry: the first reading fails.
        c.set_threads(&[i32::MAX]);
        assert_eq!(c.stamp(t0).withheld, Duration::ZERO);
        let note = c.take_note().expect("a note");
        assert!(note.contains("timeouts count wall time"), "{note}");
        assert_eq!(c.take_note(), None);
        c.set_threads(&[i32::MAX]);
        c.stamp(t0 + Duration::from_secs(1));
        assert_eq!(c.take_note(), None, "said once");
        assert_eq!(c.waiting_share(), None);
    }

    #[test]
    fn this_process_reads_as_a_machine_with_one_vcpu() {
        // The test process's main thread stands in for a vCPU: readings succeed and never
        // withhold more than the wall time between them.
        let tid = i32::try_from(std::process::id()).unwrap();
        let mut c = VcpuClock::new();
        c.set_threads(&[tid]);
        let t0 = Instant::now();
        let a = c.stamp(t0);
        let b = c.stamp(t0 + Duration::from_secs(2));
        assert!(b.withheld_since(&a) <= Duration::from_secs(2));
        assert_eq!(c.take_note(), None);
    }
}
