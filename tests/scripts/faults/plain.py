# machines: machine
start_all()
assert machine.succeed("echo hi") == "hi\n"
