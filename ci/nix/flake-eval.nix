# Evaluates the flake's outputs (flake.nix, nix/checks.nix) with the stub package set as its
# `nixpkgs` input: every output must evaluate, every derivation instantiate. Nothing here is
# built (the flake's checks are built for real with nixpkgs; see nix/README.md).
#
#   hostFile      the host facts of ci/check-nix
#   fakeNixpkgs   a directory whose default.nix imports ci/nix/stubs.nix (made by ci/check-nix)
{ hostFile, fakeNixpkgs }:
let
  host = builtins.fromJSON (builtins.readFile hostFile);
  flake = import ../../flake.nix;
  nixpkgs = {
    outPath = fakeNixpkgs;
    lib = import ./stub-lib.nix;
  };
  outputs = flake.outputs {
    self = outputs;
    inherit nixpkgs;
  };
  plain = import ./stubs.nix { inherit host; };
  system = "x86_64-linux";
  drvPaths = builtins.mapAttrs (_: d: d.drvPath);
in
{
  packages = drvPaths outputs.packages.${system};
  app = outputs.apps.${system}.default.program;
  checks = drvPaths outputs.checks.${system};
  hydraJobs = drvPaths outputs.hydraJobs.checks.${system};
  devShell = outputs.devShells.${system}.default.drvPath;
  formatter = outputs.formatter.${system}.drvPath;
  # The library functions on a package set without the overlay.
  withNtd = (outputs.lib.withNtd plain).nixos-test-driver.name;
  runNixOSTest =
    (outputs.lib.runNixOSTest plain {
      name = "lib";
      nodes.machine = { };
      testScript = "machine.name";
    }).driver.testDriver.name;
  packageOverlay = (plain.extend outputs.overlays.package).ntd.name;
  # Boot checkpoints: the test's driver gets the checkpoint's store path.
  fromCheckpoint =
    let
      t = outputs.lib.runNixOSTestFromCheckpoint plain {
        name = "lib";
        nodes.machine = { };
        testScript = "machine.name";
      };
    in
    {
      driver = t.driver.drvPath;
      checkpoint = t.bootCheckpoint.name;
    };
}
