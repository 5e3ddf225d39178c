# The ntd binary (statically linked against glibc, as the design card asks) plus its Python
# shim exported as a package, so that mypy can type-check test scripts against it.
{
  lib,
  rustPlatform,
  glibc,
  python3,
}:

rustPlatform.buildRustPackage {
  pname = "ntd";
  version = "0.1.0";

  # No `.cargo/`: cargoSetupHook appends its own `[target."<triple>"]` table to
  # `.cargo/config.toml`, and a second table for the same triple is a TOML error (duplicate
  # key). The static flag that file gives plain `cargo build` users is RUSTFLAGS below.
  # `benches/` stays because Cargo.toml names its bench targets; `tests/` is not needed.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../src
      ../benches
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  # crt-static on the gnu target needs the static C library.
  buildInputs = [ glibc.static ];

  # RUSTFLAGS, not CARGO_TARGET_<triple>_RUSTFLAGS: buildRustPackage always exports RUSTFLAGS
  # (empty when unset), and a RUSTFLAGS variable, even an empty one, makes cargo ignore every
  # target.<triple>.rustflags. Because buildRustPackage passes --target, RUSTFLAGS reaches only
  # the target's artifacts, never proc-macros or build scripts (which cannot be crt-static).
  RUSTFLAGS = "-C target-feature=+crt-static";

  # The interpreter `ntd` runs the shim with when NTD_PYTHON is unset (`nix run .#ntd`).
  env.NTD_DEFAULT_PYTHON = "${python3}/bin/python3";

  # The end-to-end tests boot QEMU guests; they run in the project's CI, not in the sandbox.
  doCheck = false;

  postInstall = ''
    ln -s ntd $out/bin/nixos-test-driver
    $out/bin/ntd shim-export $out/${python3.sitePackages}
  '';

  meta = {
    description = "A fast, static re-implementation of the NixOS integration test driver";
    mainProgram = "ntd";
    platforms = lib.platforms.linux;
  };
}
