# machines: machine
start_all()
with subtest('one'):
    machine.succeed('true')
machine.execute('exit 3')
machine.wait_for_file('/tmp')
