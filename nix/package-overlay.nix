# Only `pkgs.ntd`: for package sets whose test framework cannot take ntd as its driver (see
# overlay.nix), or for users who want the binary without changing their NixOS tests.
final: prev: {
  ntd = final.callPackage ./package.nix { };
}
