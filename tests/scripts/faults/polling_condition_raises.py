# machines: machine
start_all()


@polling_condition(seconds_interval=0.1)
def broken() -> None:
    raise RuntimeError("the condition itself crashed")


with broken:
    machine.succeed("sleep 1")
