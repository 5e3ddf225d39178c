# machines: a, b, c
# vlans: 1, 2

start_all()
a.succeed("ping -c 1 -W 10 192.168.1.2")
c.succeed("ping -c 1 -W 10 192.168.2.2")
b.succeed("ping -c 1 -W 10 192.168.1.1", "ping -c 1 -W 10 192.168.2.3")
c.succeed("ip addr add 192.168.1.99/24 dev eth1")
a.fail("ping -c 2 -W 2 192.168.1.99")
b.fail("ping -c 2 -W 2 -I eth1 192.168.1.99")
