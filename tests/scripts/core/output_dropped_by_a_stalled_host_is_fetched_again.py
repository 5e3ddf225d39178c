# machines: machine

import hashlib, os, signal, threading, time
start_all()
machine.succeed("head -c 30000000 /dev/urandom > /tmp/big")
want = machine.succeed("sha256sum /tmp/big").split()[0]

def stall():
    time.sleep(0.5)
    os.kill(os.getppid(), signal.SIGSTOP)
    time.sleep(1.0)
    os.kill(os.getppid(), signal.SIGCONT)

threading.Thread(target=stall).start()
from test_driver import _protocol
import base64
r = _protocol.execute(machine="machine", command="cat /tmp/big", timeout=None, check_output=True)
got = base64.b64decode(r["output"])
assert len(got) == 30000000, len(got)
assert hashlib.sha256(got).hexdigest() == want
assert machine.succeed("echo still usable") == "still usable\n"
