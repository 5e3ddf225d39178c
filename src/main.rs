//! Command line entry point of `ntd` (also installed as `nixos-test-driver`).

fn main() {
    eprintln!("ntd: not yet functional");
    std::process::exit(2);
}
