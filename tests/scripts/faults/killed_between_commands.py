# machines: machine
# QEMU killed between two commands: the next call fails loudly, naming the machine and how
# QEMU ended; only an explicit start() boots it again.
import os
import signal
import time

start_all()
machine.succeed("true")
pid = machine.pid
assert pid is not None
os.kill(pid, signal.SIGKILL)
time.sleep(1)
try:
    machine.succeed("true")
except Exception as e:
    msg = str(e)
    assert "machine 'machine': QEMU exited (signal 9)" in msg, msg
    assert "machine.start()" in msg, msg
    print(f"RAISED {type(e).__name__}")
else:
    raise AssertionError("a command on a machine whose QEMU died must fail")
machine.start()
assert machine.succeed("echo again") == "again\n"
