# A drop-in for nixpkgs' `nixos-test-driver` package (what `runNixOSTest` calls through
# `hostPkgs.nixos-test-driver.override { … }`): same override arguments, same programs
# (`nixos-test-driver`, `generate-driver-symbols`), same Python package name (`test_driver`)
# for the type check.
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
  util-linux,
  imagemagick_light,
  tesseract4,

  qemu_pkg ? qemu_test,
  enableOCR ? false,
  enableNspawn ? false,
  extraPythonPackages ? (_: [ ]),
}:

assert lib.assertMsg (!enableNspawn) "ntd does not support systemd-nspawn containers";

let
  pythonEnv = python3.withPackages (ps: extraPythonPackages ps ++ [ ps.ptpython ]);
  runtimePath = lib.makeBinPath (
    [
      qemu_pkg
      coreutils
      netpbm
      socat
      util-linux
    ]
    ++ lib.optionals enableOCR [
      imagemagick_light
      tesseract4
    ]
  );
in
runCommand "nixos-test-driver-ntd-${ntd.version}"
  {
    nativeBuildInputs = [ makeWrapper ];
    passthru = { inherit ntd pythonEnv; };
    meta = ntd.meta // {
      mainProgram = "nixos-test-driver";
    };
  }
  ''
    mkdir -p $out/bin $out/${python3.sitePackages}
    cp -r ${ntd}/${python3.sitePackages}/test_driver $out/${python3.sitePackages}/
    makeWrapper ${ntd}/bin/ntd $out/bin/nixos-test-driver \
      --set NTD_PYTHON ${pythonEnv}/bin/python3 \
      --prefix PATH : ${runtimePath}
    makeWrapper ${ntd}/bin/ntd $out/bin/generate-driver-symbols \
      --add-flags generate-driver-symbols
  ''
