# machines: bad
start_all()
