"""Machines as testScripts see them: upstream's method names, signatures and log messages.

Every method forwards to the ntd driver, which owns QEMU, the guest shell and the waits.
What stays here is what needs Python: argument conversion (numbers or timedeltas), log
nesting around each call, polling-condition callbacks, regular expressions, and user
callables (`retry`).
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import _GeneratorContextManager, nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Any

from test_driver import _protocol
from test_driver._constants import DEFAULT_QMP_EVENT_TIMEOUT, DEFAULT_TIMEOUT
from test_driver._protocol import (
    STATUS_NOT_WAITED,
    MachineState,
    RunReply,
    WaitReply,
    stretch_note,
    timed_out_message,
)
from test_driver.duration import Duration, finite_or_none, to_limit, to_seconds
from test_driver.efi import EfiVariable
from test_driver.errors import MachineError, RequestedAssertionFailed
from test_driver.logger import AbstractLogger, rootlog
from test_driver.machine.qmp import QMPSession


CHAR_TO_KEY = {
    "A": "shift-a", "N": "shift-n", "-": "0x0C", "_": "shift-0x0C", "B": "shift-b",
    "O": "shift-o", "=": "0x0D", "+": "shift-0x0D", "C": "shift-c", "P": "shift-p",
    "[": "0x1A", "{": "shift-0x1A", "D": "shift-d", "Q": "shift-q", "]": "0x1B",
    "}": "shift-0x1B", "E": "shift-e", "R": "shift-r", ";": "0x27", ":": "shift-0x27",
    "F": "shift-f", "S": "shift-s", "'": "0x28", '"': "shift-0x28", "G": "shift-g",
    "T": "shift-t", "`": "0x29", "~": "shift-0x29", "H": "shift-h", "U": "shift-u",
    "\\": "0x2B", "|": "shift-0x2B", "I": "shift-i", "V": "shift-v", ",": "0x33",
    "<": "shift-0x33", "J": "shift-j", "W": "shift-w", ".": "0x34", ">": "shift-0x34",
    "K": "shift-k", "X": "shift-x", "/": "0x35", "?": "shift-0x35", "L": "shift-l",
    "Y": "shift-y", " ": "spc", "M": "shift-m", "Z": "shift-z", "\n": "ret",
    "!": "shift-0x02", "@": "shift-0x03", "#": "shift-0x04", "$": "shift-0x05",
    "%": "shift-0x06", "^": "shift-0x07", "&": "shift-0x08", "*": "shift-0x09",
    "(": "shift-0x0A", ")": "shift-0x0B",
}


def _make_command(args: list[Any]) -> str:
    """A shell command line from arguments, each quoted (upstream's ``make_command``)."""
    return " ".join(shlex.quote(str(a)) for a in args)


def _fmt_seconds(secs: float) -> str:
    return repr(float(secs))


#: One slice of a wait: ``(timeout, age, withheld, slice)`` in seconds to the driver's reply
#: (``age``: guest-available time used so far, ``withheld``: time the host withheld meanwhile).
_WaitSlice = Callable[[float | None, float, float, float | None], WaitReply]


def _timed_out(guest: float, total: float, wall: float) -> RequestedAssertionFailed:
    """The error of a loop whose guest-available time ran out after ``wall`` seconds."""
    msg = timed_out_message(guest, total)
    if wall - guest >= 0.1:
        msg += "; " + stretch_note(total, wall, wall - guest)
    return RequestedAssertionFailed(msg)


def retry(
    fn: Callable[..., Any],
    timeout_seconds: Duration | None = None,
    timeout: Duration | None = None,
) -> None:
    """Call ``fn(last_try)`` until it returns true or the timeout (default 900 s) passes,
    then once more with ``last_try=True``; raise `RequestedAssertionFailed` if that fails too.

    Accepts all three upstream signatures: ``retry(fn, 30)``, ``retry(fn, timeout_seconds=30)``
    and ``retry(fn, timeout=30)``, with numbers or timedeltas. Unlike upstream it does not sleep
    a fixed second between attempts: it follows the wait schedule (the driver computes each
    pause), so a condition is noticed soon after it holds while a slow callable keeps its share
    of the CPU small. The timeout counts the run's guest-available time (the time the most
    starved machine could run), as every timeout of ntd does.
    """
    if timeout_seconds is not None and timeout is not None:
        raise TypeError("retry() takes timeout_seconds or timeout, not both")
    total = to_limit(timeout_seconds if timeout_seconds is not None else timeout, DEFAULT_TIMEOUT)
    start = time.monotonic()
    since = _protocol.guest_clock()
    age = 0.0
    while age < total:
        t0 = time.monotonic()
        if fn(False):
            return
        step = _protocol.retry_pause(since=since, cost=time.monotonic() - t0)
        age = step["age"]
        if age >= total:
            break
        time.sleep(max(0.0, min(step["pause"], total - age)))
    if not fn(True):
        raise _timed_out(age, total, time.monotonic() - start)


class QemuStartCommand(str):
    """The start command of a machine: the command string itself, with upstream's
    ``QemuStartCommand`` attributes (``machine_name``, ``cmd(...)``) for scripts that use them."""

    @property
    def _cmd(self) -> str:
        return str(self)

    @property
    def machine_name(self) -> str:
        """The name in ``run-<name>-vm`` (else ``machine``), as upstream derives it."""
        match = re.search("run-(.+)-vm$", self)
        return match.group(1) if match else "machine"

    def cmd(
        self,
        monitor_socket_path: Path,
        qmp_socket_path: Path,
        shell_socket_path: Path,
        allow_reboot: bool = False,
    ) -> str:
        """The command that runs: the start command plus the QEMU arguments the driver
        appends (it builds them; this asks it)."""
        return _protocol.qemu_command(
            start_command=str(self),
            monitor=str(monitor_socket_path),
            qmp=str(qmp_socket_path),
            shell=str(shell_socket_path),
            allow_reboot=allow_reboot,
        )


class BaseMachine:
    """A QEMU virtual machine of the test (upstream: ``QemuMachine``)."""

    name: str
    start_command: QemuStartCommand
    state_dir: Path
    shared_dir: Path
    out_dir: Path
    tmp_dir: Path
    keep_machine_state: bool
    callbacks: list[Callable[[], None]]
    logger: AbstractLogger

    def __init__(
        self,
        name: str,
        start_command: str,
        state_dir: Path,
        shared_dir: Path,
        out_dir: Path,
        tmp_dir: Path,
        keep_machine_state: bool = False,
        callbacks: list[Callable[[], None]] | None = None,
        logger: AbstractLogger = rootlog,
    ) -> None:
        self.name = name
        self.start_command = QemuStartCommand(start_command)
        self.state_dir = state_dir
        self.shared_dir = shared_dir
        self.out_dir = out_dir
        self.tmp_dir = tmp_dir
        self.keep_machine_state = keep_machine_state
        self.callbacks = list(callbacks or [])
        self.logger = logger
        self.qmp_client = QMPSession(name)
        # Upstream attributes that have no meaning here but that scripts may read.
        self.process: subprocess.Popen[bytes] | None = None
        self.monitor: Any = None
        self.shell: Any = None
        self.serial_thread: Any = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} '{self.name}'>"

    # -- state ---------------------------------------------------------------------------

    def _state(self) -> MachineState:
        return _protocol.state(machine=self.name)

    @property
    def booted(self) -> bool:
        return bool(self._state()["booted"])

    @booted.setter
    def booted(self, value: bool) -> None:
        if not value:
            _protocol.mark_disconnected(machine=self.name)

    @property
    def connected(self) -> bool:
        return bool(self._state()["connected"])

    @connected.setter
    def connected(self, value: bool) -> None:
        if not value:
            _protocol.mark_disconnected(machine=self.name)

    @property
    def pid(self) -> int | None:
        pid = self._state()["pid"]
        return int(pid) if pid is not None else None

    @pid.setter
    def pid(self, value: int | None) -> None:
        """Scripts that kill QEMU themselves reset ``pid``; the driver tracks the process
        itself, so the assignment changes nothing."""

    @property
    def monitor_path(self) -> Path:
        """The HMP monitor socket (the driver decides where sockets live)."""
        return Path(self._state()["monitor_path"])

    @property
    def shell_path(self) -> Path:
        return Path(self._state()["shell_path"])

    @property
    def qmp_path(self) -> Path:
        return Path(self._state()["qmp_path"])

    @property
    def keep_vm_state(self) -> bool:
        return self.keep_machine_state

    def is_up(self) -> bool:
        state = self._state()
        return bool(state["booted"] and state["connected"])

    # -- logging -------------------------------------------------------------------------

    def log(self, msg: str) -> None:
        self.logger.log(msg, {"machine": self.name})

    def log_serial(self, msg: str) -> None:
        self.logger.log_serial(msg, self.name)

    def nested(self, msg: str, attrs: dict[str, str] = {}) -> _GeneratorContextManager[None]:
        my_attrs = {"machine": self.name}
        my_attrs.update(attrs)
        return self.logger.nested(msg, my_attrs)

    def run_callbacks(self) -> None:
        for callback in self.callbacks:
            callback()

    # -- life cycle ----------------------------------------------------------------------

    def start(self, allow_reboot: bool = False) -> None:
        _protocol.start(machines=[self.name], allow_reboot=allow_reboot)

    def connect(self) -> None:
        _protocol.connect(machine=self.name)

    def _power_off(self, send: Callable[[], None], crash: bool = False) -> None:
        """Wait for QEMU to end (after asking it to, for ``shutdown``/``crash``). On a machine
        that is not running this only acknowledges an exit nobody asked for, so that the
        next command boots the machine again."""
        if not self.booted:
            send()
            return
        if crash:
            self.log("forced crash")
        with self.nested("waiting for the VM to power off"):
            sys.stdout.flush()
            send()

    def wait_for_shutdown(self, timeout: Duration | None = None) -> None:
        seconds = to_seconds(timeout)
        self._power_off(lambda: _protocol.wait_for_shutdown(machine=self.name, timeout=seconds))

    def shutdown(self) -> None:
        self._power_off(lambda: _protocol.shutdown(machine=self.name))

    def crash(self) -> None:
        self._power_off(lambda: _protocol.crash(machine=self.name), crash=True)

    def reboot(self) -> None:
        """Press Ctrl+Alt+Delete; the next command waits for the shell again.

        Needs ``start(allow_reboot=True)``, otherwise QEMU exits instead.
        """
        self.send_key("ctrl-alt-delete")
        self.connected = False

    def switch_root(self) -> None:
        """Move from the initrd's backdoor (testing.initrdBackdoor) to the real system's."""
        self.wait_for_unit("initrd.target")
        self.execute(
            "systemctl isolate --no-block initrd-switch-root.target 2>/dev/null >/dev/null",
            check_return=False,
            check_output=False,
        )
        self.connected = False
        self.connect()

    def release(self) -> None:
        """Upstream's cleanup hook; ntd ends every machine itself at the end of the run."""

    def cleanup_statedir(self) -> None:
        """Delete the machine's state directory (disk images, sockets); only while it is down."""
        if self.booted:
            raise MachineError(f"{self.name} is running: its state directory stays")
        shutil.rmtree(self.state_dir, ignore_errors=True)
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.log(f"deleting machine state directory {self.state_dir}")
        self.log("if you want to keep the machine state, pass --keep-machine-state")

    # -- commands ------------------------------------------------------------------------

    def execute(
        self,
        command: str,
        check_return: bool = True,
        check_output: bool = True,
        timeout: Duration | None = DEFAULT_TIMEOUT,
    ) -> tuple[int, str]:
        """Run ``command`` with ``bash -c`` semantics (``set -euo pipefail``) in the guest.

        Returns ``(status, output)``; stdout is captured through a pipe, stderr goes to the
        serial console. stdin is ``/dev/null``.
        """
        self.run_callbacks()
        reply = _protocol.execute(
            machine=self.name,
            command=command,
            timeout=to_seconds(timeout),
            check_output=check_output,
        )
        return self._result(reply, check_return)

    def _result(self, reply: RunReply, check_return: bool = True) -> tuple[int, str]:
        """``(status, output)`` as upstream's `execute` returns them."""
        status = reply["status"]
        if status is None:
            return (STATUS_NOT_WAITED, "")
        output = base64.b64decode(reply["output"])
        if reply["truncated"]:
            self.log(f"output truncated: {reply['truncated']} bytes beyond 256 MiB were dropped")
        if not check_return:
            return (-1, output.decode())
        return (status, output.decode(errors="replace"))

    def succeed(self, *commands: str, timeout: Duration | None = None) -> str:
        """Run each command; raise `RequestedAssertionFailed` if one exits non-zero."""
        output = ""
        for command in commands:
            with self.nested(f"must succeed: {command}"):
                (status, out) = self.execute(command, timeout=timeout)
                if status != 0:
                    self.log(f"output: {out}")
                    raise RequestedAssertionFailed(
                        f"command `{command}` failed (exit code {status})"
                    )
                output += out
        return output

    def fail(self, *commands: str, timeout: Duration | None = None) -> str:
        """Run each command; raise `RequestedAssertionFailed` if one exits with 0."""
        output = ""
        for command in commands:
            with self.nested(f"must fail: {command}"):
                (status, out) = self.execute(command, timeout=timeout)
                if status == 0:
                    raise RequestedAssertionFailed(
                        f"command `{command}` unexpectedly succeeded"
                    )
                output += out
        return output

    def _wait(self, timeout: Duration | None, send: _WaitSlice) -> WaitReply:
        """Wait inside the guest until the condition ``send`` asks the driver for holds (the
        guest-side checks live in the driver), within ``timeout``; the driver raises when it
        cannot hold or the time is up. While polling conditions are active the wait is cut
        into slices so that they are checked as often as upstream checks them."""
        total = finite_or_none(to_limit(timeout, DEFAULT_TIMEOUT))
        start = time.monotonic()
        age = withheld = 0.0
        while True:
            self.run_callbacks()
            reply = send(total, age, withheld, _polling_slice())
            if reply["met"]:
                return reply
            # Another slice: its age is the machine's guest time since the wait began.
            age = _protocol.guest_clock(machine=self.name) - reply["started"]
            withheld = max(0.0, time.monotonic() - start - age)

    def _wait_command(self, command: str, until_success: bool, timeout: Duration) -> WaitReply:
        return self._wait(
            timeout,
            lambda t, age, w, s: _protocol.wait_command(
                machine=self.name,
                command=command,
                until_success=until_success,
                timeout=t,
                age=age,
                withheld=w,
                slice=s,
            ),
        )

    def _wait_port(self, addr: str, port: int | str, open: bool, timeout: Duration) -> WaitReply:
        return self._wait(
            timeout,
            lambda t, age, w, s: _protocol.wait_port(
                machine=self.name, addr=addr, port=port, open=open, timeout=t, age=age, withheld=w, slice=s
            ),
        )

    @staticmethod
    def _output(reply: WaitReply) -> str:
        return base64.b64decode(reply["output"]).decode(errors="replace")

    def _wait_bounded_attempts(
        self, command: str, until_success: bool, timeout: Duration, attempt_timeout: Duration
    ) -> str:
        """Each attempt is a separate command stopped after ``attempt_timeout``."""
        output = ""

        def attempt(_: object) -> bool:
            nonlocal output
            status, output = self.execute(command, timeout=attempt_timeout)
            return (status == 0) == until_success

        retry(attempt, timeout)
        return output

    def wait_until_succeeds(
        self,
        command: str,
        timeout: Duration = DEFAULT_TIMEOUT,
        *,
        attempt_timeout: Duration | None = None,
    ) -> str:
        """Repeat ``command`` until it succeeds (at most ``timeout``); return its output.

        ``attempt_timeout`` bounds each attempt (a hanging attempt is stopped and retried);
        without it an attempt may take the whole ``timeout``, as upstream's does.
        """
        with self.nested(f"waiting for success: {command}"):
            if attempt_timeout is not None:
                return self._wait_bounded_attempts(command, True, timeout, attempt_timeout)
            return self._output(self._wait_command(command, True, timeout))

    def wait_until_fails(
        self,
        command: str,
        timeout: Duration = DEFAULT_TIMEOUT,
        *,
        attempt_timeout: Duration | None = None,
    ) -> str:
        """Repeat ``command`` until it fails; return its output."""
        with self.nested(f"waiting for failure: {command}"):
            if attempt_timeout is not None:
                return self._wait_bounded_attempts(command, False, timeout, attempt_timeout)
            return self._output(self._wait_command(command, False, timeout))

    def wait_for_file(self, filename: str, timeout: Duration = DEFAULT_TIMEOUT) -> None:
        with self.nested(f"waiting for file '{filename}'"):
            self._wait(
                timeout,
                lambda t, age, w, s: _protocol.wait_file(
                    machine=self.name, path=filename, timeout=t, age=age, withheld=w, slice=s
                ),
            )

    def wait_for_open_port(
        self, port: int | str, addr: str = "localhost", timeout: Duration = DEFAULT_TIMEOUT
    ) -> None:
        with self.nested(f"waiting for TCP port {port} on {addr}"):
            self._wait_port(addr, port, True, timeout)

    def wait_for_closed_port(
        self, port: int | str, addr: str = "localhost", timeout: Duration = DEFAULT_TIMEOUT
    ) -> None:
        with self.nested(f"waiting for TCP port {port} on {addr} to be closed"):
            self._wait_port(addr, port, False, timeout)

    def wait_for_open_unix_socket(
        self, addr: str, is_datagram: bool = False, timeout: Duration = DEFAULT_TIMEOUT
    ) -> None:
        kind = "datagram" if is_datagram else "stream"
        with self.nested(f"waiting for UNIX-domain {kind} on '{addr}'"):
            self._wait(
                timeout,
                lambda t, age, w, s: _protocol.wait_unix_socket(
                    machine=self.name, path=addr, datagram=is_datagram, timeout=t, age=age, withheld=w, slice=s
                ),
            )

    def sleep(self, secs: Duration | None = None, duration: Duration | None = None) -> None:
        """Sleep in the guest (guest time)."""
        value = secs if secs is not None else duration
        if value is None:
            raise TypeError("sleep() needs a duration")
        seconds = to_seconds(value, "duration")
        self.succeed(f"sleep {'infinity' if seconds is None else seconds}")

    # -- systemd -------------------------------------------------------------------------

    def systemctl(self, q: str, user: str | None = None) -> tuple[int, str]:
        """``systemctl q`` in the guest, for ``user``'s manager if given (upstream's ``su``
        wrapper; the driver builds the command, as for its unit waits)."""
        self.run_callbacks()
        timeout = DEFAULT_TIMEOUT.total_seconds()
        return self._result(
            _protocol.systemctl(machine=self.name, query=q, user=user, timeout=timeout)
        )

    def start_job(self, jobname: str, user: str | None = None) -> tuple[int, str]:
        return self.systemctl(f"start {jobname}", user)

    def stop_job(self, jobname: str, user: str | None = None) -> tuple[int, str]:
        return self.systemctl(f"stop {jobname}", user)

    def get_unit_info(self, unit: str, user: str | None = None) -> dict[str, str]:
        status, lines = self.systemctl(f'--no-pager show "{unit}"', user)
        if status != 0:
            under = f' under user "{user}"' if user else ""
            raise RequestedAssertionFailed(
                f'retrieving systemctl info for unit "{unit}"{under} failed with exit code {status}'
            )
        info: dict[str, str] = {}
        for line in lines.split("\n"):
            m = re.match(r"^([^=]+)=(.*)$", line)
            if m:
                info[m.group(1)] = m.group(2)
        return info

    def get_unit_property(self, unit: str, property: str, user: str | None = None) -> str:
        status, lines = self.systemctl(
            f'--no-pager show "{unit}" --property="{property}"', user
        )
        if status != 0:
            under = f' under user "{user}"' if user else ""
            raise RequestedAssertionFailed(
                f'retrieving systemctl property "{property}" for unit "{unit}"{under} '
                f"failed with exit code {status}"
            )
        m = re.match(r"^([^=]+)=(.*)$", lines.rstrip("\n"))
        assert m is not None, f"unexpected systemctl output: {lines!r}"
        assert m.group(1) == property, f"unexpected property in {lines!r}"
        return m.group(2)

    def require_unit_state(self, unit: str, require_state: str = "active") -> None:
        with self.nested(f"checking if unit '{unit}' has reached state '{require_state}'"):
            info = self.get_unit_info(unit)
            state = info["ActiveState"]
            if state != require_state:
                raise RequestedAssertionFailed(
                    f"Expected unit '{unit}' to to be in state '{require_state}' "
                    f"but it is in state '{state}'"
                )

    def wait_for_unit(
        self, unit: str, user: str | None = None, timeout: Duration = DEFAULT_TIMEOUT
    ) -> None:
        """Wait until ``unit`` is active; fail at once if it failed or is inactive with no
        pending jobs (upstream semantics). The check loops inside the guest."""
        with_user = f" with user {user}" if user is not None else ""
        with self.nested(f"waiting for unit {unit}{with_user}"):
            self._wait(
                timeout,
                lambda t, age, w, s: _protocol.wait_unit(
                    machine=self.name, unit=unit, user=user, timeout=t, age=age, withheld=w, slice=s
                ),
            )

    def wait_for_job(self, jobname: str) -> None:
        """Legacy name of `wait_for_unit`."""
        self.wait_for_unit(jobname)

    def wait_for_unit_active_state(
        self,
        unit: str,
        state: str,
        user: str | None = None,
        timeout: Duration = DEFAULT_TIMEOUT,
    ) -> None:
        """Wait until the ``ActiveState`` of ``unit`` is ``state`` (any state, also
        ``failed`` or ``inactive``)."""
        with_user = f" with user {user}" if user is not None else ""
        with self.nested(f"waiting for unit {unit} to reach state {state}{with_user}"):
            self._wait(
                timeout,
                lambda t, age, w, s: _protocol.wait_unit_state(
                    machine=self.name,
                    unit=unit,
                    state=state,
                    user=user,
                    timeout=t,
                    age=age,
                    slice=s,
                ),
            )

    # -- console and monitor -------------------------------------------------------------

    def wait_for_console_text(self, regex: str, timeout: Duration | None = None) -> None:
        """Wait until ``regex`` matches the serial output printed since the last such wait."""
        total = to_seconds(timeout)
        start = time.monotonic()
        since = _protocol.guest_clock(machine=self.name)
        used = 0.0
        seen = ""
        pattern = re.compile(regex)
        with self.nested(f"waiting for {regex} to appear on console"):
            while True:
                left = None if total is None else max(0.0, total - used)
                reply = _protocol.console_wait(machine=self.name, timeout=left)
                used = reply["clock"] - since
                for line in reply["lines"]:
                    seen += line
                    if pattern.search(seen):
                        return
                if reply["exited"] and not reply["lines"]:
                    raise RequestedAssertionFailed(
                        f"{self.name} stopped before {regex!r} appeared on its console"
                    )
                if reply["timed_out"] and total is not None:
                    raise _timed_out(used, total, time.monotonic() - start)

    def get_console_log(self) -> str:
        """Everything the serial console printed since the last start, one line per line."""
        return _protocol.console_log(machine=self.name)

    @property
    def full_console_log(self) -> list[str]:
        """The serial console lines since the last start (upstream's attribute)."""
        log = self.get_console_log()
        return log.split("\n") if log else []

    def wait_for_monitor_prompt(self) -> str:
        """Upstream reads the raw monitor up to its prompt; ntd's HMP calls are complete
        when they return, so nothing is pending."""
        return "(qemu) "

    def send_console(self, chars: str) -> None:
        _protocol.send_console(machine=self.name, data=chars)

    def send_monitor_command(self, command: str) -> str:
        """Run an HMP command and return what upstream's raw monitor socket shows for it:
        the echoed command line, the output and the ``(qemu) `` prompt.

        The command runs through QMP's ``human-monitor-command``; the echo and the prompt are
        added here because scripts test for them (``assert "(qemu)" in r``).
        """
        self.run_callbacks()
        out = _protocol.hmp(machine=self.name, command=command)
        return f"{command}\r\n{out}(qemu) "

    def wait_for_qmp_event(
        self,
        event_filter: Callable[[dict[str, Any]], bool],
        timeout: Duration = DEFAULT_QMP_EVENT_TIMEOUT,
    ) -> dict[str, Any]:
        total = to_seconds(timeout)
        since = _protocol.guest_clock(machine=self.name)
        used = 0.0
        while True:
            left = None if total is None else max(0.0, total - used)
            event = _protocol.qmp_event(machine=self.name, timeout=left)
            if isinstance(event, dict) and event_filter(event):
                return event
            used = _protocol.guest_clock(machine=self.name) - since
            if total is not None and used >= total:
                raise TimeoutError(f"no matching QMP event within {_fmt_seconds(total)} s")

    def send_key(
        self, key: str, delay: Duration | None = timedelta(milliseconds=10), log: bool | None = True
    ) -> None:
        key = CHAR_TO_KEY.get(key, key)
        context = self.nested(f"sending key {key!r}") if log else nullcontext()
        with context:
            self.send_monitor_command(f"sendkey {key}")
            pause = to_seconds(delay, "delay")
            if pause:
                time.sleep(pause)

    def send_chars(self, chars: str, delay: Duration | None = timedelta(milliseconds=10)) -> None:
        with self.nested(f"sending keys {chars!r}"):
            for char in chars:
                self.send_key(char, delay, log=False)

    def forward_port(self, host_port: int = 8080, guest_port: int = 80) -> None:
        self.send_monitor_command(f"hostfwd_add tcp::{host_port}-:{guest_port}")

    def block(self) -> None:
        """Take the first vlan interface's link down (upstream: device virtio-net-pci.1)."""
        self.send_monitor_command("set_link virtio-net-pci.1 off")

    def unblock(self) -> None:
        self.send_monitor_command("set_link virtio-net-pci.1 on")

    # -- files ---------------------------------------------------------------------------

    def copy_from_host_via_shell(
        self, source: str | os.PathLike[str], target: str | os.PathLike[str]
    ) -> None:
        """Copy a host file into the guest through the shell (base64 in the command line);
        works without the shared directory."""
        content = base64.b64encode(Path(source).read_bytes()).decode()
        self.succeed(
            f"mkdir -p $(dirname {target})",
            f"echo -n {content} | base64 -d > {target}",
        )

    def copy_from_host(self, source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        """Copy a host file or directory into the guest through the shared directory
        (permission bits kept, owned by root)."""
        host_src = Path(source)
        vm_target = Path(target)
        self.shared_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.shared_dir) as shared_temp:
            shared_temp_path = Path(shared_temp)
            vm_shared_temp = Path("/tmp/shared") / shared_temp_path.name
            vm_intermediate = vm_shared_temp / host_src.name
            self.succeed(_make_command(["mkdir", "-p", vm_shared_temp]))
            if host_src.is_dir():
                shutil.copytree(host_src, shared_temp_path / host_src.name)
            else:
                shutil.copy(host_src, shared_temp_path)
            self.succeed(_make_command(["mkdir", "-p", vm_target.parent]))
            self.succeed(_make_command(["cp", "-r", vm_intermediate, vm_target]))

    def copy_from_machine(
        self, source: str | os.PathLike[str], target_dir: str | os.PathLike[str] = ""
    ) -> None:
        """Copy a guest file or directory to ``out_dir/target_dir/<name>`` on the host.

        The copy passes through a fresh directory in the shared directory (removed
        afterwards), so ``target_dir`` may also be an absolute host path, as scripts written
        for the legacy driver pass it.
        """
        vm_src = Path(source)
        self.shared_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.shared_dir) as shared_temp:
            intermediate = Path(shared_temp) / vm_src.name
            vm_shared_temp = Path("/tmp/shared") / Path(shared_temp).name
            self.succeed(_make_command(["mkdir", "-p", vm_shared_temp]))
            self.succeed(_make_command(["cp", "-r", vm_src, vm_shared_temp / vm_src.name]))
            abs_target = self.out_dir / target_dir / vm_src.name
            abs_target.parent.mkdir(parents=True, exist_ok=True)
            if intermediate.is_dir():
                shutil.copytree(intermediate, abs_target, dirs_exist_ok=True)
            else:
                shutil.copy(intermediate, abs_target)

    def copy_from_vm(
        self, source: str | os.PathLike[str], target_dir: str | os.PathLike[str] = ""
    ) -> None:
        """Deprecated name of `copy_from_machine`."""
        self.copy_from_machine(source, target_dir)

    # -- screen --------------------------------------------------------------------------

    def _screendump(self, path: str) -> None:
        """QMP screendump as PNG (QEMU >= 7.1); older QEMU: PPM converted by pnmtopng."""
        self.run_callbacks()
        try:
            _protocol.qmp(
                machine=self.name,
                execute="screendump",
                arguments={"filename": os.path.abspath(path), "format": "png"},
            )
            return
        except Exception as e:
            if "format" not in str(e):
                raise MachineError(f"screendump failed: {e}") from None
        with tempfile.TemporaryDirectory() as tmp:
            ppm = os.path.join(tmp, "screen.ppm")
            _protocol.qmp(machine=self.name, execute="screendump", arguments={"filename": ppm})
            try:
                with open(path, "wb") as out:
                    rc = subprocess.run(["pnmtopng", ppm], stdout=out).returncode
            except FileNotFoundError:
                raise MachineError(
                    "Cannot convert screenshot: pnmtopng not found (Debian: netpbm)"
                ) from None
            if rc != 0:
                raise MachineError(f"Cannot convert screenshot (pnmtopng returned code {rc})")

    def screenshot(self, filename: str | os.PathLike[str]) -> None:
        """Save the screen as PNG (in the output directory unless a path is given)."""
        filename = os.fspath(filename)
        if "." not in filename:
            filename += ".png"
        if "/" not in filename:
            filename = os.path.join(self.out_dir, filename)
        with self.nested(f"making screenshot {filename}", {"image": os.path.basename(filename)}):
            self._screendump(filename)

    def _require_ocr(self) -> str:
        """The tesseract binary, or upstream's error when OCR is not available."""
        tesseract = shutil.which("tesseract")
        if tesseract is None:
            self.log("tesseract is not on PATH (Debian: tesseract-ocr; Nix: enableOCR = true)")
            raise MachineError("OCR requested but enableOCR is false")
        return tesseract

    def _ocr(self, image: str) -> str:
        tesseract = self._require_ocr()
        proc = subprocess.run(
            [tesseract, image, "-", "--oem", "2", "-c", "debug_file=/dev/null", "--psm", "11"],
            capture_output=True,
        )
        if proc.returncode != 0:
            # --oem 2 needs legacy models; fall back to the LSTM engine.
            proc = subprocess.run(
                [tesseract, image, "-", "-c", "debug_file=/dev/null", "--psm", "11"],
                capture_output=True,
            )
            if proc.returncode != 0:
                raise MachineError(f"tesseract failed: {proc.stderr.decode(errors='replace')}")
        return proc.stdout.decode(errors="replace")

    def get_screen_text_variants(self) -> list[str]:
        """OCR of the screen: the raw image and, with ImageMagick, two preprocessed ones."""
        self._require_ocr()
        with tempfile.TemporaryDirectory() as tmp:
            png = os.path.join(tmp, "screen.png")
            self._screendump(png)
            variants = [self._ocr(png)]
            convert = shutil.which("magick") or shutil.which("convert")
            if convert is not None:
                for negate in (False, True):
                    out = os.path.join(tmp, f"screen.{'negative' if negate else 'positive'}.png")
                    args = [convert] + (["convert"] if convert.endswith("magick") else [])
                    args += ["-filter", "Catrom", "-density", "72", "-resample", "300",
                             "-contrast", "-normalize", "-despeckle", "-type", "grayscale",
                             "-sharpen", "1", "-posterize", "3"]
                    args += (["-negate"] if negate else [])
                    args += ["-gamma", "100", "-blur", "1x65535", png, out]
                    if subprocess.run(args, capture_output=True).returncode == 0:
                        variants.append(self._ocr(out))
            return variants

    def get_screen_text(self) -> str:
        """OCR of the screen (tesseract)."""
        self._require_ocr()
        with tempfile.TemporaryDirectory() as tmp:
            png = os.path.join(tmp, "screen.png")
            self._screendump(png)
            return self._ocr(png)

    def wait_for_text(self, regex: str, timeout: Duration = DEFAULT_TIMEOUT) -> None:
        """Wait until OCR finds ``regex`` on the screen."""

        def screen_matches(last: bool) -> bool:
            variants = self.get_screen_text_variants()
            for text in variants:
                if re.search(regex, text) is not None:
                    return True
            if last:
                self.log(f"Last OCR attempt failed. Text was: {variants}")
            return False

        with self.nested(f"waiting for {regex} to appear on screen"):
            retry(screen_matches, timeout)

    def wait_for_x(self, timeout: Duration = DEFAULT_TIMEOUT) -> None:
        """Wait until the X11 server accepts connections."""
        with self.nested("waiting for the X11 server"):
            self._wait(
                timeout,
                lambda t, age, w, s: _protocol.wait_x11(
                    machine=self.name, timeout=t, age=age, withheld=w, slice=s
                ),
            )

    def get_window_names(self) -> list[str]:
        return self.succeed(
            "xwininfo -root -tree | sed 's/.*0x[0-9a-f]* \"\\([^\"]*\\)\".*/\\1/; t; d'"
        ).splitlines()

    def wait_for_window(self, regexp: str, timeout: Duration = DEFAULT_TIMEOUT) -> None:
        pattern = re.compile(regexp)

        def window_is_visible(last_try: bool) -> bool:
            names = self.get_window_names()
            if last_try:
                self.log(
                    f"Last chance to match {regexp} on the window list, which currently "
                    f"contains: {', '.join(names)}"
                )
            return any(pattern.search(name) for name in names)

        with self.nested("waiting for a window to appear"):
            retry(window_is_visible, timeout)

    def dump_tty_contents(self, tty: str | int) -> None:
        self.execute(f"fold -w 80 /dev/vcs{tty} | systemd-cat")

    def get_tty_text(self, tty: str | int) -> str:
        status, output = self.execute(
            f"fold -w$(stty -F /dev/tty{tty} size | awk '{{print $2}}') /dev/vcs{tty}"
        )
        return output

    def wait_until_tty_matches(
        self, tty: str | int, regexp: str, timeout: Duration = DEFAULT_TIMEOUT
    ) -> None:
        matcher = re.compile(regexp)

        def tty_matches(last: bool) -> bool:
            text = self.get_tty_text(tty)
            if last:
                self.log(
                    f"Last chance to match /{regexp}/ on TTY{tty}, which currently contains: {text}"
                )
            return len(matcher.findall(text)) > 0

        with self.nested(f"waiting for {regexp} to appear on tty {tty}"):
            retry(tty_matches, timeout)

    # -- interaction ---------------------------------------------------------------------

    def shell_interact(self, address: str | None = None) -> None:
        """Talk to the guest shell from the terminal (Ctrl-D ends)."""
        self.connect()
        self.log("Terminal is ready (there is no initial prompt):")
        while True:
            try:
                line = input("$ ")
            except EOFError:
                return
            except KeyboardInterrupt:
                print()
                continue
            status, out = self.execute(line, check_return=True, timeout=None)
            sys.stdout.write(out)
            if status != 0:
                print(f"(exit status {status})")

    def console_interact(self) -> None:
        """Forward terminal input to the serial console until EOF."""
        self.log("Terminal is ready (there is no prompt):")
        try:
            while True:
                data = os.read(0, 1)
                if not data:
                    self.log("Closing connection to the console")
                    return
                self.send_console(data.decode(errors="replace"))
        except KeyboardInterrupt:
            return


    def ssh_backdoor_command(self) -> str:
        """Upstream's vsock SSH backdoor; ntd does not offer it (use `shell_interact`)."""
        raise MachineError(
            "the vsock SSH backdoor is not supported by ntd; use shell_interact() instead"
        )

    # -- EFI variables -------------------------------------------------------------------

    def _efi_unsupported(self) -> MachineError:
        return MachineError(
            "editing the OVMF variable store (efi vars) is not supported by ntd"
        )

    def create_efi_vars(self) -> None:
        raise self._efi_unsupported()

    def read_efi_vars(self) -> list[EfiVariable]:
        raise self._efi_unsupported()

    def write_efi_vars(self, add: list[EfiVariable]) -> None:
        raise self._efi_unsupported()

    def dump_efi_vars(self) -> None:
        raise self._efi_unsupported()


class QemuMachine(BaseMachine):
    """Upstream's name for a QEMU machine (newest generation)."""


class NspawnMachine(BaseMachine):
    """Upstream's systemd-nspawn machine: a name for type annotations only (ntd runs QEMU
    machines)."""


#: The legacy generation's class name.
Machine = QemuMachine

# Set by the driver: returns the polling-condition slice (seconds) or None.
_polling_slice: Callable[[], float | None] = lambda: None


def set_polling_slice(fn: Callable[[], float | None]) -> None:
    global _polling_slice
    _polling_slice = fn


__all__ = [
    "BaseMachine",
    "QemuStartCommand",
    "QemuMachine",
    "NspawnMachine",
    "Machine",
    "MachineError",
    "RequestedAssertionFailed",
    "retry",
    "Duration",
    "to_seconds",
]

