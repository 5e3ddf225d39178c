//! The driver's command line and configuration, in all three upstream generations.
//!
//! Newest (`-c driver.json`), mid (`--vm-names`/`--vm-start-scripts`, positional script) and
//! legacy (`--start-scripts`, environment variables `startScripts`, `vlans`, `globalTimeout`,
//! `testScript`) all produce one [`Options`]. Parsing follows argparse where scripts and Nix
//! wrappers depend on it: unambiguous prefixes of long options (`--debug-hook=…`), `--opt=value`,
//! options taking several values, and exit status 2 with a usage message on errors. This module
//! reads the configuration file but starts nothing.

mod config;

use crate::log::Level;
use config::load_config;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Upstream's fallback global timeout when none is configured: one week.
pub const DEFAULT_GLOBAL_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// A configured machine: its name and its start script.
#[derive(Debug, Clone, PartialEq)]
pub struct VmSpec {
    pub name: String,
    pub start_script: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub vms: Vec<VmSpec>,
    /// systemd-nspawn containers (`run-<name>-nspawn` start scripts).
    pub containers: Vec<VmSpec>,
    pub vlans: Vec<u32>,
    pub global_timeout: Duration,
    pub test_script: Option<PathBuf>,
    pub keep_machine_state: bool,
    pub interactive: bool,
    pub output_directory: PathBuf,
    pub junit_xml: Option<PathBuf>,
    pub log_level: Level,
    pub debug_hook: Option<String>,
    /// ntd extension: write a pcap per vlan here.
    pub capture_dir: Option<PathBuf>,
    /// ntd extension: Chrome trace-event file.
    pub trace: Option<PathBuf>,
    /// ntd extension: the seed of the network faults' random decisions (random if unset).
    pub net_seed: Option<u64>,
    /// Which CLI generation was used (for the upstream log line about keeping state).
    pub legacy_state_flag: bool,
    /// How long a machine may take to open its backdoor shell (env `NTD_SHELL_TIMEOUT`;
    /// upstream gives up after ten 30-second reminders).
    pub shell_timeout: Duration,
    /// Upstream's `qemu.forceAccel`: a machine that QEMU runs under TCG fails at start
    /// instead of running slowly (configuration key `force_accel`, or `--force-accel`).
    pub force_accel: bool,
    /// The SSH backdoor of the mid generation (`--dump-vsocks OFFSET`): the machines' start
    /// scripts give them native vsock CIDs OFFSET+1, OFFSET+2, …; the driver prints how to
    /// reach them.
    pub dump_vsocks: Option<u32>,
    /// The SSH backdoor of the newest generation (configuration `enable_ssh_backdoor`): each
    /// machine gets a vhost-user vsock device served by `vhost-device-vsock`, reachable
    /// through a hybrid-vsock socket on the host.
    pub enable_ssh_backdoor: bool,
    /// ntd extension: boot checkpoints in this directory (`--checkpoints`, `"checkpoints"`
    /// in the configuration, `NTD_CHECKPOINTS`).
    pub checkpoints: Option<PathBuf>,
    /// Size cap of the checkpoint directory in bytes (`--checkpoints-max-size`).
    pub checkpoints_max_size: u64,
    /// ntd extension: when the test fails, save every running machine and the logs into this
    /// directory (`--keep-failed`, `NTD_KEEP_FAILED`).
    pub keep_failed: Option<PathBuf>,
    /// `ntd resume DIR`: start the machines of the failure capsule in DIR (set by the
    /// `resume` subcommand, never by an option).
    pub resume: Option<PathBuf>,
}

/// Upstream's patience with a backdoor shell that does not come: ten 30-second reminders.
pub const DEFAULT_SHELL_TIMEOUT: Duration = Duration::from_secs(300);

/// A command line or configuration problem; exit status 2 like argparse.
#[derive(Debug, Clone, PartialEq)]
pub struct CliError(pub String);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::error::Error for CliError {}

