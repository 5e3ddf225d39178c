"""EFI variables as upstream's `test_driver.efi` names them, so that scripts importing
`EfiVariable` load and type-check. ntd does not edit OVMF variable stores: the machine methods
that would (`create_efi_vars`, `write_efi_vars`, ...) raise a `MachineError`."""

from __future__ import annotations

import uuid


class EfiVariable:
    """One UEFI variable: vendor GUID, name, data and attribute flags."""

    class Flags:
        NON_VOLATILE = 0x1
        BOOTSERVICE_ACCESS = 0x2
        RUNTIME_ACCESS = 0x4
        TIME_BASED_AUTHENTICATED_WRITE_ACCESS = 0x20

    class State:
        VAR_HEADER_VALID_ONLY = 0x7F
        VAR_ADDED = 0x3F

    vendorUUID: uuid.UUID | None
    name: str
    data: bytes
    state: int
    flags: int

    def __init__(
        self,
        vendor_uuid: uuid.UUID | None = None,
        name: str | None = None,
        data: bytes | None = None,
        state: int | None = None,
        flags: int | None = None,
    ) -> None:
        self.vendorUUID = vendor_uuid
        self.name = name or ""
        self.data = data or b""
        self.state = state if state is not None else 0
        self.flags = flags if flags is not None else 0

    def print(self) -> None:
        print(f"{self.vendorUUID} {self.name} flags={self.flags:#x} data={self.data!r}")
