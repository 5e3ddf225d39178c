# machines: machine
# Typing on the virtual keyboard: a shell-less `cat` on tty1 records what arrives.
import datetime as dt
import re
import string

start_all()
machine.succeed("(cat /dev/tty1 > /tmp/typed) >/dev/null 2>&1 &")
machine.wait_until_succeeds("busybox pidof cat", timeout=dt.timedelta(seconds=10))

test_string = "".join(c for c in string.printable if c not in string.whitespace)
machine.send_chars(test_string + "\n")
machine.wait_until_tty_matches("1", re.escape(test_string), timeout=dt.timedelta(seconds=30))
machine.wait_until_succeeds(f"grep -qF -- {test_string[:10]!r} /tmp/typed", timeout=30)

machine.send_key("shift-h")
machine.send_key("i", delay=dt.timedelta(milliseconds=50))
machine.send_key("ret", log=False)
machine.wait_until_tty_matches("1", "(?m)^Hi", timeout=30)
machine.send_chars("done\n", delay=dt.timedelta(milliseconds=20))
machine.wait_until_succeeds("tail -n 1 /tmp/typed | grep -qx done", timeout=30)
assert machine.succeed("cat /tmp/typed").splitlines() == [test_string, "Hi", "done"]
assert "done" in machine.get_tty_text("1")
