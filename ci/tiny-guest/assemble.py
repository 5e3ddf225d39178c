#!/usr/bin/env python3
"""Assemble the tiny guest's initramfs and kernel image (called by ci/build-tiny-guest).

Input: a Debian kernel package already extracted and `depmod`ed in KROOT, the guest's
own files in ci/tiny-guest/rootfs, and host binaries: busybox-static, bash-static, and
dynamic ones with their libraries (nc from netcat-openbsd for -z, coreutils' timeout for
exit status 124). Output in OUT: `kernel`, `initrd` and `manifest`. The cpio archive is
written here rather than by cpio(1) so that it holds /dev/console and root-owned files
without the builder being root, and so that it is byte-for-byte reproducible (sorted
entries, mtime 0).
"""

import argparse
import lzma
import os
import shutil
import stat
import subprocess
import sys

# Modules every guest loads at boot; a name in modules.builtin is skipped.
BASE_MODULES = [
    "virtio_pci", "virtio_console", "virtio_rng", "virtio_net", "virtio_blk",
    "9p", "9pnet_virtio", "8021q", "af_packet", "qemu_fw_cfg",
]
# Busybox applets replaced by something else in the guest.
NOT_FROM_BUSYBOX = {"nc", "timeout", "poweroff", "reboot", "halt", "linuxrc"}
XZ_MAGIC = b"\xfd7zXZ\x00"
ELF_MAGIC = b"\x7fELF"


def log(msg):
    print(f"build-tiny-guest: {msg}", file=sys.stderr)


def modname(path):
    return os.path.basename(path).split(".ko")[0].replace("-", "_")


def read_modules_dep(moddir):
    """Map module name -> (relative path, [dependency paths]) from modules.dep."""
    deps = {}
    with open(os.path.join(moddir, "modules.dep")) as f:
        for line in f:
            path, _, rest = line.partition(":")
            deps[modname(path)] = (path, rest.split())
    return deps


def read_builtin(moddir):
    with open(os.path.join(moddir, "modules.builtin")) as f:
        return {modname(line.strip()) for line in f if line.strip()}


def load_order(wanted, deps, builtin):
    """Module paths so that every module follows its dependencies."""
    by_path = {path: name for name, (path, _) in deps.items()}
    order, seen = [], set()

    def visit(name):
        if name in seen:
            return
        seen.add(name)
        for dep in deps[name][1]:
            visit(by_path[dep])
        order.append(deps[name][0])

    for name in wanted:
        key = name.replace("-", "_")
        if key in builtin:
            continue
        if key not in deps:
            sys.exit(f"build-tiny-guest: kernel has no module {name!r}")
        visit(key)
    return order


def copy_file(src, dst, mode=None):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(src, dst)
    os.chmod(dst, mode if mode is not None else stat.S_IMODE(os.stat(src).st_mode))


def shared_libraries(binary):
    """Absolute paths of the libraries and loader a dynamic binary needs (per ldd)."""
    out = subprocess.run(["ldd", binary], check=True, capture_output=True, text=True).stdout
    paths = []
    for line in out.splitlines():
        words = line.split()
        if "=>" in words:
            target = words[words.index("=>") + 1]
            if target.startswith("/"):
                paths.append(target)
        elif words and words[0].startswith("/"):
            paths.append(words[0])  # the dynamic loader
    return paths


