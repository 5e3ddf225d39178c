# machines: machine
# Upstream's qemu.forceAccel (driver run with --force-accel): a machine QEMU runs under TCG
# fails at start instead of running slowly. Guests here run under TCG on purpose, so the
# demand for KVM must fail.
from test_driver.errors import MachineError

try:
    start_all()
    machine.succeed("true")
    raise Exception("the machine ran under TCG although an accelerator was demanded")
except MachineError as e:
    print(f"START ERROR: {e}")
