# machines: machine
# placeholder: @TIMEOUT@ 20.0
# placeholder: @CPU@ 1
# placeholder: @HOGS@ 3
# placeholder: @PIDFILE@ "/tmp/hogs"
# A guest whose job needs about 45 % of a timeout in guest CPU, run while CPU hogs on the
# guest's host CPU leave it a fraction of a core (tests/guesttime.rs): the timeouts count the
# time the guest could run, so the job finishes within its timeout, as a command and as a
# wait; a timeout that does run out while the host starves the guest says by how much the
# host stretched it. The hogs are this script's children, ended on every path (and by
# `timeout` should the script itself be killed); the test kills those in @PIDFILE@ too.
import os
import signal
import subprocess
import time

from test_driver import _protocol

TIMEOUT = @TIMEOUT@


def guest_clock() -> float:
    return _protocol.guest_clock(machine=machine.name)


def spin(n: int) -> str:
    """A guest command that costs the guest CPU in proportion to `n`."""
    return f"i=0; while (( i < {n} )); do (( ++i )); done"


start_all()
machine.succeed("true")
# Iterations of the loop per second of guest-available time, measured before the hogs start
# (guest time: other load on the host does not skew it).
n = 20000
while True:
    g0 = guest_clock()
    machine.succeed(spin(n))
    used = guest_clock() - g0
    if used >= 1.5:
        break
    n = int(n * max(2.0, 2.0 / max(used, 0.01)))
rate = n / used
job = int(rate * 0.45 * TIMEOUT)
print(f"CALIBRATED {rate:.0f} iterations per guest second; the job is {job}")

hogs: list[subprocess.Popen[bytes]] = []
try:
    spinner = ["timeout", "900", "taskset", "-c", "@CPU@", "sh", "-c", "while :; do :; done"]
    # Each hog leads its own process group (killed as one) but stays in the driver's
    # session: with the kernel's autogroups a session of its own would be a scheduling group
    # of its own, and the guest would get far more than its share of the CPU.
    for _ in range(@HOGS@):
        hogs.append(subprocess.Popen(spinner, process_group=0))
    with open(@PIDFILE@, "w") as f:
        f.write(" ".join(str(h.pid) for h in hogs))
    time.sleep(1)

    t0, g0 = time.monotonic(), guest_clock()
    machine.succeed(spin(job), timeout=TIMEOUT)
    print(f"COMMAND wall {time.monotonic() - t0:.2f} guest {guest_clock() - g0:.2f}")

    machine.succeed(f"rm -f /tmp/done; ({spin(job)}; touch /tmp/done) >/dev/null 2>&1 &")
    t0, g0 = time.monotonic(), guest_clock()
    machine.wait_for_file("/tmp/done", timeout=TIMEOUT)
    print(f"WAIT wall {time.monotonic() - t0:.2f} guest {guest_clock() - g0:.2f}")

    # A timeout that runs out while the host starves the busy guest.
    status, _out = machine.execute("while :; do :; done", timeout=3)
    assert status == 124, status
finally:
    for h in hogs:
        os.killpg(h.pid, signal.SIGKILL)
        h.wait()
