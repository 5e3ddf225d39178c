# machines: left, right
# vlans: 1, 2
# Two networks between the same machines; `vlans` and vlan<N> name them.
start_all()

assert sorted(v.nr for v in vlans) == [1, 2]
assert vlan1.nr == 1 and vlan2.nr == 2

with subtest("both networks carry traffic"):
    for net in (1, 2):
        left.succeed(f"ping -c 1 -W 5 192.168.{net}.2")
        right.succeed(f"ping -c 1 -W 5 192.168.{net}.1")

with subtest("blocking cuts the first network only"):
    left.block()
    left.fail("ping -c 1 -W 2 192.168.1.2")
    left.succeed("ping -c 1 -W 5 192.168.2.2")
    left.unblock()
    left.wait_until_succeeds("ping -c 1 -W 2 192.168.1.2", timeout=60)
