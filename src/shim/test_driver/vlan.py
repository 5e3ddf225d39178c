"""Virtual networks as scripts see them (``vlan1``, ``vlans``).

The switch itself runs inside the ntd driver (no vde_switch process); this object carries the
upstream attributes scripts read, and ntd's network faults: ``impair``, ``partition``,
``heal`` and ``impaired``, applied by the switch to the frames it forwards.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Union

from test_driver import _protocol
from test_driver.duration import Duration, to_seconds

if TYPE_CHECKING:
    from test_driver.machine import BaseMachine

#: A machine of the test, or its name.
MachineRef = Union["BaseMachine", str]


def _name(machine: MachineRef, what: str) -> str:
    if isinstance(machine, str):
        return machine
    name = getattr(machine, "name", None)
    if not isinstance(name, str):
        raise TypeError(f"{what} must name machines (a machine or its name), not {machine!r}")
    return name


def _probability(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a probability 0…1, not {value!r}")
    return float(value)


def _seconds(value: Duration, what: str) -> float:
    seconds = to_seconds(value, what)
    if seconds is None:
        raise ValueError(f"{what} must be a finite number of seconds")
    return seconds


class VLan:
    nr: int
    socket_dir: Path

    def __init__(self, nr: int, tmp_dir: Path, logger: object = None) -> None:
        self.nr = nr
        self.socket_dir = Path(tmp_dir) / f"vde{nr}.ctl"
        # The switch lives in the driver process.
        self.pid = os.getppid()
        self.process = None
        self.plug_process = None

    def __repr__(self) -> str:
        return f"<Vlan Nr. {self.nr}>"

    def stop(self) -> None:
        """Upstream's cleanup hook; ntd stops its switches itself at the end of the run."""

    def start_capture(self, path: str | os.PathLike[str]) -> None:
        """ntd extension: write every frame this vlan forwards to a pcap file (Wireshark)."""
        _protocol.capture(vlan=self.nr, path=os.path.abspath(path))

    def stop_capture(self) -> None:
        _protocol.capture(vlan=self.nr, path=None)

    # -- network faults (ntd extension) ----------------------------------------------------

    def impair(
        self,
        loss: float = 0.0,
        delay: Duration = 0.0,
        jitter: Duration = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        rate: str | int | None = None,
        between: tuple[MachineRef, MachineRef] | None = None,
    ) -> None:
        """Impair the frames this vlan forwards: ``loss``, ``duplicate`` and ``reorder`` are
        probabilities per frame (0…1), ``delay`` ± ``jitter`` seconds (or timedeltas),
        ``rate`` a bandwidth such as ``"1mbit"`` (tc units) or bits per second. With
        ``between=(a, b)`` only frames between machines ``a`` and ``b`` (both directions);
        a call replaces the earlier settings of the same scope, and all zeros remove them.
        Decisions are reproducible: the run's seed is logged (``--net-seed`` replays it)."""
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (str, int))):
            raise TypeError(f"rate must be a bandwidth such as '1mbit', not {rate!r}")
        pair = None
        if between is not None:
            if isinstance(between, (str, bytes)) or len(between) != 2:
                raise TypeError(f"between must be a pair of machines, not {between!r}")
            pair = [_name(between[0], "between"), _name(between[1], "between")]
        _protocol.impair(
            vlan=self.nr,
            loss=_probability(loss, "loss"),
            delay=_seconds(delay, "delay"),
            jitter=_seconds(jitter, "jitter"),
            duplicate=_probability(duplicate, "duplicate"),
            reorder=_probability(reorder, "reorder"),
            rate=rate,
            between=pair,
        )

    def partition(self, *groups: Sequence[MachineRef]) -> None:
        """Split the vlan: frames between machines of different groups are dropped (both
        ways); machines in no group are unaffected. Replaces an earlier partition."""
        names = []
        for g in groups:
            if isinstance(g, str) or not isinstance(g, Sequence):
                raise TypeError(f"partition takes lists of machines, not {g!r}")
            names.append([_name(m, "partition") for m in g])
        _protocol.partition(vlan=self.nr, groups=names)

    def heal(self) -> None:
        """Remove every impairment and partition of this vlan."""
        _protocol.heal(vlan=self.nr)

    @contextmanager
    def impaired(
        self,
        loss: float = 0.0,
        delay: Duration = 0.0,
        jitter: Duration = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        rate: str | int | None = None,
        between: tuple[MachineRef, MachineRef] | None = None,
    ) -> Iterator[None]:
        """``with vlan1.impaired(loss=0.3): ...``: impair, run the block, heal."""
        self.impair(loss, delay, jitter, duplicate, reorder, rate, between)
        try:
            yield
        finally:
            self.heal()
