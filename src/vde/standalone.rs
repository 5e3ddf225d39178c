//! `ntd vde-switch`: one or more [`Switch`]es alone on their own mio loop, so that interop
//! tests and the switch bench can drive ntd's switch and `vde_switch --hub` with the same
//! external clients (`ntd vde-switch --sock DIR [--sock DIR2 …] [--learn] [--capture FILE]`).
//!
//! This module owns only that little program: argument parsing, the loop, stdin and signal
//! handling, and printing (a readiness line per switch on stdout, switch events on stderr,
//! the counters on stdout at exit). It runs until stdin reaches EOF (like vde_switch) or
//! SIGTERM/SIGINT arrives. It must not contain switching logic; that lives in [`super`].
//!
//! stdin lines `stats` and `ports` print the counters or the port list at any time.

use std::ffi::c_int;
use std::fmt;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Instant;

use argh::FromArgs;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::pipe::PipeFlags;
use rustix::process::Signal;

use super::{Switch, SwitchConfig, VdeError, DEFAULT_MAX_PORTS};
use crate::reactor;

/// `println!` that ignores a closed stdout (the parent may stop reading; never panic for it).
macro_rules! out {
    ($($arg:tt)*) => {{
        let _ = writeln!(io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that ignores a closed stderr.
macro_rules! err {
    ($($arg:tt)*) => {{
        let _ = writeln!(io::stderr(), $($arg)*);
    }};
}

/// Owner id of the standalone program's own fds; switch `i` gets owner `i + 1`.
const CONTROL_OWNER: usize = 0;
const SLOT_SIGNAL: usize = 0;
const SLOT_STDIN: usize = 1;

#[derive(FromArgs)]
/// Run ntd's VDE-compatible switch alone (for interop tests and benches). Runs until stdin
/// reaches EOF or SIGTERM/SIGINT.
struct Args {
    /// switch directory; repeat for several switches (VLANs 1, 2, … in order)
    #[argh(option)]
    sock: Vec<PathBuf>,
    /// learning bridge instead of a hub
    #[argh(switch)]
    learn: bool,
    /// pcap file capturing every forwarded frame; the i-th --capture belongs to the i-th --sock
    #[argh(option)]
    capture: Vec<PathBuf>,
    /// number of ports, 0 being the management port (default 32, like vde_switch -n)
    #[argh(option, default = "DEFAULT_MAX_PORTS")]
    max_ports: u32,
    /// do not watch stdin; run until SIGTERM or SIGINT
    #[argh(switch)]
    nostdin: bool,
}

/// Why the standalone switch could not run.
#[derive(Debug)]
enum StandaloneError {
    Usage(String),
    Poll(io::Error),
    Signals(io::Error),
    Switch(VdeError),
}

impl fmt::Display for StandaloneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StandaloneError::Usage(m) => write!(f, "{m} (see --help)"),
            StandaloneError::Poll(e) => write!(f, "event loop failed: {e}"),
            StandaloneError::Signals(e) => write!(f, "cannot install SIGTERM/SIGINT handlers: {e}"),
            StandaloneError::Switch(e) => write!(f, "{e}"),
        }
    }
}

/// Entry point of `ntd vde-switch ARGS…` (`args` excludes the program and subcommand names).
pub fn main(args: &[String]) -> i32 {
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    let parsed = match Args::from_args(&["ntd vde-switch"], &strs) {
        Ok(a) => a,
        Err(early) => {
            return match early.status {
                Ok(()) => {
                    out!("{}", early.output);
                    0
                }
                Err(()) => {
                    err!("{}", early.output);
                    2
                }
            };
        }
    };
    match run(parsed) {
        Ok(()) => 0,
        Err(e @ StandaloneError::Usage(_)) => {
            err!("ntd vde-switch: {e}");
            2
        }
        Err(e) => {
            err!("ntd vde-switch: {e}");
            1
        }
    }
}

fn run(args: Args) -> Result<(), StandaloneError> {
    if args.sock.is_empty() {
        return Err(StandaloneError::Usage(
            "at least one --sock DIR is required".into(),
        ));
    }
    if args.capture.len() > args.sock.len() {
        return Err(StandaloneError::Usage(
            "more --capture files than --sock directories".into(),
        ));
    }
    let mut poll = Poll::new().map_err(StandaloneError::Poll)?;
    let registry = poll.registry().try_clone().map_err(StandaloneError::Poll)?;

    let wake = install_signal_pipe().map_err(StandaloneError::Signals)?;
    let wake_fd = wake.as_raw_fd();
    registry
        .register(
            &mut SourceFd(&wake_fd),
            reactor::token(CONTROL_OWNER, SLOT_SIGNAL),
            Interest::READABLE,
        )
        .map_err(StandaloneError::Poll)?;
    let stdin_fd = io::stdin().as_raw_fd();
    // A stdin that cannot be polled (a regular file, /dev/null) is read to its end right
    // after start-up, like vde_switch does; then the switch exits (use --nostdin to keep it).
    let mut stdin_is_file = false;
    let watch_stdin = !args.nostdin
        && match registry.register(
            &mut SourceFd(&stdin_fd),
            reactor::token(CONTROL_OWNER, SLOT_STDIN),
            Interest::READABLE,
        ) {
            Ok(()) => true,
            Err(e) if e.raw_os_error() == Some(Errno::PERM.raw_os_error()) => {
                stdin_is_file = true;
                false
            }
            Err(_) => false,
        };

    let mut switches = Vec::with_capacity(args.sock.len());
    for (i, dir) in args.sock.iter().enumerate() {
        let cfg = SwitchConfig {
            hub: !args.learn,
            capture: args.capture.get(i).cloned(),
            max_ports: args.max_ports,
            ..SwitchConfig::default()
        };
        let sw = Switch::create(i as u32 + 1, dir, i + 1, &registry, cfg)
            .map_err(StandaloneError::Switch)?;
        switches.push(sw);
    }
    {
        let mut out = io::stdout().lock();
        for sw in &switches {
            let mode = if args.learn { "learning" } else { "hub" };
            let _ = writeln!(
                out,
                "ntd vde-switch: vlan {} ready ({mode}) on {}",
                sw.vlan(),
                sw.ctl_path().display()
            );
        }
        let _ = out.flush();
    }

    let mut events = Events::with_capacity(256);
    let mut console = Vec::new();
    let mut stop = stdin_is_file && read_console(&mut console, &switches);
    while !stop {
        let timeout = switches
            .iter()
            .filter_map(Switch::next_deadline)
            .min()
            .map(|d| d.saturating_duration_since(Instant::now()));
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(StandaloneError::Poll(e));
            }
        }
        for ev in events.iter() {
            let (owner, slot) = reactor::split(ev.token());
            if owner != CONTROL_OWNER {
                if let Some(sw) = switches.get_mut(owner - 1) {
                    sw.handle_event(&registry, slot, ev);
                }
            } else if slot == SLOT_SIGNAL {
                stop = true;
            } else if slot == SLOT_STDIN && watch_stdin {
                stop |= read_console(&mut console, &switches);
            }
        }
        let now = Instant::now();
        for sw in &mut switches {
            if sw.next_deadline().is_some_and(|d| d <= now) {
                sw.on_timer(&registry, now);
            }
            for ev in sw.drain_events() {
                err!("ntd vde-switch: {ev}");
            }
        }
    }

    for sw in switches {
        out!("ntd vde-switch: stats {}", sw.stats());
        for ev in sw.shutdown(&registry) {
            err!("ntd vde-switch: {ev}");
        }
    }
    let _ = io::stdout().flush();
    Ok(())
}

