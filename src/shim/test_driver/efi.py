"""UEFI variables in an OVMF variable store, as upstream's `test_driver.efi` offers them
(nixpkgs PR #456099): `EfiVariable`, and the store a machine keeps in
``<state_dir>/<name>-efi-vars.fd`` (``NIX_EFI_VARS`` of its start script).

The store is the layout of OVMF's 4 MiB build (528 KiB, what Debian's ovmf and NixOS ship),
written and read here without any helper package:

- a firmware volume header (0x48 bytes: the `_FVH` signature, the system NV data file
  system GUID, 0x84 blocks of 4 KiB, a 16-bit checksum over the header);
- a variable store header (28 bytes: the authenticated variable GUID, its size, formatted
  and healthy);
- the variables, each an authenticated variable header (60 bytes) followed by its UTF-16
  name (NUL-terminated) and its data, the next header 4-byte aligned; free space is 0xff;
- the fault-tolerant-write working block header at 0x41000 and the spare area up to
  0x84000.

As upstream, a variable's ``vendorUUID`` is the GUID as its 16 bytes are stored (so a GUID
`u` reads back as ``uuid.UUID(bytes=u.bytes_le)``), and only variables whose state is
"added" are read (older copies the firmware replaced are skipped).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable
from pathlib import Path

from test_driver.errors import RequestedAssertionFailed

# Layout of the 4 MiB OVMF build (OvmfPkg's VarStore.fdf.inc).
_BLOCK = 0x1000
_STORE_SIZE = 0x40000  # firmware volume header + variable store
_FTW_WORKING_OFFSET = 0x41000
_TOTAL_SIZE = 0x84000
_FV_HEADER_LENGTH = 0x48
_FV_ATTRIBUTES = 0x0004FEFF
_SYSTEM_NV_DATA_FV_GUID = uuid.UUID("fff12b8d-7696-4c8b-a985-2747075b4f50")
_AUTHENTICATED_VARIABLE_GUID = uuid.UUID("aaf32c78-947b-439a-a180-2e144ec37792")
# The fault-tolerant-write working block header OVMF expects in an empty store: its
# signature GUID (edk2's gEdkiiWorkingBlockSignatureGuid), CRC, "valid" flags and the size
# of the write queue. A constant of the format, as the empty-store template has it.
_FTW_WORKING_HEADER = bytes.fromhex(
    "2b29589e687c7d49a0ce6500fd9f1b952caf2c64feffffffe00f000000000000"
)
_VARIABLE_START = 0x55AA
_HEADER = struct.Struct("<HBBIQ16sIII16s")  # the authenticated variable header, 60 bytes
_STORE_HEADER = struct.Struct("<16sIBBHI")  # 28 bytes
_VAR_ADDED = 0x3F
_VAR_IN_DELETED_TRANSITION = 0xFE


class EfiVariable:
    """One UEFI variable: vendor GUID, name, data, attribute flags and state."""

    class Flags:
        NON_VOLATILE = 0x1
        BOOTSERVICE_ACCESS = 0x2
        RUNTIME_ACCESS = 0x4
        TIME_BASED_AUTHENTICATED_WRITE_ACCESS = 0x20

    class State:
        VAR_HEADER_VALID_ONLY = 0x7F
        VAR_ADDED = 0x3F

    vendorUUID: uuid.UUID
    name: str
    data: bytes
    state: int
    flags: int
    monotonicCount: int
    timestamp: bytes
    pubKeyIdx: int

    def __init__(
        self,
        vendor_uuid: uuid.UUID | None = None,
        name: str | None = None,
        data: bytes | None = None,
        state: int | None = None,
        flags: int | None = None,
    ) -> None:
        # Upstream keeps the GUID as its stored bytes: UUID(bytes=vendor_uuid.bytes_le).
        self.vendorUUID = (
            uuid.UUID(bytes=vendor_uuid.bytes_le) if vendor_uuid is not None else uuid.UUID(int=0)
        )
        self.name = name or ""
        self.data = data or b""
        # States are stored with their bits inverted (a cleared bit is a step taken).
        self.state = state ^ 0xFF if state is not None else _VAR_ADDED
        self.flags = flags or 0
        self.monotonicCount = 0
        self.timestamp = bytes(16)
        self.pubKeyIdx = 0

    @property
    def isDeleted(self) -> bool:
        return self.state not in (_VAR_ADDED, _VAR_ADDED & _VAR_IN_DELETED_TRANSITION)

    @property
    def volatile(self) -> bool:
        return not self.flags & self.Flags.NON_VOLATILE

    @property
    def boot_access(self) -> bool:
        return bool(self.flags & self.Flags.BOOTSERVICE_ACCESS)

    @property
    def runtime_access(self) -> bool:
        return bool(self.flags & self.Flags.RUNTIME_ACCESS)

    def serialize(self) -> bytes:
        """The variable as the store holds it: header, UTF-16 name with its NUL, data."""
        name = (self.name + "\0").encode("utf-16-le")
        header = _HEADER.pack(
            _VARIABLE_START,
            self.state,
            0,
            self.flags,
            self.monotonicCount,
            self.timestamp,
            self.pubKeyIdx,
            len(name),
            len(self.data),
            self.vendorUUID.bytes,
        )
        return header + name + self.data

    @classmethod
    def deserialize(cls, store: bytes, offset: int) -> tuple[EfiVariable, int] | None:
        """The variable at ``offset`` and the offset of the next one, or None at the end of
        the variables (free space, or a header that does not fit)."""
        if offset + _HEADER.size > len(store):
            return None
        (start, state, _, flags, count, timestamp, pubkey, name_size, data_size,
         guid) = _HEADER.unpack_from(store, offset)
        end = offset + _HEADER.size + name_size + data_size
        if start != _VARIABLE_START or end > len(store):
            return None
        var = cls()
        var.state = state
        var.flags = flags
        var.monotonicCount = count
        var.timestamp = timestamp
        var.pubKeyIdx = pubkey
        var.vendorUUID = uuid.UUID(bytes=guid)
        name = store[offset + _HEADER.size : offset + _HEADER.size + name_size]
        var.name = name.decode("utf-16-le", errors="replace").split("\0", 1)[0]
        var.data = store[end - data_size : end]
        return var, (end + 3) & ~3

    def print(self) -> None:
        print(
            f"{self.vendorUUID} {self.name} flags={self.flags:#x} state={self.state:#x} "
            f"data={self.data.hex()}"
        )

    def __repr__(self) -> str:
        return f"<EfiVariable {self.vendorUUID} {self.name!r} {self.data!r}>"


def _firmware_volume_header() -> bytes:
    header = bytearray(
        struct.pack(
            "<16s16sQ4sIHHHBB",
            bytes(16),
            _SYSTEM_NV_DATA_FV_GUID.bytes_le,
            _TOTAL_SIZE,
            b"_FVH",
            _FV_ATTRIBUTES,
            _FV_HEADER_LENGTH,
            0,  # checksum, below
            0,  # no extended header
            0,
            2,  # revision
        )
    )
    header += struct.pack("<IIII", _TOTAL_SIZE // _BLOCK, _BLOCK, 0, 0)  # block map
    checksum = (-sum(struct.unpack(f"<{len(header) // 2}H", header))) & 0xFFFF
    struct.pack_into("<H", header, 0x32, checksum)
    return bytes(header)


def _store_bytes(variables: list[EfiVariable]) -> bytes:
    store = bytearray(b"\xff" * _TOTAL_SIZE)
    fv = _firmware_volume_header()
    store[: len(fv)] = fv
    header = _STORE_HEADER.pack(
        _AUTHENTICATED_VARIABLE_GUID.bytes_le, _STORE_SIZE - _FV_HEADER_LENGTH, 0x5A, 0xFE, 0, 0
    )
    at = _FV_HEADER_LENGTH
    store[at : at + len(header)] = header
    at += len(header)
    for var in variables:
        raw = var.serialize()
        if at + len(raw) > _STORE_SIZE:
            raise RequestedAssertionFailed(
                f"the UEFI variables do not fit into the store ({_STORE_SIZE} bytes)"
            )
        store[at : at + len(raw)] = raw
        at = (at + len(raw) + 3) & ~3
    store[_FTW_WORKING_OFFSET : _FTW_WORKING_OFFSET + len(_FTW_WORKING_HEADER)] = (
        _FTW_WORKING_HEADER
    )
    return bytes(store)


def parse_store(store: bytes) -> list[EfiVariable]:
    """The live variables of a store, in store order, the last copy of each (vendor, name)."""
    if len(store) < _FV_HEADER_LENGTH + _STORE_HEADER.size or store[40:44] != b"_FVH":
        raise RequestedAssertionFailed("not an OVMF variable store (no firmware volume header)")
    header_length = struct.unpack_from("<H", store, 0x30)[0]
    signature = store[header_length : header_length + 16]
    if signature != _AUTHENTICATED_VARIABLE_GUID.bytes_le:
        raise RequestedAssertionFailed(
            "the OVMF variable store is not an authenticated variable store"
        )
    live: dict[tuple[uuid.UUID, str], EfiVariable] = {}
    offset = (header_length + _STORE_HEADER.size + 3) & ~3
    while (found := EfiVariable.deserialize(store, offset)) is not None:
        var, offset = found
        if not var.isDeleted:
            live.pop((var.vendorUUID, var.name), None)
            live[(var.vendorUUID, var.name)] = var
    return list(live.values())


class EfiVars:
    """The variable store of one machine (``path``); ``running()`` says whether its
    firmware may be writing it, in which case every access is refused."""

    def __init__(self, path: Path, running: Callable[[], bool]) -> None:
        self.state_path = path
        self._running = running

    def _assert_stopped(self) -> None:
        if self._running():
            raise RequestedAssertionFailed(
                "System is currently running and concurrent reads / writes to the OVMF "
                "variables is unsupported"
            )

    def read(self) -> list[EfiVariable] | None:
        """The live variables; None when the store does not exist."""
        self._assert_stopped()
        try:
            store = self.state_path.read_bytes()
        except FileNotFoundError:
            return None
        return parse_store(store)

    def create_empty(self) -> None:
        self._assert_stopped()
        if self.state_path.exists():
            raise RequestedAssertionFailed("OVMF variables store exists")
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        self.state_path.write_bytes(_store_bytes([]))

    def write(self, add: list[EfiVariable]) -> None:
        """Add or replace (same vendor and name) variables; the store is rewritten whole,
        holding only live variables."""
        self._assert_stopped()
        variables = {(v.vendorUUID, v.name): v for v in (self.read() or [])}
        for var in add:
            variables[(var.vendorUUID, var.name)] = var
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(_store_bytes(list(variables.values())))
        tmp.replace(self.state_path)


__all__ = ["EfiVariable", "EfiVars", "parse_store"]
