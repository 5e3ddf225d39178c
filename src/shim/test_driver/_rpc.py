"""The transport to the ntd driver (private to the shim): one JSON object per line over two
pipes inherited from the driver.

Requests carry an ``id`` (written first, so the driver can answer even a line it cannot
parse) and block until the reply with that id arrives; notifications (log lines, nesting)
carry none and get no reply. Which requests exist and what they answer is the generated
`test_driver._protocol`; this module only moves lines and knows the envelope's shape. Non-finite
numbers are never sent (``allow_nan=False``): durations map ``inf`` to ``None`` ("no limit")
before they get here. One lock serialises calls, so a script may call machine methods from
several threads: each call gets its own reply.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from typing import TypedDict, Union, cast

#: A JSON value as the driver sends it (QMP results and events come through as they are).
Json = Union[None, bool, int, float, str, list["Json"], dict[str, "Json"]]

#: QEMU's error, as the driver passes it on.
QmpErrorBody = TypedDict("QmpErrorBody", {"class": str, "desc": str})


class _ErrorFields(TypedDict):
    type: str
    msg: str


class ErrorBody(_ErrorFields, total=False):
    """An error reply: the exception's type name and message (``qmp``: QEMU's error)."""

    qmp: QmpErrorBody


class Envelope(TypedDict, total=False):
    """One reply line: ``ok`` or ``err``, for request ``id``."""

    id: int
    ok: Json
    err: ErrorBody


class DriverGone(RuntimeError):
    """The ntd process closed the protocol pipes (it is shutting the test down)."""


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

    def _write(self, msg: Mapping[str, object]) -> None:
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

    def notify(self, op: str, args: Mapping[str, object]) -> None:
        """Send a notification (no reply)."""
        with self._lock:
            self._write({"op": op, **args})

    def request(self, op: str, args: Mapping[str, object]) -> Envelope:
        """Send a request and wait for its reply."""
        with self._lock:
            rid = self._next_id
            self._next_id += 1
            self._write({"id": rid, "op": op, **args})
            while True:
                reply = self._read_line()
                if reply.get("id") == rid:
                    return reply

    def _read_line(self) -> Envelope:
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                reply: object = json.loads(line)
                if not isinstance(reply, dict):
                    raise DriverGone(f"the ntd driver sent {line!r}, which is not a reply")
                return cast(Envelope, reply)
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
