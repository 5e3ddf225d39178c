# machines: server, client
# vlans: 1
# Legacy generation (L): `Machine` annotations, integer timeouts, ports as strings,
# retry(fn, timeout=…) counting attempts, copy_from_vm.
from test_driver.machine import Machine

start_all()


def serve(m: Machine, port: int) -> None:
    m.succeed("mkdir -p /srv/www && echo 'hello from {}' > /srv/www/index.html".format(m.name))
    m.succeed("busybox httpd -p {} -h /srv/www".format(port))
    m.wait_for_open_port(port)


serve(server, 80)


def page_is_served(_):
    status, out = client.execute("wget -q -O - http://server/index.html")
    return status == 0 and "hello from server" in out


def wait_for_page():
    retry(page_is_served, timeout=60)


wait_for_page()
client.wait_until_succeeds("wget -q -O - http://server/ | grep -q hello", timeout=60)
server.wait_for_open_port("80")
client.fail("wget -q -O - http://server:81/")

out = client.succeed("wget -q -O - http://server/index.html")
assert out == "hello from server\n", out

server.succeed("mkdir -p /tmp/report && cp /srv/www/index.html /tmp/report/")
server.copy_from_vm("/tmp/report", "server-report")
