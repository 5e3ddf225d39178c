# machines: machine
# vlans: 1
# typecheck: allow var-annotated, arg-type, has-type, func-returns-value (retry's argument forms come from one list of mixed tuples; a lambda appends and returns False)

import time
from datetime import timedelta
from test_driver.driver import Driver
from test_driver.machine import retry as imported_retry
from test_driver.polling_condition import PollingConditionError
from test_driver.errors import RequestedAssertionFailed

with subtest("names scripts import from the package"):
    from test_driver import logger
    from test_driver.debug import Debug, DebugAbstract, DebugNop
    from test_driver.duration import Duration, as_seconds, as_timedelta
    from test_driver.efi import EfiVariable
    from test_driver.errors import MachineError, TestScriptError
    from test_driver.logger import (
        AbstractLogger, CompositeLogger, JunitXMLLogger, Logger, LogLevel, TerminalLogger,
        XMLLogger, rootlog,
    )
    from test_driver.machine import (
        BaseMachine as B, Machine as M, NspawnMachine as N, QemuMachine as Q, QemuStartCommand,
    )
    from test_driver.machine.qmp import QMPAPIError, QMPSession
    from test_driver.polling_condition import PollingCondition
    from test_driver.vlan import VLan
    assert M is Q and issubclass(RequestedAssertionFailed, (AssertionError, TestScriptError))
    assert logger.rootlog is rootlog and rootlog.sanitise("a\x1bb") == "ab"
    assert as_seconds(timedelta(minutes=1)) == 60.0 and as_timedelta(2) == timedelta(seconds=2)

with subtest("names of the namespace"):
    assert isinstance(driver, Driver) and driver.machines == machines == [machine]
    assert [v.nr for v in vlans] == [1] and vlan1 is vlans[0]
    assert Machine is QemuMachine and issubclass(QemuMachine, BaseMachine)
    assert isinstance(machine, QemuMachine) and isinstance(machine, BaseMachine)
    assert callable(run_tests) and callable(test_script) and callable(join_all)
    assert type(debug).__name__ == "DebugNop"
    debug.breakpoint()  # a no-op without --debug-hook-attach
    dump_machine_ssh()
    assert imported_retry is retry

start_all()
machine.succeed("touch /tmp/ok")

with subtest("polling_condition, every form"):
    @polling_condition
    def ok_exists():
        machine.succeed("test -e /tmp/ok")

    @polling_condition(seconds_interval=0.5, description="ok file present")
    def ok_with_args():
        return machine.execute("test -e /tmp/ok")[0] == 0

    @polling_condition(interval=timedelta(milliseconds=300))
    def ok_docstring():
        "the docstring describes it"
        machine.succeed("test -e /tmp/ok")

    called = polling_condition(lambda: True, description="a plain call")
    assert ok_exists.condition.description == "ok_exists"
    assert ok_with_args.condition.description == "ok file present"
    assert ok_docstring.condition.description == "the docstring describes it"
    with ok_exists, ok_with_args, ok_docstring, called:
        machine.succeed("true")
        ok_exists.wait(5)
        ok_with_args.wait(timedelta(seconds=5))
        ok_docstring.wait(timeout=5)
        ok_docstring.wait(timeout_seconds=timedelta(seconds=5))
        called.wait()

    flag = {"ok": True}

    @polling_condition(seconds_interval=0)
    def flaky():
        return flag["ok"]

    with flaky:
        machine.succeed("true")
        flag["ok"] = False
        try:
            machine.succeed("true")
            raise Exception("the failing condition did not raise")
        except PollingConditionError as e:
            assert str(e) == "Polling condition failed: flaky", e
    machine.succeed("true")  # not active any more
    machine.succeed("(sleep 0.3; touch /tmp/later) >/dev/null 2>&1 &")
    late_cond = polling_condition(lambda: machine.execute("test -e /tmp/later")[0] == 0,
                                  description="later file")
    late_cond.wait(timedelta(seconds=20))

with subtest("retry, all three signatures"):
    calls = []

    def third_time(last_try):
        calls.append(last_try)
        return len(calls) >= 3

    for args, kwargs in [((30,), {}), ((), {"timeout_seconds": 30}), ((), {"timeout": 30}),
                         ((timedelta(seconds=30),), {}), ((), {"timeout": timedelta(seconds=30)}),
                         ((), {"timeout_seconds": timedelta(seconds=30)}), ((2.5,), {})]:
        calls.clear()
        retry(third_time, *args, **kwargs)
        # An old fn(last_try) callback: false on every attempt but the last that fits.
        assert [bool(c) for c in calls] == [False, False, False], (args, kwargs, calls)
    calls.clear()
    try:
        retry(lambda last: calls.append(last) or False, timeout=0.3)
        raise Exception("retry did not time out")
    except RequestedAssertionFailed as e:
        assert "action timed out after" in str(e), e
    # At most one attempt is told it is the last, and only the final one (which one is
    # exactly tested on a fake clock: tests/scripts/upstream_suite/retry_schedule_fake_clock.py).
    flags = [bool(c) for c in calls]
    assert not any(flags[:-1]), calls

with subtest("durations and legacy argument forms"):
    machine.succeed("true", timeout=10)
    machine.succeed("true", timeout=10.5)
    machine.succeed("true", timeout=timedelta(seconds=10))
    assert machine.execute("sleep 5", timeout=timedelta(seconds=1))[0] == 124
    assert machine.execute("sleep 5", timeout=1.0)[0] == 124
    machine.wait_until_succeeds("true", timeout=timedelta(minutes=1))
    machine.wait_until_fails("false", 60)
    machine.wait_for_file("/tmp/ok", 60.0)
    machine.succeed("busybox httpd -p 8081 -h /tmp")
    machine.wait_for_open_port("8081", timeout=60)  # legacy: the port as a string
    machine.wait_for_open_port(8081, "127.0.0.1", timedelta(seconds=60))
    t0 = time.monotonic()
    machine.sleep(1)  # positional seconds
    machine.sleep(duration=timedelta(milliseconds=500))
    machine.sleep(0.5)
    assert time.monotonic() - t0 >= 2
    machine.wait_until_succeeds("true", timeout=30, attempt_timeout=5)

with subtest("logging"):
    log.info("an info line")
    log.warning("a warning line")
    log.log("a plain line")
    machine.log("a machine line")
    with log.nested("a nested block"):
        log.info("inside the block")
    with machine.nested("a machine block"):
        pass
    with log.subtest("via log.subtest"):
        pass
    serial_stdout_off()
    machine.succeed("echo hidden-serial-marker >&2")
    machine.wait_for_console_text("hidden-serial-marker")
    serial_stdout_on()
    machine.succeed("echo shown-serial-marker >&2")
    machine.wait_for_console_text("shown-serial-marker")
    t.assertEqual(1, 1)
    t.assertIn("b", "abc")
    t.assertRegex("abc", "^a")
    with t.assertRaises(RequestedAssertionFailed):
        t.assertEqual(1, 2)

with subtest("join_all"):
    machine.succeed("(sleep 0.3; poweroff) >/dev/null 2>&1 &")
    join_all()
    assert not machine.booted
