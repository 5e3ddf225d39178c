# Minimal stand-ins for the parts of nixpkgs that nix/*.nix use, so that `ci/check-nix` can
# evaluate the packaging without a Nix store: every derivation becomes a plain attribute set.
let
  drv = name: attrs: attrs // { inherit name; outPath = "/nix/store/mock-${name}"; };
  lib = {
    makeBinPath = ps: builtins.concatStringsSep ":" (map (p: "${p}/bin") ps);
    optionals = c: l: if c then l else [ ];
    assertMsg = c: m: if c then true else throw m;
    platforms.linux = [ "x86_64-linux" ];
    fileset = {
      toSource = { root, fileset }: root;
      unions = l: l;
    };
  };
  python3 = drv "python3" {
    sitePackages = "lib/python3.12/site-packages";
    withPackages = f: drv "python3-env" { packages = f { ptpython = drv "ptpython" { }; }; };
  };
  # `self` is the final package set (after overlays), as in nixpkgs.
  mkCallPackage = self: f: extra:
    let
      fn = if builtins.isFunction f then f else import f;
      args = builtins.intersectAttrs (builtins.functionArgs fn) (self // extra);
    in
    fn args;
  pkgs = self: {
    inherit lib python3;
    callPackage = mkCallPackage self;
    rustPlatform.buildRustPackage = a: drv "${a.pname}-${a.version}" a;
    glibc.static = drv "glibc-static" { };
    runCommand = name: attrs: script: drv name (attrs // { inherit script; });
    makeWrapper = drv "make-wrapper" { };
    qemu_test = drv "qemu-test" { };
    coreutils = drv "coreutils" { };
    netpbm = drv "netpbm" { };
    socat = drv "socat" { };
    util-linux = drv "util-linux" { };
    imagemagick_light = drv "imagemagick" { };
    tesseract4 = drv "tesseract" { };
  };
in
# Apply an overlay the way nixpkgs does: a fixed point over `final`.
overlay:
let
  final = pkgs final // overlay final (pkgs final);
in
final
