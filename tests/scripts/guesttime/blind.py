# machines: machine
# With NTD_PROC_ROOT pointing at an empty directory the driver has neither schedstat nor PSI
# (tests/guesttime.rs): timeouts count wall time, waits keep the CPU budget, and the debug
# log says so once.
start_all()
status, _ = machine.execute("sleep infinity", timeout=2)
assert status == 124, status
try:
    machine.wait_until_succeeds("false", timeout=2)
    raise Exception("the wait succeeded")
except AssertionError as e:
    assert "withheld" not in str(e), e
    print("BLIND OK")
