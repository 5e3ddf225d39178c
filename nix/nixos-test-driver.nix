# A drop-in for nixpkgs' `nixos-test-driver` package (what `runNixOSTest` calls through
# `config.pythonTestDriverPackage.override { … }`): same override arguments, same programs
# (`nixos-test-driver`, `generate-driver-symbols`), same Python package name (`test_driver`)
# and the same propagated Python packages for the build-time type check.
{
  lib,
  runCommand,
  makeWrapper,
  ntd,
  python3,
  qemu_test,
  coreutils,
  netpbm,
  socat,
  systemd,
  util-linux,
  vde2,
  vhost-device-vsock,
  imagemagick_light,
  tesseract4,

  qemu_pkg ? qemu_test,
  enableOCR ? false,
  enableNspawn ? false,
  extraPythonPackages ? (_: [ ]),
}:

let
  # What upstream's driver package offers test scripts (colour output, JUnit, the -I REPL,
  # the remote debugger of the debug hook), then the test's own extras.
  driverPythonPackages =
    ps:
    [
      ps.colorama
      ps.junit-xml
      ps.ptpython
      ps.ipython
      ps.remote-pdb
    ]
    ++ extraPythonPackages ps;

  pythonEnv = python3.withPackages driverPythonPackages;

  # driver.nix type-checks the script with PYTHONPATH made from the propagated inputs of this
  # package, as upstream's Python package propagates its dependencies (and the interpreter).
  propagated = [ python3 ] ++ driverPythonPackages python3.pkgs;

  runtimePath = lib.makeBinPath (
    [
      qemu_pkg
      coreutils
      netpbm
      socat
      util-linux
      vde2
      # The SSH backdoor's vsock backend (enable_ssh_backdoor), as upstream's driver has it.
      vhost-device-vsock
    ]
    # Containers: journalctl follows their journals (nsenter comes with util-linux), as
    # upstream's package adds systemd with enableNspawn.
    ++ lib.optionals enableNspawn [ systemd ]
    ++ lib.optionals enableOCR [
      imagemagick_light
      tesseract4
    ]
  );
in
runCommand "nixos-test-driver-ntd-${ntd.version}"
  {
    nativeBuildInputs = [ makeWrapper ];
    # Only documentation for readers of the attribute: runCommand has no fixupPhase, which is
    # what would write it to nix-support; the build command below writes that file itself.
    propagatedBuildInputs = propagated;
    passthru = { inherit ntd pythonEnv; };
    meta = ntd.meta // {
      mainProgram = "nixos-test-driver";
    };
  }
  ''
    mkdir -p $out/bin $out/${python3.sitePackages} $out/nix-support
    cp -r ${ntd}/${python3.sitePackages}/test_driver $out/${python3.sitePackages}/
    echo ${lib.escapeShellArg (toString propagated)} > $out/nix-support/propagated-build-inputs
    makeWrapper ${ntd}/bin/ntd $out/bin/nixos-test-driver \
      --set NTD_PYTHON ${pythonEnv}/bin/python3 \
      --prefix PATH : ${runtimePath}
    makeWrapper ${ntd}/bin/ntd $out/bin/generate-driver-symbols \
      --add-flags generate-driver-symbols
  ''
