# `pkgs.ntd`, and ntd as the `nixos-test-driver` every `runNixOSTest` of this package set uses.
final: prev: {
  ntd = final.callPackage ./package.nix { };
  nixos-test-driver = final.callPackage ./nixos-test-driver.nix { };
}
