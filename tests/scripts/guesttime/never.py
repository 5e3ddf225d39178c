# machines: machine
# placeholder: @TIMEOUT@ 5.0
# On a host that gives the guest its CPU, a command that never returns and a wait that never
# succeeds still fail near their timeouts (tests/guesttime.rs checks within 1.2 times the
# timeout plus what the host withheld, which the messages say).
import time

from test_driver import _protocol

TIMEOUT = @TIMEOUT@
start_all()
machine.succeed("true")
t0, g0 = time.monotonic(), _protocol.guest_clock(machine=machine.name)
status, _ = machine.execute("sleep infinity", timeout=TIMEOUT)
assert status == 124, status
wall = time.monotonic() - t0
print(f"COMMAND wall {wall:.2f} withheld {wall - (_protocol.guest_clock(machine=machine.name) - g0):.2f}")
t0, g0 = time.monotonic(), _protocol.guest_clock(machine=machine.name)
try:
    machine.wait_until_succeeds("false", timeout=TIMEOUT)
    raise Exception("the wait succeeded")
except AssertionError as e:
    wall = time.monotonic() - t0
    guest = _protocol.guest_clock(machine=machine.name) - g0
    print(f"WAIT wall {wall:.2f} withheld {wall - guest:.2f}: {e}")
