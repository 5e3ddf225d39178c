"""Virtual networks as scripts see them (``vlan1``, ``vlans``).

The switch itself runs inside the ntd driver (no vde_switch process); this object carries the
upstream attributes scripts read.
"""

from __future__ import annotations

import os
from pathlib import Path


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
        from test_driver import _rpc

        _rpc.channel().call("capture", vlan=self.nr, path=os.path.abspath(path))

    def stop_capture(self) -> None:
        from test_driver import _rpc

        _rpc.channel().call("capture", vlan=self.nr, path=None)
