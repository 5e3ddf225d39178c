"""Durations as the test API takes them: a `timedelta`, or a number of seconds (all three
upstream generations' forms). A bare number passed by a test script is warned about with
upstream's words (nixpkgs PR #542374), once per place in the script; calls inside the shim
are never warned about."""

from __future__ import annotations

import math
import os
import sys
import warnings
from datetime import timedelta
from types import FrameType

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


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _user_frame() -> FrameType | None:
    """The innermost frame outside this package: where the test script called the API.
    None when the API was called from inside the package only (a script's frames have the
    filename ``<string>``; modules of the package live in its directory)."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not os.path.abspath(filename).startswith(_PACKAGE_DIR + os.sep):
            return frame
        frame = frame.f_back  # type: ignore[assignment]
    return None


def _called_from_package() -> bool:
    """True when the public function calling this was itself called by the package (its
    caller's caller is a module of the package): such calls are the shim's own."""
    try:
        frame = sys._getframe(3)
    except ValueError:
        return False
    return os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR + os.sep)


def _warn_at_user(message: str, category: type[Warning]) -> None:
    frame = _user_frame()
    if frame is None:
        return
    registry = frame.f_globals.setdefault("__warningregistry__", {})
    # "__main__": Python's default filters show a DeprecationWarning only there.
    warnings.warn_explicit(
        message,
        category,
        frame.f_code.co_filename,
        frame.f_lineno,
        module="__main__",
        registry=registry,
    )


def warn_if_numeric(duration: Duration | None, func_name: str) -> None:
    """Upstream's warning for a bare number of seconds (a `UserWarning`, shown once per
    place in the script); nothing for a timedelta, None or a call from inside the shim."""
    if duration is None or isinstance(duration, (bool, timedelta)):
        return
    if not isinstance(duration, (int, float)) or _called_from_package():
        return
    _warn_at_user(
        f"{func_name}(): passing a bare int/float as a duration is "
        "deprecated. Use datetime.timedelta instead.",
        UserWarning,
    )


def warn_deprecated_argument(old: str, new: str) -> None:
    """Upstream's `DeprecationWarning` for a renamed keyword argument (``secs`` →
    ``duration``, ``timeout_seconds`` → ``timeout``)."""
    if _called_from_package():
        return
    _warn_at_user(
        f"The '{old}' argument is deprecated. Use '{new}' instead.", DeprecationWarning
    )
