"""The test driver as testScripts see it: the namespace, running the script, failure reports.

Machines, switches and timeouts live in the ntd process; this module builds upstream's
symbols around them and runs the script with upstream's failure handling.
"""

from __future__ import annotations

import math
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import CodeType
from typing import Any, overload
from unittest import TestCase

from test_driver import _protocol
from test_driver._constants import (
    DEFAULT_TIMEOUT,
    POLLING_INTERVAL_SECONDS,
    POLLING_SLICE_MIN_SECONDS,
)
from test_driver._protocol import HelloReply
from test_driver.debug import Debug, DebugAbstract, DebugNop
from test_driver._retry import RemainingTime, run_retry
from test_driver.duration import (
    Duration,
    to_limit,
    to_seconds,
    warn_deprecated_argument,
    warn_if_numeric,
)
from test_driver.errors import MachineError, RequestedAssertionFailed, TestScriptError
from test_driver.logger import AbstractLogger, rootlog
from test_driver.machine import (
    BaseMachine,
    Machine,
    NspawnMachine,
    QemuMachine,
    retry,
    set_polling_slice,
)
from test_driver.polling_condition import PollingCondition
from test_driver.vlan import VLan


class AssertionTester(TestCase):
    """`t`: unittest assertions that fail with the driver's assertion type."""

    failureException = RequestedAssertionFailed

    def __init__(self) -> None:
        super().__init__()
        self.maxDiff = None


def pythonize_name(name: str) -> str:
    return re.sub(r"^[^A-Za-z_]|[^A-Za-z0-9_]", "_", name)


class _RaceTimer:
    """Stands in for upstream's `threading.Timer`; the global timeout runs in ntd."""

    def cancel(self) -> None:
        _protocol.disarm_timeout()

    def start(self) -> None:
        _protocol.arm_timeout()


class Poll:
    """What `polling_condition` returns: ``with cond:`` activates the condition for the
    block, ``cond.wait(timeout)`` waits until it holds."""

    condition: PollingCondition

    def __init__(self, driver: "Driver", condition: PollingCondition) -> None:
        self._driver = driver
        self.condition = condition

    def __enter__(self) -> None:
        self._driver.polling_conditions.append(self.condition)

    def __exit__(self, a: object, b: object, c: object) -> None:
        res = self._driver.polling_conditions.pop()
        assert res is self.condition

    def wait(
        self,
        timeout: Duration | None = DEFAULT_TIMEOUT,
        timeout_seconds: Duration | None = None,
    ) -> None:
        """Wait until the condition holds (default 15 minutes; ``timeout=None``: no limit).
        ``timeout_seconds`` is upstream's deprecated name of ``timeout``."""
        if timeout_seconds is not None:
            if timeout is not DEFAULT_TIMEOUT:
                raise TypeError(
                    "wait() got both 'timeout' and 'timeout_seconds' arguments. "
                    "Pass only 'timeout'"
                )
            warn_deprecated_argument("timeout_seconds", "timeout")
            warn_if_numeric(timeout_seconds, "wait")
            total = to_limit(timeout_seconds, DEFAULT_TIMEOUT)
        else:
            warn_if_numeric(timeout, "wait")
            total = math.inf if timeout is None else to_limit(timeout, DEFAULT_TIMEOUT)
        logger = self._driver.logger
        description = self.condition.description

        def condition(last: RemainingTime | None) -> bool:
            if last:
                logger.info(f"Last chance for {description}")
            ret = self.condition.check(force=True)
            if not ret and not last:
                logger.info(f"({description} failure not fatal yet)")
            return ret

        with logger.nested(f"waiting for {description}"):
            run_retry(condition, total)


@dataclass
class VsockPair:
    """A machine's SSH-backdoor sockets (upstream's `VsockPair`): QEMU's vhost-user socket
    (``guest``), the hybrid-vsock socket the host connects to (``host``), the guest CID."""

    guest: Path
    host: Path
    cid: int


class VHostDeviceVsock:
    """Upstream's handle of the vhost-device-vsock backend (ntd runs the process)."""

    def __init__(self, sockets: dict[str, VsockPair]) -> None:
        self.sockets = sockets


