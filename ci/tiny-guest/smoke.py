#!/usr/bin/env python3
"""Smoke test of the tiny guest and ci/mkvm start scripts, driven as the upstream driver does.

Boots guests through `run-<name>-vm` scripts written by ci/mkvm, with the sockets, arguments
and environment of the upstream NixOS test driver (monitor and shell sockets we listen on,
QMP QEMU listens on, the same appended QEMU arguments, TMPDIR/SHARED_DIR/USE_TMPDIR), and
runs commands with the upstream wire protocol. Checks the guest contract (hostname, nc -z,
process substitution, timeout, the shared directory, poweroff) and two guests on one
vde_switch vlan pinging each other by name. Prints boot times to the backdoor sentinel.

Usage: ci/tiny-guest/smoke.py [--boots N] [--keep]
Exit status 0 when every check passed. Every process it starts runs in its own process
group, which is killed on every exit path.
"""

import argparse
import atexit
import base64
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
CI = os.path.dirname(HERE)
SENTINEL = b"Spawning backdoor root shell..."
BOOT_TIMEOUT = 120.0
COMMAND_TIMEOUT = 60.0
SHUTDOWN_TIMEOUT = 30.0

GROUPS = []  # process group ids we started
PASSED = []  # names of the checks that passed


def kill_groups():
    for pgid in GROUPS:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    GROUPS.clear()


def on_signal(signum, _frame):
    kill_groups()
    sys.exit(128 + signum)


def log(msg):
    print(msg, flush=True)


class CheckFailed(Exception):
    pass


def spawn(cmd, **kw):
    """Start CMD in its own process group and remember the group for cleanup."""
    proc = subprocess.Popen(cmd, start_new_session=True, **kw)
    GROUPS.append(proc.pid)
    return proc


