"""`retry`: call a user function until it returns true or the time is up.

The contract is upstream's since 2026 (nixpkgs PR #551321, tested by nixpkgs'
``nixos-test-driver/retry.nix``): the function receives the seconds remaining (a float > 0),
or ``None`` when there is no limit; no attempt starts after the deadline (``timeout=0``
makes none); an attempt that overruns the deadline and then succeeds is a success.

Callbacks written for the older contract, ``fn(last_try: bool)``, keep working: the float
they receive is a `RemainingTime`, whose truth value is true only on the attempt that
`retry` expects to be the last one that fits before the deadline (predicted from the last
attempt's duration and the pause that would follow it, with a small margin). If that attempt
fails, `retry` gives up at once, so an old callback's last-chance diagnostics run at most
once, on the attempt whose failure ends the wait. The pause before it ends that margin
before the deadline, so it starts in time even when a loaded host oversleeps a little; an
attempt (or a pause) that runs past the deadline ends the wait without a flagged one, since
no attempt starts after the deadline. Every other attempt's value is false; ``None`` (no
limit) is false too.

The pause between attempts follows ntd's wait schedule (`_retry_pause`), not a fixed
second: a condition is noticed soon after it holds while a slow callable keeps its share of
the CPU small.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

from test_driver._constants import (
    DEFAULT_TIMEOUT,
    WAIT_AGE_DIVISOR,
    WAIT_MAX_AGE_PAUSE_SECONDS,
    WAIT_MIN_PAUSE_SECONDS,
    WAIT_OLD_SHARE_PERCENT,
    WAIT_REFERENCE_INTERVAL_SECONDS,
    WAIT_SCHEDULE_ENV,
    WAIT_YOUNG_PHASE_SECONDS,
    WAIT_YOUNG_SHARE_PERCENT,
)
from test_driver.duration import Duration, to_limit, warn_deprecated_argument, warn_if_numeric
from test_driver.errors import RequestedAssertionFailed

#: `retry` counts a callable's wall-clock time as its cost (it cannot tell guest work from
#: host work such as OCR), so a slow callable would pause for 24 times as long; this bounds
#: that pause. Callables that take longer than this / 24 (0.21 s) use more than 4 %.
RETRY_MAX_COST_PAUSE_SECONDS = 5.0


class RemainingTime(float):
    """Seconds left before `retry`'s deadline, as upstream passes them (a float > 0).

    Its truth value answers the old question ``last_try``: true only on the last attempt
    that fits before the deadline. ``bool(x)`` of a plain positive float would always be
    true, which would make every attempt of an old callback look like the last one.
    """

    _last: bool

    def __new__(cls, seconds: float, last: bool) -> "RemainingTime":
        value = super().__new__(cls, seconds)
        value._last = last
        return value

    def __bool__(self) -> bool:
        return self._last

    @property
    def last_try(self) -> bool:
        """Whether `retry` expects no further attempt (the old ``last_try`` argument)."""
        return self._last

    def __repr__(self) -> str:
        return f"RemainingTime({float(self)!r}, last={self._last})"


def _retry_pause(age: float, cost: float) -> float:
    """The wait schedule (`machine::waits::Pacing`): a pause that grows with the wait's age
    (at most a twentieth of it, 20 ms .. 1 s) and with the attempt's cost (3 x cost while the
    wait is younger than a second, 25 % of a CPU; then 24 x cost, 4 %)."""
    if os.environ.get(WAIT_SCHEDULE_ENV) == "reference":
        return WAIT_REFERENCE_INTERVAL_SECONDS
    floor = min(max(age / WAIT_AGE_DIVISOR, WAIT_MIN_PAUSE_SECONDS), WAIT_MAX_AGE_PAUSE_SECONDS)
    share = WAIT_YOUNG_SHARE_PERCENT if age < WAIT_YOUNG_PHASE_SECONDS else WAIT_OLD_SHARE_PERCENT
    return max(floor, min((100 / share - 1) * cost, RETRY_MAX_COST_PAUSE_SECONDS))


def _fmt_seconds(secs: float) -> str:
    return repr(float(secs))


def timed_out(elapsed: float, total: float) -> RequestedAssertionFailed:
    """The error of a wait whose time is up (upstream's words)."""
    return RequestedAssertionFailed(
        f"action timed out after {elapsed:.2f} seconds (timeout={_fmt_seconds(total)})"
    )


#: How long before the deadline the attempt flagged last should start at the latest: the
#: pause before it ends this early, so that a pause that oversleeps (a loaded host) still
#: leaves it room. A fourth of the timeout at most, so short waits do not give up early.
LAST_ATTEMPT_MARGIN_SECONDS = 0.05


def run_retry(fn: Callable[[RemainingTime | None], Any], total: float) -> None:
    """The loop behind `retry`, for callers inside the shim (no argument checks, no
    warnings): ``total`` seconds (``math.inf``: no limit)."""
    start = time.monotonic()
    if math.isinf(total):
        while True:
            t0 = time.monotonic()
            if fn(None):
                return
            now = time.monotonic()
            time.sleep(_retry_pause(now - start, now - t0))
    deadline = start + total
    cost = 0.0
    while True:
        now = time.monotonic()
        left = deadline - now
        if left <= 0:
            raise timed_out(now - start, total)
        margin = min(max(LAST_ATTEMPT_MARGIN_SECONDS, cost), total / 4)
        # The attempt is the last that fits if, after it and the pause that would follow,
        # the next one could not start before the deadline (less the margin).
        last = now + cost + _retry_pause(now - start + cost, cost) + margin >= deadline
        t0 = now
        if fn(RemainingTime(left, last)):
            return
        now = time.monotonic()
        cost = now - t0
        if last or now >= deadline:
            raise timed_out(now - start, total)
        # The pause ends `margin` before the deadline at the latest: the next attempt, the
        # last one if nothing else fits, starts in time even if the pause oversleeps a little.
        time.sleep(max(0.0, min(_retry_pause(now - start, cost), deadline - margin - now)))


def retry(
    fn: Callable[..., Any],
    timeout_seconds: Duration | None = None,
    timeout: Duration | None = DEFAULT_TIMEOUT,
) -> None:
    """Call ``fn(remaining)`` until it returns true; raise `RequestedAssertionFailed` when
    the time is up (default 15 minutes; ``timeout=None`` or ``math.inf``: no limit, ``fn``
    receives ``None``).

    ``remaining`` is the number of seconds left (a `RemainingTime`, a float > 0); as a
    boolean it is the old ``last_try`` flag, so ``fn(last_try)`` callbacks keep working.
    Accepts every upstream signature: ``retry(fn, 30)``, ``retry(fn, timeout=…)`` and the
    deprecated ``retry(fn, timeout_seconds=…)``, with numbers (deprecated, warned) or
    timedeltas.
    """
    if timeout_seconds is not None:
        if timeout is not DEFAULT_TIMEOUT:
            raise TypeError(
                "retry() got both 'timeout' and 'timeout_seconds' arguments. Pass only 'timeout'"
            )
        warn_deprecated_argument("timeout_seconds", "timeout")
        warn_if_numeric(timeout_seconds, "retry")
        total = to_limit(timeout_seconds, DEFAULT_TIMEOUT)
    elif timeout is None:
        total = math.inf
    else:
        warn_if_numeric(timeout, "retry")
        total = to_limit(timeout, DEFAULT_TIMEOUT)
    run_retry(fn, total)


__all__ = ["RemainingTime", "retry", "run_retry", "timed_out"]
