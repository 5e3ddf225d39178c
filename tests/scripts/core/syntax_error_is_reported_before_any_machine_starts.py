# machines: machine
# typecheck: skip (a syntax error on purpose: the driver must report it before any machine starts)
start_all()
if broken
