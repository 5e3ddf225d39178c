//! `ntd vde-switch`: one or more [`Switch`]es alone on their own mio loop, so that interop
//! tests and the switch bench can drive ntd's switch and `vde_switch --hub` with the same
//! external clients (`ntd vde-switch --sock DIR [--sock DIR2 …] [--learn] [--capture FILE]`),
//! optionally with network faults (`--loss P --delay D --jitter D --duplicate P --reorder P
//! --rate R [--between PORT,PORT …] [--net-seed N]`, applied to every switch; rules name
//! ports, since each endpoint is labelled with its port number).
//!
//! This module owns only that little program: argument parsing, the loop, stdin and signal
//! handling (the driver's signalfd, `crate::signals`), and printing (a readiness line per
//! switch on stdout; the net seed, applied rules and switch events on stderr; the counters on
//! stdout at exit). It runs until stdin reaches EOF (like vde_switch) or SIGTERM, SIGINT,
//! SIGHUP or SIGQUIT arrives. It must not contain switching logic; that lives in [`super`].
//!
//! stdin lines: `stats` and `ports` print the counters or the port list; `impair k=v …`
//! (keys as the options, e.g. `impair loss=10% between=1,2`), `partition 1,2 3` and `heal`
//! change the faults of every switch; `faults` prints the counters per rule scope.

use std::fmt;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::time::Instant;

use argh::FromArgs;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;

use super::impair::{self, ImpairError, Impairment, Label, Rule, Scope};
use super::{Switch, SwitchConfig, VdeError, DEFAULT_MAX_PORTS};
use crate::{reactor, signals};

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
/// Run ntd's VDE-compatible switch alone (for interop tests and benches), optionally with
/// network faults between its ports. Runs until stdin reaches EOF or SIGTERM/SIGINT.
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
    /// drop each delivery with this probability (0.1 or 10%)
    #[argh(option)]
    loss: Option<String>,
    /// delay each delivery (seconds, or 50ms, 200us)
    #[argh(option)]
    delay: Option<String>,
    /// vary the delay uniformly by up to this much (at most the delay)
    #[argh(option)]
    jitter: Option<String>,
    /// deliver a second copy with this probability
    #[argh(option)]
    duplicate: Option<String>,
    /// with a delay, send this share of frames without it (they overtake); without a delay,
    /// hold them back 1 ms
    #[argh(option)]
    reorder: Option<String>,
    /// bandwidth per directed link, tc units: 1mbit, 500kbit (bits/s), 100kbps (bytes/s)
    #[argh(option)]
    rate: Option<String>,
    /// limit the impairment to the frames between two ports, both ways (A,B; repeatable)
    #[argh(option)]
    between: Vec<String>,
    /// seed of the fault decisions (default: random; printed on stderr for replays)
    #[argh(option)]
    net_seed: Option<u64>,
}

/// Why the standalone switch could not run.
#[derive(Debug)]
enum StandaloneError {
    Usage(String),
    Impair(ImpairError),
    Poll(io::Error),
    Signals(io::Error),
    Switch(VdeError),
}

