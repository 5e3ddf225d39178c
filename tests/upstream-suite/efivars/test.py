import uuid
import unittest

from test_driver.efi import EfiVariable
from test_driver.errors import RequestedAssertionFailed


class TestConcurrentRead(unittest.TestCase):
    def __init__(self, machine):
        super().__init__()
        self.machine = machine

    def test_concurrent_read(self):
        with self.assertRaises(RequestedAssertionFailed):
            self.machine.read_efi_vars()


vendor_uuid = uuid.UUID('a19f72f8-b554-4bd7-a0c2-2762bd854691')
machine.create_efi_vars()
machine.write_efi_vars([
    EfiVariable(
        vendor_uuid=vendor_uuid,
        name="Demo",
        data=bytes([0x2a]),
        flags=EfiVariable.Flags.NON_VOLATILE | EfiVariable.Flags.BOOTSERVICE_ACCESS | EfiVariable.Flags.RUNTIME_ACCESS,
    )
])

machine.start()
machine.wait_for_unit("multi-user.target")

print(machine.succeed('/usr/local/bin/read-increment-efi-var "Demo" "a19f72f8-b554-4bd7-a0c2-2762bd854691"'))

TestConcurrentRead(machine).test_concurrent_read()
machine.crash()

machine.dump_efi_vars()
vars = machine.read_efi_vars()

guid = uuid.UUID(bytes=vendor_uuid.bytes_le)
predicate = lambda v: v.name == "Demo" and v.vendorUUID == guid
var = next((v for v in vars if predicate(v)), None)

if var:
    var.print()
    if var.data == bytes([0x2b]):
        print("Congrats!")
    else:
        raise ValueError("Value 0x2b expected")
else:
    raise ValueError("Could not find Demo variable")
