# machines: machine
# Output of a background process after its command ended is never lost: a command returns
# once its stdout is closed (upstream), so it is part of the result; inside a wait it is
# logged (late output, with the failed attempt's output at debug level).
import time

start_all()
out = machine.succeed("(echo ONE; sleep 2; echo TWO) &")
print(f"RESULT {out!r}")
time.sleep(4)
machine.succeed("true")
machine.succeed("(sleep 1; echo DURING-WAIT; sleep 1; touch /tmp/flag) >/dev/stdout 2>&1 &")
machine.wait_until_succeeds("test -e /tmp/flag", timeout=30)
