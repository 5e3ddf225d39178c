# machines: machine
# Polling conditions as the legacy generation wrote them: the bare decorator, the decorator
# with seconds_interval, cond.wait(timeout=…) with an int, inside a helper function.
machine.start()
machine.succeed("touch /tmp/alive")


@polling_condition
def alive():
    "the alive marker exists"
    machine.succeed("test -e /tmp/alive")


def with_checks():
    @polling_condition(seconds_interval=0.5, description="shared dir mounted")
    def shared_mounted():
        return machine.execute("grep -q ' /tmp/shared ' /proc/mounts")[0] == 0

    with alive, shared_mounted:
        for i in range(3):
            machine.succeed("echo {} >> /tmp/counter".format(i))
        machine.wait_until_succeeds("[ $(wc -l < /tmp/counter) = 3 ]", timeout=30)
        shared_mounted.wait(timeout=30)


with_checks()
