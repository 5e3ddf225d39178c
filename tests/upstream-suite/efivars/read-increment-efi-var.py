#!/usr/bin/python3
"""read-increment-efi-var NAME VENDOR-UUID: the variable must hold 0x2a; make it 0x2b.

efivarfs files are 4 bytes of attributes, then the data; the kernel marks them immutable,
so the flag is cleared before the write."""
import array
import fcntl
import os
import sys

FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_IMMUTABLE_FL = 0x10

if len(sys.argv) != 3:
    sys.exit(f"usage: {sys.argv[0]} NAME UUID")
path = f"/sys/firmware/efi/efivars/{sys.argv[1]}-{sys.argv[2]}"
try:
    with open(path, "rb") as f:
        raw = f.read()
except OSError as e:
    sys.exit(f"{path}: {e}")
attributes, value = raw[:4], raw[4:]
if value != b"\x2a":
    sys.exit(f"expected 0x2a in {path}, found {value!r}")
fd = os.open(path, os.O_RDONLY)
flags = array.array("L", [0])
fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags)
if flags[0] & FS_IMMUTABLE_FL:
    flags[0] &= ~FS_IMMUTABLE_FL
    fcntl.ioctl(fd, FS_IOC_SETFLAGS, flags)
os.close(fd)
with open(path, "wb") as f:
    f.write(attributes + b"\x2b")
print(f"{path}: 0x2a -> 0x2b")
