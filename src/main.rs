//! Command line entry point of `ntd` (also installed as `nixos-test-driver`).

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("vde-switch") {
        std::process::exit(ntd::vde::standalone::main(&args[2..]));
    }
    eprintln!("ntd: not yet functional");
    std::process::exit(2);
}
