# machines: machine
# QEMU killed while a command runs: the command raises (test fails, exit 1).
import os
import signal
import threading

start_all()
machine.succeed("true")
pid = machine.pid
assert pid is not None
threading.Timer(1.0, os.kill, (pid, signal.SIGKILL)).start()
machine.succeed("sleep 30")
