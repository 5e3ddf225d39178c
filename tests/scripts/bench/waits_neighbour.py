# machines: client, server
# vlans: 1
# placeholder: @KINDS@ "port", "command"
# placeholder: @TRIALS@ 3
# The slowdown a waiting machine inflicts on a neighbour that boots a service on the same
# host CPU (benches/waits.rs, Debian guests of bench/waits-neighbour): with both QEMUs pinned
# to one host CPU, `server` boots from a fresh overlay and starts nginx, first while `client`
# sits idle (the host watches server's console), then while `client` waits for port 80
# (`wait_for_open_port`, or `wait_until_succeeds("curl …")`). The job is the server's boot to
# nginx active (its own monotonic clock); `noticed` is when the wait returned. One BENCH line.
import json
import os
import time
from typing import Any, Callable

client.start()
client.wait_for_unit("multi-user.target")
cpu = max(os.sched_getaffinity(0))


def pin(pid: int) -> None:
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), {cpu})


client_pid = client.pid
assert client_pid is not None
pin(client_pid)
waits: dict[str, Callable[[], Any]] = {
    "alone": lambda: server.wait_for_console_text(r"Started nginx\.service"),
    "port": lambda: client.wait_for_open_port(80, "server", timeout=600),
    "command": lambda: client.wait_until_succeeds("curl -sf -o /dev/null http://server/", timeout=600),
}

result: dict[str, dict[str, list[float]]] = {}
for _ in range(@TRIALS@):
    for kind in ["alone", @KINDS@]:
        server.start()
        server_pid = server.pid
        assert server_pid is not None
        pin(server_pid)
        t0 = time.monotonic()
        waits[kind]()
        noticed = time.monotonic() - t0
        active = server.succeed(
            "systemctl show nginx.service --property=ActiveEnterTimestampMonotonic --value"
        )
        r = result.setdefault(kind, {"job": [], "noticed": []})
        r["job"].append(int(active) / 1e6)
        r["noticed"].append(noticed)
        server.crash()
        # A fresh overlay for the next boot: every boot does the same work.
        for f in os.listdir(server.state_dir):
            if f.endswith(".qcow2"):
                os.remove(os.path.join(server.state_dir, f))
print("BENCH " + json.dumps(result))
