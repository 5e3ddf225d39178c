# machines: machine
start_all()
machine.succeed('true')
machine.succeed('sleep 600')
