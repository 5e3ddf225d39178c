# machines: machine
# Every timeout argument refuses out-of-range and non-finite values with an error naming the
# argument; infinity means "no limit of its own" as upstream.
import math
from datetime import timedelta
from typing import Any, Callable

start_all()
machine.succeed("true")
bad: list[Any] = [1e300, -1, -math.inf, math.nan, "soon", timedelta(days=100000000)]
calls: dict[str, Callable[[Any], Any]] = {
    "execute": lambda t: machine.execute("true", timeout=t),
    "succeed": lambda t: machine.succeed("true", timeout=t),
    "fail": lambda t: machine.fail("false", timeout=t),
    "wait_until_succeeds": lambda t: machine.wait_until_succeeds("true", timeout=t),
    "wait_until_fails": lambda t: machine.wait_until_fails("false", timeout=t),
    "wait_for_file": lambda t: machine.wait_for_file("/", timeout=t),
    "wait_for_open_port": lambda t: machine.wait_for_open_port(1, timeout=t),
    "wait_for_closed_port": lambda t: machine.wait_for_closed_port(1, timeout=t),
    "wait_for_open_unix_socket": lambda t: machine.wait_for_open_unix_socket("/x", timeout=t),
    "wait_for_unit": lambda t: machine.wait_for_unit("x", timeout=t),
    "wait_for_console_text": lambda t: machine.wait_for_console_text("x", timeout=t),
    "wait_for_shutdown": lambda t: machine.wait_for_shutdown(timeout=t),
    "wait_for_qmp_event": lambda t: machine.wait_for_qmp_event(lambda e: True, timeout=t),
    "sleep": lambda t: machine.sleep(t),
    "retry": lambda t: retry(lambda last: True, timeout=t),
}
for name, call in calls.items():
    for value in bad:
        try:
            call(value)
        except (ValueError, TypeError) as e:
            msg = str(e)
            assert "timeout" in msg or "duration" in msg, f"{name}({value!r}): {msg}"
        else:
            raise AssertionError(f"{name}(timeout={value!r}) must be refused")
print("every bad timeout refused")
# Infinity: no limit of its own.
assert machine.succeed("echo inf", timeout=math.inf) == "inf\n"
machine.wait_for_file("/", timeout=math.inf)
machine.wait_until_succeeds("true", timeout=float("inf"))
retry(lambda last: True, timeout=math.inf)
# A request the driver cannot decode, or not even parse, still gets an answer (no hang).
import os

from test_driver import _rpc

chan = _rpc.channel()
chan._write({"id": 999999, "op": "execute", "machine": "machine", "command": 1})
reply = chan._read_line()
assert reply["id"] == 999999 and "'command'" in reply["err"]["msg"], reply
os.write(chan._wfd, b'{"id":999998,"op":"execute","machine":"machine","timeout":Infinity}\n')
reply = chan._read_line()
assert reply["id"] == 999998 and reply["err"]["type"] == "ValueError", reply
assert machine.succeed("echo still fine") == "still fine\n"
print("malformed requests answered")
