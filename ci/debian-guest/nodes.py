"""Declarative node descriptions (nodes.toml) turned into bootable Debian guests.

A test directory holds `nodes.toml` (one table per node), `test.py` (the NixOS
testScript) and optionally `python-packages.txt` (pip requirement lines for the
driver, like `extraPythonPackages`). This module reads the description, packs
each node's files and enabled units into a tar that the guest initrd unpacks
over the throw-away root overlay (handed over as fw_cfg `opt/ntd/node.tar`),
writes the `run-<name>-vm` start scripts through ci/mkvm and the driver
configuration JSON in the upstream format. A node with `container = true` is a
systemd-nspawn container instead (upstream's `containers.<name>`): its start
script `run-<name>-nspawn` comes from ci/mknspawn around ci/build-container-root's
root, and its tar is unpacked into the container's root at its first start.
Used by ci/run-test.

nodes.toml keys per node (all optional):
  container = false        a systemd-nspawn container, not a VM (then memory,
                           cores and kernel_params do not apply)
  vlans = [1]              vlan numbers, NIC order (default [1])
  units = ["x.service"]    units enabled as their [Install] section says
                           (WantedBy=multi-user.target when there is none)
  kernel_params = ""       extra kernel command line
  memory = 1024            MiB
  cores = 1
  efi = false              boot through OVMF with a per-machine variable store
                           (NixOS' virtualisation.useEFIBoot; ci/mkvm --efi)
  ssh_backdoor = false     NixOS' sshBackdoor.enable: guest RAM shared (a vhost-user
                           vsock device needs it) and enable_ssh_backdoor in the config
  [NODE.files]             "/abs/path" = "content"
                           or { content = "...", mode = "0755" }
                           or { source = "file/in/test/dir", mode = "0644" }
                           mode default: 0755 when the content starts with "#!", else 0644
"""

import configparser
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tomllib
from dataclasses import dataclass, field

CI_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_DIR = os.path.dirname(CI_DIR)
sys.path.insert(0, CI_DIR)
import cilib  # noqa: E402 (ci/cilib.py: the cache directory, python-packages.txt)
NODE_KEYS = {"container", "vlans", "units", "kernel_params", "memory", "cores", "files", "efi",
             "ssh_backdoor"}
