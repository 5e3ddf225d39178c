# Callbacks written for the old contract, fn(last_try: bool), as most of nixpkgs has them: the
# value they get is false on every attempt but the last one that fits, true on that one, and
# retry gives up right after it. New callbacks get the seconds remaining from the same value.
import datetime as dt
import time

from test_driver.errors import RequestedAssertionFailed

flags: list[bool] = []
remaining_seen: list[float] = []


def never(last_try: bool) -> bool:
    flags.append(bool(last_try))
    remaining_seen.append(float(last_try))
    time.sleep(0.01)
    return False


with t.assertRaises(RequestedAssertionFailed) as raised:
    retry(never, timeout=dt.timedelta(seconds=1.5))
assert "action timed out after" in str(raised.exception), raised.exception
assert len(flags) >= 3, flags
# Only the final attempt may be told it is the last; on a host loaded enough to oversleep a
# pause past the deadline there is none (the schedule itself is tested on a fake clock:
# tests/scripts/upstream_suite/retry_schedule_fake_clock.py).
assert not any(flags[:-1]), flags
if flags[-1]:
    print("last chance diagnostics ran")
assert all(0 < r <= 1.5 for r in remaining_seen), remaining_seen
assert remaining_seen == sorted(remaining_seen, reverse=True), remaining_seen

# An old callback that succeeds on its third call: never told it is the last try.
calls: list[bool] = []


def third_time(last_try: bool) -> bool:
    calls.append(bool(last_try))
    return len(calls) >= 3


retry(third_time, timeout=dt.timedelta(seconds=30))
assert calls == [False, False, False], calls
calls.clear()
retry(third_time, 30)  # the legacy positional form, seconds
assert calls == [False, False, False], calls
calls.clear()
retry(third_time, timeout_seconds=dt.timedelta(seconds=30))  # the mid generation's name
assert calls == [False, False, False], calls

# Both names at once is an error, as upstream.
try:
    retry(third_time, timeout=dt.timedelta(seconds=1), timeout_seconds=dt.timedelta(seconds=1))
    raise Exception("both timeout arguments accepted")
except TypeError as e:
    assert "Pass only 'timeout'" in str(e), e

# timeout=None: no limit, the callback gets None (falsy: never "the last try").
got: list[object] = []


def second_time(last_try: bool) -> bool:
    got.append(last_try)
    return len(got) == 2


retry(second_time, timeout=None)
assert got == [None, None], got
print("old and new retry callbacks behave")
