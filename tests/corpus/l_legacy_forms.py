# machines: machine
# Forms only the legacy generation wrote: the tty as an int, sleep(n), ports as strings,
# execute(…, check_return=False), wait_for_console_text without a timeout.
from test_driver.machine import Machine


def greet(m: Machine) -> None:
    m.succeed("echo 'Welcome to the tiny guest' > /dev/tty1")
    m.wait_until_tty_matches(1, "Welcome", timeout=30)


machine.start()
greet(machine)
assert "Welcome" in machine.get_tty_text(1)
machine.sleep(1)
status, out = machine.execute("echo partial; exit 3", check_return=False)
assert (status, out) == (-1, "partial\n"), (status, out)
machine.succeed("busybox httpd -p 8000 -h /tmp")
machine.wait_for_open_port("8000")
machine.wait_for_closed_port("8001", timeout=10)
machine.succeed("echo boot-finished >&2")
machine.wait_for_console_text("boot-finished")
machine.succeed("echo legacy > /tmp/legacy.txt")
machine.copy_from_vm("/tmp/legacy.txt")
