# machines: machine
# expect: fail
# expect-line: !!! RequestedAssertionFailed: command `test -e /etc/missing.conf` failed (exit code 1)
# A deliberately failing test: the report names the command and the script line.
start_all()
machine.succeed("echo checking configuration")
with subtest("configuration present"):
    machine.succeed("test -e /etc/missing.conf")
machine.succeed("echo not reached")
