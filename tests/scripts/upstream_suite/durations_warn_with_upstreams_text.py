# machines: machine
# Bare numbers of seconds still work and are warned about with upstream's text (nixpkgs PR
# #542374), once per place in the script; timedeltas and the shim's own calls are not.
import warnings
from datetime import timedelta

start_all()
for _ in range(3):
    machine.succeed("true", timeout=10)  # one warning for this line, not three
machine.succeed("true", timeout=timedelta(seconds=10))  # no warning
machine.wait_until_succeeds("true", timeout=timedelta(seconds=30))  # no warning (inside too)
machine.wait_for_file("/tmp", 30)
machine.sleep(0.1)
machine.sleep(secs=0.1)
retry(lambda remaining: True, 5)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    machine.execute("true", timeout=timedelta(minutes=1))
    machine.sleep(timedelta(milliseconds=100))
    retry(lambda remaining: True, timeout=timedelta(seconds=5))
    retry(lambda remaining: True, timeout=None)
assert caught == [], [str(w.message) for w in caught]
print("durations checked")
