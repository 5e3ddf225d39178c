# A testScript without machines: the shim's retry loop (test_driver._retry) on a fake clock,
# with every step asked from the running driver (the schedule's one home,
# machine::waits::retry_step), so the schedule is checked exactly whatever the host's load:
# the remaining-time contract of upstream's retry.nix and the `last_try` truth of
# `RemainingTime` for old callbacks. Run by tests/upstream_suite.rs.
import math
import unittest

from test_driver import _retry
from test_driver._retry import RemainingTime, run_retry
from test_driver.errors import RequestedAssertionFailed


class FakeClock:
    """`time` for the module under test: sleeping advances it (plus `oversleep`)."""

    def __init__(self, oversleep: float = 0.0) -> None:
        self.now = 1000.0
        self.oversleep = oversleep
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0, seconds
        self.sleeps.append(seconds)
        self.now += seconds + self.oversleep


class Attempts:
    """A callable that costs `cost` seconds of the fake clock and fails until `succeed_at`."""

    def __init__(self, clock: FakeClock, cost: float, succeed_at: int | None = None) -> None:
        self.clock = clock
        self.cost = cost
        self.succeed_at = succeed_at
        self.seen: list[RemainingTime | None] = []
        self.started: list[float] = []

    def __call__(self, remaining: RemainingTime | None) -> bool:
        self.seen.append(remaining)
        self.started.append(self.clock.now)
        self.clock.now += self.cost
        return self.succeed_at is not None and len(self.seen) >= self.succeed_at


class RetryScheduleTests(unittest.TestCase):
    def setUp(self) -> None:
        self.saved = _retry.time
        self.clock = FakeClock()
        _retry.time = self.clock  # type: ignore[assignment]

    def tearDown(self) -> None:
        _retry.time = self.saved

    def flags(self, attempts: Attempts) -> list[bool]:
        return [bool(r) for r in attempts.seen]

    def test_old_callbacks_see_last_try_exactly_once_on_the_final_attempt(self) -> None:
        for cost, total in [(0.01, 1.5), (0.0, 0.3), (0.2, 10.0), (1.0, 60.0), (0.001, 900.0)]:
            with self.subTest(cost=cost, total=total):
                self.clock.now = 1000.0
                start = self.clock.now
                a = Attempts(self.clock, cost)
                with self.assertRaises(RequestedAssertionFailed):
                    run_retry(a, total)
                flags = self.flags(a)
                self.assertGreaterEqual(len(flags), 2)
                self.assertEqual(flags[-1], True)
                self.assertEqual(flags.count(True), 1)
                # No attempt starts after the deadline; each gets the time left (> 0).
                self.assertTrue(all(t < start + total for t in a.started))
                left = [float(r) for r in a.seen if r is not None]
                self.assertTrue(all(0 < x <= total for x in left), left)
                self.assertEqual(left, sorted(left, reverse=True))

    def test_the_last_attempt_starts_in_time_even_if_pauses_oversleep(self) -> None:
        # Pauses that oversleep by less than the margin (a loaded host) still leave the
        # flagged attempt its place before the deadline.
        for oversleep in (0.01, 0.02, 0.03, 0.045):
            for total in (0.3, 1.0, 1.3, 1.7, 2.0, 2.9, 7.1):
                with self.subTest(oversleep=oversleep, total=total):
                    self.clock.oversleep = oversleep
                    a = Attempts(self.clock, 0.005)
                    with self.assertRaises(RequestedAssertionFailed):
                        run_retry(a, total)
                    self.assertEqual(self.flags(a).count(True), 1)
                    self.assertEqual(self.flags(a)[-1], True)

    def test_an_attempt_that_overruns_is_the_only_one(self) -> None:
        a = Attempts(self.clock, 0.05)
        with self.assertRaises(RequestedAssertionFailed):
            run_retry(a, 0.01)
        self.assertEqual(len(a.seen), 1)
        late = Attempts(self.clock, 0.02, succeed_at=1)
        run_retry(late, 0.01)  # overran, then succeeded: a success
        self.assertEqual(len(late.seen), 1)

    def test_zero_timeout_makes_no_attempt(self) -> None:
        a = Attempts(self.clock, 0.0, succeed_at=1)
        with self.assertRaises(RequestedAssertionFailed):
            run_retry(a, 0.0)
        self.assertEqual(a.seen, [])

    def test_no_limit_passes_none_until_success(self) -> None:
        a = Attempts(self.clock, 0.5, succeed_at=5)
        run_retry(a, math.inf)
        self.assertEqual(a.seen, [None] * 5)

    def test_the_pauses_are_the_wait_schedules(self) -> None:
        # 3 x the attempt's cost while the retry is younger than a second (25 % of a CPU),
        # then 24 x (4 %), the cost term capped at 5 s: the driver's rule, not a fixed second.
        a = Attempts(self.clock, 0.5, succeed_at=5)
        run_retry(a, math.inf)
        self.assertEqual(len(self.clock.sleeps), 4)
        for got, want in zip(self.clock.sleeps, [1.5, 5.0, 5.0, 5.0]):
            self.assertAlmostEqual(got, want, places=5)

    def test_success_returns_at_once(self) -> None:
        a = Attempts(self.clock, 0.01, succeed_at=3)
        run_retry(a, 60.0)
        self.assertEqual(self.flags(a), [False, False, False])

    def test_remaining_time_is_a_float_whose_truth_is_last_try(self) -> None:
        r = RemainingTime(12.5, False)
        self.assertIsInstance(r, float)
        self.assertEqual(r, 12.5)
        self.assertGreater(r, 0)
        self.assertFalse(r)
        self.assertTrue(RemainingTime(0.1, True))
        self.assertEqual(RemainingTime(0.1, True).last_try, True)


result = unittest.TextTestRunner(verbosity=2).run(
    unittest.defaultTestLoader.loadTestsFromTestCase(RetryScheduleTests)
)
if not result.wasSuccessful():
    raise Exception(f"retry schedule: {len(result.failures) + len(result.errors)} test(s) failed")
print(f"retry schedule: {result.testsRun} tests passed")
