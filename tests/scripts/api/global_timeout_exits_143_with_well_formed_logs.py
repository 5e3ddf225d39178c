# machines: machine

start_all()
with subtest("before"):
    machine.succeed("true")
with subtest("hangs"):
    machine.succeed("sleep 600")