def stage(args, root):
    kmoddir = os.path.join(args.kroot, "lib/modules", args.kver)
    shutil.copytree(args.rootfs, root, symlinks=True)
    # Modes from the checkout depend on the umask; the guest gets 0755/0644 whatever it was.
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                os.chmod(full, 0o755 if os.access(full, os.X_OK) else 0o644)
    for d in ("proc", "sys", "dev", "tmp", "run", "root", "mnt", "etc/init.d",
              "bin", "sbin", "usr/bin", "usr/sbin", "lib64"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.chmod(os.path.join(root, "root"), 0o700)
    os.chmod(os.path.join(root, "tmp"), 0o1777)

    copy_file(args.busybox, os.path.join(root, "bin/busybox"), 0o755)
    applets = subprocess.run([args.busybox, "--list-full"], check=True, capture_output=True,
                             text=True).stdout.split()
    for applet in applets:
        if os.path.basename(applet) in NOT_FROM_BUSYBOX:
            continue
        link = os.path.join(root, applet)
        if not os.path.lexists(link):
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink("/bin/busybox", link)
    os.symlink("bin/busybox", os.path.join(root, "init"))
    copy_file(args.bash, os.path.join(root, "bin/bash"), 0o755)

    # Dynamic host binaries where busybox falls short, with their libraries and loader.
    for spec in args.host_bin:
        src, _, dest = spec.partition("=")
        copy_file(src, root + dest, 0o755)
        for lib in shared_libraries(src):
            copy_file(os.path.realpath(lib), root + lib, 0o755)

    deps = read_modules_dep(kmoddir)
    order = load_order(BASE_MODULES + args.module, deps, read_builtin(kmoddir))
    for rel in order:
        copy_file(os.path.join(kmoddir, rel), os.path.join(root, "lib/modules", args.kver, rel))
    for name in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        copy_file(os.path.join(kmoddir, name), os.path.join(root, "lib/modules", args.kver, name))
    # modules.dep of the reduced set, so that modprobe works inside the guest too.
    subprocess.run(["depmod", "-b", root, args.kver], check=True)
    with open(os.path.join(root, "etc/ntd-modules"), "w") as f:
        f.write("".join(rel + "\n" for rel in order))
    return order


def cpio_entry(out, name, mode, data=b"", ino=0, rdev=(0, 0)):
    name_b = name.encode() + b"\0"
    header = "070701" + "".join(f"{v:08X}" for v in (
        ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0))
    out.write(header.encode() + name_b)
    out.write(b"\0" * (-(110 + len(name_b)) % 4))
    out.write(data)
    out.write(b"\0" * (-len(data) % 4))


def write_cpio(root, path):
    """A newc archive of ROOT: entries sorted, owned by root, mtime 0, plus /dev/console."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            entries.append(os.path.relpath(full, root))
    entries.sort()
    with open(path, "wb") as out:
        ino = 1
        for rel in entries:
            full = os.path.join(root, rel)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                data = os.readlink(full).encode()
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    data = f.read()
            else:
                data = b""
            cpio_entry(out, rel, st.st_mode, data, ino)
            ino += 1
            if rel == "dev":
                # The kernel opens /dev/console for init before anything is mounted.
                cpio_entry(out, "dev/console", stat.S_IFCHR | 0o600, ino=ino, rdev=(5, 1))
                ino += 1
        cpio_entry(out, "TRAILER!!!", 0)


def extract_vmlinux(bzimage, path):
    """The uncompressed ELF kernel inside a bzImage (Debian compresses it with xz).

    QEMU boots an ELF kernel through its PVH entry point: no real-mode setup and,
    above all, no decompression of ~30 MB under TCG.
    """
    with open(bzimage, "rb") as f:
        blob = f.read()
    start = blob.find(XZ_MAGIC)
    while start >= 0:
        try:
            elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(blob[start:])
        except lzma.LZMAError:
            elf = b""
        if elf.startswith(ELF_MAGIC):
            with open(path, "wb") as f:
                f.write(elf)
            return True
        start = blob.find(XZ_MAGIC, start + 1)
    return False


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--kroot", required=True, help="extracted kernel package")
    p.add_argument("--kver", required=True)
    p.add_argument("--rootfs", required=True)
    p.add_argument("--busybox", required=True)
    p.add_argument("--bash", required=True)
    p.add_argument("--host-bin", action="append", default=[], metavar="SRC=DEST",
                   help="dynamic host binary SRC, installed as DEST with its libraries")
    p.add_argument("--module", action="append", default=[])
    p.add_argument("--kernel-format", choices=["bzimage", "elf"], default="elf")
    p.add_argument("--compress", default="lz4")
    p.add_argument("--manifest", default="", help="text appended to OUT/manifest")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    root = os.path.join(args.out, "root")
    order = stage(args, root)
    cpio = os.path.join(args.out, "initrd.cpio")
    write_cpio(root, cpio)
    shutil.rmtree(root)
    initrd = os.path.join(args.out, "initrd")
    compressors = {
        "lz4": ["lz4", "-l", "-9", "-q", "-f", cpio, initrd],
        "gzip": ["sh", "-c", 'gzip -n -9 < "$0" > "$1"', cpio, initrd],
        "zstd": ["zstd", "-q", "-19", "-f", cpio, "-o", initrd],
        "none": ["cp", cpio, initrd],
    }
    subprocess.run(compressors[args.compress], check=True)
    os.unlink(cpio)

    bzimage = os.path.join(args.kroot, "boot", f"vmlinuz-{args.kver}")
    kernel = os.path.join(args.out, "kernel")
    if args.kernel_format == "elf" and extract_vmlinux(bzimage, kernel):
        log("kernel: uncompressed ELF (PVH boot)")
    else:
        shutil.copyfile(bzimage, kernel)
        log("kernel: bzImage")
    with open(os.path.join(args.out, "manifest"), "a") as f:
        f.write(args.manifest)
        f.write("modules loaded at boot:\n" + "".join(f"  {m}\n" for m in order))
        f.write(f"initrd: {os.path.getsize(initrd)} bytes ({args.compress})\n")
        f.write(f"kernel: {os.path.getsize(kernel)} bytes\n")


if __name__ == "__main__":
    main()
