"""What every machine of a test offers, VM or container (upstream's ``BaseMachine``):
commands, waits, systemd units, files through the shared directory, screenshots and OCR,
logging. Every method forwards to the ntd driver, which owns the machines, the commands and
the waits. What stays here is what needs Python: argument conversion (numbers or
timedeltas), log nesting around each call, polling-condition callbacks, regular expressions,
and user callables (`retry`). The kinds are `QemuMachine` (test_driver.machine.qemu) and
`NspawnMachine` (test_driver.machine.nspawn).
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
from contextlib import _GeneratorContextManager
from datetime import timedelta
from pathlib import Path
from typing import Any

from test_driver import _protocol
from test_driver._constants import DEFAULT_TIMEOUT
from test_driver._protocol import (
    STATUS_NOT_WAITED,
    MachineState,
    RunReply,
    WaitReply,
)
from test_driver._retry import RemainingTime, run_retry
from test_driver.duration import (
    Duration,
    finite_or_none,
    to_limit,
    to_seconds,
    warn_deprecated_argument,
    warn_if_numeric,
)
from test_driver.errors import MachineError, RequestedAssertionFailed
from test_driver.logger import AbstractLogger, rootlog

def _make_command(args: list[Any]) -> str:
    """A shell command line from arguments, each quoted (upstream's ``make_command``)."""
    return " ".join(shlex.quote(str(a)) for a in args)


def _fmt_seconds(secs: float) -> str:
    return repr(float(secs))


def _ocr_texts(variants: list[str | None]) -> str:
    """What OCR variants recognised, for a log line or an error (a timed-out one says so)."""
    if not variants:
        return "nothing (no OCR attempt finished)"
    return "[" + ", ".join("<timed out>" if v is None else repr(v) for v in variants) + "]"


#: One slice of a wait: ``(timeout, age, withheld, slice)`` in seconds to the driver's reply
#: (``age``: guest-available time used so far, ``withheld``: time the host withheld meanwhile).
_WaitSlice = Callable[[float | None, float, float, float | None], WaitReply]


class BaseMachine:
    """A machine of the test: a QEMU VM (`QemuMachine`) or a systemd-nspawn container
    (`NspawnMachine`)."""

    name: str
    start_command: str
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
        self.state_dir = state_dir
        self.shared_dir = shared_dir
        self.out_dir = out_dir
        self.tmp_dir = tmp_dir
        self.keep_machine_state = keep_machine_state
        self.callbacks = list(callbacks or [])
        self.logger = logger

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
    def pid(self) -> int | None:
        pid = self._state()["pid"]
        return int(pid) if pid is not None else None

    @pid.setter
    def pid(self, value: int | None) -> None:
        """Scripts that kill QEMU themselves reset ``pid``; the driver tracks the process
        itself, so the assignment changes nothing."""

    @property
    def keep_vm_state(self) -> bool:
        return self.keep_machine_state

    def is_up(self) -> bool:
        raise NotImplementedError

    def send_key(
        self, key: str, delay: Duration | None = timedelta(milliseconds=10), log: bool | None = True
    ) -> None:
        raise NotImplementedError

    def _screendump(self, path: str) -> None:
        """Write the screen to ``path`` as PNG."""
        raise NotImplementedError

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

    #: The log block `shutdown` and `wait_for_shutdown` open.
    _powering_off = "waiting for the VM to power off"

    def _power_off(self, send: Callable[[], None], crash: bool = False) -> None:
        """Wait for the machine to end (after asking it to, for ``shutdown``/``crash``). On a
        machine that is not running this only acknowledges an exit nobody asked for, so that
        the next command boots the machine again."""
        if not self.booted:
            send()
            return
        if crash:
            self.log("forced crash")
        with self.nested(self._powering_off):
            sys.stdout.flush()
            send()

    def wait_for_shutdown(self, timeout: Duration | None = None) -> None:
        warn_if_numeric(timeout, "wait_for_shutdown")
        seconds = to_seconds(timeout)
        self._power_off(lambda: _protocol.wait_for_shutdown(machine=self.name, timeout=seconds))

    def shutdown(self) -> None:
        self._power_off(lambda: _protocol.shutdown(machine=self.name))

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
        warn_if_numeric(timeout, "execute")
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
        warn_if_numeric(timeout, "succeed")
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
        warn_if_numeric(timeout, "fail")
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

        run_retry(attempt, to_limit(timeout, DEFAULT_TIMEOUT))
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
        warn_if_numeric(timeout, "wait_until_succeeds")
        warn_if_numeric(attempt_timeout, "wait_until_succeeds")
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
        warn_if_numeric(timeout, "wait_until_fails")
        warn_if_numeric(attempt_timeout, "wait_until_fails")
        with self.nested(f"waiting for failure: {command}"):
            if attempt_timeout is not None:
                return self._wait_bounded_attempts(command, False, timeout, attempt_timeout)
            return self._output(self._wait_command(command, False, timeout))

    def wait_for_file(self, filename: str, timeout: Duration = DEFAULT_TIMEOUT) -> None:
        warn_if_numeric(timeout, "wait_for_file")
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
        warn_if_numeric(timeout, "wait_for_open_port")
        with self.nested(f"waiting for TCP port {port} on {addr}"):
            self._wait_port(addr, port, True, timeout)

    def wait_for_closed_port(
        self, port: int | str, addr: str = "localhost", timeout: Duration = DEFAULT_TIMEOUT
    ) -> None:
        warn_if_numeric(timeout, "wait_for_closed_port")
        with self.nested(f"waiting for TCP port {port} on {addr} to be closed"):
            self._wait_port(addr, port, False, timeout)

    def wait_for_open_unix_socket(
        self, addr: str, is_datagram: bool = False, timeout: Duration = DEFAULT_TIMEOUT
    ) -> None:
        warn_if_numeric(timeout, "wait_for_open_unix_socket")
        kind = "datagram" if is_datagram else "stream"
        with self.nested(f"waiting for UNIX-domain {kind} on '{addr}'"):
            self._wait(
                timeout,
                lambda t, age, w, s: _protocol.wait_unix_socket(
                    machine=self.name, path=addr, datagram=is_datagram, timeout=t, age=age, withheld=w, slice=s
                ),
            )

    def sleep(self, duration: Duration | None = None, secs: Duration | None = None) -> None:
        """Sleep in the guest (guest time). ``secs`` is upstream's deprecated name."""
        if secs is not None:
            if duration is not None:
                raise TypeError("sleep() got both 'duration' and 'secs'. Pass only 'duration'")
            warn_deprecated_argument("secs", "duration")
            warn_if_numeric(secs, "sleep")
            value: Duration | None = secs
        else:
            warn_if_numeric(duration, "sleep")
            value = duration
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
        warn_if_numeric(timeout, "wait_for_unit")
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
        warn_if_numeric(timeout, "wait_for_unit_active_state")
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
                    withheld=w,
                    slice=s,
                ),
            )

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

    def send_chars(self, chars: str, delay: Duration | None = timedelta(milliseconds=10)) -> None:
        warn_if_numeric(delay, "send_chars")
        with self.nested(f"sending keys {chars!r}"):
            for char in chars:
                self.send_key(char, delay, log=False)

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

    def _ocr(self, image: str, timeout: float | None = None) -> str | None:
        """Text tesseract reads in ``image``; None if it did not finish within ``timeout``
        seconds (upstream: a timed-out OCR run has no result, which is not "no text")."""
        tesseract = self._require_ocr()
        common = [tesseract, image, "-", "-c", "debug_file=/dev/null", "--psm", "11"]
        deadline = None if timeout is None else time.monotonic() + timeout
        # --oem 2 needs legacy models; without them fall back to the LSTM engine.
        for args in (common[:3] + ["--oem", "2"] + common[3:], common):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                proc = subprocess.run(args, capture_output=True, timeout=left)
            except subprocess.TimeoutExpired:
                return None
            if proc.returncode == 0:
                return proc.stdout.decode(errors="replace")
        raise MachineError(f"tesseract failed: {proc.stderr.decode(errors='replace')}")

    def _ocr_variants(self, timeout: float | None) -> list[str | None]:
        """OCR of the screen: the raw image and, with ImageMagick, two preprocessed ones;
        a variant that did not finish within ``timeout`` seconds is None."""
        self._require_ocr()
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        with tempfile.TemporaryDirectory() as tmp:
            png = os.path.join(tmp, "screen.png")
            self._screendump(png)
            variants = [self._ocr(png, left())]
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
                    try:
                        converted = subprocess.run(args, capture_output=True, timeout=left())
                    except subprocess.TimeoutExpired:
                        variants.append(None)
                        continue
                    if converted.returncode == 0:
                        variants.append(self._ocr(out, left()))
            return variants

    def get_screen_text_variants(self) -> list[str]:
        """OCR of the screen: the raw image and, with ImageMagick, two preprocessed ones."""
        return [v for v in self._ocr_variants(None) if v is not None]

    def get_screen_text(self) -> str:
        """OCR of the screen (tesseract)."""
        self._require_ocr()
        with tempfile.TemporaryDirectory() as tmp:
            png = os.path.join(tmp, "screen.png")
            self._screendump(png)
            return self._ocr(png) or ""

    def wait_for_text(self, regex: str, timeout: Duration = DEFAULT_TIMEOUT) -> None:
        """Wait until OCR finds ``regex`` on the screen. Each attempt's OCR is bounded by the
        time left; when the time is up the error shows what the last attempt recognised."""
        warn_if_numeric(timeout, "wait_for_text")
        last_text: list[str | None] = []
        logged = False

        def screen_matches(remaining: RemainingTime | None) -> bool:
            nonlocal last_text, logged
            variants = self._ocr_variants(None if remaining is None else float(remaining))
            if any(v is not None for v in variants) or not last_text:
                last_text = variants
            for text in variants:
                if text is not None and re.search(regex, text) is not None:
                    return True
            if remaining:
                self.log(f"Last OCR attempt failed. Text was: {_ocr_texts(variants)}")
                logged = True
            return False

        with self.nested(f"waiting for {regex} to appear on screen"):
            try:
                run_retry(screen_matches, to_limit(timeout, DEFAULT_TIMEOUT))
            except RequestedAssertionFailed as e:
                if not logged:
                    self.log(f"Last OCR attempt failed. Text was: {_ocr_texts(last_text)}")
                raise RequestedAssertionFailed(
                    f"{e}: {regex!r} did not appear on the screen; "
                    f"the last OCR attempt recognised: {_ocr_texts(last_text)}"
                ) from None

    def get_window_names(self) -> list[str]:
        return self.succeed(
            "xwininfo -root -tree | sed 's/.*0x[0-9a-f]* \"\\([^\"]*\\)\".*/\\1/; t; d'"
        ).splitlines()

    def wait_for_window(self, regexp: str, timeout: Duration = DEFAULT_TIMEOUT) -> None:
        warn_if_numeric(timeout, "wait_for_window")
        pattern = re.compile(regexp)

        def window_is_visible(last_try: RemainingTime | None) -> bool:
            names = self.get_window_names()
            if last_try:
                self.log(
                    f"Last chance to match {regexp} on the window list, which currently "
                    f"contains: {', '.join(names)}"
                )
            return any(pattern.search(name) for name in names)

        with self.nested("waiting for a window to appear"):
            run_retry(window_is_visible, to_limit(timeout, DEFAULT_TIMEOUT))


# Set by the driver: returns the polling-condition slice (seconds) or None.
_polling_slice: Callable[[], float | None] = lambda: None


def set_polling_slice(fn: Callable[[], float | None]) -> None:
    global _polling_slice
    _polling_slice = fn