VM_ONLY_KEYS = {"kernel_params", "memory", "cores", "efi", "ssh_backdoor"}
UNIT_DIRS = ("/etc/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
FW_CFG_NAME = "opt/ntd/node.tar"


class NodesError(Exception):
    """A node description that cannot be turned into a guest (message says why)."""


@dataclass
class Node:
    name: str
    index: int
    vlans: list
    units: list
    kernel_params: str = ""
    memory: int = 1024
    cores: int = 1
    efi: bool = False
    ssh_backdoor: bool = False
    files: dict = field(default_factory=dict)  # guest path -> (bytes, mode)
    container: bool = False

    @property
    def ipv4(self):
        """Primary address: first vlan, as NixOS' primaryIPAddress."""
        return f"192.168.{self.vlans[0]}.{self.index}" if self.vlans else None


def log(msg):
    print(f"ntd-ci: {msg}", file=sys.stderr, flush=True)


def _file_entry(test_dir, node, path, value):
    where = f"node {node!r}, file {path!r}"
    if not path.startswith("/") or "/../" in path + "/" or path.rstrip("/") == "":
        raise NodesError(f"{where}: give an absolute guest path without '..'")
    mode = None
    if isinstance(value, str):
        data = value.encode()
    elif isinstance(value, dict):
        unknown = set(value) - {"content", "source", "mode"}
        if unknown or ("content" in value) == ("source" in value):
            raise NodesError(f"{where}: use either content = \"...\" or source = \"file\""
                             " (and optionally mode = \"0644\")")
        if "content" in value:
            data = str(value["content"]).encode()
        else:
            try:
                with open(os.path.join(test_dir, value["source"]), "rb") as f:
                    data = f.read()
            except OSError as e:
                raise NodesError(f"{where}: cannot read source: {e}") from None
        if "mode" in value:
            try:
                mode = int(str(value["mode"]), 8)
            except ValueError:
                raise NodesError(f"{where}: mode must be octal like \"0755\"") from None
    else:
        raise NodesError(f"{where}: expected a string or a table")
    if mode is None:
        mode = 0o755 if data.startswith(b"#!") else 0o644
    return data, mode


def load(test_dir):
    """Nodes of TEST_DIR/nodes.toml, sorted by name; index = 1-based position (as NixOS)."""
    path = os.path.join(test_dir, "nodes.toml")
    try:
        with open(path, "rb") as f:
            desc = tomllib.load(f)
    except OSError as e:
        raise NodesError(f"cannot read {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise NodesError(f"{path}: {e}") from None
    if not desc:
        raise NodesError(f"{path}: describes no node")
    if len(desc) > 254:
        raise NodesError(f"{path}: at most 254 nodes")
    nodes = []
    for index, name in enumerate(sorted(desc), 1):
        spec = desc[name]
        if not isinstance(spec, dict):
            raise NodesError(f"{path}: {name!r} must be a table ([{name}])")
        if not NAME_RE.fullmatch(name):
            raise NodesError(f"{path}: node name {name!r}: use letters, digits and '-'")
        unknown = set(spec) - NODE_KEYS
        if unknown:
            raise NodesError(f"{path}: node {name!r}: unknown keys {sorted(unknown)}"
                             f" (known: {sorted(NODE_KEYS)})")
        vlans = spec.get("vlans", [1])
        if (not isinstance(vlans, list) or len(set(vlans)) != len(vlans)
                or not all(isinstance(v, int) and 1 <= v <= 255 for v in vlans)):
            raise NodesError(f"{path}: node {name!r}: vlans must be distinct numbers 1..255")
        units = spec.get("units", [])
        if not isinstance(units, list) or not all(isinstance(u, str) and u for u in units):
            raise NodesError(f"{path}: node {name!r}: units must be a list of unit names")
        units = [u if "." in u else f"{u}.service" for u in units]
        container = spec.get("container", False)
        if not isinstance(container, bool):
            raise NodesError(f"{path}: node {name!r}: container must be true or false")
        if container and VM_ONLY_KEYS & set(spec):
            raise NodesError(f"{path}: node {name!r}: {sorted(VM_ONLY_KEYS & set(spec))}"
                             " do not apply to a container")
        if container and len(name) > 10:
            raise NodesError(f"{path}: node {name!r}: a container's name has at most 10"
                             " characters (its veths are <name>-ethN, at most 15)")
        node = Node(name=name, index=index, vlans=vlans, units=units, container=container)
        node.kernel_params = str(spec.get("kernel_params", ""))
        for key in ("memory", "cores"):
            value = spec.get(key, getattr(node, key))
            if not isinstance(value, int) or value < 1:
                raise NodesError(f"{path}: node {name!r}: {key} must be a positive number")
            setattr(node, key, value)
        for key in ("efi", "ssh_backdoor"):
            value = spec.get(key, False)
            if not isinstance(value, bool):
                raise NodesError(f"{path}: node {name!r}: {key} must be true or false")
            setattr(node, key, value)
        files = spec.get("files", {})
        if not isinstance(files, dict):
            raise NodesError(f"{path}: node {name!r}: files must be a table")
        node.files = {p: _file_entry(test_dir, name, p, v) for p, v in files.items()}
        nodes.append(node)
    return nodes


def hosts_param(nodes):
    """ntd.hosts= value: every node with an address, first vlan (as NixOS' extraHosts)."""
    return ",".join(f"{n.name}:{n.ipv4}" for n in nodes if n.ipv4)


def build_image():
    """Run ci/build-debian-guest; its last stdout line is the image directory."""
    out = subprocess.run([os.path.join(CI_DIR, "build-debian-guest")], check=True,
                         stdout=subprocess.PIPE, text=True).stdout.split()
    if not out or not os.path.isfile(os.path.join(out[-1], "root.img")):
        raise NodesError("ci/build-debian-guest printed no image directory")
    return out[-1]


def build_container_root():
    """Run ci/build-container-root; its last stdout line is the image directory."""
    out = subprocess.run([os.path.join(CI_DIR, "build-container-root")], check=True,
                         stdout=subprocess.PIPE, text=True).stdout.split()
    if not out or not os.path.isdir(os.path.join(out[-1], "root")):
        raise NodesError("ci/build-container-root printed no image directory")
    return out[-1]


@dataclass
class Images:
    """What the nodes boot: the Debian guest image (VMs), the container root (containers);
    each built only if a node needs it."""
    vm: str | None = None
    container: str | None = None


def build_images(node_list):
    return Images(
        vm=build_image() if any(not n.container for n in node_list) else None,
        container=build_container_root() if any(n.container for n in node_list) else None,
    )


def unit_install(root):
    """Path and [Install] section of every unit of the root directory ROOT, as the guest
    image's unit-install.json lists them (ci/build-debian-guest)."""
    units = {}
    for d in ("usr/lib/systemd/system", "etc/systemd/system"):
        base = os.path.join(root, d)
        for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            path = os.path.join(base, name)
            if not os.path.isfile(path) or os.path.islink(path):
                continue
            with open(path, encoding="utf-8", errors="replace") as f:
                units[name] = {"path": f"/{d}/{name}", "install": _parse_install(f.read())}
    return units


def _parse_install(text):
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    try:
        parser.read_string(text)
    except configparser.Error:
        return {}
    if not parser.has_section("Install"):
        return {}
    return {k: v.split() for k, v in parser.items("Install")}


def _find_unit(node, unit, image_units):
    """(guest path of the unit file, [Install] dict) for UNIT or its template."""
    names = [unit]
    template = re.sub(r"@[^.]+\.", "@.", unit)
    if template != unit:
        names.append(template)
    for name in names:
        for d in UNIT_DIRS:
            if f"{d}/{name}" in node.files:
                return f"{d}/{name}", _parse_install(node.files[f"{d}/{name}"][0].decode())
        if name in image_units:
            return image_units[name]["path"], image_units[name]["install"]
    raise NodesError(f"node {node.name!r}: unit {unit!r} is neither in its files nor in the image")


def enable_links(node, image_units):
    """Symlinks (link path -> target) that `systemctl enable` would create for node.units."""
    links = {}
    todo = list(node.units)
    seen = set()
    while todo:
        unit = todo.pop(0)
        if unit in seen:
            continue
        seen.add(unit)
        path, install = _find_unit(node, unit, image_units)
        if unit.endswith("@." + unit.rsplit(".", 1)[1]) and install.get("DefaultInstance"):
            unit = unit.replace("@.", f"@{install['DefaultInstance'][0]}.")
        wanted = install.get("WantedBy", [])
        required = install.get("RequiredBy", [])
        if not install:
            wanted = ["multi-user.target"]
        for target in wanted:
            links[f"/etc/systemd/system/{target}.wants/{unit}"] = path
        for target in required:
            links[f"/etc/systemd/system/{target}.requires/{unit}"] = path
        for alias in install.get("Alias", []):
            links[f"/etc/systemd/system/{alias}"] = path
        todo.extend(install.get("Also", []))
    return links


# 2024-01-01T00:00:00Z, the modification time of every file in a node tar.
TAR_MTIME = 1704067200


def write_node_tar(node, image, path):
    """The tar the initrd (or a container's start script) unpacks into the root: files,
    enable links, machine id, hostname. IMAGE is the guest image, or for a container the
    container root's image directory."""
    if node.container:
        image_units = unit_install(os.path.join(image, "root"))
    else:
        with open(os.path.join(image, "unit-install.json")) as f:
            image_units = json.load(f)
    entries = dict(node.files)
    # A machine id per node (the base image has one shared default).
    machine_id = hashlib.md5(f"ntd-node-{node.name}".encode()).hexdigest()
    entries.setdefault("/etc/machine-id", (f"{machine_id}\n".encode(), 0o444))
    # systemd names the host from its first line on (ntd-identity.service sets it
    # again from ntd.node= a moment later, for start scripts without this tar).
    entries.setdefault("/etc/hostname", (f"{node.name}\n".encode(), 0o644))
    # A fixed time: the same node gives the same tar bytes every run, so its start script
    # keeps its checkpoint key (ntd --checkpoints identifies files by content).
    now = TAR_MTIME
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for guest_path, (data, mode) in sorted(entries.items()):
            info = tarfile.TarInfo(guest_path.lstrip("/"))
            info.size, info.mode, info.mtime = len(data), mode, now
            tar.addfile(info, io.BytesIO(data))
        for link, target in sorted(enable_links(node, image_units).items()):
            info = tarfile.TarInfo(link.lstrip("/"))
            info.type, info.linkname, info.mode, info.mtime = tarfile.SYMTYPE, target, 0o777, now
            tar.addfile(info)


def efi_kernel(image):
    """The image's kernel as a bzImage with its EFI stub, for nodes booted through OVMF (the
    image's `kernel` is the uncompressed ELF QEMU boots through PVH, which firmware cannot
    start): /boot/vmlinuz-* read out of root.img with debugfs once, kept beside the image."""
    path = os.path.join(image, "vmlinuz.efi")
    if os.path.isfile(path):
        return path
    root = os.path.join(image, "root.img")
    listing = subprocess.run(["debugfs", "-R", "ls /boot", root], check=True,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
    names = sorted(n for n in listing.split() if n.startswith("vmlinuz-"))
    if len(names) != 1:
        raise NodesError(f"{root}: expected one /boot/vmlinuz-* for EFI boot, found {names}")
    tmp = f"{path}.tmp{os.getpid()}"
    subprocess.run(["debugfs", "-R", f"dump /boot/{names[0]} {tmp}", root], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not os.path.getsize(tmp):
        raise NodesError(f"{root}: could not read /boot/{names[0]}")
    os.replace(tmp, path)
    return path


def write_start_scripts(nodes, images, work_dir):
    """Write work_dir/<name>/bin/run-<name>-vm (run-<name>-nspawn for a container) for every
    node; returns {name: script}. IMAGES: an `Images` (a plain path: the VM image)."""
    if isinstance(images, str):
        images = Images(vm=images)
    base_params = ""
    if images.vm is not None:
        with open(os.path.join(images.vm, "kernel-params")) as f:
            base_params = f.read().strip()
    hosts = hosts_param(nodes)
    scripts = {}
    for node in nodes:
        node_dir = os.path.join(work_dir, node.name)
        os.makedirs(node_dir, exist_ok=True)
        tar = os.path.join(node_dir, "node.tar")
        if node.container:
            write_node_tar(node, images.container, tar)
            cmd = [os.path.join(CI_DIR, "mknspawn"), "--name", node.name, "--out", node_dir,
                   "--root", images.container, "--index", str(node.index), "--tar", tar,
                   "--hosts", hosts]
            for vlan in node.vlans:
                cmd += ["--vlan", str(vlan)]
            out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
            scripts[node.name] = out.split()[-1]
            continue
        image = images.vm
        write_node_tar(node, image, tar)
        cmd = [os.path.join(CI_DIR, "mkvm"), "--name", node.name, "--out", node_dir,
               "--kernel", efi_kernel(image) if node.efi else os.path.join(image, "kernel"),
               "--initrd", os.path.join(image, "initrd"),
               "--disk", os.path.join(image, "root.img"),
               "--index", str(node.index), "--memory", str(node.memory),
               "--cores", str(node.cores),
               f"--append={base_params} {node.kernel_params}".rstrip(),
               "--fw-cfg", f"name={FW_CFG_NAME},file={tar}"]
        if hosts:
            cmd += ["--hosts", hosts]
        if node.efi:
            cmd.append("--efi")
        if node.ssh_backdoor:
            cmd.append("--shared-memory")
        for vlan in node.vlans:
            cmd += ["--vlan", str(vlan)]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout.split()
        scripts[node.name] = out[-1]
    return scripts


def write_driver_config(nodes, scripts, test_script, path, global_timeout=3600):
    """The upstream (newest generation) driver configuration file, every key that
    nixpkgs' driver-configuration.nix writes (upstream's schema requires `containers` and
    `enable_ssh_backdoor`, so the real upstream driver loads it too)."""
    def entries(container):
        return {n.name: {"name": n.name, "start_script": scripts[n.name]}
                for n in nodes if n.container == container}

    config = {
        "vms": entries(False),
        "containers": entries(True),
        "vlans": sorted({v for n in nodes for v in n.vlans}),
        "global_timeout": global_timeout,
        "enable_ssh_backdoor": any(n.ssh_backdoor for n in nodes),
        "test_script": os.path.abspath(test_script),
    }
    with open(path, "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    return config


# Install TEST_DIR/python-packages.txt into a cached target dir; its path or None.
python_packages = cilib.python_packages
