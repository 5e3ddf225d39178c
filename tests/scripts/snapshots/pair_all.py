# machines: alpha, beta
# vlans: 1

start_all()
alpha.succeed("echo one > /root/v")
vlan1.partition([alpha], [beta])
snapshot_all("split")
vlan1.heal()
beta.succeed("ping -c 1 -W 5 192.168.1.1")
alpha.succeed("echo two > /root/v")
beta.shutdown()
restore_all("split")
print("alpha", alpha.succeed("cat /root/v").strip())
print("beta-up", beta.succeed("echo yes").strip())
# The partition is back with the snapshot.
beta.fail("ping -c 1 -W 1 192.168.1.1")
vlan1.heal()
beta.succeed("ping -c 1 -W 5 192.168.1.1")
alpha.succeed("ping -c 1 -W 5 192.168.1.2")
print("pinged both ways")
try:
    restore_all("nope")
except ValueError as e:
    print("unknown:", e)
