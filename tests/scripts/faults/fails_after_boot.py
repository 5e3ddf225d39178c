# machines: machine

machine.succeed("true")
raise RuntimeError("failing on purpose after the boot")