fn err<T>(msg: impl Into<String>) -> Result<T, CliError> {
    Err(CliError(msg.into()))
}

pub const USAGE: &str = "\
usage: nixos-test-driver [-h] [-c CONFIG] [--test-script TEST_SCRIPT] [-K] [-I | --no-interactive]
                         [--debug-hook-attach CMD] [-o OUTPUT_DIRECTORY] [--junit-xml PATH]
                         [--log-level {debug,info,warning,error}]
                         [--vm-names NAME ...] [--vm-start-scripts SCRIPT ...]
                         [--container-names NAME ...] [--container-start-scripts SCRIPT ...]
                         [--start-scripts SCRIPT ...] [--vlans VLAN ...] [--global-timeout SECONDS]
                         [--dump-vsocks OFFSET] [--capture-dir DIR] [--trace FILE]
                         [--net-seed N] [--force-accel]
                         [--checkpoints DIR] [--checkpoints-max-size SIZE] [--keep-failed DIR]
                         [testscript]
       ntd resume DIR

ntd: a fast re-implementation of the NixOS test driver (upstream-compatible).

  -c, --config PATH           driver configuration JSON (vms, containers, vlans, global_timeout,
                              test_script)
  --test-script PATH          override the test script of the configuration
  -K, --keep-machine-state    keep vm-state-<name> directories (alias: --keep-vm-state)
  -I, --interactive           start a Python REPL with the test symbols instead of the script
  --debug-hook-attach CMD     on failure, print how to attach to the paused test
  -o, --output_directory DIR  where screenshots, copied files and JUnit XML go (default: cwd)
  --junit-xml PATH            write JUnit XML (relative to the output directory)
  --log-level LEVEL           debug, info, warning or error (env: logLevel)
  --vm-names / --vm-start-scripts   mid-generation form (env: vmNames / vmStartScripts)
  --container-names / --container-start-scripts   systemd-nspawn containers, mid-generation
                              form (env: containerNames / containerStartScripts)
  --start-scripts SCRIPT ...  legacy form; names from run-<name>-vm (env: startScripts)
  --vlans VLAN ...            vlan numbers (env: vlans)
  --global-timeout SECONDS    kill everything after this long (env: globalTimeout)
  --dump-vsocks OFFSET        SSH backdoor (mid generation): print how to reach the machines
                              at vsock CIDs OFFSET+1, OFFSET+2, ... (config key
                              enable_ssh_backdoor: the newest generation's vsock-mux backdoor)
  --capture-dir DIR           ntd: write one pcap file per vlan into DIR
  --trace FILE                ntd: write a Chrome trace-event timeline to FILE
  --net-seed N                ntd: seed of the network faults (vlanN.impair); random if unset
  --force-accel               fail a machine that runs under TCG instead of KVM (upstream's
                              qemu.forceAccel; config key \"force_accel\")
  --checkpoints DIR           ntd: restore booted machines from DIR, save them there (env NTD_CHECKPOINTS)
  --checkpoints-max-size SIZE ntd: size cap of DIR, e.g. 8G (default), 500M (env NTD_CHECKPOINTS_MAX_SIZE)
  --keep-failed DIR           ntd: if the test fails, save its machines and logs into DIR (env NTD_KEEP_FAILED)
  resume DIR                  ntd: start the machines saved in DIR and open the REPL there
  testscript                  the Python test script (env: testScript)
";

#[derive(Clone, Copy, PartialEq)]
enum Arity {
    Flag,
    One,
    Many,
}

/// Long option names (canonical), their short forms and arity.
const OPTIONS: &[(&str, Option<&str>, Arity)] = &[
    ("--help", Some("-h"), Arity::Flag),
    ("--config", Some("-c"), Arity::One),
    ("--test-script", None, Arity::One),
    ("--keep-machine-state", Some("-K"), Arity::Flag),
    ("--keep-vm-state", None, Arity::Flag),
    ("--interactive", Some("-I"), Arity::Flag),
    ("--no-interactive", None, Arity::Flag),
    ("--debug-hook-attach", None, Arity::One),
    ("--output_directory", Some("-o"), Arity::One),
    ("--junit-xml", None, Arity::One),
    ("--log-level", None, Arity::One),
    ("--start-scripts", None, Arity::Many),
    ("--vm-names", None, Arity::Many),
    ("--vm-start-scripts", None, Arity::Many),
    ("--container-names", None, Arity::Many),
    ("--container-start-scripts", None, Arity::Many),
    ("--vlans", None, Arity::Many),
    ("--global-timeout", None, Arity::One),
    ("--dump-vsocks", None, Arity::One),
    ("--capture-dir", None, Arity::One),
    ("--trace", None, Arity::One),
    ("--net-seed", None, Arity::One),
    ("--force-accel", None, Arity::Flag),
    ("--checkpoints", None, Arity::One),
    ("--checkpoints-max-size", None, Arity::One),
    ("--keep-failed", None, Arity::One),
];

/// Resolve `arg` (without `=value`) to a canonical option, argparse style.
fn resolve(arg: &str) -> Result<(&'static str, Arity), CliError> {
    for (long, short, arity) in OPTIONS {
        if arg == *long || Some(arg) == *short {
            return Ok((long, *arity));
        }
    }
    if arg.starts_with("--") {
        let hits: Vec<_> = OPTIONS
            .iter()
            .filter(|(long, _, _)| long.starts_with(arg))
            .collect();
        match hits.as_slice() {
            [(long, _, arity)] => return Ok((long, *arity)),
            [] => {}
            many => {
                let names: Vec<&str> = many.iter().map(|(l, _, _)| *l).collect();
                return err(format!(
                    "ambiguous option: {arg} could match {}",
                    names.join(", ")
                ));
            }
        }
    }
    err(format!("unrecognized arguments: {arg}"))
}

#[derive(Default, Debug)]
struct Raw {
    values: Vec<(&'static str, Vec<String>)>,
    positional: Vec<String>,
}

impl Raw {
    fn last(&self, name: &str) -> Option<&Vec<String>> {
        self.values
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }
    fn one(&self, name: &str) -> Option<String> {
        self.last(name).and_then(|v| v.first().cloned())
    }
    fn flag(&self, name: &str) -> bool {
        self.last(name).is_some()
    }
}

fn split_args(args: &[String]) -> Result<Raw, CliError> {
    let mut raw = Raw::default();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            raw.positional.extend(args[i..].iter().cloned());
            break;
        }
        if !a.starts_with('-') || a == "-" {
            raw.positional.push(a.clone());
            continue;
        }
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
            _ => (a.as_str(), None),
        };
        // Short option with attached value: -cfoo.json (cut after the first character, which
        // need not be ASCII: `-é` is an unknown option, not a slicing error).
        let short_len = name.chars().nth(1).map_or(name.len(), |c| 1 + c.len_utf8());
        let (name, inline) =
            if !name.starts_with("--") && name.len() > short_len && inline.is_none() {
                (&name[..short_len], Some(name[short_len..].to_owned()))
            } else {
                (name, inline)
            };
        let (canon, arity) = resolve(name)?;
        let vals = match arity {
            Arity::Flag => {
                if inline.is_some() {
                    return err(format!("argument {canon}: ignored explicit argument"));
                }
                vec![]
            }
            Arity::One => match inline {
                Some(v) => vec![v],
                None => {
                    if i >= args.len() || (args[i].starts_with('-') && args[i].len() > 1) {
                        return err(format!("argument {canon}: expected one argument"));
                    }
                    i += 1;
                    vec![args[i - 1].clone()]
                }
            },
            Arity::Many => {
                let mut v: Vec<String> = inline.into_iter().collect();
                while i < args.len() && !(args[i].starts_with('-') && args[i].len() > 1) {
                    v.push(args[i].clone());
                    i += 1;
                }
                v
            }
        };
        raw.values.push((canon, vals));
    }
    Ok(raw)
}

