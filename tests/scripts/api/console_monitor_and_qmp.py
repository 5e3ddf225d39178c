# machines: machine
# typecheck: allow assignment, operator, index (the script calls the console log `log`, shadowing the namespace's log: AbstractLogger)

import time
from datetime import timedelta
from test_driver.machine.qmp import QMPAPIError

start_all()
machine.wait_for_file("/tmp")

with subtest("send_console and console_interact reach the guest's ttyS0"):
    machine.succeed("(head -n 2 /dev/ttyS0 > /tmp/serial-in) >/dev/null 2>&1 &")
    machine.wait_until_succeeds("busybox pidof head", timeout=10)
    machine.send_console("from the host 42\n")
    machine.console_interact()  # stdin of the driver: one line, then EOF
    machine.wait_until_succeeds("[ $(wc -l < /tmp/serial-in) = 2 ]", timeout=10)
    assert machine.succeed("cat /tmp/serial-in") == "from the host 42\ntyped on stdin\n"

with subtest("the serial console"):
    machine.succeed("echo console-marker-1 >&2")
    machine.wait_for_console_text("console-marker-1")
    machine.succeed("(sleep 0.5; echo console-marker-2 > /dev/ttyS0) >/dev/null 2>&1 &")
    machine.wait_for_console_text(r"console-marker-\d", timeout=20)
    machine.succeed("echo console-marker-3 >&2")
    machine.wait_for_console_text("marker-3", timeout=timedelta(seconds=20))
    try:
        machine.wait_for_console_text("never-printed", timeout=1)
        raise Exception("wait_for_console_text did not time out")
    except AssertionError as e:
        assert "action timed out" in str(e), e
    log = machine.get_console_log()
    assert "console-marker-1" in log and "from the host 42" in log, log[-500:]
    assert "console-marker-3" in machine.full_console_log

with subtest("the monitor and QMP"):
    r = machine.send_monitor_command("info status")
    assert r.startswith("info status\r\n") and "running" in r and r.endswith("(qemu) "), repr(r)
    r = machine.send_monitor_command("help")
    assert "balloon" in r and "(qemu)" in r
    assert machine.qmp_client.send("query-status")["return"]["running"] is True
    machine.send_monitor_command("stop")
    event = machine.wait_for_qmp_event(lambda e: e["event"] == "STOP")
    assert event["event"] == "STOP", event
    machine.qmp_client.send("cont")
    event = machine.wait_for_qmp_event(lambda e: e["event"] == "RESUME", timeout=timedelta(seconds=10))
    t0 = time.monotonic()
    try:
        machine.wait_for_qmp_event(lambda e: False, timeout=1)
        raise Exception("wait_for_qmp_event did not time out")
    except TimeoutError:
        pass
    assert time.monotonic() - t0 < 10
    try:
        machine.qmp_client.send("this-command-does-not-exist")
        raise Exception("no QMPAPIError")
    except QMPAPIError as e:
        assert e.class_name == "CommandNotFound" and e.description and e.transaction_id is None
    assert machine.succeed("echo still running") == "still running\n"
