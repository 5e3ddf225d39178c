start_all()
node1.wait_for_unit("hello-world-server")
output = node1.succeed("curl localhost:8000/index.html")
assert "Hello world" in output
