{
  description = "ntd: a fast, static re-implementation of the NixOS integration test driver";

  # Needs a nixpkgs with PR #503686 (`pkgs.nixos-test-driver`); flake.lock pins one.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAll =
        f:
        nixpkgs.lib.genAttrs systems (
          system:
          f (
            import nixpkgs {
              inherit system;
              overlays = [ self.overlays.default ];
            }
          )
        );
    in
    {
      # default: `pkgs.ntd`, and ntd as the driver of every runNixOSTest/nixosTest of the
      #   package set; an evaluation error on a nixpkgs without `pkgs.nixos-test-driver`.
      # package: only `pkgs.ntd`, for any nixpkgs.
      overlays = {
        default = import ./nix/overlay.nix;
        package = import ./nix/package-overlay.nix;
      };

      lib = {
        # A package set like `pkgs` whose NixOS tests run with ntd (re-evaluates nixpkgs).
        withNtd = pkgs: pkgs.extend self.overlays.default;
        # `pkgs.testers.runNixOSTest`, with ntd as the driver.
        runNixOSTest = pkgs: test: (self.lib.withNtd pkgs).testers.runNixOSTest test;
        # The same, its nodes restored from their boot checkpoint, a derivation built once
        # (nix/checkpoint.nix; nodes need virtualisation.useNixStoreImage = true).
        runNixOSTestFromCheckpoint =
          pkgs: test: (self.lib.withNtd pkgs).ntdCheckpoints.runNixOSTest test;
        # The boot checkpoint of what runNixOSTest returned: { test, name ? …, features ? … }.
        bootCheckpoint = pkgs: args: (self.lib.withNtd pkgs).ntdCheckpoints.boot args;
      };

      packages = forAll (pkgs: {
        inherit (pkgs) ntd nixos-test-driver;
        default = pkgs.ntd;
      });

      apps = forAll (pkgs: {
        default = {
          type = "app";
          program = "${pkgs.ntd}/bin/ntd";
        };
      });

      checks = forAll (pkgs: import ./nix/checks.nix { inherit pkgs; });

      # Hydra's flake jobsets build `hydraJobs`.
      hydraJobs = { inherit (self) checks packages; };

      devShells = forAll (pkgs: {
        default = pkgs.mkShell {
          packages = [
            pkgs.cargo
            pkgs.rustc
            pkgs.clippy
            pkgs.rustfmt
            (pkgs.python3.withPackages (ps: [
              ps.mypy
              ps.pyflakes
            ]))
            pkgs.qemu_test
            pkgs.nixfmt
          ];
        };
      });

      formatter = forAll (pkgs: pkgs.nixfmt);
    };
}
