# machines: machine

import base64, hashlib
from test_driver import _protocol
start_all()

def raw(cmd):
    r = _protocol.execute(machine="machine", command=cmd, timeout=None, check_output=True)
    assert r["status"] == 0, r
    assert r["truncated"] == 0, r
    return base64.b64decode(r["output"])

everything = raw("for i in {0..255}; do printf -v o '%03o' $i; printf \"\\\\$o\"; done")
assert everything == bytes(range(256)), everything
# Marker look-alikes and lone marker bytes are output like anything else.
fake = raw(r"printf '\001S0000000000000000\001x\001E0000000000000000 0\001\001A1 2\001'")
assert fake == b"\x01S0000000000000000\x01x\x01E0000000000000000 0\x01\x01A1 2\x01", fake
# Invalid UTF-8 is replaced like upstream does.
assert machine.succeed(r"printf 'a\377b'") == "a\ufffdb"
machine.succeed("head -c 10000000 /dev/urandom > /tmp/big")
want = machine.succeed("sha256sum /tmp/big").split()[0]
import time
t0 = time.monotonic()
big = raw("cat /tmp/big")
took = time.monotonic() - t0
assert len(big) == 10000000, len(big)
assert hashlib.sha256(big).hexdigest() == want
print(f"10 MB in {took:.2f} s")
