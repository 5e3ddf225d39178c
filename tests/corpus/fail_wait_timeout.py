# machines: machine
# expect: fail
# expect-line: !!! RequestedAssertionFailed: action timed out after
# A deliberately failing wait: the service never opens its port.
import datetime as dt

start_all()
machine.wait_for_open_port(4444, timeout=dt.timedelta(seconds=3))
