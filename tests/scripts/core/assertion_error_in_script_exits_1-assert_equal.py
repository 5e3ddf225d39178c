# machines: machine
start_all()
t.assertEqual(machine.succeed('echo 1'), '2\n')
