# machines: machine
# Output of a background process after its command ended is never lost: it is returned or
# logged (late output; inside a wait, with the failed attempt's output at debug level).
import time

start_all()
out = machine.succeed("(echo ONE; sleep 2; echo TWO) &")
print(f"RESULT {out!r}")
time.sleep(4)
machine.succeed("true")
machine.succeed("(sleep 1; echo DURING-WAIT; sleep 1; touch /tmp/flag) >/dev/stdout 2>&1 &")
machine.wait_until_succeeds("test -e /tmp/flag", timeout=30)
