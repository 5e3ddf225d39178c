{
  description = "ntd: a fast, static re-implementation of the NixOS integration test driver";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f (import nixpkgs {
        inherit system;
        overlays = [ self.overlays.default ];
      }));
    in
    {
      overlays.default = import ./nix/overlay.nix;

      packages = forAll (pkgs: {
        ntd = pkgs.ntd;
        nixos-test-driver = pkgs.nixos-test-driver;
        default = pkgs.ntd;
      });

      apps = forAll (pkgs: {
        default = {
          type = "app";
          program = "${pkgs.ntd}/bin/ntd";
        };
      });
    };
}
