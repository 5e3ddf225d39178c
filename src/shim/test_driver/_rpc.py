"""Line protocol to the ntd driver (private to the shim).

One JSON object per line over two pipes inherited from the driver. Requests carry an ``id``
(written first, so the driver can answer even a line it cannot parse) and block until the
reply with that id arrives; notifications (log lines, nesting) carry none and get no reply.
Errors come back typed and are raised as the matching exception. Non-finite numbers are
never sent (``allow_nan=False``): durations map ``inf`` to ``None`` ("no limit") before they
get here. One lock serialises calls, so a script may call machine methods from several
threads: each call gets its own reply.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any, Callable

from test_driver.errors import MachineError, QMPAPIError, RequestedAssertionFailed


class DriverGone(RuntimeError):
    """The ntd process closed the protocol pipes (it is shutting the test down)."""


_ERRORS: dict[str, Callable[[str], BaseException]] = {
    "RequestedAssertionFailed": RequestedAssertionFailed,
    "MachineError": MachineError,
    "RuntimeError": RuntimeError,
    "TimeoutError": TimeoutError,
    "ValueError": ValueError,
    "QMPAPIError": QMPAPIError,
}


class Channel:
    def __init__(self, rfd: int, wfd: int) -> None:
        self._rfd = rfd
        self._wfd = wfd
        self._next_id = 1
        self._buf = bytearray()
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> "Channel":
        spec = os.environ.get("NTD_RPC_FDS")
        if not spec:
            raise SystemExit(
                "test_driver is the Python side of ntd and runs only under the ntd driver "
                "(NTD_RPC_FDS is not set)"
            )
        rfd, wfd = (int(x) for x in spec.split(","))
        os.set_inheritable(rfd, False)
        os.set_inheritable(wfd, False)
        return cls(rfd, wfd)

    def _write(self, msg: dict[str, Any]) -> None:
        try:
            text = json.dumps(msg, separators=(",", ":"), allow_nan=False)
        except ValueError:
            raise ValueError(
                f"{msg.get('op')}: arguments must be finite numbers (NaN and infinity cannot "
                "be sent; pass None for no limit)"
            ) from None
        data = (text + "\n").encode()
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._wfd, view)
            except BrokenPipeError:
                raise DriverGone("the ntd driver went away") from None
            view = view[n:]

    def notify(self, op: str, **args: Any) -> None:
        with self._lock:
            self._write({"op": op, **args})

    def call(self, op: str, **args: Any) -> Any:
        with self._lock:
            rid = self._next_id
            self._next_id += 1
            self._write({"id": rid, "op": op, **args})
            while True:
                reply = self._read_line()
                if reply.get("id") == rid:
                    break
        if "err" in reply:
            err = reply["err"]
            if "qmp" in err:
                raise QMPAPIError({"error": err["qmp"]})
            exc = _ERRORS.get(err.get("type", ""), RuntimeError)
            raise exc(err.get("msg", ""))
        return reply.get("ok")

    def _read_line(self) -> dict[str, Any]:
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                result: dict[str, Any] = json.loads(line)
                return result
            chunk = os.read(self._rfd, 1 << 20)
            if not chunk:
                raise DriverGone("the ntd driver went away")
            self._buf += chunk


_channel: Channel | None = None


def channel() -> Channel:
    global _channel
    if _channel is None:
        _channel = Channel.from_env()
    return _channel