/// Read what stdin has (without ever blocking: stdin stays in blocking mode because it may be
/// shared with a terminal) and run complete lines. Returns true at EOF or on a read error.
fn read_console(console: &mut Vec<u8>, switches: &[Switch]) -> bool {
    let stdin = io::stdin();
    let fd = stdin.as_fd();
    loop {
        let mut ready = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        match rustix::event::poll(&mut ready, Some(&zero)) {
            Ok(0) => return false,
            Ok(_) => {}
            Err(Errno::INTR) => continue,
            Err(_) => return true,
        }
        let mut buf = [0u8; 4096];
        match rustix::io::read(fd, &mut buf) {
            Ok(0) => return true,
            Ok(n) => console.extend_from_slice(&buf[..n]),
            Err(Errno::INTR) | Err(Errno::AGAIN) => continue,
            Err(_) => return true,
        }
        while let Some(end) = console.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = console.drain(..=end).collect();
            run_command(String::from_utf8_lossy(&line).trim(), switches);
        }
        if console.len() > 64 * 1024 {
            console.clear(); // not a console user; do not grow without bound
        }
    }
}

fn run_command(line: &str, switches: &[Switch]) {
    let mut out = io::stdout().lock();
    match line {
        "stats" => {
            for sw in switches {
                let _ = writeln!(out, "ntd vde-switch: stats {}", sw.stats());
            }
        }
        "ports" => {
            for sw in switches {
                for p in sw.ports() {
                    let _ = writeln!(
                        out,
                        "ntd vde-switch: vlan {} port {} endpoint {} \"{}\" in={} out={} drops={}",
                        sw.vlan(),
                        p.port,
                        p.endpoint,
                        p.description,
                        p.counters.frames_in,
                        p.counters.frames_out,
                        p.counters.drops.total()
                    );
                }
            }
            let _ = writeln!(out, "ntd vde-switch: end of ports");
        }
        _ => {}
    }
    let _ = out.flush();
}

/// Write end of the self-pipe the signal handler writes to (-1 until installed).
static SIGNAL_WAKE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(_signum: c_int) {
    let fd = SIGNAL_WAKE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: `fd` is the write end of the self-pipe, leaked in install_signal_pipe and
        // therefore open for the rest of the process; write(2) is async-signal-safe and
        // rustix's raw-syscall backend touches no other state.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let _ = rustix::io::write(fd, &[1]);
    }
}

extern "C" {
    /// glibc's `signal(3)` (BSD semantics: SA_RESTART); rustix has no stable sigaction.
    fn signal(signum: c_int, handler: extern "C" fn(c_int)) -> usize;
}

/// Route SIGTERM and SIGINT to a non-blocking self-pipe; returns its read end for the poller.
fn install_signal_pipe() -> io::Result<OwnedFd> {
    let (read_end, write_end) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    SIGNAL_WAKE_FD.store(write_end.into_raw_fd(), Ordering::Relaxed);
    for sig in [Signal::TERM, Signal::INT] {
        // SAFETY: `on_signal` is a valid `extern "C" fn(c_int)` that only performs an
        // async-signal-safe write; replacing the default disposition affects nothing else.
        let previous = unsafe { signal(sig.as_raw(), on_signal) };
        if previous == usize::MAX {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(read_end)
}
