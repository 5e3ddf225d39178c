# machines: machine
# File waits test plain paths with a builtin in the wait loop's shell and anything else with
# upstream's `test -e PATH` (shell words); socket waits run `nc -z -U` only once the socket
# exists; commands keep the output of the attempt that succeeded; retry and polling slices.
import time
from typing import Callable

start_all()


def times_out(wait: Callable[[], None]) -> None:
    try:
        wait()
    except AssertionError as e:
        assert "action timed out" in str(e), str(e)
        return
    raise Exception("the wait did not time out")


machine.succeed("rm -rf /tmp/w; mkdir -p /tmp/w")
machine.succeed("(sleep 1.5; touch /tmp/w/late) >/dev/null 2>&1 &")
machine.wait_for_file("/tmp/w/late", timeout=30)
# Shell words, as upstream passes them unquoted: a variable, a glob.
machine.succeed("(sleep 1; touch /tmp/w/from-var) >/dev/null 2>&1 &")
machine.wait_for_file("$(echo /tmp/w)/from-var", timeout=30)
machine.wait_for_file("/tmp/w/fr*", timeout=5)
# Split into several words, `test -e` fails as upstream's does.
times_out(lambda: machine.wait_for_file("/tmp/w/late /tmp/w/late", timeout=1))
times_out(lambda: machine.wait_for_file("/tmp/w/never", timeout=1))

# A unix socket that is bound late; a socket file nobody listens on is not open.
machine.succeed("(sleep 1.5; exec nc -l -k -U /tmp/w/s.sock) </dev/null >/dev/null 2>&1 &")
machine.wait_for_open_unix_socket("/tmp/w/s.sock", timeout=30)
pid = machine.succeed("(exec nc -l -k -U /tmp/w/stale.sock) </dev/null >/dev/null 2>&1 & echo $!")
machine.wait_for_open_unix_socket("/tmp/w/stale.sock", timeout=30)
machine.succeed(f"kill {pid.strip()}; sleep 0.2; test -S /tmp/w/stale.sock")
times_out(lambda: machine.wait_for_open_unix_socket("/tmp/w/stale.sock", timeout=2))

# The output of the attempt that succeeded, not of the ones before it.
out = machine.wait_until_succeeds(
    "echo x >> /tmp/w/n; n=$(wc -l < /tmp/w/n); echo try-$n; [ $n -ge 3 ]", timeout=30
)
assert out == "try-3\n", repr(out)
out = machine.wait_until_fails("echo y >> /tmp/w/m; n=$(wc -l < /tmp/w/m); echo fail-$n; [ $n -lt 2 ]", timeout=30)
assert out == "fail-2\n", repr(out)

# A wait that lasts a while (the old, slow phase of the schedule) still notices.
machine.succeed("(sleep 4; touch /tmp/w/later) >/dev/null 2>&1 &")
machine.wait_until_succeeds("cat /tmp/w/later", timeout=60)
machine.succeed("(sleep 3; touch /tmp/w/later2) >/dev/null 2>&1 &")
machine.wait_for_file("/tmp/w/later2", timeout=60)

# retry with a callable: called until it returns true.
calls: list[bool] = []


def third_time_lucky(last: bool) -> bool:
    calls.append(last)
    return len(calls) >= 3


retry(third_time_lucky, 30)
assert [bool(c) for c in calls] == [False, False, False], calls

# While a polling condition is active, waits are cut into slices; they still notice.
checks: list[float] = []


@polling_condition(seconds_interval=0.5)
def machine_answers() -> bool:
    checks.append(time.monotonic())
    return True


with machine_answers:
    machine.succeed("(sleep 2; touch /tmp/w/sliced) >/dev/null 2>&1 &")
    machine.wait_for_file("/tmp/w/sliced", timeout=30)
assert len(checks) >= 2, checks