/// Where the process environment comes from (injectable for tests).
pub trait Env {
    fn get(&self, key: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

/// Parse the arguments (without the program name). `Ok(None)` means `--help` was printed.
pub fn parse(args: &[String], env: &dyn Env) -> Result<Option<Options>, CliError> {
    let raw = split_args(args)?;
    if raw.flag("--help") {
        print!("{USAGE}");
        return Ok(None);
    }
    let log_level = match raw.one("--log-level").or_else(|| env.get("logLevel")) {
        None => Level::Info,
        Some(l) => Level::parse(&l).ok_or_else(|| {
            CliError(format!(
                "argument --log-level: invalid choice: '{l}' (choose from 'debug', 'info', 'warning', 'error')"
            ))
        })?,
    };
    let output_directory = match raw.one("--output_directory") {
        Some(d) => checked_output_dir(Path::new(&d))?,
        None => std::env::current_dir()
            .map_err(|e| CliError(format!("cannot read the current directory: {e}")))?,
    };
    let mut o = Options {
        vms: Vec::new(),
        containers: Vec::new(),
        vlans: Vec::new(),
        global_timeout: DEFAULT_GLOBAL_TIMEOUT,
        test_script: None,
        keep_machine_state: raw.flag("--keep-machine-state") || raw.flag("--keep-vm-state"),
        interactive: raw.flag("--interactive")
            && raw
                .values
                .iter()
                .rev()
                .find(|(n, _)| *n == "--interactive" || *n == "--no-interactive")
                .is_some_and(|(n, _)| *n == "--interactive"),
        output_directory,
        junit_xml: raw.one("--junit-xml").map(PathBuf::from),
        log_level,
        debug_hook: raw.one("--debug-hook-attach"),
        capture_dir: raw.one("--capture-dir").map(PathBuf::from),
        trace: raw.one("--trace").map(PathBuf::from),
        net_seed: match raw.one("--net-seed") {
            None => None,
            Some(s) => Some(s.trim().parse::<u64>().map_err(|_| {
                CliError(format!(
                    "argument --net-seed: '{s}' is not a seed (a number 0..2^64-1)"
                ))
            })?),
        },
        legacy_state_flag: false,
        shell_timeout: match env.get("NTD_SHELL_TIMEOUT") {
            Some(t) => parse_seconds(&t, "NTD_SHELL_TIMEOUT")?,
            None => DEFAULT_SHELL_TIMEOUT,
        },
        force_accel: raw.flag("--force-accel"),
        dump_vsocks: match raw.one("--dump-vsocks") {
            None => None,
            Some(s) => Some(s.trim().parse::<u32>().map_err(|_| {
                CliError(format!(
                    "argument --dump-vsocks: invalid int value: '{s}' (a vsock CID offset)"
                ))
            })?),
        },
        enable_ssh_backdoor: false,
        checkpoints: env
            .get("NTD_CHECKPOINTS")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from),
        keep_failed: env
            .get("NTD_KEEP_FAILED")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from),
        resume: None,
        checkpoints_max_size: match env.get("NTD_CHECKPOINTS_MAX_SIZE") {
            None => crate::checkpoint::DEFAULT_MAX_SIZE,
            Some(s) => parse_size(&s).ok_or_else(|| {
                CliError(format!(
                    "NTD_CHECKPOINTS_MAX_SIZE: '{s}' is not a size (like 8G, 500M)"
                ))
            })?,
        },
    };

