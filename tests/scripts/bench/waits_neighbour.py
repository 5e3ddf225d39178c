# machines: waiter, neighbour
# vlans: 1
# placeholder: @KINDS@ "port", "command"
# placeholder: @TRIALS@ 3
# placeholder: @WORK@ 200
# The slowdown a waiting machine inflicts on a neighbour that starts a service on the same
# host CPU (benches/waits.rs): both QEMUs are pinned to one host CPU; the neighbour runs a
# boot-like job (@WORK@ fork+execs, then a listener on port 8080) alone, then while `waiter`
# waits for that port. Prints one BENCH line.
import json
import os
import time
from typing import Any, Callable

start_all()
for m in machines:
    m.succeed("true")
cpu = max(os.sched_getaffinity(0))
for m in machines:
    for tid in os.listdir(f"/proc/{m.pid}/task"):
        os.sched_setaffinity(int(tid), {cpu})

JOB = (
    "rm -f /tmp/job; (t0=$EPOCHREALTIME; for ((i = 0; i < @WORK@; i++)); do /bin/true; done; "
    "echo $t0 $EPOCHREALTIME >/tmp/job; exec nc -l -p 8080) </dev/null >/dev/null 2>&1 & echo $!"
)


def job_seconds() -> float:
    t0, t1 = neighbour.succeed("cat /tmp/job").split()
    return float(t1) - float(t0)


waits: dict[str, Callable[[], Any]] = {
    "alone": lambda: neighbour.wait_for_file("/tmp/job", timeout=300),
    "port": lambda: waiter.wait_for_open_port(8080, "192.168.1.2", timeout=300),
    "command": lambda: waiter.wait_until_succeeds("nc -z 192.168.1.2 8080", timeout=300),
}

result: dict[str, dict[str, list[float]]] = {}
for _ in range(@TRIALS@):
    for kind in ["alone", @KINDS@]:
        t0 = time.monotonic()
        pid = neighbour.succeed(JOB).strip()
        waits[kind]()
        until_noticed = time.monotonic() - t0
        neighbour.wait_for_file("/tmp/job", timeout=300)
        r = result.setdefault(kind, {"job": [], "noticed": []})
        r["job"].append(job_seconds())
        r["noticed"].append(until_noticed)
        neighbour.succeed(f"kill {pid} 2>/dev/null; true")
print("BENCH " + json.dumps(result))
