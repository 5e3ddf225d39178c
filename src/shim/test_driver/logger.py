"""The test log: every call is forwarded to the ntd driver, which writes the terminal (and
XML/JUnit) output in upstream's format. Names mirror upstream's logger module."""

from __future__ import annotations

import sys
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum
from typing import Any

from test_driver import _protocol


class LogLevel(IntEnum):
    DEBUG = 1
    INFO = 2
    WARNING = 3
    ERROR = 4


class AbstractLogger(ABC):
    @abstractmethod
    def log(self, message: str, attributes: dict[str, str] = {}) -> None: ...

    @abstractmethod
    @contextmanager
    def subtest(self, name: str, attributes: dict[str, str] = {}) -> Iterator[None]: ...

    @abstractmethod
    @contextmanager
    def nested(self, message: str, attributes: dict[str, str] = {}) -> Iterator[None]: ...

    @abstractmethod
    def info(self, *args: Any, **kwargs: Any) -> None: ...

    @abstractmethod
    def warning(self, *args: Any, **kwargs: Any) -> None: ...

    @abstractmethod
    def error(self, *args: Any, **kwargs: Any) -> None: ...

    @abstractmethod
    def debug(self, *args: Any, **kwargs: Any) -> None: ...

    @abstractmethod
    def log_test_error(self, *args: Any, **kwargs: Any) -> None: ...

    @abstractmethod
    def log_serial(self, message: str, machine: str) -> None: ...

    @abstractmethod
    def print_serial_logs(self, enable: bool) -> None: ...

    def set_log_level(self, level: LogLevel | str | int) -> None:
        pass


def _text(args: tuple[Any, ...]) -> str:
    return " ".join(str(a) for a in args)


class CompositeLogger(AbstractLogger):
    """The logger scripts get as ``log``; it forwards to the driver's sinks."""

    def __init__(self, loggers: list[AbstractLogger] | None = None) -> None:
        self.logger_list: list[AbstractLogger] = list(loggers or [])

    def add_logger(self, logger: AbstractLogger) -> None:
        self.logger_list.append(logger)

    @staticmethod
    def sanitise(message: str) -> str:
        """Drop control characters (Unicode category C*), as the XML log does."""
        return "".join(ch for ch in message if unicodedata.category(ch)[0] != "C")

    def _send(self, level: str, message: str, attributes: dict[str, str] | None) -> None:
        machine = (attributes or {}).get("machine")
        _protocol.log(level=level, msg=message, machine=machine)

    def log(self, message: str, attributes: dict[str, str] = {}) -> None:
        self._send("log", message, attributes)

    def info(self, *args: Any, **kwargs: Any) -> None:
        self._send("info", _text(args), kwargs.get("attributes"))

    def warning(self, *args: Any, **kwargs: Any) -> None:
        self._send("warning", _text(args), kwargs.get("attributes"))

    def debug(self, *args: Any, **kwargs: Any) -> None:
        self._send("debug", _text(args), kwargs.get("attributes"))

    def error(self, *args: Any, **kwargs: Any) -> None:
        # Upstream: any error log ends the test.
        self._send("error", _text(args), kwargs.get("attributes"))
        sys.exit(1)

    def log_test_error(self, *args: Any, **kwargs: Any) -> None:
        self._send("test_error", _text(args), kwargs.get("attributes"))

    def log_serial(self, message: str, machine: str) -> None:
        self._send("log", f"{machine} # {message}", None)

    def print_serial_logs(self, enable: bool) -> None:
        _protocol.serial(on=bool(enable))

    def set_log_level(self, level: LogLevel | str | int) -> None:
        if isinstance(level, str):
            name = level
        else:
            name = LogLevel(int(level)).name
        _protocol.log_level(level=name.lower())

    @contextmanager
    def nested(self, message: str, attributes: dict[str, str] = {}) -> Iterator[None]:
        _protocol.nest(msg=message, machine=(attributes or {}).get("machine"))
        try:
            yield
        except BaseException:
            _protocol.unnest(ok=False)
            raise
        _protocol.unnest(ok=True)

    @contextmanager
    def subtest(self, name: str, attributes: dict[str, str] = {}) -> Iterator[None]:
        with self.nested("subtest: " + name, attributes):
            yield


# Upstream names, so imports written for it keep working (`Logger` is the legacy one).
Logger = CompositeLogger
TerminalLogger = CompositeLogger
XMLLogger = CompositeLogger
JunitXMLLogger = CompositeLogger

rootlog: CompositeLogger = CompositeLogger()
