"""``machine.qmp_client``: QMP as upstream's `QMPSession` offers it to scripts. The QMP
connection itself belongs to the ntd driver; this object forwards commands and events."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from test_driver import _protocol
from test_driver.duration import Duration, to_seconds
from test_driver.errors import QMPAPIError

__all__ = ["QMPAPIError", "QMPSession"]


class QMPSession:
    """QMP commands and events of one machine."""

    def __init__(self, machine_name: str) -> None:
        self._machine = machine_name

    def send(self, cmd: str, args: dict[str, Any] = {}) -> dict[str, Any]:
        """Run a QMP command; returns QEMU's reply (``{"return": ...}``) or raises
        `QMPAPIError`."""
        result = _protocol.qmp(machine=self._machine, execute=cmd, arguments=args or None)
        return {"return": result}

    def wait_for_event(self, timeout: Duration = timedelta(seconds=10)) -> dict[str, Any]:
        """The next QMP event; `TimeoutError` if none arrives within ``timeout``."""
        event = _protocol.qmp_event(machine=self._machine, timeout=to_seconds(timeout))
        if not isinstance(event, dict):
            raise TimeoutError(f"no QMP event within {to_seconds(timeout)} s")
        return event

    def events(self, timeout: Duration = timedelta(seconds=10)) -> Iterator[dict[str, Any]]:
        """The events already queued (does not wait for new ones)."""
        while True:
            event = _protocol.qmp_event(machine=self._machine, timeout=0.0)
            if not isinstance(event, dict):
                return
            yield event

    def close(self) -> None:
        """The driver closes the connection when the machine stops."""
