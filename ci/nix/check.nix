# What ci/check-nix builds in its private Nix store: nix/overlay.nix applied to the stub
# package set (ci/nix/stubs.nix), the test cases (ci/nix/cases.nix) put through the framework
# restatement (ci/nix/framework.nix), and the runs of their drivers.
#
#   pass.*  must build; each run's log is its output
#   fail.*  must fail to evaluate or to build, with the message ci/check-nix expects
{ hostFile }:
let
  host = builtins.fromJSON (builtins.readFile hostFile);
  overlay = import ../../nix/overlay.nix;
  pkgs = import ./stubs.nix {
    inherit host;
    overlays = [ overlay ];
  };
  inherit (pkgs) runCommand;
  framework = import ./framework.nix { hostPkgs = pkgs; };

  cases = import ./cases.nix {
    inherit (builtins) storeDir;
    checkPackages = ps: [
      (ps.callPackage ./python/ntd-check-extra.nix {
        ntd-check-dep = ps.callPackage ./python/ntd-check-dep.nix { };
      })
    ];
  };
  tests = builtins.mapAttrs (_: framework) cases;

  # Boot checkpoints (nix/checkpoint.nix) with the framework restatement: nothing boots here,
  # so a checkpoint is made only of a test without nodes, and a test with a node must fail.
  ntdCheckpoints = pkgs.ntdCheckpoints;
  fromCheckpoint = ntdCheckpoints.runNixOSTest cases.extra-python;
  # A driver that boots nothing and saves nothing (as if its node had a 9p Nix store).
  savesNothing = runCommand "ntd-check-saves-nothing" { } ''
    mkdir -p $out/bin
    printf '#!%s\necho "ntd-boot-checkpoint: machines server"\necho "server: no checkpoint: the guest mounts its Nix store over 9p"\n' \
      "$SHELL" > $out/bin/nixos-test-driver
    chmod +x $out/bin/nixos-test-driver
  '';

  # Runs a driver program with the given arguments and standard input, keeps what it printed
  # and requires a line of it.
  runDriver =
    name:
    {
      driver,
      args ? "",
      stdin ? "",
      expect,
    }:
    runCommand "ntd-check-${name}" { inherit stdin; } ''
      printf '%s' "$stdin" | ${driver}/bin/nixos-test-driver ${args} > $out 2>&1 ||
        { cat $out >&2; exit 1; }
      for line in ${pkgs.lib.escapeShellArgs expect}; do
        grep -F -- "$line" $out > /dev/null ||
          { cat $out >&2; echo "ntd-check: no line '$line' in the driver's output" >&2; exit 1; }
      done
    '';
in
{
  pass = {
    # The package as installed: the binary, the name the framework calls, the typed shim.
    package = runCommand "ntd-check-package" { } ''
      test -x ${pkgs.ntd}/bin/ntd
      test "$(readlink ${pkgs.ntd}/bin/nixos-test-driver)" = ntd
      test -f ${pkgs.ntd}/${pkgs.python3.sitePackages}/test_driver/py.typed
      test -f ${pkgs.ntd}/${pkgs.python3.sitePackages}/test_driver/machine/__init__.py
      cd "$(mktemp -d)" && ${pkgs.nixos-test-driver}/bin/generate-driver-symbols
      grep -q start_all driver-symbols
      cp driver-symbols $out
    '';
    one-node = tests.one-node.test;
    two-vlans = tests.two-vlans.test;
    extra-python = tests.extra-python.test;
    ocr = tests.ocr.test;
    ssh-backdoor = tests.ssh-backdoor.test;
    debug-hook = tests.debug-hook.test;
    containers = tests.containers.test;
    # driverInteractive: the wrapper's --interactive opens the REPL of the driver's Python
    # environment (ptpython, the stand-in of stubs.nix) on standard input.
    interactive = runDriver "interactive" {
      driver = tests.two-vlans.driverInteractive;
      stdin = "print('ntd-check: repl sees', sorted(m.name for m in machines), vlan2)\n";
      expect = [
        "ntd-check stub ptpython: embed"
        "ntd-check: repl sees ['alice', 'bob'] <Vlan Nr. 2>"
      ];
    };
    # The boot checkpoint of a test without nodes: the driver ran the boot script with
    # --checkpoints $out and --test-script (an empty checkpoint).
    checkpoint-no-node = ntdCheckpoints.boot {
      test = tests.extra-python;
      name = "extra-python";
      features = [ ];
    };
    # runNixOSTest from the checkpoint: the driver is wrapped with --checkpoints <its path>,
    # and runs (no VM) with it.
    checkpoint-driver = runCommand "ntd-check-checkpoint-driver" { } ''
      grep -F -- ${pkgs.lib.escapeShellArg "--checkpoints ${fromCheckpoint.bootCheckpoint}"} \
        ${fromCheckpoint.driver}/bin/nixos-test-driver
      test -d ${fromCheckpoint.bootCheckpoint}
      test -d ${fromCheckpoint}
      touch $out
    '';
    # `-I` given to the ordinary driver, as a user runs `result/bin/nixos-test-driver -I`.
    interactive-flag = runDriver "interactive-flag" {
      driver = tests.one-node.driver;
      args = "-I";
      stdin = "print('ntd-check: -I REPL', machine.name)\n";
      expect = [
        "ntd-check stub ptpython: embed"
        "ntd-check: -I REPL server"
      ];
    };
  };

  fail = {
    type-error = tests.type-error.driver;
    lint-error = tests.lint-error.driver;
    # A node that cannot boot: the checkpoint's build fails (no empty checkpoint).
    checkpoint-unbootable = ntdCheckpoints.boot {
      test = tests.one-node;
      name = "one-node";
      features = [ ];
    };
    # A node that was not saved: the build fails naming it.
    checkpoint-unsaved = ntdCheckpoints.boot {
      test = {
        driver = savesNothing;
      };
      name = "unsaved";
      features = [ ];
    };
    # A nixpkgs from before PR #503686: the overlay must refuse, not do nothing.
    old-nixpkgs =
      (import ./stubs.nix {
        inherit host;
        withTestDriver = false;
        overlays = [ overlay ];
      }).ntd;
  };

  # Facts ci/check-nix compares by evaluation alone.
  facts = {
    driverPackage = tests.one-node.driver.testDriver.name;
  };
}
