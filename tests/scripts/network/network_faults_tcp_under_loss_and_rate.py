# machines: alice, bob
# vlans: 1
# TCP gets a file across byte-exact under 10 % loss, and a rate limit holds it to the
# bandwidth.
import time

start_all()
alice.succeed("ping -c 1 -W 5 bob >/dev/null")
alice.succeed("head -c 2000000 /dev/urandom > /tmp/send")
want = alice.succeed("sha256sum < /tmp/send").split()[0]


def transfer(tag: str, path: str) -> float:
    """Send `path` from alice to bob over TCP; the seconds it took."""
    bob.succeed(f"rm -f /tmp/recv.done; (nc -l 9000 > /tmp/recv; touch /tmp/recv.done) >/dev/null 2>&1 &")
    # Not wait_for_open_port: its probe connection would be the one `nc -l` serves.
    bob.wait_until_succeeds("netstat -ltn | grep -q ':9000 '")
    t0 = time.monotonic()
    alice.succeed(f"nc -N 192.168.1.2 9000 < {path}", timeout=120)
    bob.wait_for_file("/tmp/recv.done", timeout=120)
    took = time.monotonic() - t0
    got = bob.succeed("sha256sum < /tmp/recv").split()[0]
    expected = alice.succeed(f"sha256sum < {path}").split()[0]
    assert got == expected, (tag, got, expected)
    print(f"{tag}: {took:.2f} s")
    return took


with vlan1.impaired(loss=0.1):
    took = transfer("LOSS10", "/tmp/send")
    assert took < 90, took
alice.succeed("head -c 200000 /tmp/send > /tmp/small")
with vlan1.impaired(rate="1mbit"):
    took = transfer("RATE1MBIT", "/tmp/small")
    # 200 kB at 1 Mbit/s is 1.6 s of payload alone.
    assert 1.5 <= took < 30, took
print("tcp under faults ok")
