# Evaluates nix/overlay.nix on the mock package set and returns facts the check asserts.
let
  final = import ./mock.nix (import ../../nix/overlay.nix);
  drv = final.nixos-test-driver;
  ocr = final.callPackage ../../nix/nixos-test-driver.nix { enableOCR = true; };
in
{
  ntdName = final.ntd.name;
  ntdStatic = builtins.elem "glibc-static" (map (p: p.name) final.ntd.buildInputs);
  installsShim = builtins.match ".*shim-export.*" final.ntd.postInstall != null;
  driverProgram = drv.meta.mainProgram;
  wrapsGenerateSymbols = builtins.match ".*generate-driver-symbols.*" drv.script != null;
  ocrPath = builtins.match ".*tesseract.*" ocr.script != null;
  nspawnAccepted = (builtins.tryEval (final.callPackage ../../nix/nixos-test-driver.nix {
    enableNspawn = true;
  }).script).success;
}
