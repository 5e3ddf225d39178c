"""Durations as the test API takes them: a `timedelta`, or a number of seconds (all three
upstream generations' forms; numbers are not warned about)."""

from __future__ import annotations

import math
from datetime import timedelta

from test_driver._constants import MAX_DURATION_SECONDS

Duration = timedelta | int | float


def to_seconds(value: Duration | None, what: str = "timeout") -> float | None:
    """Numbers are seconds, timedeltas are converted, None stays None; a numeric string (a
    legacy script's ``"30"``) is accepted too. Infinity means "no limit" (None), as for
    upstream; NaN, negative and too large values are refused with an error naming ``what``
    (the driver checks again; its limit is the same constant)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{what} must be a number of seconds or a timedelta, not a bool")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = float(value)
        except ValueError:
            raise TypeError(
                f"{what} must be a number of seconds or a timedelta, not {value!r}"
            ) from None
    else:
        raise TypeError(f"{what} must be a number of seconds or a timedelta, not {value!r}")
    if math.isnan(seconds):
        raise ValueError(f"{what} must be a number of seconds, not NaN")
    if seconds < 0:
        raise ValueError(f"{what} must not be negative (got {value!r})")
    if math.isinf(seconds):
        return None
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(
            f"{what} is out of range ({value!r}; at most {MAX_DURATION_SECONDS:.0f} seconds; "
            "pass None or math.inf for no limit)"
        )
    return seconds


def to_limit(value: Duration | None, default: timedelta, what: str = "timeout") -> float:
    """A time limit in seconds: ``None`` is ``default``; infinity is ``math.inf`` (no limit
    of its own: the global timeout still applies)."""
    if value is None:
        return default.total_seconds()
    seconds = to_seconds(value, what)
    return math.inf if seconds is None else seconds


def finite_or_none(seconds: float) -> float | None:
    """Seconds as the driver takes them: ``None`` for no limit."""
    return None if math.isinf(seconds) else seconds


def as_timedelta(duration: Duration) -> timedelta:
    """A `Duration` as a `timedelta` (upstream's helper of the same name)."""
    seconds = to_seconds(duration, "duration")
    if seconds is None:
        return timedelta.max
    return timedelta(seconds=seconds)


def as_seconds(duration: Duration) -> float:
    """A `Duration` in seconds (upstream's helper of the same name)."""
    seconds = to_seconds(duration, "duration")
    return math.inf if seconds is None else seconds
