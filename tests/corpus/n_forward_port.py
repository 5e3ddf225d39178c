# machines: machine
# forward_port: reach a guest web server from the host (the driver's side).
import socket
import urllib.request

start_all()
# The tiny guest leaves the user-mode NIC unconfigured; QEMU forwards to 10.0.2.15.
machine.succeed("ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up")
machine.succeed("mkdir -p /srv/www && echo 'hello host' > /srv/www/index.html")
machine.succeed("busybox httpd -p 80 -h /srv/www")
machine.wait_for_open_port(80)

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    host_port = s.getsockname()[1]
machine.forward_port(host_port, 80)
body = urllib.request.urlopen(f"http://127.0.0.1:{host_port}/index.html", timeout=30).read()
assert body == b"hello host\n", body
