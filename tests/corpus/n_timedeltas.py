# machines: machine
# Newest generation (N): datetime.timedelta for every duration, QemuMachine annotations.
import datetime as dt

from test_driver.machine import QemuMachine

TIMEOUT = dt.timedelta(seconds=60)


def wait_ready(m: QemuMachine) -> None:
    m.wait_for_file("/tmp/shared", timeout=TIMEOUT)
    m.wait_until_succeeds("test -d /proc/1", timeout=TIMEOUT)


start_all()
wait_ready(machine)
machine.succeed("true", timeout=dt.timedelta(seconds=10))
assert machine.execute("sleep 3", timeout=dt.timedelta(seconds=1))[0] == 124
machine.sleep(duration=dt.timedelta(milliseconds=200))

machine.succeed("busybox httpd -f -p 8080 -h /tmp >/dev/null 2>&1 & echo $! > /tmp/httpd.pid")
machine.wait_for_open_port(8080, timeout=TIMEOUT)
machine.succeed("(sleep 0.5; kill $(cat /tmp/httpd.pid)) >/dev/null 2>&1 &")
machine.wait_for_closed_port(8080, timeout=TIMEOUT)

machine.succeed("(sleep 0.5; echo done > /tmp/done) >/dev/null 2>&1 &")
assert machine.wait_until_succeeds("cat /tmp/done", timeout=TIMEOUT) == "done\n"
machine.wait_until_fails("test -e /tmp/never", timeout=TIMEOUT)
machine.succeed("echo console-check >&2")
machine.wait_for_console_text("console-check", timeout=dt.timedelta(seconds=30))


def ready_soon():
    machine.succeed("(sleep 0.3; touch /tmp/soon) >/dev/null 2>&1 &")
    retry(lambda _: machine.execute("test -e /tmp/soon")[0] == 0, timeout=dt.timedelta(seconds=20))


ready_soon()

with subtest("an interval polling condition"):
    def marker_with_interval():
        @polling_condition(interval=dt.timedelta(milliseconds=200), description="marker exists")
        def marker():
            machine.succeed("test -e /tmp/done")

        with marker:
            machine.succeed("true")
            marker.wait(dt.timedelta(seconds=10))

    marker_with_interval()
