# machines: machine
# Power: reboot (allow_reboot), a crash, shutdown, and reconnecting after a restart the
# script caused itself (the `connected = False` idiom of kexec tests).
import datetime as dt

machine.start(allow_reboot=True)
first_boot = machine.succeed("cat /proc/sys/kernel/random/boot_id")
qemu_pid = machine.pid

machine.reboot()
second_boot = machine.succeed("cat /proc/sys/kernel/random/boot_id")
assert second_boot != first_boot
assert machine.pid == qemu_pid, "a reboot keeps the QEMU process"

machine.execute("(sleep 0.5; reboot) >/dev/null 2>&1 &")
machine.connected = False
machine.connect()
assert machine.is_up()

machine.crash()
assert not machine.booted
machine.start()
machine.succeed("(sleep 0.5; poweroff) >/dev/null 2>&1 &")
machine.wait_for_shutdown(timeout=dt.timedelta(seconds=60))
assert not machine.booted and machine.pid is None
machine.start()
machine.shutdown()
