# machines: machine
# The OVMF variable store API without firmware (the tiny guest boots without OVMF): the
# store is created once, written and read back while the machine is down, and refused while
# it runs, with upstream's errors.
import uuid

from test_driver.efi import EfiVariable
from test_driver.errors import RequestedAssertionFailed

vendor = uuid.UUID("a19f72f8-b554-4bd7-a0c2-2762bd854691")
assert machine.read_efi_vars() == []
machine.create_efi_vars()
assert machine.efi_vars_path.stat().st_size == 0x84000
try:
    machine.create_efi_vars()
    raise Exception("a second store was created over the first")
except RequestedAssertionFailed as e:
    assert str(e) == "OVMF variables store exists", e
flags = EfiVariable.Flags.NON_VOLATILE | EfiVariable.Flags.BOOTSERVICE_ACCESS
machine.write_efi_vars([EfiVariable(vendor_uuid=vendor, name="One", data=b"\x01", flags=flags)])
machine.write_efi_vars([
    EfiVariable(vendor_uuid=vendor, name="Two", data=b"\x02\x02", flags=flags),
    EfiVariable(vendor_uuid=vendor, name="One", data=b"\x11", flags=flags),  # replaces One
])
got = {v.name: v for v in machine.read_efi_vars()}
assert sorted(got) == ["One", "Two"], got
assert got["One"].data == b"\x11" and got["Two"].data == b"\x02\x02", got
assert got["One"].vendorUUID == uuid.UUID(bytes=vendor.bytes_le), got["One"].vendorUUID
assert got["One"].flags == flags and not got["One"].isDeleted
machine.dump_efi_vars()
start_all()
machine.wait_for_file("/tmp")
for call in (machine.read_efi_vars, machine.create_efi_vars, lambda: machine.write_efi_vars([])):
    try:
        call()
        raise Exception("the store was used while the machine runs")
    except RequestedAssertionFailed as e:
        assert "System is currently running" in str(e), e
machine.crash()
assert len(machine.read_efi_vars()) == 2
print("efi store rules hold")
