# Type declarations of the testScript namespace, prepended to a script before `mypy` checks it
# (ci/typecheck), as NixOS' driver.nix prepends its own file. Every name is typed from the ntd
# shim's real objects (`ntd shim-export` puts the package on MYPYPATH): the namespace the
# Driver builds in test_symbols() is declared here through the Driver's own attributes and
# methods, so a script is checked against exactly what runs it.
# ci/typecheck appends one `<name>: QemuMachine;` line per machine and `vlan<N>: VLan` lines.

import os
from unittest import TestCase

from test_driver.debug import DebugAbstract, DebugNop
from test_driver.driver import AssertionTester, Driver
from test_driver.logger import AbstractLogger, CompositeLogger
from test_driver.machine import BaseMachine, Machine, NspawnMachine, QemuMachine, retry
from test_driver.vlan import VLan

# The driver object itself, and everything the namespace takes from it.
driver: Driver
start_all = driver.start_all
join_all = driver.join_all
test_script = driver.test_script
run_tests = driver.run_tests
create_machine = driver.create_machine
subtest = driver.subtest
polling_condition = driver.polling_condition
serial_stdout_on = driver.serial_stdout_on
serial_stdout_off = driver.serial_stdout_off
dump_machine_ssh = driver.dump_machine_ssh
snapshot_all = driver.snapshot_all
restore_all = driver.restore_all
machines = driver.machines
machines_qemu = driver.machines_qemu
machines_nspawn = driver.machines_nspawn
vlans = driver.vlans
log: AbstractLogger = driver.logger
debug: DebugAbstract = driver.debug
t: AssertionTester


# Upstream's prepend also offers these factories (its driver.nix binds machines through them).
def create_fake_qemu_machine() -> QemuMachine:
    raise TypeError("for type checks only")


def create_fake_nspawn_machine() -> NspawnMachine:
    raise TypeError("for type checks only")


def create_fake_vlan() -> VLan:
    raise TypeError("for type checks only")