    if let Some(config) = raw.one("--config") {
        load_config(Path::new(&config), &mut o)?;
    } else {
        let many = |flag: &str, var: &str| -> Option<Vec<String>> {
            raw.last(flag).cloned().or_else(|| {
                env.get(var)
                    .map(|v| v.split_whitespace().map(str::to_owned).collect())
            })
        };
        let names = many("--vm-names", "vmNames");
        let scripts = many("--vm-start-scripts", "vmStartScripts");
        let legacy = many("--start-scripts", "startScripts");
        o.containers = container_specs(
            many("--container-names", "containerNames"),
            many("--container-start-scripts", "containerStartScripts"),
        )?;
        match (names, scripts, legacy) {
            (Some(n), Some(s), _) => {
                if n.len() != s.len() {
                    return err(format!(
                        "--vm-names has {} entries but --vm-start-scripts has {}; they must pair up",
                        n.len(),
                        s.len()
                    ));
                }
                o.vms = n
                    .into_iter()
                    .zip(s)
                    .map(|(name, start_script)| VmSpec { name, start_script })
                    .collect();
            }
            (Some(_), None, _) => {
                return err("--vm-names needs --vm-start-scripts (one start script per name)");
            }
            (None, Some(s), _) => {
                // Upstream derives each name from its script (`run-<name>-vm`).
                o.vms = s
                    .into_iter()
                    .map(|s| VmSpec {
                        name: crate::machine::qemu::name_from_start_command(&s),
                        start_script: s,
                    })
                    .collect();
            }
            (None, None, Some(l)) => {
                o.legacy_state_flag = true;
                o.vms = l
                    .into_iter()
                    .map(|s| VmSpec {
                        name: crate::machine::qemu::name_from_start_command(&s),
                        start_script: s,
                    })
                    .collect();
            }
            (None, None, None) if !o.containers.is_empty() => {}
            (None, None, None) => {
                return err(
                    "the following arguments are required: -c/--config (or the older \
                     --vm-names/--vm-start-scripts or --start-scripts forms)",
                );
            }
        }
        if let Some(v) = many("--vlans", "vlans") {
            o.vlans = v.iter().map(|s| parse_vlan(s)).collect::<Result<_, _>>()?;
        }
        if let Some(t) = raw
            .one("--global-timeout")
            .or_else(|| env.get("globalTimeout"))
        {
            o.global_timeout = parse_seconds(&t, "--global-timeout")?;
        }
        o.test_script = raw
            .positional
            .first()
            .cloned()
            .or_else(|| env.get("testScript"))
            .map(PathBuf::from);
        if raw.positional.len() > 1 {
            return err(format!(
                "unrecognized arguments: {}",
                raw.positional[1..].join(" ")
            ));
        }
    }
    if let Some(s) = raw.one("--test-script") {
        o.test_script = Some(PathBuf::from(s));
    }
    // Checkpoints: the environment, overridden by the configuration (read above), overridden
    // by the command line.
    if let Some(d) = raw.one("--checkpoints") {
        o.checkpoints = Some(PathBuf::from(d));
    }
    if let Some(d) = raw.one("--keep-failed") {
        o.keep_failed = Some(PathBuf::from(d));
    }
    if let Some(s) = raw.one("--checkpoints-max-size") {
        o.checkpoints_max_size = parse_size(&s).ok_or_else(|| {
            CliError(format!(
                "argument --checkpoints-max-size: '{s}' is not a size (like 8G, 500M)"
            ))
        })?;
    }
    if o.test_script.is_none() && !o.interactive {
        return err(
            "no test script: give one in the configuration, with --test-script, or as an argument",
        );
    }
    dedup_vlans(&mut o.vlans);
    check_names(&o.vms, &o.containers)?;
    Ok(Some(o))
}

