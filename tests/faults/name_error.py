# machines: machine
# typecheck: skip (a NameError on purpose)
start_all()
machine.succeed("true")
undefined_name_here()
