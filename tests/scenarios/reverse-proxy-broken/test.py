import sys

from termcolor import colored

start_all()

server.wait_for_unit("backend.service")
server.wait_for_unit("nginx.service")
client.wait_for_unit("multi-user.target")

expected = "<h1>Hello, World!</h1>"
output = client.succeed("curl --fail --silent http://server:80")

if expected not in output:
    print(colored(f"unexpected answer from the proxy: {output!r} (wanted {expected!r})", "red"))
    sys.exit(1)
