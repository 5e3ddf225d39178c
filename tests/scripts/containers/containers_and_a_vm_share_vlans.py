# machines: vm
# containers: bad, c1, c2
# vlans: 1, 2
# placeholder: @HOSTFILE@ /tmp/x
# c1 is on vlans 1 and 2, c2 on vlan 1 (c1 and c2 meet on bridge br1), the tiny VM on vlan 2
# (c1 and the VM meet through br2, ntd's tap vde-tap2 and the switch). bad's start script
# exits at once.
import time

from test_driver.errors import MachineError, RequestedAssertionFailed

start_all()

# The configuration: VMs and containers sorted by name, each as its kind.
assert [m.name for m in machines] == ["bad", "c1", "c2", "vm"], machines
assert [m.name for m in machines_nspawn] == ["bad", "c1", "c2"], machines_nspawn
assert [m.name for m in machines_qemu] == ["vm"], machines_qemu
assert isinstance(c1, NspawnMachine) and isinstance(c1, BaseMachine)
assert not isinstance(c1, QemuMachine) and isinstance(vm, QemuMachine)
assert "machine" not in globals()

# Commands: byte-exact output, statuses, upstream's wrapper (pipefail), timeouts end with 124.
assert c1.succeed("echo hello; printf 'a\\tb\\n'; hostname") == "hello\na\tb\nc1\n"
assert c1.execute("exit 3") == (3, "")
assert c1.execute("false | true")[0] == 1
assert c1.execute("echo x", check_return=False, check_output=False) == (0, "x\n")
c1.fail("test -e /nonexistent")
t0 = time.monotonic()
assert c1.execute("sleep 60; echo never", timeout=1) == (124, "")
assert time.monotonic() - t0 < 10
assert c1.succeed("pgrep -x sleep || echo none") == "none\n", "the timed-out command was ended"

# Waits run in the container, as in a VM guest.
c1.succeed("(sleep 1; touch /tmp/flag) >/dev/null 2>&1 &")
c1.wait_for_file("/tmp/flag", timeout=30)
assert c1.wait_until_succeeds("cat /etc/hostname") == "c1\n"
c1.wait_until_fails("test -e /nonexistent")
c2.wait_for_unit("multi-user.target")
t0 = time.monotonic()
try:
    c1.wait_for_file("/never", timeout=2)
    raise Exception("a wait that never holds returned")
except RequestedAssertionFailed as e:
    assert "action timed out after" in str(e), e
assert time.monotonic() - t0 < 15

# systemd: units, state, a listener the others reach (it opens its port a second later: the
# port wait's loop has to wait for it).
c1.succeed("(sleep 1; systemd-run --unit=listener nc -lk -p 8080) >/dev/null 2>&1 &")
c1.wait_for_open_port(8080, timeout=30)
c1.wait_for_unit("listener.service")
c1.require_unit_state("listener.service", "active")
status, out = c1.systemctl("is-active listener.service")
assert (status, out) == (0, "active\n"), (status, out)
assert c1.get_unit_property("listener.service", "ActiveState") == "active"
c1.wait_for_open_port(8080)

# Files through the shared directory.
with open("@HOSTFILE@", "w") as f:
    f.write("from the host\n")
c1.copy_from_host("@HOSTFILE@", "/root/copied")
assert c1.succeed("cat /root/copied") == "from the host\n"
c1.succeed("echo from c1 > /root/out.txt")
c1.copy_from_machine("/root/out.txt", "fromc1")
with open(os.path.join(driver.out_dir, "fromc1", "out.txt")) as f:
    assert f.read() == "from c1\n"

# Container <-> container through bridge br1, both ways.
c1.succeed("ping -c 1 -W 10 c2")
c2.succeed("ping -c 1 -W 10 c1")
c2.wait_for_open_port(8080, "c1")

# Container <-> VM through br2, vde-tap2 and the switch, both ways (ICMP and TCP), captured.
vm.succeed("true")  # the tiny guest has no systemd: wait for its shell
capture = os.path.join(driver.out_dir, "vlan2.pcap")
vlan2.start_capture(capture)
c1.succeed("ping -c 1 -W 10 192.168.2.1")
vm.succeed("ping -c 1 -W 10 192.168.2.2")
vm.wait_for_open_port(8080, "192.168.2.2")
vlan2.stop_capture()
with open(capture, "rb") as capture_file:
    pcap = capture_file.read()
# Both pings' echo requests and replies (98 bytes each, 16 bytes of record header) at least.
assert len(pcap) >= 24 + 4 * (16 + 98), len(pcap)
assert bytes([192, 168, 2, 2]) in pcap and bytes([192, 168, 2, 1]) in pcap

# Network faults between a container and a VM: partition, then loss between the two, heal.
vlan2.partition([c1], [vm])
c1.fail("ping -c 1 -W 2 192.168.2.1")
vm.fail("ping -c 1 -W 2 192.168.2.2")
c1.succeed("ping -c 1 -W 10 c2")  # vlan 1 is not vlan 2
vlan2.heal()
c1.succeed("ping -c 1 -W 10 192.168.2.1")
vlan2.impair(loss=1.0, between=(c1, vm))
c1.fail("ping -c 1 -W 2 192.168.2.1")
vlan2.heal()
vm.succeed("ping -c 1 -W 10 192.168.2.2")
# c1 and c2 share vlan 1's tap: a fault can name them only together.
try:
    vlan1.partition([c1], [c2])
    raise Exception("a partition between containers behind one tap was accepted")
except ValueError as e:
    assert "through one tap" in str(e), e

# What a container lacks raises AttributeError, as upstream.
for name in [
    "send_monitor_command", "wait_for_monitor_prompt", "crash", "reboot", "connect",
    "get_console_log", "wait_for_console_text", "send_console", "wait_for_qmp_event",
    "forward_port", "block", "unblock", "switch_root", "get_tty_text", "dump_tty_contents",
    "wait_until_tty_matches", "shell_interact", "console_interact", "qmp_client",
    "read_efi_vars",
]:
    assert not hasattr(c1, name), name
try:
    c1.send_monitor_command("info status")  # type: ignore[attr-defined]
    raise Exception("send_monitor_command on a container")
except AttributeError as e:
    assert "'NspawnMachine' object has no attribute 'send_monitor_command'" in str(e), e
try:
    c1.start(allow_reboot=True)  # type: ignore[call-arg]
    raise Exception("start(allow_reboot=True) on a container")
except TypeError:
    pass
assert "unix-export/c1/ssh" in c1.ssh_backdoor_command()

# Shutdown and restart: the restarted container has a new leader and works.
pid = c2.pid
c2.shutdown()
assert not c2.is_up()
c2.start()
c2.succeed("ping -c 1 -W 10 c1")
assert c2.pid != pid
c2.systemctl("poweroff")
c2.wait_for_shutdown()
c2.start()
assert c2.succeed("hostname") == "c2\n"

# A start script that exits at once: the first command says so, with upstream's words.
assert not bad.is_up()  # it ran (start_all) and failed
t0 = time.monotonic()
bad.start()
try:
    bad.succeed("true")
    raise Exception("a command ran in a container whose start script failed")
except MachineError as e:
    print(f"BAD RAISED after {time.monotonic() - t0:.2f} s: {e}")
    assert "systemd-nspawn process exited unexpectedly" in str(e), e
    assert "no container for you" in str(e), e
assert time.monotonic() - t0 < 10
assert not bad.is_up()
print("CONTAINERS DONE")
