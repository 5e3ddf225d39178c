# The contract check's restatement of what nixpkgs' NixOS test framework does with the driver
# package, written from its documented behaviour (shared/reference/upstream-driver.md §1, §8;
# the option descriptions of nixos/lib/testing/{driver,driver-configuration,interactive,run,
# testScript}.nix), not copied from it:
#
#   - the driver package is `hostPkgs.nixos-test-driver.override { enableOCR,
#     extraPythonPackages, qemu_pkg, enableNspawn = containers != {} }` (PR #503686);
#   - the driver derivation is a runCommand with makeWrapper and mypy as native inputs and the
#     driver package as build input: it type-checks prepend + machine/vlan declarations +
#     script with `mypy --no-implicit-optional --pretty --no-color-output`, copies the script,
#     links bin/nixos-test-driver from the package, runs its generate-driver-symbols in the
#     build directory, lints the script with pyflakes and PYFLAKES_BUILTINS = machine names
#     and those symbols, and wraps the link with `--config <driverConfiguration.json>
#     --log-level <logLevel>` and the extraDriverArgs;
#   - the interactive driver is the same with `qemu` instead of `qemu_test` and
#     `--interactive` appended to extraDriverArgs;
#   - the test run is `LOGFILE=/dev/null <driver>/bin/nixos-test-driver -o $out`.
#
# A test here is a plain attribute set: name, nodes.<name>.virtualisation.vlans (default [1],
# as NixOS' default), containers, testScript, extraPythonPackages, enableOCR, globalTimeout,
# logLevel, extraDriverArgs, skipTypeCheck, skipLint, sshBackdoor.{enable,vsockOffset} and
# enableDebugHook (the SSH backdoor passes `--dump-vsocks=<vsockOffset>` (default 2) to the
# driver and defaults to enableDebugHook; the debug hook makes the run pass
# `--debug-hook=<breakpointHook's attach>`). No node is ever booted: each start script fails
# loudly if something starts it.
{
  hostPkgs,
  prepend ? ./test-script-prepend.py,
}:
test:
let
  inherit (hostPkgs) lib;
  inherit (builtins) attrNames length elem;

  name = test.name;
  nodes = test.nodes or { };
  containers = test.containers or { };
  logLevel = test.logLevel or "info";
  enableDebugHook = test.enableDebugHook or false;
  sshBackdoor = {
    enable = enableDebugHook;
    vsockOffset = 2;
  }
  // (test.sshBackdoor or { });
  extraDriverArgs =
    (test.extraDriverArgs or [ ])
    ++ lib.optional sshBackdoor.enable "--dump-vsocks=${toString sshBackdoor.vsockOffset}";
  debugHookArgs = lib.optionalString enableDebugHook "--debug-hook=${hostPkgs.breakpointHook}/bin/attach";
  testScript = test.testScript;

  # Python identifiers for machine names: a leading character that cannot start one and every
  # other character that cannot continue one becomes `_`.
  pythonize =
    machineName:
    let
      chars = lib.stringToCharacters machineName;
      fix = ok: c: if builtins.match ok c != null then c else "_";
    in
    lib.concatStrings (
      [ (fix "[A-Za-z_]" (builtins.head chars)) ] ++ map (fix "[A-Za-z0-9_]") (builtins.tail chars)
    );

  startScript =
    node:
    hostPkgs.runCommand "vm-${node}" { } ''
      mkdir -p $out/bin
      printf '#!%s\necho "ntd-check: nothing may boot %s in this check" >&2\nexit 1\n' \
        "$SHELL" ${node} > $out/bin/run-${node}-vm
      chmod +x $out/bin/run-${node}-vm
    '';

  vlans = lib.unique (
    builtins.concatLists (map (n: nodes.${n}.virtualisation.vlans or [ 1 ]) (attrNames nodes))
  );

  configuration = {
    vms = builtins.mapAttrs (n: _: {
      name = n;
      start_script = "${startScript n}/bin/run-${n}-vm";
    }) nodes;
    containers = builtins.mapAttrs (n: _: {
      name = n;
      start_script = "${startScript n}/bin/run-${n}-nspawn";
    }) containers;
    inherit vlans;
    global_timeout = test.globalTimeout or 3600;
    enable_ssh_backdoor = false;
    test_script = hostPkgs.writeText "test-script" testScript;
  };
  configurationFile = hostPkgs.writers.writeJSON "driverConfiguration.json" configuration;

  # `machine` is also declared when there is exactly one machine (a node or a container) and
  # none is called machine; it has that machine's type.
  nodeNames = attrNames nodes;
  containerNames = attrNames containers;
  onlyOne =
    length (nodeNames ++ containerNames) == 1 && !(elem "machine" (nodeNames ++ containerNames));
  vmNames = nodeNames ++ lib.optional (onlyOne && nodeNames != [ ]) "machine";
  vmHints = map (n: "${pythonize n}: QemuMachine;") vmNames;
  containerAliases = containerNames ++ lib.optional (onlyOne && containerNames != [ ]) "machine";
  containerHints = map (n: "${pythonize n}: NspawnMachine;") containerAliases;
  vlanHints = lib.concatMapStringsSep "\n" (v: "vlan${toString v}: VLan") vlans;
  lintNames = lib.concatStringsSep "," (map pythonize (vmNames ++ containerAliases));

  driverFor =
    { qemuPackage, driverArgs }:
    let
      testDriver = hostPkgs.nixos-test-driver.override {
        enableOCR = test.enableOCR or false;
        extraPythonPackages = test.extraPythonPackages or (_: [ ]);
        qemu_pkg = qemuPackage;
        enableNspawn = containers != { };
      };
    in
    hostPkgs.runCommand "nixos-test-driver-${name}"
      {
        nativeBuildInputs = [
          hostPkgs.makeWrapper
        ]
        ++ lib.optional (!(test.skipTypeCheck or false)) hostPkgs.mypy;
        buildInputs = [ testDriver ];
        inherit testScript;
        passthru = { inherit testDriver configuration; };
      }
      ''
        mkdir -p $out/bin
        ${lib.optionalString (!(test.skipTypeCheck or false)) ''
          cat ${prepend} >> testScriptWithTypes
          echo ${lib.escapeShellArg (toString vmHints)} >> testScriptWithTypes
          echo ${lib.escapeShellArg (toString containerHints)} >> testScriptWithTypes
          echo ${lib.escapeShellArg vlanHints} >> testScriptWithTypes
          echo -n "$testScript" >> testScriptWithTypes
          echo "ntd-check: mypy with PYTHONPATH=$PYTHONPATH"
          mypy --no-implicit-optional --pretty --no-color-output testScriptWithTypes
        ''}
        cp ${configuration.test_script} $out/test-script
        ln -s ${testDriver}/bin/nixos-test-driver $out/bin/nixos-test-driver
        ${testDriver}/bin/generate-driver-symbols
        ${lib.optionalString (!(test.skipLint or false)) ''
          PYFLAKES_BUILTINS="${lintNames},$(cat driver-symbols)" \
            ${hostPkgs.python3Packages.pyflakes}/bin/pyflakes $out/test-script
        ''}
        wrapProgram $out/bin/nixos-test-driver \
          --add-flags "--config ${configurationFile}" \
          --add-flags "--log-level ${logLevel}" \
          ${lib.concatMapStringsSep " " (a: "--add-flags ${lib.escapeShellArg a}") driverArgs}
      '';

  driver = driverFor {
    qemuPackage = hostPkgs.qemu_test;
    driverArgs = extraDriverArgs;
  };
in
{
  inherit driver configuration;
  driverInteractive = driverFor {
    qemuPackage = hostPkgs.qemu;
    driverArgs = extraDriverArgs ++ [ "--interactive" ];
  };
  test = hostPkgs.runCommand "vm-test-run-${name}" { } ''
    mkdir -p $out
    export LOGFILE=/dev/null
    ${driver}/bin/nixos-test-driver -o $out ${debugHookArgs}
  '';
}
