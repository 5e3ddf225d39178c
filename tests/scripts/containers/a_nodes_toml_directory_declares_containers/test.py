start_all()
assert isinstance(web, NspawnMachine) and isinstance(client, NspawnMachine)
web.wait_for_unit("hello-server.service")
web.wait_for_open_port(8000)
assert client.succeed("curl -sf http://web:8000/") == "hello from a container\n"
assert web.succeed("cat /etc/hostname") == "web\n"
print("NODES.TOML CONTAINERS DONE")
