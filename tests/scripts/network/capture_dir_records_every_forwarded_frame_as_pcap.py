# machines: alice, bob
# vlans: 1

start_all()
alice.succeed("ping -c 3 -W 10 bob")
