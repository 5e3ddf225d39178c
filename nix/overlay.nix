# `pkgs.ntd`, and ntd as the `nixos-test-driver` every `runNixOSTest` of this package set uses.
#
# Only nixpkgs with PR #503686 (merged in March 2026) takes the test driver from
# `pkgs.nixos-test-driver`; older test frameworks call their own Python driver directly, so an
# overlay cannot reach them. That is detected here and reported as an evaluation error instead
# of letting every test run with the Python driver while the user believes it runs with ntd.
final: prev:
let
  frameworkTakesDriverFromPkgs = prev ? nixos-test-driver;
in
if frameworkTakesDriverFromPkgs then
  import ./package-overlay.nix final prev
  // {
    nixos-test-driver = final.callPackage ./nixos-test-driver.nix { };
    # Boot checkpoints as derivations (nix/checkpoint.nix).
    ntdCheckpoints = final.callPackage ./checkpoint.nix { };
  }
else
  throw ''
    ntd overlay: this nixpkgs has no `nixos-test-driver` package, so its NixOS test framework
    (nixos/lib/testing/driver.nix) builds the Python driver itself and ignores overlays: the
    tests would not run with ntd. Use a nixpkgs that contains PR #503686 (merged in March
    2026), or apply `ntd.overlays.package` if you only want `pkgs.ntd`.''
