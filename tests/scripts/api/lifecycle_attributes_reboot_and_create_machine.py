# machines: machine
# placeholder: @EXTRA@ /start/script/of/run-extra-vm
# placeholder: @THIRD@ /start/script/of/run-third-vm

import os, time
from pathlib import Path

run_dir = Path(os.environ["XDG_RUNTIME_DIR"])

with subtest("attributes before and after start"):
    assert machine.name == "machine" and repr(machine) == "<QemuMachine 'machine'>"
    assert machine.state_dir == run_dir / "vm-state-machine", machine.state_dir
    assert machine.shared_dir == run_dir / "shared-xchg", machine.shared_dir
    assert not machine.booted and not machine.connected and machine.pid is None
    assert not machine.is_up()
    machine.start(allow_reboot=True)
    assert machine.booted and machine.pid is not None
    os.kill(machine.pid, 0)  # the QEMU process
    machine.connect()
    assert machine.connected and machine.is_up()
    assert machine in machines and machines == [machine]

with subtest("reboot with allow_reboot, and the connected = False idiom"):
    pid = machine.pid
    boot1 = machine.succeed("cat /proc/sys/kernel/random/boot_id")
    machine.reboot()
    assert not machine.connected
    boot2 = machine.succeed("cat /proc/sys/kernel/random/boot_id")
    assert boot1 != boot2 and machine.pid == pid, (boot1, boot2)
    machine.execute("(sleep 0.5; reboot) >/dev/null 2>&1 &")
    machine.connected = False
    machine.connect()
    assert machine.succeed("cat /proc/sys/kernel/random/boot_id") not in (boot1, boot2)

with subtest("X11 waits fail as upstream's do without X"):
    t0 = time.monotonic()
    try:
        machine.wait_for_x(timeout=1)
        raise Exception("wait_for_x succeeded")
    except AssertionError as e:
        assert "action timed out after" in str(e), e
    assert time.monotonic() - t0 < 15
    for call in (lambda: machine.wait_for_window("xterm", timeout=1), machine.get_window_names):
        try:
            call()
            raise Exception("window query succeeded")
        except AssertionError as e:
            assert "xwininfo" in str(e) and "failed (exit code 127)" in str(e), e

with subtest("crash, start again, shutdown"):
    machine.crash()
    assert not machine.booted and machine.pid is None
    machine.start()
    machine.succeed("true")
    machine.shutdown()
    assert not machine.booted
    machine.booted = False  # scripts assign it; harmless here
    machine.pid = None

with subtest("create_machine"):
    extra = create_machine("@EXTRA@", keep_vm_state=True)  # legacy keyword
    assert extra.name == "extra" and extra not in machines
    assert extra.state_dir == run_dir / "vm-state-extra"
    try:
        extra.wait_for_qmp_event(lambda e: True, timeout=1)
        raise Exception("QMP answered before start")
    except RuntimeError as e:
        assert str(e) == "QMP API is not ready yet, is the VM ready?", e
    renamed = create_machine("@THIRD@", name="renamed", keep_machine_state=True)
    assert renamed.name == "renamed"
    extra.start()
    renamed.start()
    extra.succeed("echo from-extra > /tmp/xchg/kept")
    assert renamed.succeed("hostname") == "third\n"
    extra.shutdown()
    renamed.shutdown()
    assert (extra.state_dir / "xchg" / "kept").read_text() == "from-extra\n"