class Driver:
    tests: str
    vlans: list[VLan]
    machines_qemu: list[QemuMachine]
    machines_nspawn: list[NspawnMachine]
    polling_conditions: list[PollingCondition]
    global_timeout: float
    logger: AbstractLogger
    debug: DebugAbstract
    out_dir: Path

    def __init__(self, hello: HelloReply, tests: str, code: CodeType | None) -> None:
        self.tests = tests
        self._code = code
        self.out_dir = Path(hello["out_dir"])
        self.tmp_dir = Path(hello["tmp_dir"])
        self.global_timeout = float(hello["global_timeout"])
        self.race_timer = _RaceTimer()
        self.logger = rootlog
        hook = hello["debug_hook"]
        self.debug = Debug(self.logger, hook) if hook else DebugNop()
        self.polling_conditions = []
        self.vlans = []
        for v in hello["vlans"]:
            vlan = VLan(v["nr"], self.tmp_dir, self.logger)
            # The driver decides where sockets live (a short directory if tmp_dir is long).
            vlan.socket_dir = Path(v["socket_dir"])
            self.vlans.append(vlan)
        self.machines_qemu = []
        self.machines_nspawn = []
        for m in hello["machines"]:
            kind = NspawnMachine if m["kind"] == "nspawn" else QemuMachine
            machine = kind(
                name=m["name"],
                start_command=m["start_command"],
                state_dir=Path(m["state_dir"]),
                shared_dir=Path(m["shared_dir"]),
                out_dir=self.out_dir,
                tmp_dir=self.tmp_dir,
                keep_machine_state=m["keep_machine_state"],
                callbacks=[self.check_polling_conditions],
                logger=self.logger,
            )
            if isinstance(machine, NspawnMachine):
                self.machines_nspawn.append(machine)
            else:
                self.machines_qemu.append(machine)
        backdoor = hello["ssh_backdoor"]
        self.enable_ssh_backdoor = backdoor is not None
        self.vsock_offset: int | None = None
        self.vhost_vsock: VHostDeviceVsock | None = None
        if backdoor is not None:
            self.vsock_offset = backdoor["vsock_offset"]
            sockets = backdoor["sockets"]
            if sockets is not None:
                self.vhost_vsock = VHostDeviceVsock(
                    {
                        s["machine"]: VsockPair(Path(s["guest"]), Path(s["host"]), s["cid"])
                        for s in sockets
                    }
                )
        for qemu in self.machines_qemu:
            pair = self.vhost_vsock.sockets.get(qemu.name) if self.vhost_vsock else None
            if pair is not None:
                qemu.vsock_host, qemu.vsock_guest = pair.host, pair.guest
        set_polling_slice(self._polling_slice)

    @property
    def machines(self) -> list[BaseMachine]:
        """VMs and containers, sorted by name (as upstream, for consistency with the test
        framework's `nodesAndContainers`)."""
        both: list[BaseMachine] = [*self.machines_qemu, *self.machines_nspawn]
        return sorted(both, key=lambda m: m.name)

    def __enter__(self) -> "Driver":
        return self

    def __exit__(self, *_: Any) -> None:
        pass

    # -- the namespace -------------------------------------------------------------------

    @contextmanager
    def subtest(self, name: str) -> Iterator[None]:
        """A named block of the test (a JUnit test case); a failure in it is logged."""
        with self.logger.subtest(name):
            try:
                yield
            except Exception as e:
                self.logger.log_test_error(f'Test "{name}" failed with error: "{e}"')
                raise e

    def test_symbols(self) -> dict[str, Any]:
        general_symbols: dict[str, Any] = dict(
            start_all=self.start_all,
            test_script=self.test_script,
            machines=self.machines,
            machines_qemu=self.machines_qemu,
            machines_nspawn=self.machines_nspawn,
            vlans=self.vlans,
            driver=self,
            log=self.logger,
            os=os,
            create_machine=self.create_machine,
            subtest=self.subtest,
            run_tests=self.run_tests,
            join_all=self.join_all,
            retry=retry,
            serial_stdout_off=self.serial_stdout_off,
            serial_stdout_on=self.serial_stdout_on,
            polling_condition=self.polling_condition,
            BaseMachine=BaseMachine,
            QemuMachine=QemuMachine,
            NspawnMachine=NspawnMachine,
            Machine=Machine,
            t=AssertionTester(),
            debug=self.debug,
            dump_machine_ssh=self.dump_machine_ssh,
            snapshot_all=self.snapshot_all,
            restore_all=self.restore_all,
        )
        machine_symbols: dict[str, Any] = {pythonize_name(m.name): m for m in self.machines}
        if len(self.machines) == 1 and "machine" not in machine_symbols:
            (machine_symbols["machine"],) = self.machines
        vlan_symbols = {f"vlan{v.nr}": v for v in self.vlans}
        print(
            "additionally exposed symbols:\n    "
            + ", ".join(m.name for m in self.machines)
            + ",\n    "
            + ", ".join(f"vlan{v.nr}" for v in self.vlans)
            + ",\n    "
            + ", ".join(general_symbols.keys())
        )
        return {**general_symbols, **machine_symbols, **vlan_symbols}

    # -- running -------------------------------------------------------------------------

    def test_script(self) -> None:
        """Run the test script with upstream's failure reporting."""
        with self.logger.nested("run the VM test script"):
            symbols = self.test_symbols()
            code: CodeType | str = self._code if self._code is not None else self.tests
            try:
                exec(code, symbols, None)
            except MachineError:
                for line in traceback.format_exc().splitlines():
                    self.logger.log_test_error(line)
                sys.exit(1)
            except TestScriptError:
                self._report_assertion(*sys.exc_info())
                self.debug.breakpoint()
                sys.exit(1)
            except Exception:
                self.debug.breakpoint()
                raise

    def _report_assertion(self, exc_type: Any, exc: Any, tb: Any) -> None:
        frames = [f for f in traceback.extract_tb(tb) if f.filename == "<string>"]
        self.logger.log_test_error("Traceback (most recent call last):")
        code = self.tests.splitlines()
        for frame, line in zip(frames, traceback.format_list(frames)):
            self.logger.log_test_error(line.rstrip())
            if frame.lineno and 0 < frame.lineno <= len(code):
                self.logger.log_test_error(f"    {code[frame.lineno - 1].strip()}")
        self.logger.log_test_error("")
        prefix = exc_type.__name__ if exc_type is not None else "Error"
        for line in f"{prefix}: {exc}".splitlines():
            self.logger.log_test_error(line)

    def run_tests(self) -> None:
        """Run the test script (non-interactive runs): arm the global timeout, run, sync."""
        self.race_timer.start()
        self.test_script()
        for machine in self.machines:
            if machine.is_up():
                machine.execute("sync")

    def start_all(self) -> None:
        """Start every machine at once (boots run in parallel)."""
        with self.logger.nested("start all VMs"):
            names = [m.name for m in self.machines]
            if names:
                _protocol.start(machines=names, all=True)

    def join_all(self) -> None:
        """Wait for every machine to shut down."""
        with self.logger.nested("wait for all VMs to finish"):
            for machine in self.machines:
                machine.wait_for_shutdown()
            self.race_timer.cancel()

    def create_machine(
        self,
        start_command: str | dict[str, Any],
        *,
        name: str | None = None,
        keep_machine_state: bool = False,
        keep_vm_state: bool | None = None,
        **kwargs: Any,
    ) -> QemuMachine:
        """A machine from a start command, outside the configured set (upstream semantics:
        no polling-condition callbacks, not in `machines`)."""
        if isinstance(start_command, dict):
            raise TypeError(
                "create_machine() with a dict (LegacyStartCommand) is not supported; "
                "pass a start command string"
            )
        keep = keep_machine_state if keep_vm_state is None else keep_vm_state
        info = _protocol.create_machine(
            start_command=start_command, name=name, keep_machine_state=keep
        )
        return QemuMachine(
            name=info["name"],
            start_command=start_command,
            state_dir=Path(info["state_dir"]),
            shared_dir=Path(info["shared_dir"]),
            out_dir=self.out_dir,
            tmp_dir=self.tmp_dir,
            keep_machine_state=keep,
            logger=self.logger,
        )

    def snapshot_all(self, name: str) -> None:
        """Save every running machine at one instant, and the vlans' network faults, under
        ``name`` (ntd; for ``restore_all(name)`` later in this run). A machine still booting
        is waited for first, as a command on it would be."""
        with self.logger.nested(f"taking snapshot '{name}' of all machines"):
            for machine in self.machines_qemu:
                if machine.booted:
                    machine.connect()
            _protocol.snapshot_all(name=name)

    def restore_all(self, name: str) -> None:
        """Put every machine and the vlans' faults back to ``snapshot_all(name)``; machines
        that were not running then are stopped (ntd)."""
        with self.logger.nested(f"restoring snapshot '{name}' of all machines"):
            _protocol.restore_all(name=name)

    def serial_stdout_on(self) -> None:
        self.logger.print_serial_logs(True)

    def serial_stdout_off(self) -> None:
        self.logger.print_serial_logs(False)

    def dump_machine_ssh(self, offset: int | None = None) -> None:
        """Print how to reach each machine over the SSH backdoor (upstream's words): through
        its vsock-mux socket (`enable_ssh_backdoor`), or at vsock CID ``offset`` + 1, + 2, …
        (the mid generation's ``--dump-vsocks OFFSET``). Nothing without a backdoor."""
        if offset is None:
            offset = self.vsock_offset
        if not self.enable_ssh_backdoor and offset is None:
            return
        if not self.machines:
            print("SSH backdoor enabled, but no machines defined")
            return
        bright, reset = "\x1b[1m", "\x1b[0m"
        print("SSH backdoor enabled, the machines can be accessed like this:")
        print(
            f"{bright}Note:{reset} this requires {bright}systemd-ssh-proxy(1){reset} to be "
            "enabled (default on NixOS 25.05 and newer)."
        )
        longest = max(len(m.name) for m in self.machines)
        for number, machine in enumerate(self.machines, start=(offset or 0) + 1):
            spaces = " " * (longest - len(machine.name) + 2)
            if isinstance(machine, QemuMachine):
                command = (
                    machine.ssh_backdoor_command()
                    if self.vhost_vsock is not None
                    else machine.ssh_backdoor_command(number)
                )
            elif isinstance(machine, NspawnMachine):
                command = machine.ssh_backdoor_command()
            else:
                continue
            print(f"    {machine.name}:{spaces}{bright}{command}{reset}")

    # -- polling conditions --------------------------------------------------------------

    def check_polling_conditions(self) -> None:
        for condition in self.polling_conditions:
            condition.maybe_raise()

    def _polling_slice(self) -> float | None:
        if not self.polling_conditions:
            return None
        return max(
            POLLING_SLICE_MIN_SECONDS, min(c.seconds_interval for c in self.polling_conditions)
        )

    @overload
    def polling_condition(
        self,
        fun_: Callable[..., Any],
        *,
        seconds_interval: float | None = None,
        interval: timedelta | None = None,
        description: str | None = None,
    ) -> Poll: ...

    @overload
    def polling_condition(
        self,
        fun_: None = None,
        *,
        seconds_interval: float | None = None,
        interval: timedelta | None = None,
        description: str | None = None,
    ) -> Callable[[Callable[..., Any]], Poll]: ...

    def polling_condition(
        self,
        fun_: Callable[..., Any] | None = None,
        *,
        seconds_interval: float | None = None,
        interval: timedelta | None = None,
        description: str | None = None,
    ) -> Poll | Callable[[Callable[..., Any]], Poll]:
        """A condition checked before every command while it is active (``with cond:``):
        ``@polling_condition``, ``@polling_condition(interval=..., description=...)`` or
        ``polling_condition(fn)``. The default interval is 2 seconds."""
        if interval is not None:
            every = interval.total_seconds()
        elif seconds_interval is not None:
            every = float(seconds_interval)
        else:
            every = POLLING_INTERVAL_SECONDS

        def wrap(fun: Callable[..., Any]) -> Poll:
            return Poll(self, PollingCondition(fun, self.logger, every, description))

        if fun_ is None:
            return wrap
        return wrap(fun_)

    # -- interactive ---------------------------------------------------------------------

    def interactive(self) -> None:
        symbols = self.test_symbols()
        history = os.path.join(os.getcwd(), ".nixos-test-history")
        try:
            from ptpython.repl import embed  # type: ignore[import-not-found]

            embed(symbols, {}, history_filename=history)
            return
        except ImportError:
            pass
        import code

        try:
            import readline

            try:
                readline.read_history_file(history)
            except OSError:
                pass
            import rlcompleter

            readline.set_completer(rlcompleter.Completer(symbols).complete)
            readline.parse_and_bind("tab: complete")
        except ImportError:
            readline = None  # type: ignore[assignment]
        try:
            code.interact(banner="ntd interactive test driver; Ctrl-D ends", local=symbols)
        finally:
            if readline is not None:
                try:
                    readline.write_history_file(history)
                except OSError:
                    pass

