# machines: machine
# A start script whose QEMU demands KVM (accel=kvm, as forceAccel makes it) and cannot open
# /dev/kvm: the start fails with upstream's forceAccel message before QEMU's own output.
from test_driver.errors import MachineError

try:
    machine.start()
    raise Exception("a QEMU that exited at once started")
except MachineError as e:
    print(f"START ERROR: {e}")
