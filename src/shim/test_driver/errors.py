"""Exceptions a testScript can see, with upstream's names and hierarchy."""

from __future__ import annotations

from typing import Any


class TestScriptError(Exception):
    """A failure of the test script that is not a driver bug (newest upstream's base class):
    reported with the script's frames only, prefixed with ``!!!``."""


class RequestedAssertionFailed(TestScriptError, AssertionError):
    """A check requested by the test failed (`succeed`, `fail`, timeouts, `t.assert*`).

    The driver reports it with a filtered traceback of the test script and exits with 1.
    It is an `AssertionError` as in older upstream versions, so ``except AssertionError``
    in scripts keeps catching it.
    """


class MachineError(Exception):
    """A machine misbehaved (failed to start, died): the full traceback is reported."""


class QMPAPIError(RuntimeError):
    """QEMU answered a QMP command with an error: ``class_name``, ``description`` and
    ``transaction_id`` (always None: ntd does not expose its ids), as upstream's."""

    class_name: str
    description: str
    transaction_id: Any

    def __init__(self, message: str | dict[str, Any]) -> None:
        if isinstance(message, dict):
            error = message.get("error", {})
            self.class_name = str(error.get("class", "GenericError"))
            self.description = str(error.get("desc", ""))
            self.transaction_id = message.get("id")
        else:
            self.class_name, self.description = "GenericError", message
            self.transaction_id = None
        super().__init__(str(self))

    def __str__(self) -> str:
        return (
            f"<QMP API error related to transaction {self.transaction_id} "
            f"[{self.class_name}]: {self.description}>"
        )
