# machines: vm
# containers: c
# placeholder: @COMMANDS@ 100
# placeholder: @STARTS@ 5
# A container beside a tiny VM, in one run: start to first command (the container's first
# start populates its root directory; later ones reuse it), and per-command latency.
import json
import time


def first_command(m: BaseMachine) -> float:
    """Seconds from start() to the first command's answer."""
    t0 = time.perf_counter()
    if isinstance(m, NspawnMachine):
        m.start()
    else:
        assert isinstance(m, QemuMachine)
        m.start()
    m.succeed("true")
    return time.perf_counter() - t0


def latencies(m: BaseMachine, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        m.succeed("true")
        out.append(time.perf_counter() - t0)
    return out


c_first = first_command(c)
c_again = []
for _ in range(@STARTS@):
    c.shutdown()
    c_again.append(first_command(c))
vm_boot = first_command(vm)
print("BENCH " + json.dumps({
    "container_first_start": c_first,
    "container_restarts": c_again,
    "vm_boot": vm_boot,
    "container_command": latencies(c, @COMMANDS@),
    "vm_command": latencies(vm, @COMMANDS@),
}))
