# machines: alice, bob, carol, dave
# vlans: 1
# Network faults from the host: loss within a binomial band, delay on the round trip,
# partition and heal, `between` leaving a third machine alone, and bad input refused with
# nothing half-applied. dave has no port on vlan 1.
import re

start_all()
for m in (alice, bob, carol):
    m.succeed("ping -c 1 -W 5 192.168.1.1 >/dev/null")  # ARP and links up


def ping(src: QemuMachine, dst: str, count: int, interval: float = 0.02) -> tuple[int, float]:
    """Replies received and the average round trip (ms) of `count` pings."""
    _, out = src.execute(f"ping -c {count} -i {interval} -W 2 {dst} 2>&1")
    m = re.search(r"(\d+) packets received", out)
    assert m is not None, out
    rtt = re.search(r"= [\d.]+/([\d.]+)/", out)
    return int(m.group(1)), float(rtt.group(1)) if rtt else 0.0


# Loss: 20 % per frame, so a round trip (two frames) survives with probability 0.64.
vlan1.impair(loss=0.2)
received, _ = ping(alice, "bob", 200)
print(f"LOSS received {received}/200")
assert 100 <= received <= 156, received  # 128 expected, ±4 standard deviations (6.8)
vlan1.heal()
assert ping(alice, "bob", 20)[0] == 20

# Delay: both directions, so the round trip grows by about 2 × delay.
_, base = ping(alice, "bob", 10, 0.1)
vlan1.impair(delay=0.1, jitter=0.01)
received, slow = ping(alice, "bob", 10, 0.3)
print(f"DELAY base {base:.1f} ms, impaired {slow:.1f} ms")
assert received == 10, received
assert 180 <= slow - base <= 300, (base, slow)
vlan1.heal()

# Partition: both directions fail across groups, inside a group frames flow; heal restores.
vlan1.partition([alice, bob], [carol])
assert ping(alice, "carol", 3, 0.2)[0] == 0
assert ping(carol, "alice", 3, 0.2)[0] == 0
assert ping(alice, "bob", 3, 0.2)[0] == 3
vlan1.heal()
assert ping(alice, "carol", 3, 0.2)[0] == 3

# between: only alice<->bob lose everything; carol reaches both.
with vlan1.impaired(loss=1.0, between=(alice, "bob")):
    assert ping(alice, "bob", 3, 0.2)[0] == 0
    assert ping(alice, "carol", 3, 0.2)[0] == 3
    assert ping(carol, "bob", 3, 0.2)[0] == 3
assert ping(alice, "bob", 3, 0.2)[0] == 3

# Bad input: a clear error naming the argument, and nothing applied.
bad: list[tuple[dict[str, object], str]] = [
    ({"loss": 1.5}, "loss"),
    ({"delay": -1}, "delay"),
    ({"delay": 0.01, "jitter": 0.02}, "jitter"),
    ({"rate": "fast"}, "rate"),
    ({"between": (alice, "nobody")}, "nobody"),
    ({"between": (alice, dave)}, "no port on vlan1"),
]
for kwargs, needle in bad:
    try:
        vlan1.impair(loss=0.5, **kwargs)  # type: ignore[arg-type]
    except (ValueError, TypeError) as e:
        assert needle in str(e), (kwargs, str(e))
    else:
        raise AssertionError(f"impair({kwargs}) must be refused")
try:
    vlan1.partition([alice, bob], [bob, carol])
except ValueError as e:
    assert "bob" in str(e), str(e)
else:
    raise AssertionError("a machine in two groups must be refused")
assert ping(alice, "bob", 20)[0] == 20, "a refused call changed the network"
print("network faults ok")
