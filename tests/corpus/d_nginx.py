# machines: server, client
# vlans: 1
# guest: debian
# A legacy-style web test on Debian guests: nginx on the server, curl on the client;
# wait_for_job, Machine annotations, integer timeouts, retry(fn, timeout=…).
from test_driver.machine import Machine


def wait_online(m: Machine) -> None:
    m.wait_for_unit("multi-user.target")
    m.wait_for_unit("network-online.target")


start_all()
for m in [server, client]:
    wait_online(m)

server.wait_for_job("nginx")
server.dump_tty_contents("1")
server.wait_for_open_port(80)
client.wait_until_succeeds("curl -sf http://server/ | grep -q 'Served by ntd'", timeout=60)
code = client.succeed("curl -s -o /dev/null -w '%{http_code}' http://server/missing")
assert code == "404", code

server.succeed("systemctl reload nginx")
server.require_unit_state("nginx.service")
status, _ = server.systemctl("is-enabled nginx")
assert status == 0

server.stop_job("nginx")
client.wait_until_fails("curl -sf http://server/", timeout=60)
server.start_job("nginx")
server.wait_for_unit("nginx.service", timeout=60)


def page_is_back(_):
    return client.execute("curl -sf http://server/")[0] == 0


def wait_for_page():
    retry(page_is_back, timeout=60)


wait_for_page()
