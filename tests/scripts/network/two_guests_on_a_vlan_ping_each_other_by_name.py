# machines: alice, bob
# vlans: 1

start_all()
alice.succeed("ping -c 1 -W 10 bob")
bob.succeed("ping -c 1 -W 10 alice")
assert "192.168.1.2" in alice.succeed("grep bob /etc/hosts")
assert vlan1.socket_dir.name == "vde1.ctl"
assert os.environ["QEMU_VDE_SOCKET_1"] == str(vlan1.socket_dir)
