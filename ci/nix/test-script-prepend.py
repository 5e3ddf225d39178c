# The contract check's stand-in for nixpkgs' nixos/lib/test-script-prepend.py, written from its
# documented behaviour (shared/reference/upstream-driver.md §8), not copied: the same imports
# from the driver package and typing_extensions, the same objects built at module level
# (DebugNop(), CompositeLogger([]), a TestCase instance, a Driver from a factory) and the same
# global names with upstream's types. What matters for the drop-in is that every import and
# every construction type-checks against the `test_driver` package it propagates.
# The framework restatement (ci/nix/framework.nix) appends the machine and vlan declarations.

from contextlib import contextmanager
from typing import Any, Callable, ContextManager, Generator, List, Optional, Union
from unittest import TestCase

from typing_extensions import Protocol

from test_driver.debug import DebugAbstract, DebugNop
from test_driver.driver import Driver
from test_driver.logger import AbstractLogger, CompositeLogger
from test_driver.machine import BaseMachine, NspawnMachine, QemuMachine
from test_driver.vlan import VLan


class MachineFactory(Protocol):
    def __call__(
        self,
        start_command: str | dict,
        *,
        name: Optional[str] = None,
        keep_machine_state: bool = False,
        **kwargs: Any,
    ) -> QemuMachine: ...


class ConditionFactory(Protocol):
    def __call__(
        self,
        fun_: Optional[Callable] = None,
        *,
        seconds_interval: float = 2.0,
        description: Optional[str] = None,
    ) -> Union[Callable[[Callable], ContextManager], ContextManager]: ...


class Assertions(TestCase):
    pass


def declared_only() -> Any:
    raise RuntimeError("type declarations for the build-time check; never run")


driver: Driver = declared_only()
debug: DebugAbstract = DebugNop()
log: AbstractLogger = CompositeLogger([])
t = Assertions()
machines: List[BaseMachine] = []
machines_qemu: List[QemuMachine] = []
machines_nspawn: List[NspawnMachine] = []
vlans: List[VLan] = []


def create_fake_qemu_machine() -> QemuMachine:
    return declared_only()


def create_fake_nspawn_machine() -> NspawnMachine:
    return declared_only()


def create_fake_vlan() -> VLan:
    return declared_only()


def create_machine(
    start_command: str, name: str | None = None, keep_machine_state: bool = False
) -> QemuMachine:
    return declared_only()


def polling_condition(
    fun: Callable | None, seconds_interval: float = 0.0, description: str | None = None
):
    pass


def retry(fn: Callable, timeout_seconds: int = 900) -> None:
    pass


def start_all() -> None:
    pass


def join_all() -> None:
    pass


def run_tests() -> None:
    pass


def test_script() -> None:
    pass


def serial_stdout_on() -> None:
    pass


def serial_stdout_off() -> None:
    pass


def dump_machine_ssh() -> None:
    pass


@contextmanager
def subtest(name: str) -> Generator[None, None, None]:
    yield
