# machines: machine
# A command that never returns is stopped by its timeout (status 124, like `timeout`).
start_all()
status, _ = machine.execute("sleep infinity", timeout=2)
assert status == 124, status
machine.succeed("sleep infinity", timeout=1)
