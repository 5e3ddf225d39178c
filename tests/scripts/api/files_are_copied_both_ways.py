# machines: machine

import os, stat, tempfile
from pathlib import Path

start_all()
host = Path(tempfile.mkdtemp())
(host / "f.txt").write_text("file content\n")
(host / "f.txt").chmod(0o751)
(host / "tree" / "sub").mkdir(parents=True)
(host / "tree" / "a").write_text("A")
(host / "tree" / "sub" / "b").write_bytes(bytes(range(256)))

with subtest("copy_from_host: files (mode kept), directories, str and Path arguments"):
    machine.copy_from_host(str(host / "f.txt"), "/root/new/f.txt")
    assert machine.succeed("cat /root/new/f.txt; stat -c %a /root/new/f.txt") == "file content\n751\n"
    machine.copy_from_host(host / "tree", Path("/root/tree"))
    assert machine.succeed("cd /root/tree && find . | sort") == ".\n./a\n./sub\n./sub/b\n"
    assert machine.succeed("od -An -tx1 /root/tree/sub/b | tr -d ' \\n'") == bytes(range(256)).hex()

with subtest("copy_from_host_via_shell"):
    machine.copy_from_host_via_shell(str(host / "tree" / "sub" / "b"), "/root/via/shell/b")
    assert machine.succeed("sha256sum < /root/via/shell/b") == machine.succeed("sha256sum < /root/tree/sub/b")

with subtest("copy_from_machine and copy_from_vm"):
    machine.succeed("mkdir -p /tmp/gdir/x && echo g > /tmp/gdir/x/g && echo top > /tmp/gfile")
    machine.copy_from_machine("/tmp/gfile")
    machine.copy_from_machine("/tmp/gdir", "sub")
    machine.copy_from_vm("/tmp/gfile", "legacy")
    with tempfile.TemporaryDirectory() as absolute:
        machine.copy_from_vm("/tmp/gdir", absolute)
        assert (Path(absolute) / "gdir" / "x" / "g").read_text() == "g\n"
    out = driver.out_dir
    assert (out / "gfile").read_text() == "top\n"
    assert (out / "sub" / "gdir" / "x" / "g").read_text() == "g\n"
    assert (out / "legacy" / "gfile").read_text() == "top\n"
    # The intermediate copies in the shared directory are gone again.
    assert os.listdir(machine.shared_dir) == [], os.listdir(machine.shared_dir)