/// Containers of the mid generation: names and start scripts pair up; without names, each
/// comes from its script (`run-<name>-nspawn`, as upstream derives it).
fn container_specs(
    names: Option<Vec<String>>,
    scripts: Option<Vec<String>>,
) -> Result<Vec<VmSpec>, CliError> {
    match (names, scripts) {
        (None, None) => Ok(Vec::new()),
        (Some(n), None) if n.is_empty() => Ok(Vec::new()),
        (Some(_), None) => {
            err("--container-names needs --container-start-scripts (one start script per name)")
        }
        (Some(n), Some(s)) if n.len() != s.len() => err(format!(
            "--container-names has {} entries but --container-start-scripts has {}; they must \
             pair up",
            n.len(),
            s.len()
        )),
        (Some(n), Some(s)) => Ok(n
            .into_iter()
            .zip(s)
            .map(|(name, start_script)| VmSpec { name, start_script })
            .collect()),
        (None, Some(s)) => s
            .into_iter()
            .map(|start_script| {
                let name = container_name_from_script(&start_script).ok_or_else(|| {
                    CliError(format!(
                        "cannot tell the container's name from its start script \
                         '{start_script}' (expected run-<name>-nspawn); pass --container-names"
                    ))
                })?;
                Ok(VmSpec { name, start_script })
            })
            .collect(),
    }
}

