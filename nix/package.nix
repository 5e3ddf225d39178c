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

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../.cargo
      ../src
      ../benches
      ../tests
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  # crt-static on the gnu target needs the static C library.
  buildInputs = [ glibc.static ];

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
