# machines: machine
start_all()
machine.succeed('echo before')
machine.succeed('echo doomed; exit 7')
