"""Exceptions a testScript can see, with upstream's names and hierarchy."""


class RequestedAssertionFailed(AssertionError):
    """A check requested by the test failed (`succeed`, `fail`, timeouts, `t.assert*`).

    The driver reports it with a filtered traceback of the test script and exits with 1.
    """


class MachineError(Exception):
    """A machine misbehaved (failed to start, died): the full traceback is reported."""


class QMPAPIError(RuntimeError):
    """QEMU answered a QMP command with an error."""
