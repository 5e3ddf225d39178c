# machines: alice, bob
# vlans: 1

start_all()
alice.succeed("ping -c 1 -W 10 bob")
alice.block()
alice.fail("ping -c 2 -W 2 bob")
bob.fail("ping -c 2 -W 2 alice")
alice.unblock()
alice.wait_until_succeeds("ping -c 1 -W 2 bob", timeout=60)
