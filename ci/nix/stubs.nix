# The package set the contract check (ci/check-nix) evaluates nix/*.nix with: every package
# is a real `derivation`, built by Nix in a private store with ci/nix/stub-builder.sh, whose
# programs are the host's (bash, python3, the mypy/pyflakes virtualenv, cargo) or small
# stand-ins that print who they are. Only what nix/*.nix and the framework restatement
# (ci/nix/framework.nix) touch is here, each with the interface nixpkgs documents for it.
#
#   host           facts about this machine, written by ci/check-nix (see there)
#   overlays       applied like nixpkgs applies them: a fixed point over `final`
#   withTestDriver false: a nixpkgs from before PR #503686, which has no `nixos-test-driver`
{
  host,
  overlays ? [ ],
  withTestDriver ? true,
}:
let
  lib = import ./stub-lib.nix;
  inherit (host) system;
  sitePackages = "lib/python${host.pythonVersion}/site-packages";

  # mkDerivation's attribute conventions, as far as they are used here: `passthru` and `meta`
  # stay out of the build environment, `env` is merged into it, the rest becomes variables.
  mkDerivation =
    attrs:
    let
      passthru = attrs.passthru or { };
      drv = derivation (
        removeAttrs attrs [
          "passthru"
          "meta"
          "env"
        ]
        // attrs.env or { }
        // {
          inherit system;
          builder = host.bash;
          args = [ ./stub-builder.sh ];
          hostPath = host.path;
          SHELL = host.bash;
        }
      );
    in
    drv
    // passthru
    // {
      meta = attrs.meta or { };
      inherit passthru;
    };

  runCommand =
    name: env: buildCommand:
    mkDerivation (env // { inherit name buildCommand; });

  # A package whose programs only say what they are: enough for PATH checks, and loud if
  # something tries to use one for real (a VM start here means a broken check).
  tool =
    name: programs: exitCode:
    runCommand "${name}-stub" { } ''
      mkdir -p $out/bin
      for program in ${toString programs}; do
        printf '#!%s\necho "ntd-check stub %s: %s $*"\nexit %s\n' \
          "$SHELL" ${name} "$program" ${toString exitCode} > $out/bin/$program
        chmod +x $out/bin/$program
      done
    '';

  # callPackage with `.override`, as nixpkgs' makeOverridable offers it.
  callPackageWith =
    scope: fn: args:
    let
      f = if builtins.isFunction fn then fn else import fn;
      result = f (builtins.intersectAttrs (builtins.functionArgs f) scope // args);
    in
    if builtins.isAttrs result then
      result // { override = newArgs: callPackageWith scope fn (args // newArgs); }
    else
      result;

  # A Python package as buildPythonPackage leaves it after its fixupPhase: modules below
  # site-packages and nix-support/propagated-build-inputs naming the interpreter and the
  # dependencies. `src` is a source tree with one directory per top-level package.
  buildPythonPackage =
    {
      pname,
      version,
      src,
      dependencies ? [ ],
      ...
    }:
    runCommand "python3-${pname}-${version}" { inherit src; } ''
      mkdir -p $out/${sitePackages} $out/nix-support
      for module in "$src"/*/; do
        [[ -f $module/__init__.py ]] && cp -r "$module" $out/${sitePackages}/
      done
      echo ${toString ([ python3 ] ++ dependencies)} > $out/nix-support/propagated-build-inputs
    '';

  # A module made of literal files: {"pkg/__init__.py" = "…";}.
  pythonModule =
    pname: files:
    buildPythonPackage {
      inherit pname;
      version = "stub";
      src = runCommand "${pname}-src" { } (
        "mkdir -p $out\n"
        + lib.concatMapStringsSep "\n" (path: ''
          mkdir -p "$(dirname $out/${path})"
          cat > $out/${path} <<'NTD_EOF'
          ${files.${path}}
          NTD_EOF
        '') (builtins.attrNames files)
      );
    };

  pythonPackages = {
    inherit buildPythonPackage python3;
    callPackage = callPackageWith pythonPackages;
    setuptools = null;
    colorama = pythonModule "colorama" { "colorama/__init__.py" = "STUB = True"; };
    numpy = pythonModule "numpy" { "numpy/__init__.py" = "STUB = True"; };
    mypy = pythonModule "mypy" { "mypy/__init__.py" = "STUB = True"; };
    pyflakes = pythonModule "pyflakes" { "pyflakes/__init__.py" = "STUB = True"; };
    junit-xml = pythonModule "junit-xml" { "junit_xml/__init__.py" = "STUB = True"; };
    ipython = pythonModule "ipython" { "IPython/__init__.py" = "STUB = True"; };
    remote-pdb = pythonModule "remote-pdb" { "remote_pdb/__init__.py" = "STUB = True"; };
    # The REPL ntd's `-I` prefers: this one runs its input line by line and says it ran.
    ptpython = pythonModule "ptpython" {
      "ptpython/__init__.py" = "";
      "ptpython/repl.py" = ''
        import sys


        def embed(globals, locals=None, history_filename=None, **kwargs):
            print("ntd-check stub ptpython: embed", flush=True)
            for line in sys.stdin:
                exec(line, globals, locals)
      '';
    };
  };

  # The interpreter is the host's; its setup hook puts every input's site-packages on
  # PYTHONPATH, in input order, each directory once, only if it exists.
  python3 =
    runCommand "python3-stub"
      {
        passthru = {
          inherit sitePackages;
          pkgs = pythonPackages;
          # An environment: the interpreter, with the packages and everything they
          # propagate (transitively) after whatever PYTHONPATH the caller sets.
          withPackages =
            f:
            runCommand "python3-env-stub" { packages = f pythonPackages; } ''
              declare -a seen=()
              walk() {
                [[ " ''${seen[*]-} " == *" $1 "* ]] && return 0
                seen+=("$1")
                if [[ -f $1/nix-support/propagated-build-inputs ]]; then
                  for dep in $(< "$1/nix-support/propagated-build-inputs"); do walk "$dep"; done
                fi
              }
              for p in $packages; do walk "$p"; done
              dirs=
              for p in "''${seen[@]}"; do
                [[ -d $p/${sitePackages} ]] && dirs=''${dirs:+$dirs:}$p/${sitePackages}
              done
              mkdir -p $out/bin
              printf '#!%s\nexport PYTHONPATH=''${PYTHONPATH:+$PYTHONPATH:}%s\nexec %s "$@"\n' \
                "$SHELL" "$dirs" ${host.python} > $out/bin/python3
              chmod +x $out/bin/python3
            '';
        };
      }
      ''
        mkdir -p $out/bin $out/nix-support
        ln -s ${host.python} $out/bin/python3
        cat > $out/nix-support/setup-hook <<'NTD_EOF'
        ntdAddPythonPath() {
            local dir=$1/${sitePackages}
            [[ -d $dir ]] || return 0
            case ":''${PYTHONPATH-}:" in
            *":$dir:"*) ;;
            *) export PYTHONPATH=''${PYTHONPATH:+$PYTHONPATH:}$dir ;;
            esac
        }
        addEnvHooks "$hostOffset" ntdAddPythonPath
        NTD_EOF
      '';

  # A Python application: its program, and the interpreter propagated as nixpkgs does.
  pythonApp =
    name: module:
    runCommand "${name}-stub" { } ''
      mkdir -p $out/bin $out/nix-support
      printf '#!%s\nexport MYPY_CACHE_DIR=%s\nexec %s -m %s "$@"\n' \
        "$SHELL" ${host.mypyCacheDir} ${host.venvPython} ${module} > $out/bin/${name}
      chmod +x $out/bin/${name}
      echo ${python3} > $out/nix-support/propagated-build-inputs
    '';

  # buildRustPackage as far as the drop-in's build depends on it: the packaged sources get
  # the `[target."<triple>"]` table cargoSetupHook appends to .cargo/config.toml, cargo must
  # still read that configuration, and the derivation's environment must bring the static
  # flag to rustc for the crate itself. The binary installed is the one ci/check-nix built
  # with the repository's cargo configuration (a release build per check run costs minutes
  # here), after the package's own postInstall runs on it.
  buildRustPackage =
    args:
    mkDerivation (
      removeAttrs args [
        "cargoLock"
        "doCheck"
        "pname"
        "version"
        "RUSTFLAGS"
      ]
      // {
        # As current buildRustPackage does: RUSTFLAGS is always exported, empty when unset,
        # and the `env` attributes come after it.
        RUSTFLAGS = args.RUSTFLAGS or "";
        name = "${args.pname}-${args.version}";
        inherit (args) version;
        prebuiltNtd = builtins.path {
          name = "ntd-prebuilt";
          path = host.ntdBinary;
        };
        rustTarget = stdenv.hostPlatform.rust.rustcTarget;
        CARGO_HOME = host.cargoHome;
        CARGO_TARGET_DIR = host.cargoTargetDir;
        hostCc = host.cc;
        buildCommand = builtins.readFile ./rust-package-build.sh;
      }
    );

  stdenv = {
    hostPlatform = {
      inherit system;
      isLinux = true;
      rust = {
        rustcTarget = "x86_64-unknown-linux-gnu";
        cargoEnvVarTarget = "X86_64_UNKNOWN_LINUX_GNU";
      };
    };
  };

  writeText =
    name: text:
    runCommand name {
      inherit text;
      passAsFile = [ "text" ];
    } ''cp "$textPath" $out'';

  base =
    final:
    {
      inherit
        lib
        stdenv
        runCommand
        writeText
        python3
        ;
      callPackage = callPackageWith final;
      python3Packages = pythonPackages // {
        pyflakes = pythonApp "pyflakes" "pyflakes";
      };
      mypy = pythonApp "mypy" "mypy";
      rustPlatform = { inherit buildRustPackage; };
      glibc.static = runCommand "glibc-static-stub" { } "mkdir -p $out/lib";
      makeWrapper = runCommand "make-wrapper-stub" { } ''
        mkdir -p $out/nix-support
        cp ${./make-wrapper.sh} $out/nix-support/setup-hook
      '';
      writers.writeJSON = name: value: writeText name (builtins.toJSON value);

      # What the flake (flake.nix, nix/checks.nix) uses besides the packages above, so that
      # ci/check-nix can evaluate its outputs; runNixOSTest is the framework restatement.
      extend =
        overlay:
        import ./stubs.nix {
          inherit host withTestDriver;
          overlays = overlays ++ [ overlay ];
        };
      testers = {
        runNixOSTest =
          test:
          let
            t = import ./framework.nix { hostPkgs = final; } test;
          in
          t.test // { inherit (t) driver driverInteractive; };
        # Only instantiated by the check (a failing build cannot be awaited inside one here).
        testBuildFailure = drv: runCommand "${drv.name}-must-fail-stub" { inherit drv; } "exit 1";
      };
      linkFarm =
        name: entries:
        runCommand name { } (
          "mkdir -p $out\n"
          + lib.concatMapStringsSep "\n" (e: "ln -s ${e.path} $out/${e.name}") entries
        );
      mkShell =
        attrs: runCommand "shell-stub" { packages = attrs.packages or [ ]; } "mkdir -p $out";
      cargo = tool "cargo" [ ] 0;
      rustc = tool "rustc" [ ] 0;
      clippy = tool "clippy" [ ] 0;
      rustfmt = tool "rustfmt" [ ] 0;
      nixfmt = tool "nixfmt" [ ] 0;
      qemu_test = tool "qemu-test" [ "qemu-system-x86_64" ] 1;
      qemu = tool "qemu" [ "qemu-system-x86_64" ] 1;
      coreutils = tool "coreutils" [ ] 0;
      netpbm = tool "netpbm" [ ] 0;
      socat = tool "socat" [ ] 0;
      util-linux = tool "util-linux" [ ] 0;
      systemd = tool "systemd" [ "journalctl" ] 0;
      vde2 = tool "vde2" [ ] 0;
      imagemagick_light = tool "imagemagick" [ "magick" ] 0;
      tesseract4 = tool "tesseract" [ "tesseract" ] 0;
      breakpointHook = tool "breakpoint-hook" [ "attach" ] 0;
      vhost-device-vsock = tool "vhost-device-vsock" [ "vhost-device-vsock" ] 1;
    }
    // lib.optionalAttrs withTestDriver {
      # The Python driver: a test that ends up here did not get ntd.
      nixos-test-driver = callPackageWith final (
        {
          runCommand,
          enableOCR ? false,
          enableNspawn ? false,
          extraPythonPackages ? (_: [ ]),
          qemu_pkg ? null,
        }:
        runCommand "nixos-test-driver-python-stub" { } ''
          mkdir -p $out/bin
          printf '#!%s\necho "ntd-check: the Python driver ran, not ntd" >&2\nexit 1\n' \
            "$SHELL" > $out/bin/nixos-test-driver
          cp $out/bin/nixos-test-driver $out/bin/generate-driver-symbols
          chmod +x $out/bin/*
        ''
      ) { };
    };

  final = builtins.foldl' (acc: overlay: acc // overlay final acc) (base final) overlays;
in
final
