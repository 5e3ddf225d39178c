"""A systemd-nspawn container of the test (upstream's ``NspawnMachine``): `BaseMachine`'s
methods, run in the container (every command is an ``nsenter`` child of the driver, as
upstream runs them), plus what a container does its own way: ``start()`` without
``allow_reboot``, keys through ``xdotool`` and screenshots through ``xwd`` inside the
container (an X server there), and the SSH backdoor through systemd's unix-export socket.
A VM's console, monitor, QMP, terminals and EFI variables do not exist here: asking for them
raises `AttributeError`, as upstream."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from test_driver import _protocol
from test_driver._constants import DEFAULT_TIMEOUT
from test_driver._protocol import RunReply
from test_driver.duration import Duration, to_seconds, warn_if_numeric
from test_driver.errors import MachineError
from test_driver.machine.base import BaseMachine, _make_command

#: QEMU key names (what `send_key` takes, as for a VM) that are spelled differently for X11.
_X11_KEYS = {
    "ret": "Return",
    "\n": "Return",
    "spc": "space",
    "esc": "Escape",
    "tab": "Tab",
    "backspace": "BackSpace",
    "delete": "Delete",
    "insert": "Insert",
    "home": "Home",
    "end": "End",
    "pgup": "Prior",
    "pgdn": "Next",
    "up": "Up",
    "down": "Down",
    "left": "Left",
    "right": "Right",
    "menu": "Menu",
    "meta_l": "Super_L",
    **{f"f{n}": f"F{n}" for n in range(1, 13)},
}


def x11_key_name(key: str) -> str:
    """``ctrl-alt-delete`` → ``ctrl+alt+Delete``: QEMU's key combination as xdotool's."""
    return "+".join(_X11_KEYS.get(part, part) for part in key.split("-")) if key != "-" else "minus"


class NspawnMachine(BaseMachine):
    """A systemd-nspawn container of the test."""

    _powering_off = "waiting for the container to power off"

    @staticmethod
    def machine_name_from_start_command(start_command: str) -> str:
        """The name in ``run-<name>-nspawn`` (upstream derives a container's name so)."""
        found = re.search("run-(.+)-nspawn", os.path.basename(start_command))
        if found is None:
            raise ValueError(f"Could not extract node name from {start_command}")
        return found.group(1)

    def is_up(self) -> bool:
        """Started and not yet seen to stop."""
        return self.booted

    def start(self) -> None:
        """Run the start script; asynchronous, as upstream: the first command waits until
        the container is ready (and reports a start script that failed)."""
        _protocol.start(machines=[self.name], allow_reboot=False)

    def _result(self, reply: RunReply, check_return: bool = True) -> tuple[int, str]:
        """Upstream's containers ignore ``check_return``: always ``(status, output)``."""
        return super()._result(reply, True)

    def wait_for_x(self, timeout: Duration = DEFAULT_TIMEOUT) -> None:
        """Wait until the container's X server answers ``xwininfo -root``."""
        warn_if_numeric(timeout, "wait_for_x")
        with self.nested("waiting for the X11 server"):
            self._wait_command("xwininfo -root >/dev/null 2>&1", True, timeout)

    def send_key(
        self, key: str, delay: Duration | None = timedelta(milliseconds=10), log: bool | None = True
    ) -> None:
        """A key press in the container's X session (``xdotool``)."""
        warn_if_numeric(delay, "send_key")

        def press() -> None:
            if len(key) == 1 and key.isprintable():
                command = ["xdotool", "type", "--clearmodifiers", "--delay", "0", "--", key]
            else:
                command = ["xdotool", "key", "--clearmodifiers", x11_key_name(key)]
            self.succeed(_make_command(command))
            pause = to_seconds(delay, "delay")
            if pause:
                time.sleep(pause)

        if log:
            with self.nested(f"sending key {key!r}"):
                press()
        else:
            press()

    def _screendump(self, path: str) -> None:
        """``xwd`` in the container writes into the shared directory; the host converts it."""
        converters = [shutil.which(tool) for tool in ("xwdtopnm", "pnmtopng")]
        if None in converters:
            raise MachineError("Cannot convert screenshot: xwdtopnm/pnmtopng not found (netpbm)")
        self.shared_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.shared_dir) as shared:
            xwd = Path(shared) / "screen.xwd"
            inside = Path("/tmp/shared") / Path(shared).name / xwd.name
            self.succeed(_make_command(["xwd", "-root", "-silent", "-out", inside]))
            ppm = Path(shared) / "screen.ppm"
            with ppm.open("wb") as out:
                rc = subprocess.run([str(converters[0]), str(xwd)], stdout=out).returncode
            if rc == 0:
                with open(path, "wb") as out:
                    rc = subprocess.run([str(converters[1]), str(ppm)], stdout=out).returncode
            if rc != 0:
                raise MachineError(f"Cannot convert screenshot (netpbm returned code {rc})")

    def ssh_backdoor_command(self) -> str:
        """The SSH command upstream prints for a container (systemd's unix-export socket)."""
        socket = f"/run/systemd/nspawn/unix-export/{self.name}/ssh"
        return f'ssh -o User=root -o ProxyCommand="socat - UNIX-CLIENT:{socket}" bash'