impl fmt::Display for StandaloneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StandaloneError::Usage(m) => write!(f, "{m} (see --help)"),
            StandaloneError::Impair(e) => write!(f, "{}", e.describe(&port_name)),
            StandaloneError::Poll(e) => write!(f, "event loop failed: {e}"),
            StandaloneError::Signals(e) => write!(f, "cannot watch termination signals: {e}"),
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
        Err(e @ (StandaloneError::Usage(_) | StandaloneError::Impair(_))) => {
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
    let rules = rules_from_args(&args).map_err(StandaloneError::Impair)?;
    let seed = args.net_seed.unwrap_or_else(random_seed);
    let mut poll = Poll::new().map_err(StandaloneError::Poll)?;
    let registry = poll.registry().try_clone().map_err(StandaloneError::Poll)?;

    let termination = signals::termination_fd().map_err(StandaloneError::Signals)?;
    let termination_fd = termination.as_raw_fd();
    registry
        .register(
            &mut SourceFd(&termination_fd),
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
            net_seed: seed,
            label_by_port: true,
            ..SwitchConfig::default()
        };
        let mut sw = Switch::create(i as u32 + 1, dir, i + 1, &registry, cfg)
            .map_err(StandaloneError::Switch)?;
        for rule in &rules {
            sw.apply(*rule).map_err(StandaloneError::Impair)?;
            err!("ntd vde-switch: {}", rule.describe(sw.vlan(), &port_name));
        }
        switches.push(sw);
    }
    err!("ntd vde-switch: net seed {seed} (replay with --net-seed {seed})");
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
    let mut stop = stdin_is_file && read_console(&mut console, &mut switches);
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
                stop |= !signals::drain(&termination).is_empty();
            } else if slot == SLOT_STDIN && watch_stdin {
                stop |= read_console(&mut console, &mut switches);
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
        print_fault_stats(&sw);
        for ev in sw.shutdown(&registry) {
            err!("ntd vde-switch: {ev}");
        }
    }
    let _ = io::stdout().flush();
    Ok(())
}

/// Read what stdin has (without ever blocking: stdin stays in blocking mode because it may be
/// shared with a terminal) and run complete lines. Returns true at EOF or on a read error.
fn read_console(console: &mut Vec<u8>, switches: &mut [Switch]) -> bool {
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

fn run_command(line: &str, switches: &mut [Switch]) {
    let mut words = line.split_whitespace();
    match words.next() {
        Some("impair") => {
            let result = console_rule(words).and_then(|rule| {
                switches.iter_mut().try_for_each(|sw| sw.apply(rule))?;
                Ok(rule)
            });
            for sw in switches.iter() {
                match &result {
                    Ok(rule) => out!("ntd vde-switch: {}", rule.describe(sw.vlan(), &port_name)),
                    Err(e) => out!("ntd vde-switch: error: {}", e.describe(&port_name)),
                }
            }
            return;
        }
        Some("partition") => {
            let groups: Result<Vec<Vec<Label>>, ImpairError> =
                words.map(|g| port_list("partition", g)).collect();
            for sw in switches.iter_mut() {
                match groups.clone().and_then(|g| sw.partition(g)) {
                    Ok(()) => {
                        if let Some(p) = sw.current_partition() {
                            out!("ntd vde-switch: {}", p.describe(sw.vlan(), &port_name));
                        }
                    }
                    Err(e) => out!("ntd vde-switch: error: {}", e.describe(&port_name)),
                }
            }
            return;
        }
        Some("heal") => {
            for sw in switches.iter_mut() {
                sw.heal();
                out!("ntd vde-switch: vlan{}: healed", sw.vlan());
            }
            return;
        }
        Some("faults") => {
            for sw in switches.iter() {
                print_fault_stats(sw);
            }
            out!("ntd vde-switch: end of faults");
            return;
        }
        _ => {}
    }
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

/// How the standalone switch names a label in messages: labels are port numbers.
fn port_name(label: Label) -> String {
    format!("port {label}")
}

/// The counters of every rule scope of `sw`, one line each.
fn print_fault_stats(sw: &Switch) {
    for (scope, c) in sw.fault_stats() {
        let scope = match scope {
            Some(Scope::All) => "all".to_string(),
            Some(Scope::Between(a, b)) => format!("{a}<->{b}"),
            None => "partition".to_string(),
        };
        out!("ntd vde-switch: vlan {} faults {scope}: {c}", sw.vlan());
    }
}

/// A seed from the kernel's random pool (or the clock, should that fail).
fn random_seed() -> u64 {
    let mut buf = [0u8; 8];
    match rustix::rand::getrandom(&mut buf, rustix::rand::GetRandomFlags::empty()) {
        Ok(8) => u64::from_ne_bytes(buf),
        _ => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    }
}

/// The impairment options as values, or `None` when no impairment option was given.
struct ImpairArgs<'a> {
    loss: Option<&'a str>,
    delay: Option<&'a str>,
    jitter: Option<&'a str>,
    duplicate: Option<&'a str>,
    reorder: Option<&'a str>,
    rate: Option<&'a str>,
    between: Vec<&'a str>,
}

impl ImpairArgs<'_> {
    /// The rules these options ask for: one per `between` pair, or one for all ports; none if
    /// no option was given. Everything is validated before anything is applied.
    fn rules(&self) -> Result<Vec<Rule>, ImpairError> {
        let given = [
            self.loss,
            self.delay,
            self.jitter,
            self.duplicate,
            self.reorder,
            self.rate,
        ]
        .iter()
        .any(Option::is_some);
        if !given && self.between.is_empty() {
            return Ok(Vec::new());
        }
        let prob = |arg, v: Option<&str>| v.map_or(Ok(0.0), |v| impair::parse_probability(arg, v));
        let dur = |arg, v: Option<&str>| {
            v.map_or(Ok(std::time::Duration::ZERO), |v| {
                impair::parse_duration(arg, v)
            })
        };
        let impairment = Impairment {
            loss: prob("loss", self.loss)?,
            delay: dur("delay", self.delay)?,
            jitter: dur("jitter", self.jitter)?,
            duplicate: prob("duplicate", self.duplicate)?,
            reorder: prob("reorder", self.reorder)?,
            rate: self.rate.map(impair::parse_rate).transpose()?,
        };
        let scopes: Vec<Scope> = if self.between.is_empty() {
            vec![Scope::All]
        } else {
            self.between
                .iter()
                .map(|b| match port_list("between", b)?.as_slice() {
                    [a, b] => Ok(Scope::between(*a, *b)),
                    _ => Err(ImpairError::Syntax {
                        arg: "between",
                        input: b.to_string(),
                        expected: "two port numbers such as 1,2",
                    }),
                })
                .collect::<Result<_, _>>()?
        };
        let rules: Vec<Rule> = scopes
            .into_iter()
            .map(|scope| Rule { scope, impairment })
            .collect();
        rules.iter().try_for_each(Rule::validate)?;
        Ok(rules)
    }
}

