"""test_driver: the Python side of ntd, a fast re-implementation of the NixOS test driver.

The ntd binary starts ``python3 -m test_driver`` with two inherited pipes; this package
builds upstream's testScript namespace on top of them. Module names mirror upstream's
(`driver`, `machine`, `vlan`, `logger`, `polling_condition`, `errors`, `debug`) so that
imports and type checks written for upstream keep working.
"""

from __future__ import annotations

import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import TextIO

from test_driver import _protocol, _rpc
from test_driver.logger import rootlog


def _report_syntax_error(e: SyntaxError) -> None:
    for line in "".join(traceback.format_exception_only(type(e), e)).splitlines():
        rootlog.log_test_error(line)


def _sync_with_driver() -> None:
    """One round trip: the driver has handled every earlier notification when it answers."""
    try:
        _protocol.hello()
    except _rpc.DriverGone:
        pass


def _install_warning_format(script: str) -> None:
    """Python warnings as upstream shows them (a ``??? Warning (Category): message`` block
    with the place in the script), through the driver's log so every sink gets them."""
    lines = script.splitlines()

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if line is None and filename == "<string>" and 0 < lineno <= len(lines):
            line = lines[lineno - 1]
        text = f"??? Warning ({category.__name__}): {message}\n    File \"{filename}\", line {lineno}"
        if line:
            text += f"\n      {line.strip()}"
        rootlog.warning(text)

    warnings.showwarning = show


def main() -> None:
    if isinstance(sys.stdout, __import__("io").TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    hello = _protocol.hello()
    from test_driver.driver import Driver

    script = hello["test_script"]
    tests = Path(script).read_text() if script else ""
    _install_warning_format(tests)
    try:
        code = compile(tests, "<string>", "exec")
    except SyntaxError as e:
        # Reported before any machine starts.
        _report_syntax_error(e)
        sys.exit(1)
    driver = Driver(hello, tests, code)
    # Upstream prints how to reach the machines over the SSH backdoor before anything runs.
    driver.dump_machine_ssh()
    if hello["interactive"]:
        driver.interactive()
        return
    tic = time.time()
    try:
        driver.run_tests()
    except Exception:
        # Python prints the traceback itself, straight to stderr: let the driver write the
        # log lines sent before it first, so that the report reads in order. The driver
        # keeps the traceback for a failure capsule's log (--keep-failed).
        try:
            _protocol.failure(text=traceback.format_exc())
        except _rpc.DriverGone:
            pass
        _sync_with_driver()
        raise
    rootlog.info(f"test script finished in {time.time() - tic:.2f}s")
