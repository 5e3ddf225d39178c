# machines: client, router, server
# vlans: 1
# Cutting a machine off the network (block) and plugging it back in (unblock).
import datetime as dt

start_all()
server.succeed("mkdir -p /srv && echo payload > /srv/data && busybox httpd -p 8080 -h /srv")
server.wait_for_open_port(8080, "192.168.1.3", timeout=dt.timedelta(seconds=30))

with subtest("reachable"):
    client.wait_until_succeeds("wget -q -O - http://server:8080/data | grep -q payload", timeout=60)
    router.succeed("ping -c 1 -W 5 server")

with subtest("blocked"):
    server.block()
    client.fail("timeout 3 wget -q -O - http://server:8080/data")
    router.fail("ping -c 1 -W 2 server")
    client.succeed("ping -c 1 -W 5 router")

with subtest("unblocked"):
    server.unblock()
    client.wait_until_succeeds("timeout 3 wget -q -O - http://server:8080/data", timeout=60)
