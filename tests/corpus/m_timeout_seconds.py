# machines: alpha, beta, gamma
# vlans: 1
# Mid generation (M): retry(fn, timeout_seconds=…), BaseMachine annotations, loops over
# `machines`, join_all at the end.
from test_driver.machine import BaseMachine

start_all()


def reaches_everyone(m: BaseMachine) -> None:
    for other in machines:
        if other is not m:
            m.succeed(f"ping -c 1 -W 5 {other.name}")


for m in machines:
    reaches_everyone(m)

for m in machines:
    m.succeed("(sleep 1; touch /tmp/ready) >/dev/null 2>&1 &")


def all_ready(_last_try: bool) -> bool:
    return all(m.execute("test -e /tmp/ready")[0] == 0 for m in machines)


retry(all_ready, timeout_seconds=60)
assert [m.name for m in machines] == ["alpha", "beta", "gamma"]

for m in machines:
    m.succeed("(sleep 0.5; poweroff) >/dev/null 2>&1 &")
join_all()
assert not any(m.booted for m in machines)
