"""Machines as testScripts see them: upstream's classes, method names, signatures and log
messages. `BaseMachine` (test_driver.machine.base) is what both kinds offer; `QemuMachine`
(.qemu) adds what only a VM has, `NspawnMachine` (.nspawn) what a container does its own
way. Every method forwards to the ntd driver."""

from __future__ import annotations

from test_driver.duration import Duration, to_seconds
from test_driver.errors import MachineError, RequestedAssertionFailed
from test_driver._retry import retry
from test_driver.machine.base import BaseMachine, set_polling_slice
from test_driver.machine.nspawn import NspawnMachine
from test_driver.machine.qemu import QemuMachine, QemuStartCommand

#: The legacy generation's class name.
Machine = QemuMachine

__all__ = [
    "BaseMachine",
    "QemuStartCommand",
    "QemuMachine",
    "NspawnMachine",
    "Machine",
    "MachineError",
    "RequestedAssertionFailed",
    "retry",
    "set_polling_slice",
    "Duration",
    "to_seconds",
]