def listen(path):
    if os.path.exists(path):
        os.unlink(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(1)
    return s


class Qmp:
    """Just enough QMP: greeting, capabilities, execute with replies, events skipped."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(COMMAND_TIMEOUT)
        self.sock.connect(path)
        self.file = self.sock.makefile("rb")
        json.loads(self.file.readline())  # greeting
        self.execute("qmp_capabilities")

    def execute(self, command, arguments=None):
        msg = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            reply = json.loads(self.file.readline())
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise CheckFailed(f"QMP {command}: {reply['error']}")

    def close(self):
        self.file.close()
        self.sock.close()


class Machine:
    """One guest started like the upstream driver's QemuMachine.start()/connect()."""

    def __init__(self, name, script, tmp_dir, vde=None):
        self.name = name
        self.script = script
        self.tmp_dir = tmp_dir
        self.state_dir = os.path.join(tmp_dir, f"vm-state-{name}")
        self.shared_dir = os.path.join(tmp_dir, "shared-xchg")
        self.vde = vde or {}
        self.proc = None
        self.serial = []
        self.boot_seconds = None

    def start(self, allow_reboot=False):
        shutil.rmtree(self.state_dir, ignore_errors=True)
        os.makedirs(self.state_dir, mode=0o700)
        os.makedirs(self.shared_dir, exist_ok=True)
        d = self.state_dir
        monitor_l, shell_l = listen(f"{d}/monitor"), listen(f"{d}/shell")
        # The upstream driver's appended arguments, verbatim (-nographic: no DISPLAY).
        cmd = (f"{self.script} -qmp unix:{d}/qmp,server=on,wait=off -monitor unix:{d}/monitor"
               f" -chardev socket,id=shell,path={d}/shell -device virtio-serial"
               f" -device virtconsole,chardev=shell -device virtio-rng-pci -serial stdio"
               f"{'' if allow_reboot else ' -no-reboot'} -nographic")
        env = dict(os.environ, TMPDIR=d, SHARED_DIR=self.shared_dir, USE_TMPDIR="1")
        env.update(self.vde)
        t0 = time.monotonic()
        self.proc = spawn(["/bin/sh", "-c", cmd], cwd=d, env=env, stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        threading.Thread(target=self._read_serial, daemon=True).start()
        self.monitor = self._accept(monitor_l, "monitor")
        self.shell = self._accept(shell_l, "shell")
        monitor_l.close()
        shell_l.close()
        self.qmp = Qmp(f"{d}/qmp")
        self._read_monitor_banner()
        self._wait_sentinel()
        self.boot_seconds = time.monotonic() - t0
        return self.boot_seconds

    def _read_serial(self):
        for line in self.proc.stdout:
            self.serial.append(line.decode(errors="replace").rstrip("\r\n"))

    def _accept(self, listener, what):
        deadline = time.monotonic() + BOOT_TIMEOUT
        listener.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                conn, _ = listener.accept()
                conn.settimeout(None)
                return conn
            except socket.timeout:
                if self.proc.poll() is not None:
                    raise CheckFailed(f"{self.name}: QEMU exited with {self.proc.returncode} "
                                      f"before connecting to the {what} socket:\n"
                                      + "\n".join(self.serial[-20:]))
        raise CheckFailed(f"{self.name}: QEMU did not connect to the {what} socket")

    def _read_monitor_banner(self):
        buf = b""
        self.monitor.settimeout(COMMAND_TIMEOUT)
        while not buf.endswith(b"(qemu) "):
            chunk = self.monitor.recv(4096)
            if not chunk:
                raise CheckFailed(f"{self.name}: monitor closed")
            buf += chunk

    def monitor_command(self, command):
        self.monitor.sendall(command.encode() + b"\n")
        self._read_monitor_banner()

    def _wait_sentinel(self):
        self.shell.settimeout(BOOT_TIMEOUT)
        buf = b""
        while SENTINEL not in buf:
            try:
                chunk = self.shell.recv(1024)
            except socket.timeout:
                raise CheckFailed(f"{self.name}: no backdoor sentinel within {BOOT_TIMEOUT}s; "
                                  "serial:\n" + "\n".join(self.serial[-30:])) from None
            if not chunk:
                raise CheckFailed(f"{self.name}: shell disconnected before the sentinel")
            buf += chunk
        if not buf.endswith(SENTINEL + b"\n"):
            raise CheckFailed(f"{self.name}: bytes after the sentinel: {buf!r}")

    def _read_line_block(self):
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = self.shell.recv(4096)
            if not chunk:
                raise CheckFailed(f"{self.name}: shell closed")
            buf += chunk
        return buf

    def execute(self, command, timeout=900):
        """The upstream execute(): base64 output block, then PIPESTATUS in a second round trip."""
        wrapped = shlex.quote(f"set -euo pipefail; {command}")
        self.shell.settimeout(COMMAND_TIMEOUT)
        self.shell.sendall(f"timeout {timeout} bash -c {wrapped} | (base64 -w 0; echo)\n".encode())
        out = base64.b64decode(self._read_line_block()).decode(errors="replace")
        self.shell.sendall(b"echo ${PIPESTATUS[0]}\n")
        status = int(self._read_line_block().strip())
        return status, out

    def succeed(self, command):
        status, out = self.execute(command)
        if status != 0:
            raise CheckFailed(f"{self.name}: `{command}` failed ({status}): {out!r}\n"
                              + "\n".join(self.serial[-10:]))
        return out

    def shutdown(self):
        """As upstream shutdown(): raw `poweroff` on the shell, then wait for QEMU to exit."""
        t0 = time.monotonic()
        self.shell.sendall(b"poweroff\n")
        try:
            rc = self.proc.wait(SHUTDOWN_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise CheckFailed(f"{self.name}: QEMU still running {SHUTDOWN_TIMEOUT}s after "
                              "poweroff") from None
        self.close()
        return rc, time.monotonic() - t0

    def kill(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.close()

    def close(self):
        for attr in ("qmp", "monitor", "shell"):
            obj = getattr(self, attr, None)
            if obj is not None:
                obj.close()
                setattr(self, attr, None)


def expect(what, cond, detail=""):
    if not cond:
        raise CheckFailed(f"{what}: {detail}")
    PASSED.append(what)
    log(f"  ok  {what}")


def ensure_vde_switch():
    if shutil.which("vde_switch"):
        return
    if os.geteuid() != 0:
        raise CheckFailed("vde_switch not found: install the Debian package vde2")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "vde2"],
                   check=True, env=env)


def start_vlan(tmp_dir, nr):
    """vde_switch as the upstream VLan class starts it; returns the socket directory."""
    sock_dir = os.path.join(tmp_dir, f"vde{nr}.ctl")
    sw = spawn(["vde_switch", "--sock", sock_dir, "--dirmode", "0700", "--hub"],
               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    sw.stdin.write(b"showinfo\n")
    sw.stdin.flush()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        line = sw.stdout.readline()
        if not line:
            raise CheckFailed("vde_switch exited")
        if b"1000 Success" in line:
            break
    if not os.path.exists(os.path.join(sock_dir, "ctl")):
        raise CheckFailed("cannot start vde_switch")
    # Keep draining its console so that it never blocks on a full pipe.
    threading.Thread(target=lambda: sw.stdout.read(), daemon=True).start()
    return sock_dir


def check_disks(tmp_dir, out):
    """--disk (overlay over a base image, NIX_DISK_IMAGE), --drive and --fw-cfg."""
    base = os.path.join(tmp_dir, "base.raw")
    extra = os.path.join(tmp_dir, "extra.raw")
    for path, marker in ((base, b"ntd-base-image\n"), (extra, b"ntd-extra-drive\n")):
        with open(path, "wb") as f:
            f.write(marker.ljust(1 << 20, b"\0"))
    script = mkvm(out, "--name", "disky", "--memory", "256", "--disk", base, "--drive", extra,
                  "--fw-cfg", "name=opt/ntd/greeting,string=hello")
    m = Machine("disky", script, tmp_dir)
    overlay = os.path.join(tmp_dir, "disky-overlay.qcow2")
    os.environ["NIX_DISK_IMAGE"] = overlay
    try:
        m.start()
        expect("root disk is virtio-blk with serial 'root'",
               m.succeed("cat /sys/block/vda/serial") == "root")
        expect("root disk shows the base image",
               m.succeed("head -n 1 /dev/vda") == "ntd-base-image\n")
        m.succeed("echo overwritten | dd of=/dev/vda conv=fsync 2>/dev/null")
        expect("root disk is writable", m.succeed("head -n 1 /dev/vda") == "overwritten\n")
        expect("--drive is a read-only virtio-blk disk",
               m.succeed("head -n 1 /dev/vdb; blockdev --getro /dev/vdb")
               == "ntd-extra-drive\n1\n")
        expect("--fw-cfg reaches the guest",
               m.succeed("cat /sys/firmware/qemu_fw_cfg/by_name/opt/ntd/greeting/raw") == "hello")
        m.shutdown()
    finally:
        del os.environ["NIX_DISK_IMAGE"]
        m.kill()
    with open(base, "rb") as f:
        expect("the base image is unchanged", f.read(15) == b"ntd-base-image\n")
    expect("the overlay went to NIX_DISK_IMAGE", os.path.exists(overlay))


def mkvm(out, *args):
    res = subprocess.run([os.path.join(CI, "mkvm"), "--out", out, "--guest", "tiny", *args],
                         check=True, stdout=subprocess.PIPE, text=True)
    return res.stdout.strip().splitlines()[-1]


def check_reboot(tmp_dir, out):
    """upstream reboot(): ctrl-alt-delete on the keyboard; the backdoor comes back."""
    script = mkvm(out, "--name", "rebooty", "--memory", "256")
    m = Machine("rebooty", script, tmp_dir)
    try:
        m.start(allow_reboot=True)
        m.succeed("touch /tmp/before-reboot")
        t0 = time.monotonic()
        m.monitor_command("sendkey ctrl-alt-delete")
        m._wait_sentinel()
        expect(f"ctrl-alt-delete reboots the guest ({time.monotonic() - t0:.2f}s to the sentinel)",
               m.succeed("[ -e /tmp/before-reboot ] || echo fresh") == "fresh\n")
        expect("QEMU survived the reboot", m.proc.poll() is None)
        rc, _ = m.shutdown()
        expect("poweroff after a reboot ends QEMU", rc == 0)
    finally:
        m.kill()


def check_single(tmp_dir, out, boots):
    script = mkvm(out, "--name", "solo", "--memory", "256")
    times = []
    for i in range(boots):
        m = Machine("solo", script, tmp_dir)
        try:
            times.append(m.start())
            if i == 0:
                log(f"  accelerator: {'kvm' if m.qmp.execute('query-kvm')['enabled'] else 'tcg'}")
                contract_checks(m)
                low, mid = command_latency(m)
                log(f"  execute('true'), upstream framing: min {low:.1f} ms, median {mid:.1f} ms")
            rc, secs = m.shutdown()
            expect(f"boot {i + 1}: poweroff ends QEMU (rc {rc}, {secs:.2f}s)", rc == 0)
        finally:
            m.kill()
    return times


def command_latency(m, rounds=30):
    """Min and median milliseconds of one execute() round (information, not a check)."""
    times = []
    for _ in range(rounds):
        t0 = time.monotonic()
        m.execute("true")
        times.append(time.monotonic() - t0)
    return min(times) * 1000, statistics.median(times) * 1000


def contract_checks(m):
    expect("hostname from ntd.node", m.succeed("hostname").strip() == "solo")
    expect("HOME and USER as in test-instrumentation",
           m.succeed('echo "$USER $HOME $(pwd)"').strip() == "root /root /tmp")
    status, out = m.execute("busybox httpd -p 8080 -h /tmp && nc -z 127.0.0.1 8080")
    expect("nc -z against a listening busybox httpd", status == 0, f"status {status} {out!r}")
    status, _ = m.execute("nc -z -w 2 127.0.0.1 8081")
    expect("nc -z against a closed port fails", status != 0, f"status {status}")
    expect("process substitution", m.succeed("cat <(echo x)") == "x\n")
    status, _ = m.execute("timeout 0.5 sleep 5")
    expect("timeout 0.5 sleep 5 returns 124", status == 124, f"status {status}")
    status, out = m.execute("echo out; echo err >&2; exit 3")
    expect("exit status and stdout of a failing command", (status, out) == (3, "out\n"),
           f"{(status, out)}")
    expect("stdout of a command is a pipe",
           m.succeed("[ -p /dev/stdout ] && echo pipe") == "pipe\n")
    token = os.urandom(8).hex()
    with open(os.path.join(m.shared_dir, "from-host"), "w") as f:
        f.write(token)
    expect("/tmp/shared is the host's SHARED_DIR",
           m.succeed("cat /tmp/shared/from-host") == token)
    m.succeed(f"echo {token} > /tmp/xchg/from-guest")
    with open(os.path.join(m.state_dir, "xchg", "from-guest")) as f:
        expect("/tmp/xchg is the host's $TMPDIR/xchg", f.read() == token + "\n")
    expect("only the user-mode NIC, left down",
           m.succeed("ip -4 -o addr show scope global | wc -l").strip() == "0")
    shot = os.path.join(m.state_dir, "screen.ppm")
    m.qmp.execute("screendump", {"filename": shot})
    with open(shot, "rb") as f:
        expect("QMP screendump writes a picture", f.read(2) == b"P6")
    expect("kernel modules loaded",
           set(m.succeed("cut -d' ' -f1 /proc/modules").split())
           >= {"virtio_net", "virtio_console", "virtio_blk", "9p", "9pnet_virtio", "8021q",
               "qemu_fw_cfg"})


def check_vlan(tmp_dir, out):
    sock_dir = start_vlan(tmp_dir, 1)
    hosts = "alice:192.168.1.1,bob:192.168.1.2"
    machines = []
    try:
        for idx, name in enumerate(["alice", "bob"], 1):
            script = mkvm(out, "--name", name, "--vlan", "1", "--index", str(idx),
                          "--hosts", hosts, "--memory", "256")
            machines.append(Machine(name, script, tmp_dir, {"QEMU_VDE_SOCKET_1": sock_dir}))
        # Boot both at once, as the driver's start_all() does.
        errors = []

        def boot(mach):
            try:
                mach.start()
            except Exception as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=boot, args=(mach,)) for mach in machines]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        alice, bob = machines
        log(f"  alice and bob booted in {alice.boot_seconds:.2f}s / {bob.boot_seconds:.2f}s"
            " (concurrently, 2 cores)")
        addr = alice.succeed("ip -o addr show dev eth1")
        expect("alice has 192.168.1.1/24 and 2001:db8:1::1/64 on eth1",
               "192.168.1.1/24" in addr and "2001:db8:1::1/64" in addr, addr)
        hosts_file = bob.succeed("cat /etc/hosts")
        expect("/etc/hosts lists every node (IPv4 and IPv6)",
               "192.168.1.1 alice" in hosts_file and "2001:db8:1::2 bob" in hosts_file,
               hosts_file)
        alice.succeed("ping -c 1 -W 10 bob")
        expect("alice pings bob by name", True)
        bob.succeed("ping -c 1 -W 10 alice")
        expect("bob pings alice by name", True)
        bob.succeed("ping6 -c 1 -W 10 2001:db8:1::1")
        expect("bob pings alice over IPv6", True)
        bob.succeed("busybox httpd -p 80 -h /tmp")
        alice.succeed("nc -z -w 5 bob 80")
        expect("nc -z from alice to bob's httpd by name", True)
        # upstream block(): the first vlan NIC is virtio-net-pci.1
        alice.qmp.execute("set_link", {"name": "virtio-net-pci.1", "up": False})
        status, _ = alice.execute("ping -c 1 -W 2 bob")
        expect("set_link virtio-net-pci.1 off cuts alice from the vlan", status != 0,
               f"status {status}")
        alice.qmp.execute("set_link", {"name": "virtio-net-pci.1", "up": True})
        alice.succeed("ping -c 1 -W 10 bob")
        expect("set_link on restores it", True)
        for mach in machines:
            rc, _ = mach.shutdown()
            expect(f"{mach.name}: poweroff ends QEMU", rc == 0)
    finally:
        for mach in machines:
            mach.kill()


def main():
    p = argparse.ArgumentParser(description="Smoke test of the ntd tiny guest.")
    p.add_argument("--boots", type=int, default=5, help="boots of one guest to time (default 5)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args()

    atexit.register(kill_groups)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ensure_vde_switch()
    # Short paths: unix socket names are limited to 108 bytes.
    tmp_dir = tempfile.mkdtemp(prefix="ntd-smoke-", dir="/tmp")
    out = os.path.join(tmp_dir, "vms")
    failed = 0
    try:
        log("== one guest: contract checks and boot times")
        times = check_single(tmp_dir, out, max(1, args.boots))
        log("== reboot")
        check_reboot(tmp_dir, out)
        log("== root disk overlay, extra drive, fw_cfg")
        check_disks(tmp_dir, out)
        log("== two guests on one vde_switch vlan")
        check_vlan(tmp_dir, out)
        log(f"boot to sentinel over {len(times)} boots: min {min(times):.2f}s, "
            f"median {statistics.median(times):.2f}s")
    except CheckFailed as e:
        log(f"FAIL: {e}")
        failed = 1
    except Exception:  # anything else is a failure too, with its traceback
        traceback.print_exc()
        failed = 1
    finally:
        kill_groups()
        if args.keep or failed:
            log(f"work directory kept: {tmp_dir}")
        else:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    log(f"smoke: {len(PASSED)} passed, {failed} failed")
    return failed


if __name__ == "__main__":
    sys.exit(main())
