# The test cases of the contract check, as plain test attribute sets that both the framework
# restatement (ci/nix/framework.nix, used by ci/check-nix) and nixpkgs' real `runNixOSTest`
# (the flake's driver checks) accept. No script starts a VM: each asserts what the driver
# offers it before any machine boots.
#
#   storeDir       the Nix store directory (where the driver's programs must come from)
#   checkPackages  ps: [ the typed extra package of ci/nix/python, built with ps ]
{ storeDir, checkPackages }:
{
  # One node: the `machine` alias, the machine's type, no OCR tools unless asked for.
  one-node = {
    name = "one-node";
    nodes.server = { };
    testScript = ''
      import shutil

      assert [m.name for m in machines] == ["server"]
      assert isinstance(server, QemuMachine) and machine.name == "server"
      assert [v.nr for v in vlans] == [1]
      tesseract = shutil.which("tesseract") or ""
      assert not tesseract.startswith("${storeDir}/"), tesseract
      print("ntd-check: one-node script ran")
    '';
  };

  # Two nodes on vlans 1 and 2: both declared for mypy and pyflakes, both vlans started.
  # `vlan1`/`vlan2` are declared for mypy but are not lint builtins upstream, so a script that
  # names them fails the lint there too; the REPL case below uses them.
  two-vlans = {
    name = "two-vlans";
    nodes.alice.virtualisation.vlans = [ 1 ];
    nodes.bob.virtualisation.vlans = [ 2 ];
    testScript = ''
      assert sorted(m.name for m in machines) == ["alice", "bob"]
      assert [v.nr for v in vlans] == [1, 2]
      assert alice.name == "alice" and bob.name == "bob"
      print("ntd-check: two-vlans script ran")
    '';
  };

  # An extra Python package (typed, with a dependency of its own), as nixpkgs' own
  # extra-python-packages test uses numpy: the type check and the run both need it.
  extra-python = {
    name = "extra-python";
    nodes = { };
    extraPythonPackages = checkPackages;
    testScript = ''
      import ntd_check_extra

      answer: int = ntd_check_extra.answer()
      assert answer == 42, answer
      print("ntd-check: extra-python script ran")
    '';
  };

  # enableOCR puts tesseract (and ImageMagick) on the driver's PATH.
  ocr = {
    name = "ocr";
    nodes.machine = { };
    enableOCR = true;
    testScript = ''
      import shutil

      tesseract = shutil.which("tesseract") or ""
      assert tesseract.startswith("${storeDir}/"), f"tesseract on the driver's PATH: {tesseract!r}"
      print("ntd-check: ocr script ran")
    '';
  };

  # sshBackdoor.enable: the framework passes `--dump-vsocks <vsockOffset>`; the driver must
  # take it and print how to reach each machine (CID offset + 1 for the first).
  ssh-backdoor = {
    name = "ssh-backdoor";
    nodes.server = { };
    sshBackdoor.enable = true;
    testScript = ''
      import contextlib
      import io

      out = io.StringIO()
      with contextlib.redirect_stdout(out):
          dump_machine_ssh()
      text = out.getvalue()
      assert "SSH backdoor enabled, the machines can be accessed like this:" in text, text
      assert "ssh -o User=root vsock/3" in text, text
      print("ntd-check: ssh-backdoor script ran")
    '';
  };

  # enableDebugHook: the run passes `--debug-hook=<attach>` (an argparse prefix of
  # --debug-hook-attach) and turns the SSH backdoor on; the breakpoint must be armed.
  debug-hook = {
    name = "debug-hook";
    nodes.server = { };
    enableDebugHook = true;
    testScript = ''
      import contextlib
      import io

      attach = getattr(debug, "attach", "")
      assert attach.endswith("/bin/attach"), f"debug hook not armed: {debug!r} {attach!r}"
      out = io.StringIO()
      with contextlib.redirect_stdout(out):
          dump_machine_ssh()
      assert "ssh -o User=root vsock/3" in out.getvalue(), out.getvalue()
      print("ntd-check: debug-hook script ran")
    '';
  };

  # A container (not started: no script here starts a machine): its type, the `machine`
  # alias, which counts containers too, and journalctl from the store (enableNspawn).
  containers = {
    name = "containers";
    containers.box = { };
    testScript = ''
      import shutil

      assert [m.name for m in machines] == ["box"]
      assert [m.name for m in machines_nspawn] == ["box"] and machines_qemu == []
      assert isinstance(box, NspawnMachine) and machine is box
      journalctl = shutil.which("journalctl") or ""
      assert journalctl.startswith("${storeDir}/"), f"journalctl on the driver's PATH: {journalctl!r}"
      print("ntd-check: containers script ran")
    '';
  };

  # Must not build: the type check rejects the script.
  type-error = {
    name = "type-error";
    nodes.machine = { };
    testScript = ''
      machine.succeed(42)
    '';
  };

  # Must not build: the lint rejects the script (mypy accepts an unused import).
  lint-error = {
    name = "lint-error";
    nodes.machine = { };
    testScript = ''
      import json

      machine.name
    '';
  };
}
