"""Durations as the test API takes them: a `timedelta`, or a number of seconds (all three
upstream generations' forms; numbers are not warned about)."""

from __future__ import annotations

from datetime import timedelta

Duration = timedelta | int | float


def to_seconds(value: Duration | None, what: str = "timeout") -> float | None:
    """Numbers are seconds, timedeltas are converted, None stays None; a numeric string (a
    legacy script's ``"30"``) is accepted too."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{what} must be a number of seconds or a timedelta, not a bool")
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise TypeError(f"{what} must be a number of seconds or a timedelta, not {value!r}")


def as_timedelta(duration: Duration) -> timedelta:
    """A `Duration` as a `timedelta` (upstream's helper of the same name)."""
    seconds = to_seconds(duration, "duration")
    assert seconds is not None
    return timedelta(seconds=seconds)


def as_seconds(duration: Duration) -> float:
    """A `Duration` in seconds (upstream's helper of the same name)."""
    return as_timedelta(duration).total_seconds()
