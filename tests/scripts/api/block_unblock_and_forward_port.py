# machines: client, server
# vlans: 1
# placeholder: @PORT@ 8080

import urllib.request
start_all()
server.succeed("mkdir -p /srv && echo Hello > /srv/file && busybox httpd -p 8080 -h /srv")
server.wait_for_open_port(8080)
client.wait_until_succeeds("wget -q -O - http://server:8080/file | grep Hello", timeout=30)
server.block()
client.fail("timeout 3 wget -q -O - http://server:8080/file")
server.unblock()
client.wait_until_succeeds("timeout 3 wget -q -O - http://server:8080/file", timeout=30)
# The user-mode NIC (device 0) carries forwarded ports; the tiny guest leaves it unconfigured.
server.succeed("ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up")
server.forward_port(@PORT@, 8080)
response = urllib.request.urlopen("http://127.0.0.1:@PORT@/file", timeout=20).read()
assert response == b"Hello\n", response
