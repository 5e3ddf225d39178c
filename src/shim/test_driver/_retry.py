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

The schedule lives in the driver, once (``machine::waits::retry_step``, asked through
`_protocol.retry_step` before each attempt): the pause follows ntd's wait schedule, not a
fixed second, so a condition is noticed soon after it holds while a slow callable keeps its
share of the CPU small; the same rule says which attempt is the last that fits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from test_driver import _protocol
from test_driver._constants import DEFAULT_TIMEOUT
from test_driver._protocol import NextAttempt, stretch_note, timed_out_message
from test_driver.duration import Duration, to_limit, warn_deprecated_argument, warn_if_numeric
from test_driver.errors import RequestedAssertionFailed


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


def timed_out(guest: float, total: float, wall: float | None = None) -> RequestedAssertionFailed:
    """The error of a wait whose guest-available time is up after ``guest`` seconds
    (upstream's words), and how far the host stretched it when ``wall`` (the wall-clock time
    it took) is longer."""
    msg = timed_out_message(guest, total)
    if wall is not None and wall - guest >= 0.1:
        msg += "; " + stretch_note(total, wall, wall - guest)
    return RequestedAssertionFailed(msg)


def run_retry(fn: Callable[[RemainingTime | None], object], total: float) -> None:
    """The loop behind `retry`, for callers inside the shim (no argument checks, no
    warnings): ``total`` seconds (``math.inf``: no limit) of the run's guest-available time
    (the time the most starved machine could run, as every timeout of ntd counts)."""
    start = time.monotonic()
    limit = None if math.isinf(total) else total
    step: NextAttempt = _protocol.retry_step(timeout=limit, first=True)
    since = step["withheld"]
    while True:
        # Guest-available time: the wall age less what the host withheld meanwhile (as of
        # the driver's last answer).
        age = max(0.0, (time.monotonic() - start) - (step["withheld"] - since))
        remaining: RemainingTime | None = None
        if limit is not None:
            left = limit - age
            if left <= 0:
                raise timed_out(age, total, time.monotonic() - start)
            remaining = RemainingTime(left, step["last"])
        t0 = time.monotonic()
        if fn(remaining):
            return
        end = time.monotonic()
        was_last = limit is not None and step["last"]
        step = _protocol.retry_step(age=end - start, since=since, cost=end - t0, timeout=limit)
        age = max(0.0, (end - start) - (step["withheld"] - since))
        if was_last or age >= total:
            raise timed_out(age, total, end - start)
        time.sleep(step["pause"])


def retry(
    fn: Callable[..., object],
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
