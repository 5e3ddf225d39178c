# machines: legacy
start_all()
assert legacy is machine
legacy.succeed('true')
