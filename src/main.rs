//! Command line entry point of `ntd` (also installed as `nixos-test-driver`): parse the
//! arguments, build the logger, run the driver, exit with its status.

use ntd::cli::{self, ProcessEnv};
use ntd::driver::Driver;
use ntd::log::{terminal::Terminal, Logger};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
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
    let log = Logger::new(opts.log_level, vec![Box::new(Terminal::stderr())]);
    let driver = match Driver::new(opts, log) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("ntd: {e}");
            std::process::exit(1);
        }
    };
    std::process::exit(driver.run());
}
