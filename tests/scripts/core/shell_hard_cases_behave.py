# machines: machine

import time
start_all()
machine.succeed("true")
# A background child with its stdout elsewhere does not hold the command up; one that keeps
# stdout open does, until it closes it (upstream's semantics), and its output is returned.
t0 = time.monotonic()
machine.succeed("sleep 30 >/dev/null &")
machine.succeed("(sleep 30 &) >/dev/null")
assert time.monotonic() - t0 < 5, time.monotonic() - t0
assert machine.succeed("(sleep 1; echo after) &") == "after\n"
assert machine.succeed("( (sleep 1; echo orphan) & ); echo first") == "first\norphan\n"
# A timed command whose background child keeps stdout past the deadline: 124, child killed.
assert machine.execute("(echo A; sleep 100; echo B) &", timeout=2) == (124, "A\n")
# A command reading stdin gets EOF instead of eating the shell's own input.
assert machine.succeed("cat") == ""
assert machine.succeed("read -r x || echo eof") == "eof\n"
# Bytes that arrive after their command finished (a wait attempt's child) do not leak into
# the next result.
machine.wait_until_succeeds("(sleep 0.3; echo late-bytes) & true")
time.sleep(1)
assert machine.succeed("echo next") == "next\n"
# Right after a wait (whose attempts forked), behind a PID that already exited, a process
# that keeps stdout open is still found and waited for.
machine.wait_until_succeeds("ls / >/dev/null")
assert machine.succeed("ls / >/dev/null; (sleep 1; echo behind) &") == "behind\n"
# stdout is a pipe, never the tty.
assert machine.succeed("test -p /dev/stdout && echo pipe") == "pipe\n"
# Each command runs in its own shell: no state leaks, exit does not kill the backdoor.
machine.execute("cd /; x=1; exit 5")
assert machine.succeed("pwd; echo ${x:-unset}") == "/tmp\nunset\n"
# set -euo pipefail as upstream.
assert machine.execute("false | true")[0] == 1
assert machine.execute("echo $undefined_variable")[0] != 0
# execute() with a timeout kills the command and its children with status 124.
assert machine.execute("sleep 10", timeout=1)[0] == 124
assert machine.execute("sh -c 'sleep 11; echo never' | cat", timeout=1)[0] == 124
assert machine.succeed("echo still here") == "still here\n"
assert machine.execute("ps -o args | grep -c '^sleep 1[01]' || true", timeout=5) == (0, "0\n")
# A command that runs in time keeps its own status, also 143 from a SIGTERM it sent itself.
assert machine.execute("exit 3", timeout=5)[0] == 3
assert machine.execute("kill -TERM $BASHPID", timeout=5)[0] == 143
# Waits stop a hanging attempt at their timeout.
t0 = time.monotonic()
try:
    machine.wait_until_succeeds("sleep 100", timeout=2)
    raise SystemExit("a hanging wait attempt was not stopped")
except AssertionError:
    pass
assert time.monotonic() - t0 < 10, time.monotonic() - t0
