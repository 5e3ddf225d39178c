"""A QEMU virtual machine of the test (upstream's ``QemuMachine``): what only a VM offers on
top of `BaseMachine` — the backdoor shell's connection, QMP and the HMP monitor, the serial
console, keys through QEMU, screenshots through QMP, link up/down, EFI variables."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Any

from test_driver import _protocol
from test_driver._constants import DEFAULT_QMP_EVENT_TIMEOUT, DEFAULT_TIMEOUT
from test_driver._retry import RemainingTime, run_retry, timed_out
from test_driver.duration import Duration, to_limit, to_seconds, warn_if_numeric
from test_driver.efi import EfiVariable, EfiVars
from test_driver.errors import MachineError, RequestedAssertionFailed
from test_driver.logger import AbstractLogger, rootlog
from test_driver.machine.base import BaseMachine, _fmt_seconds
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


class QemuMachine(BaseMachine):
    """A QEMU virtual machine of the test."""

    start_command: QemuStartCommand

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
        super().__init__(
            name,
            start_command,
            state_dir,
            shared_dir,
            out_dir,
            tmp_dir,
            keep_machine_state,
            callbacks,
            logger,
        )
        self.start_command = QemuStartCommand(start_command)
        self.qmp_client = QMPSession(name)
        # The SSH backdoor's sockets, when the test enables it (set by the driver).
        self.vsock_host: Path | None = None
        self.vsock_guest: Path | None = None
        # Upstream attributes that have no meaning here but that scripts may read.
        self.process: subprocess.Popen[bytes] | None = None
        self.monitor: Any = None
        self.shell: Any = None
        self.serial_thread: Any = None

    # -- state ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return bool(self._state()["connected"])

    @connected.setter
    def connected(self, value: bool) -> None:
        if not value:
            _protocol.mark_disconnected(machine=self.name)

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

    def is_up(self) -> bool:
        state = self._state()
        return bool(state["booted"] and state["connected"])

    # -- life cycle ----------------------------------------------------------------------

    def start(self, allow_reboot: bool = False) -> None:
        _protocol.start(machines=[self.name], allow_reboot=allow_reboot)

    def connect(self) -> None:
        _protocol.connect(machine=self.name)

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

    # -- named snapshots (ntd) -----------------------------------------------------------

    def snapshot(self, name: str) -> None:
        """Save this running machine (memory, devices, disk) under ``name``, for
        ``restore(name)`` later in this run. A machine still booting is waited for first, as
        a command would be; a 9p share other than ntd's own (``xchg``, ``shared``) makes it
        impossible."""
        with self.nested(f"taking snapshot '{name}'"):
            if self.booted:
                self.connect()
            _protocol.snapshot(machine=self.name, name=name)

    def restore(self, name: str) -> None:
        """Put this machine back to its snapshot ``name``: its QEMU is replaced by one
        started from the snapshot (far faster than a reboot); the guest clock is set from
        the host's. Raises ``ValueError`` for an unknown name."""
        with self.nested(f"restoring snapshot '{name}'"):
            _protocol.restore(machine=self.name, name=name)

    # -- console and monitor -------------------------------------------------------------

    def wait_for_console_text(self, regex: str, timeout: Duration | None = None) -> None:
        """Wait until ``regex`` matches the serial output printed since the last such wait."""
        warn_if_numeric(timeout, "wait_for_console_text")
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
                    raise timed_out(used, total, time.monotonic() - start)

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
        warn_if_numeric(timeout, "wait_for_qmp_event")
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
        warn_if_numeric(delay, "send_key")
        key = CHAR_TO_KEY.get(key, key)
        context = self.nested(f"sending key {key!r}") if log else nullcontext()
        with context:
            self.send_monitor_command(f"sendkey {key}")
            pause = to_seconds(delay, "delay")
            if pause:
                time.sleep(pause)

    def forward_port(self, host_port: int = 8080, guest_port: int = 80) -> None:
        self.send_monitor_command(f"hostfwd_add tcp::{host_port}-:{guest_port}")

    def block(self) -> None:
        """Take the first vlan interface's link down (upstream: device virtio-net-pci.1)."""
        self.send_monitor_command("set_link virtio-net-pci.1 off")

    def unblock(self) -> None:
        self.send_monitor_command("set_link virtio-net-pci.1 on")

    # -- screen and terminals ------------------------------------------------------------

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

    def wait_for_x(self, timeout: Duration = DEFAULT_TIMEOUT) -> None:
        """Wait until the X11 server accepts connections."""
        warn_if_numeric(timeout, "wait_for_x")
        with self.nested("waiting for the X11 server"):
            self._wait(
                timeout,
                lambda t, age, w, s: _protocol.wait_x11(
                    machine=self.name, timeout=t, age=age, withheld=w, slice=s
                ),
            )

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
        warn_if_numeric(timeout, "wait_until_tty_matches")
        matcher = re.compile(regexp)

        def tty_matches(last: RemainingTime | None) -> bool:
            text = self.get_tty_text(tty)
            if last:
                self.log(
                    f"Last chance to match /{regexp}/ on TTY{tty}, which currently contains: {text}"
                )
            return len(matcher.findall(text)) > 0

        with self.nested(f"waiting for {regexp} to appear on tty {tty}"):
            run_retry(tty_matches, to_limit(timeout, DEFAULT_TIMEOUT))

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

    def ssh_backdoor_command(self, index: int | None = None) -> str:
        """How to reach the machine over the SSH backdoor: ``vsock-mux/<host socket>``
        (`enable_ssh_backdoor`), or ``vsock/<index>`` (the mid generation's native CID)."""
        if index is not None:
            return f"ssh -o User=root vsock/{index}"
        if self.vsock_host is None:
            raise MachineError(
                f"{self.name} has no SSH backdoor: the test does not enable it "
                "(sshBackdoor.enable / enable_ssh_backdoor)"
            )
        return f"ssh -o User=root vsock-mux/{self.vsock_host}"

    # -- EFI variables -------------------------------------------------------------------

    @property
    def efi_vars_path(self) -> Path:
        """The machine's UEFI variable store (``NIX_EFI_VARS`` of its start script)."""
        return self.state_dir / f"{self.name}-efi-vars.fd"

    @property
    def efi_vars(self) -> EfiVars:
        return EfiVars(self.efi_vars_path, lambda: self.booted)

    def create_efi_vars(self) -> None:
        """Create an empty OVMF variable store (the machine must be down and have none)."""
        self.efi_vars.create_empty()

    def read_efi_vars(self) -> list[EfiVariable]:
        """The variables of the store (none if it does not exist); the machine must be down."""
        return self.efi_vars.read() or []

    def write_efi_vars(self, add: list[EfiVariable]) -> None:
        """Add or replace variables in the store (created if missing); the machine must be
        down."""
        self.efi_vars.write(add)

    def dump_efi_vars(self) -> None:
        """Print every variable of the store."""
        for var in self.read_efi_vars():
            var.print()
