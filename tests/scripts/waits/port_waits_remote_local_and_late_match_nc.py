# machines: server, client
# vlans: 1
# Port waits connect with bash's /dev/tcp in the wait loop's own shell: their verdicts must be
# those of upstream's `nc -z ADDR PORT`, for remote and local addresses, names and literals,
# and a connect that hangs must not outlive the wait.
import time
from typing import Callable

start_all()


def times_out(wait: Callable[[], None]) -> None:
    t0 = time.monotonic()
    try:
        wait()
    except AssertionError as e:
        assert "action timed out" in str(e), str(e)
        # A bound against hanging for minutes, not a timing goal.
        assert time.monotonic() - t0 < 60, time.monotonic() - t0
        return
    raise Exception("the wait did not time out")


# A port that opens late on another machine: by name, by address, the port as a string.
pid = server.succeed(
    "(sleep 2; exec nc -l -k -p 8080) </dev/null >/dev/null 2>&1 & echo $!"
).strip()
client.fail("nc -z server 8080")
client.wait_for_open_port(8080, "server", timeout=60)
client.wait_for_open_port(8080, "192.168.1.1", timeout=10)
client.wait_for_open_port("8080", "server", timeout=10)
server.wait_for_open_port(8080)
client.wait_for_closed_port(8081, "server", timeout=10)

# Closed again: remote and local closed-port waits end, open-port waits time out.
server.succeed(f"kill {pid}")
client.wait_for_closed_port(8080, "server", timeout=30)
server.wait_for_closed_port(8080, timeout=30)
times_out(lambda: client.wait_for_open_port(8080, "server", timeout=2))
# An address nobody has on the vlan: each connect waits seconds for ARP.
times_out(lambda: client.wait_for_open_port(80, "192.168.1.99", timeout=2))

# localhost with a listener on only one of ::1 and 127.0.0.1: the verdict nc -z gives.
server.succeed("nc -6 -l -k ::1 8086 </dev/null >/dev/null 2>&1 &")
server.succeed("nc -4 -l -k 127.0.0.1 8084 </dev/null >/dev/null 2>&1 &")
server.wait_for_open_port(8086, "::1", timeout=30)
server.wait_for_open_port(8084, "127.0.0.1", timeout=30)
for port in [8084, 8086]:
    nc_says_open = server.execute(f"nc -z localhost {port}")[0] == 0
    try:
        server.wait_for_open_port(port, "localhost", timeout=3)
        open_ = True
    except AssertionError:
        open_ = False
    assert open_ == nc_says_open, (port, open_, nc_says_open)

# A listener whose accept queue is full drops SYNs: a connect hangs (nc -z's too), and the
# wait still ends when its time is up. The queue is filled deterministically: wait until nc
# listens, then hold connections open until one no longer completes within a second (a fixed
# sleep raced a slow CI host: connects refused before nc listened left the queue open).
server.succeed("(sleep 1000 | nc -l -p 9999 >/dev/null 2>&1 &)")
server.wait_until_succeeds(
    "cat /proc/net/tcp /proc/net/tcp6 | grep -qiE ':270F 0+:0000 0A'", timeout=30
)
server.succeed(
    "for i in $(seq 1 16); do "
    "(exec 3<>/dev/tcp/127.0.0.1/9999; sleep 1000) >/dev/null 2>&1 & "
    "timeout 1 bash -c 'exec 3<>/dev/tcp/127.0.0.1/9999' 2>/dev/null || exit 0; "
    "done; exit 1"
)
times_out(lambda: server.wait_for_open_port(9999, "127.0.0.1", timeout=2))
server.succeed("true")
