//! Command line entry point of `ntd` (also installed as `nixos-test-driver`): parse the
//! arguments, build the logger, run the driver, exit with its status.

use ntd::cli::{self, ProcessEnv};
use ntd::driver::Driver;
use ntd::log::{junit::Junit, terminal::Terminal, xml::XmlLog, Logger};
use ntd::trace::Trace;

fn main() {
    ntd::child::install_panic_hook();
    let mut argv = std::env::args_os();
    let argv0 = argv
        .next()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut args = Vec::new();
    for a in argv {
        match a.into_string() {
            Ok(a) => args.push(a),
            Err(raw) => {
                eprintln!(
                    "nixos-test-driver: error: argument {} is not valid UTF-8 \
                     (paths and names must be UTF-8)",
                    raw.to_string_lossy()
                );
                std::process::exit(2);
            }
        }
    }
    if let Some(code) = subcommand(&argv0, &args) {
        std::process::exit(code);
    }
    let opts = match cli::parse(&args, &ProcessEnv) {
        Ok(Some(o)) => o,
        Ok(None) => std::process::exit(0),
        Err(e) => {
            eprint!(
                "{}",
                cli::USAGE
                    .lines()
                    .next()
                    .map(|l| format!("{l}\n"))
                    .unwrap_or_default()
            );
            eprintln!("nixos-test-driver: error: {e}");
            std::process::exit(2);
        }
    };
    let mut log = Logger::new(opts.log_level, vec![Box::new(Terminal::stderr())]);
    if let Some(path) = std::env::var_os("LOGFILE") {
        match XmlLog::create(std::path::Path::new(&path)) {
            Ok(x) => log.add_sink(Box::new(x)),
            Err(e) => {
                eprintln!(
                    "ntd: cannot write the XML log {}: {e}",
                    std::path::Path::new(&path).display()
                );
                std::process::exit(1);
            }
        }
    }
    if let Some(junit) = &opts.junit_xml {
        log.add_sink(Box::new(Junit::new(opts.output_directory.join(junit))));
    }
    let trace = opts
        .trace
        .as_ref()
        .map(|path| Trace::new(path.clone(), std::time::Instant::now()));
    if let Some(t) = &trace {
        log.add_sink(Box::new(t.sink()));
    }
    let driver = match Driver::new(opts, log, trace) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("ntd: {e}");
            std::process::exit(1);
        }
    };
    std::process::exit(driver.run());
}

/// Helper programs that share the binary: `ntd shim-export DIR` writes the Python package (for
/// type checks and packaging), `ntd generate-driver-symbols` (or the binary called by that name)
/// writes `driver-symbols` like upstream's helper, `ntd vde-switch --sock DIR` runs only the
/// switch (interop tests and the switch bench drive it like `vde_switch`), `ntd resume DIR`
/// opens a failure capsule.
fn subcommand(argv0: &str, args: &[String]) -> Option<i32> {
    let called = std::path::Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    if called == "generate-driver-symbols" {
        return Some(write_symbols());
    }
    match args.first().map(String::as_str) {
        Some("shim-export") => {
            let Some(dir) = args.get(1) else {
                eprintln!("usage: ntd shim-export DIR");
                return Some(2);
            };
            match ntd::shim::write_package(std::path::Path::new(dir)) {
                Ok(()) => Some(0),
                Err(e) => {
                    eprintln!("ntd: cannot write the shim to {dir}: {e}");
                    Some(1)
                }
            }
        }
        Some("generate-driver-symbols") => Some(write_symbols()),
        Some("resume") => Some(resume(&args[1..])),
        Some("vde-switch") => Some(ntd::vde::standalone::main(&args[1..])),
        _ => None,
    }
}

/// `ntd resume DIR`: the machines and vlans of the failure capsule in DIR, restored from it,
/// and the interactive REPL (machines named as in the test).
fn resume(args: &[String]) -> i32 {
    let [dir] = args else {
        eprintln!("usage: ntd resume DIR");
        return 2;
    };
    // Absolute: QEMU reads the streams from its machine's state directory.
    let dir = match std::fs::canonicalize(dir) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("ntd resume: {dir}: {e}");
            return 1;
        }
    };
    let capsule = match std::fs::read_to_string(dir.join(ntd::checkpoint::capsule::FILE))
        .map_err(|e| e.to_string())
        .and_then(|t| ntd::checkpoint::capsule::Capsule::decode(&t))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "ntd resume: {}: {e} (is it a failure capsule?)",
                dir.display()
            );
            return 1;
        }
    };
    let log_level = std::env::var("logLevel")
        .ok()
        .and_then(|l| ntd::log::Level::parse(&l))
        .unwrap_or(ntd::log::Level::Info);
    let opts = cli::Options {
        vms: capsule
            .machines
            .iter()
            .map(|m| cli::VmSpec {
                name: m.name.clone(),
                start_script: m.start_command.clone(),
            })
            .collect(),
        containers: Vec::new(),
        vlans: capsule.vlans.clone(),
        global_timeout: cli::DEFAULT_GLOBAL_TIMEOUT,
        test_script: None,
        keep_machine_state: false,
        interactive: true,
        output_directory: std::env::current_dir().unwrap_or_else(|_| ".".into()),
        junit_xml: None,
        log_level,
        debug_hook: None,
        capture_dir: None,
        trace: None,
        net_seed: None,
        legacy_state_flag: false,
        shell_timeout: cli::DEFAULT_SHELL_TIMEOUT,
        force_accel: false,
        dump_vsocks: None,
        enable_ssh_backdoor: false,
        checkpoints: None,
        checkpoints_max_size: ntd::checkpoint::DEFAULT_MAX_SIZE,
        keep_failed: None,
        resume: Some(dir),
    };
    let log = Logger::new(opts.log_level, vec![Box::new(Terminal::stderr())]);
    match Driver::new(opts, log, None) {
        Ok(d) => d.run(),
        Err(e) => {
            eprintln!("ntd: {e}");
            1
        }
    }
}

fn write_symbols() -> i32 {
    match std::fs::write("driver-symbols", ntd::shim::DRIVER_SYMBOLS.join(",")) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ntd: cannot write driver-symbols: {e}");
            1
        }
    }
}