fn rules_from_args(args: &Args) -> Result<Vec<Rule>, ImpairError> {
    ImpairArgs {
        loss: args.loss.as_deref(),
        delay: args.delay.as_deref(),
        jitter: args.jitter.as_deref(),
        duplicate: args.duplicate.as_deref(),
        reorder: args.reorder.as_deref(),
        rate: args.rate.as_deref(),
        between: args.between.iter().map(String::as_str).collect(),
    }
    .rules()
}

/// `impair key=value …` from the console: one rule (the last `between=` wins if repeated).
fn console_rule<'a>(words: impl Iterator<Item = &'a str>) -> Result<Rule, ImpairError> {
    let mut a = ImpairArgs {
        loss: None,
        delay: None,
        jitter: None,
        duplicate: None,
        reorder: None,
        rate: None,
        between: Vec::new(),
    };
    for word in words {
        let (key, value) = word.split_once('=').unwrap_or((word, ""));
        let slot = match key {
            "loss" => &mut a.loss,
            "delay" => &mut a.delay,
            "jitter" => &mut a.jitter,
            "duplicate" => &mut a.duplicate,
            "reorder" => &mut a.reorder,
            "rate" => &mut a.rate,
            "between" => {
                a.between = vec![value];
                continue;
            }
            _ => {
                return Err(ImpairError::Syntax {
                    arg: "impair",
                    input: word.to_string(),
                    expected: "key=value with a key among loss, delay, jitter, duplicate, \
                               reorder, rate, between",
                })
            }
        };
        *slot = Some(value);
    }
    let rules = a.rules()?;
    Ok(rules.into_iter().next().unwrap_or(Rule {
        scope: Scope::All,
        impairment: Impairment::default(),
    }))
}

/// `1,2,3` → ports.
fn port_list(arg: &'static str, input: &str) -> Result<Vec<Label>, ImpairError> {
    input
        .split(',')
        .map(|p| {
            p.trim().parse::<Label>().map_err(|_| ImpairError::Syntax {
                arg,
                input: input.to_string(),
                expected: "comma-separated port numbers such as 1,2",
            })
        })
        .collect()
}