/// Upstream's `run-(.+)-nspawn` on the script's file name.
pub fn container_name_from_script(script: &str) -> Option<String> {
    let base = Path::new(script).file_name()?.to_str()?;
    let start = base.find("run-")? + 4;
    let end = base.rfind("-nspawn")?;
    (end > start).then(|| base[start..end].to_owned())
}

fn checked_output_dir(d: &Path) -> Result<PathBuf, CliError> {
    let abs = std::fs::canonicalize(d).map_err(|_| {
        CliError(format!(
            "argument -o/--output_directory: {} is not a writeable directory",
            d.display()
        ))
    })?;
    let meta = std::fs::metadata(&abs).ok();
    let writable = rustix::fs::access(&abs, rustix::fs::Access::WRITE_OK).is_ok();
    if !meta.is_some_and(|m| m.is_dir()) || !writable {
        return err(format!(
            "argument -o/--output_directory: {} is not a writeable directory",
            d.display()
        ));
    }
    Ok(abs)
}

/// `8G`, `500M`, `64k`, `1.5GiB`, `4096` (bytes); powers of 1024.
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: u64 = match unit
        .trim()
        .to_ascii_lowercase()
        .trim_end_matches("ib")
        .trim_end_matches('b')
    {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return None,
    };
    let bytes = n * mult as f64;
    (0.0..1.8e19).contains(&bytes).then_some(bytes as u64)
}

fn parse_vlan(s: &str) -> Result<u32, CliError> {
    match s.trim().parse::<u32>() {
        Ok(n) if n <= 4095 => Ok(n),
        _ => err(format!("invalid vlan number '{s}' (expected 0..4095)")),
    }
}

fn parse_seconds(s: &str, what: &str) -> Result<Duration, CliError> {
    let secs = s
        .trim()
        .parse::<f64>()
        .map_err(|_| CliError(format!("argument {what}: invalid number of seconds: '{s}'")))?;
    crate::rpc::ops::parse_duration(secs)
        .map_err(|why| CliError(format!("argument {what}: the number of seconds {why}")))
}

fn dedup_vlans(v: &mut Vec<u32>) {
    let mut seen = Vec::new();
    v.retain(|n| {
        if seen.contains(n) {
            false
        } else {
            seen.push(*n);
            true
        }
    });
}

/// Every machine name is valid and used once, across VMs and containers (upstream's test
/// framework refuses a name in both `nodes` and `containers`).
fn check_names(vms: &[VmSpec], containers: &[VmSpec]) -> Result<(), CliError> {
    let all: Vec<&VmSpec> = vms.iter().chain(containers).collect();
    for (i, a) in all.iter().enumerate() {
        if a.name.is_empty() || a.name.contains('/') || a.name.starts_with('.') {
            return err(format!("invalid machine name '{}'", a.name));
        }
        if all[..i].iter().any(|b| b.name == a.name) {
            let what = if vms.iter().any(|v| v.name == a.name) && i >= vms.len() {
                "is both a VM and a container"
            } else {
                "is used twice"
            };
            return err(format!("machine name '{}' {what}", a.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
