# machines: machine
assert 1 == 2, 'plain assert'
