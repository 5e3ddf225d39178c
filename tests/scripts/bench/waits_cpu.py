# machines: waiter, peer
# vlans: 1
# placeholder: @KINDS@ "file", "port_local"
# placeholder: @SECS@ 10
# placeholder: @DETECT@ 5
# The guest CPU a wait costs per second of waiting, after its first second and over the
# whole wait, and how soon it notices a condition that turns true 0.3 s after it began (a
# unit also 2 s after) (benches/waits.rs). One BENCH line. Runs under ntd and under the real
# upstream driver (ci/bench --peer).
import json
import threading
import time
from typing import Any, Callable

start_all()
for m in machines:
    m.succeed("true")
waiter.succeed("nc -l -p 8080 -k </dev/null >/dev/null 2>&1 &")
peer_ip = "192.168.1.2"
qemu_pid = waiter.pid
assert qemu_pid is not None


def host_cpu() -> float:
    """QEMU's user+system CPU seconds (host side: what the builder pays)."""
    with open(f"/proc/{qemu_pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0


def guest_stat(line: str) -> tuple[float, float]:
    """(busy, total) seconds of a /proc/stat `cpu` line."""
    v = [int(x) for x in line.split()[1:]]
    return (sum(v) - v[3] - v[4]) / 100.0, sum(v) / 100.0


def window(wait: Callable[[float], Any], secs: float) -> dict[str, float]:
    """CPU shares (%) of the waiting machine from 1 s after `wait` began to its end, and
    the guest's over the whole wait (`guest_whole`)."""
    g0 = guest_stat(waiter.succeed("head -1 /proc/stat"))
    waiter.succeed("rm -f /tmp/s1; (sleep 1; head -1 /proc/stat >/tmp/s1) >/dev/null 2>&1 &")
    first: list[tuple[float, float]] = []
    timer = threading.Timer(1.0, lambda: first.append((host_cpu(), time.monotonic())))
    timer.start()
    try:
        wait(secs)
    except AssertionError:
        pass
    h2, t2 = host_cpu(), time.monotonic()
    timer.join()
    g2 = guest_stat(waiter.succeed("head -1 /proc/stat"))
    g1 = guest_stat(waiter.succeed("cat /tmp/s1"))
    h1, t1 = first[0]
    return {
        "host": 100 * (h2 - h1) / (t2 - t1),
        "guest": 100 * (g2[0] - g1[0]) / max(g2[1] - g1[1], 0.01),
        "guest_whole": 100 * (g2[0] - g0[0]) / max(g2[1] - g0[1], 0.01),
    }


waits: dict[str, Callable[[float], Any]] = {
    "idle": lambda s: time.sleep(s),
    "file": lambda s: waiter.wait_for_file("/tmp/never", timeout=s),
    "port_local": lambda s: waiter.wait_for_open_port(1, timeout=s),
    "port_remote": lambda s: waiter.wait_for_open_port(1, peer_ip, timeout=s),
    "closed_port": lambda s: waiter.wait_for_closed_port(8080, timeout=s),
    "unix_socket": lambda s: waiter.wait_for_open_unix_socket("/tmp/never.sock", timeout=s),
    "command": lambda s: waiter.wait_until_succeeds("grep -q ready /tmp/never", timeout=s),
    "unit": lambda s: waiter.wait_for_unit("ntd-activating.service", timeout=s),
    "unit_command": lambda s: waiter.wait_until_succeeds(
        "systemctl is-active ntd-activating.service", timeout=s
    ),
}


def now() -> float:
    return float(waiter.succeed("echo $EPOCHREALTIME"))


def detect_file() -> float:
    waiter.succeed("rm -f /tmp/f /tmp/t; (sleep 0.3; : >/tmp/f; echo $EPOCHREALTIME >/tmp/t) >/dev/null 2>&1 &")
    waiter.wait_for_file("/tmp/f")
    return now() - float(waiter.succeed("cat /tmp/t"))


def detect_port() -> float:
    # A listener on every address waits already; the port opens when 10.9.9.9 becomes a local
    # address (until then a connect fails at once: no route).
    waiter.succeed(
        "ip addr del 10.9.9.9/32 dev lo 2>/dev/null || true; rm -f /tmp/t; "
        "(sleep 0.3; ip addr add 10.9.9.9/32 dev lo; echo $EPOCHREALTIME >/tmp/t) >/dev/null 2>&1 &"
    )
    waiter.wait_for_open_port(8080, "10.9.9.9")
    return now() - float(waiter.succeed("cat /tmp/t"))


def detect_command() -> float:
    waiter.succeed("rm -f /tmp/r /tmp/t; (sleep 0.3; echo ready >/tmp/r; echo $EPOCHREALTIME >/tmp/t) >/dev/null 2>&1 &")
    waiter.wait_until_succeeds("grep -q ready /tmp/r")
    return now() - float(waiter.succeed("cat /tmp/t"))


def detect_unit(unit: str) -> float:
    waiter.succeed(f"systemctl stop {unit}; systemctl start --no-block {unit}")
    waiter.wait_for_unit(unit)
    t = now()
    path = unit.replace("-", "_2d").replace(".", "_2e")
    entered = waiter.succeed(
        f"busctl get-property org.freedesktop.systemd1 /org/freedesktop/systemd1/unit/{path} "
        "org.freedesktop.systemd1.Unit ActiveEnterTimestamp"
    )
    return t - int(entered.split()[1]) / 1e6


detectors: dict[str, Callable[[], float]] = {
    "file": detect_file,
    "port_local": detect_port,
    "command": detect_command,
    # Active 0.3 s into the wait: while the D-Bus watcher starts (a check closes that gap).
    "unit": lambda: detect_unit("ntd-quick.service"),
    # Active 2 s into the wait: a signal ends it.
    "unit_2s": lambda: detect_unit("ntd-later.service"),
}

kinds = [@KINDS@]
if any(k.startswith("unit") for k in kinds):
    waiter.succeed("systemctl start --no-block ntd-activating.service")
cpu = {k: window(waits[k], @SECS@) for k in ["idle"] + kinds}
detected = [k for k in detectors if k in kinds or k.startswith("unit") and "unit" in kinds]
detection = {k: [detectors[k]() for _ in range(@DETECT@)] for k in detected}
print("BENCH " + json.dumps({"cpu": cpu, "detection": detection}))
