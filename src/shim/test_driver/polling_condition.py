"""Polling conditions: checks a test wants to hold while it does other things.

Registered conditions run before every command and monitor call of every machine (rate
limited by their interval), exactly as upstream's callbacks do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

from test_driver.logger import AbstractLogger, rootlog


class PollingConditionError(Exception):
    pass


class PollingCondition:
    condition: Callable[[], bool | None]
    seconds_interval: float
    description: str | None
    logger: AbstractLogger

    last_called: float
    entry_count: int

    def __init__(
        self,
        condition: Callable[[], bool | None],
        logger: AbstractLogger = rootlog,
        seconds_interval: float | timedelta = 2.0,
        description: str | None = None,
    ) -> None:
        self.condition = condition
        if isinstance(seconds_interval, timedelta):
            seconds_interval = seconds_interval.total_seconds()
        self.seconds_interval = float(seconds_interval)
        self.logger = logger
        if description is None:
            if condition.__doc__:
                self.description = condition.__doc__
            else:
                self.description = condition.__name__
        else:
            self.description = str(description)
        self.last_called = float("-inf")
        self.entry_count = 0

    @property
    def interval(self) -> timedelta:
        return timedelta(seconds=self.seconds_interval)

    def check(self, force: bool = False) -> bool:
        if (self.entered or not self.overdue) and not force:
            return True
        with self, self.logger.nested(f"Checking polling condition {self.description!r}"):
            last_called = self.last_called
            self.last_called = time.monotonic()
            if last_called == float("-inf"):
                self.logger.info("(not called yet)")
            else:
                self.logger.info(f"Time since last: {self.last_called - last_called:.2f}s")
            res: bool | None
            try:
                res = self.condition()
            except Exception:
                res = False
            res = res is None or res
            verdict = "succeeded" if res else "failed"
            self.logger.info(f"Polling condition {verdict}: {self.description}")
            return bool(res)

    def maybe_raise(self) -> None:
        if not self.check():
            raise PollingConditionError(f"Polling condition failed: {self.description}")

    @property
    def overdue(self) -> bool:
        return self.last_called + self.seconds_interval < time.monotonic()

    @property
    def entered(self) -> bool:
        # entry_count is zero when nobody is evaluating the condition right now.
        return self.entry_count != 0

    def __enter__(self) -> None:
        self.entry_count += 1

    def __exit__(self, exc_type: object, exc_value: object, traceback: object) -> None:
        assert self.entered
        self.entry_count -= 1
        self.last_called = time.monotonic()
