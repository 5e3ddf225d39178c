# machines: machine
# typecheck: allow name-defined (a NameError on purpose)
start_all()
machine.succeed("true")
undefined_name_here()
