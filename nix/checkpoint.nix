# Boot checkpoints as derivations (nix/README.md, "Boot checkpoints"): the boot checkpoint of
# a NixOS test's nodes is built once, as a store path, and the test's driver restores every
# node from it instead of booting it (`--checkpoints <that path>`; a store path is read-only,
# so ntd only restores from it).
#
# The checkpoint is made by the test's own driver, so its nodes have the very start scripts
# the test runs (ntd keys a checkpoint by the start script, what it names, QEMU's version, the
# vlans and the node's name and number): any change to a node makes a new checkpoint.
#
# Nodes must keep their Nix store on a disk image: `virtualisation.useNixStoreImage = true`
# (QEMU cannot save a machine while a 9p share such as the default host store is mounted).
# A node that cannot be saved fails the checkpoint's build, naming the node and why.
#
#   boot { test, name ? "test", features ? [ … ] }
#       test: what runNixOSTest returned (its `driver` is used); the checkpoint's derivation
#       runs on a builder with `features` (a NixOS test's: nixos-test, kvm).
#   runNixOSTest test
#       runNixOSTest with the test's nodes restored from their boot checkpoint; the
#       checkpoint is the result's `bootCheckpoint`.
{
  lib,
  runCommand,
  writeText,
  testers,
}:
let
  # Boots every node; the first command waits until all are saved (ntd's rule: a checkpoint
  # never holds an effect of the test script).
  bootScript = writeText "ntd-boot-checkpoint.py" ''
    print("ntd-boot-checkpoint: machines", " ".join(m.name for m in machines))
    start_all()
    for m in machines:
        m.succeed("true")
  '';

  boot =
    {
      test,
      name ? "test",
      features ? [
        "nixos-test"
        "kvm"
      ],
    }:
    runCommand "${name}-boot-checkpoint"
      {
        requiredSystemFeatures = features;
        # The streams are already what they are; compressing a store path is the cache's job.
        allowSubstitutes = false;
      }
      ''
        mkdir -p $out
        export LOGFILE=/dev/null
        status=0
        ${test.driver}/bin/nixos-test-driver --test-script ${bootScript} \
          --checkpoints $out -o "$TMPDIR" > "$TMPDIR/boot.log" 2>&1 || status=$?
        cat "$TMPDIR/boot.log"
        if [ "$status" != 0 ]; then
          echo "ntd boot checkpoint: the driver failed (exit status $status)" >&2
          exit 1
        fi
        names=$(sed -n 's/^ntd-boot-checkpoint: machines //p' "$TMPDIR/boot.log")
        for n in $names; do
          grep -q "^$n: checkpoint saved (key " "$TMPDIR/boot.log" || {
            echo "ntd boot checkpoint: node '$n' was not saved (its reason is above; a node" \
              "needs virtualisation.useNixStoreImage = true)" >&2
            exit 1
          }
        done
        # Nothing half-written may end up in the store.
        rm -rf "$out"/.tmp-* "$out"/.trash-*
      '';

  # The test module with more driver arguments: a plain attribute set (what every test
  # framework takes) is extended in place, anything else imported.
  withDriverArgs =
    test: args:
    if builtins.isAttrs test then
      test // { extraDriverArgs = (test.extraDriverArgs or [ ]) ++ args; }
    else
      {
        imports = [ test ];
        extraDriverArgs = args;
      };

  runFromCheckpoint =
    test:
    let
      name = if builtins.isAttrs test then test.name or "test" else "test";
      checkpoint = boot {
        test = testers.runNixOSTest test;
        inherit name;
      };
    in
    testers.runNixOSTest (withDriverArgs test [
      "--checkpoints"
      "${checkpoint}"
    ])
    // {
      bootCheckpoint = checkpoint;
    };
in
{
  inherit boot withDriverArgs;
  runNixOSTest = runFromCheckpoint;
}
