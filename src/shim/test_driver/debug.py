"""The `debug` object: a breakpoint on failure when the driver runs with --debug-hook-attach."""

from __future__ import annotations

import os
import pdb
import random
import socket
import subprocess
import sys
from abc import ABC, abstractmethod

from test_driver.logger import AbstractLogger


class DebugAbstract(ABC):
    @abstractmethod
    def breakpoint(self, host: str = "127.0.0.1", port: int = 4444) -> None:
        pass


class DebugNop(DebugAbstract):
    def __init__(self) -> None:
        pass

    def breakpoint(self, host: str = "127.0.0.1", port: int = 4444) -> None:
        pass


class Debug(DebugAbstract):
    """Pause the test and serve a pdb prompt on host:port (connect with `nc`/`telnet`)."""

    def __init__(self, logger: AbstractLogger, attach_command: str) -> None:
        self.breakpoint_on_failure = False
        self.logger = logger
        self.attach = attach_command

    def breakpoint(self, host: str = "127.0.0.1", port: int = 4444) -> None:
        pattern = str(random.randrange(999999, 10000000))
        self.logger.log_test_error(
            f"Breakpoint reached, run 'sudo {self.attach} {pattern}'"
        )
        # A marker process the attach tool looks for, as upstream.
        marker = subprocess.Popen(["sleep", pattern])
        try:
            with socket.create_server((host, port)) as server:
                self.logger.log_test_error(f"pdb listening on {host}:{port}")
                conn, _ = server.accept()
                with conn, conn.makefile("rw") as stream:
                    debugger = pdb.Pdb(stdin=stream, stdout=stream)
                    debugger.use_rawinput = False
                    debugger.set_trace(sys._getframe().f_back)
        finally:
            marker.terminate()
            marker.wait()
            os.environ.pop("NTD_DEBUG_UNUSED", None)
