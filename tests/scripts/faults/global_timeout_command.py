# machines: machine
start_all()
machine.succeed("sleep 600")
