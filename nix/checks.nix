# The flake's checks: the same cases as ci/check-nix (ci/nix/cases.nix), built here with
# nixpkgs' real test framework (`runNixOSTest`), the real Python packages and mypy, with ntd as
# the driver. `pkgs` is a package set with the ntd overlay.
#
#   ntd       the package
#   contract  every case's driver (type check, lint, wrapper) and its run without a VM, the
#             interactive drivers, and the cases that must fail; needs no KVM
#   vm-test   one NixOS guest booted by ntd; needs a builder with the `kvm` and `nixos-test`
#             system features
#   vm-test-from-checkpoint
#             the same kind of test, its node restored from its boot checkpoint (built first,
#             as a derivation of its own: nix/checkpoint.nix); same builder features
{ pkgs }:
let
  inherit (pkgs) lib;

  cases = import ../ci/nix/cases.nix {
    inherit (builtins) storeDir;
    checkPackages = ps: [
      (ps.callPackage ../ci/nix/python/ntd-check-extra.nix {
        ntd-check-dep = ps.callPackage ../ci/nix/python/ntd-check-dep.nix { };
      })
    ];
  };

  # nixpkgs' own extra-python-packages test, which the Python-only drop-in failed.
  numpy = {
    name = "numpy";
    nodes = { };
    extraPythonPackages = p: [ p.numpy ];
    testScript = ''
      import numpy as np

      assert str(np.zeros(4)) == "[0. 0. 0. 0.]"
    '';
  };

  mustBuild = {
    inherit (cases)
      one-node
      two-vlans
      extra-python
      ocr
      containers
      ;
    inherit numpy;
  };
  tests = builtins.mapAttrs (_: pkgs.testers.runNixOSTest) mustBuild;

  # The driver of a test run without its `kvm` requirement: no script here boots a machine. A
  # test with containers keeps the framework's `uid-range` (ntd prepares the host for
  # containers as root of the sandbox even when none starts).
  runWithoutVm =
    name: test:
    pkgs.runCommand "ntd-contract-run-${name}" (lib.optionalAttrs (name == "containers") {
      requiredSystemFeatures = [ "uid-range" ];
    }) ''
      mkdir -p $out
      export LOGFILE=/dev/null
      ${test.driver}/bin/nixos-test-driver -o $out
    '';

  failsWith =
    name: message: drv:
    pkgs.runCommand "ntd-contract-fails-${name}" { failure = pkgs.testers.testBuildFailure drv; } ''
      grep -F -- ${lib.escapeShellArg message} $failure/testBuildFailure.log
      touch $out
    '';

  contract =
    pkgs.linkFarm "ntd-contract" (
      lib.mapAttrsToList (name: test: {
        name = "driver-${name}";
        path = test.driver;
      }) tests
      ++ lib.mapAttrsToList (name: test: {
        name = "run-${name}";
        path = runWithoutVm name test;
      }) tests
      ++ [
        {
          name = "driver-interactive";
          path = tests.two-vlans.driverInteractive;
        }
        {
          name = "fails-type-error";
          path = failsWith "type-error" ''Argument 1 to "succeed"'' (
            pkgs.testers.runNixOSTest cases.type-error
          ).driver;
        }
        {
          name = "fails-lint-error";
          path = failsWith "lint-error" "'json' imported but unused" (
            pkgs.testers.runNixOSTest cases.lint-error
          ).driver;
        }
      ]
    );
in
{
  inherit (pkgs) ntd;
  inherit contract;
  vm-test-from-checkpoint = pkgs.ntdCheckpoints.runNixOSTest {
    name = "ntd-vm-test-from-checkpoint";
    # QEMU cannot save a machine while the host's store is mounted over 9p.
    defaults.virtualisation.useNixStoreImage = true;
    nodes.machine = { };
    testScript = ''
      start_all()
      assert machine.succeed("echo restored").strip() == "restored"
      machine.wait_for_unit("multi-user.target")
    '';
  };
  vm-test = pkgs.testers.runNixOSTest {
    name = "ntd-vm-test";
    nodes.machine = { };
    testScript = ''
      start_all()
      machine.wait_for_unit("multi-user.target")
      assert machine.succeed("echo hello from the guest").strip() == "hello from the guest"
    '';
  };
}
