#!/usr/bin/env python3
"""Boot Debian test guests the way the upstream NixOS test driver does, without ntd.

Two uses:
  smoke.py [--runs N] [--verbose]
      Built-in smoke test: boots the hello-world node (tests/scenarios/hello-world)
      and checks its unit, endpoint, identity and poweroff; then the ping pair
      (tests/scenarios/ping-pair) on one vde_switch --hub vlan. Prints boot times
      (spawn -> sentinel, spawn -> multi-user.target active). --runs N boots the
      hello-world node N times and prints min/median.
  smoke.py -c driver.json [--verbose]
      A minimal stand-in driver (for `ci/run-test DIR --driver ci/debian-guest/smoke.py`):
      runs the config's test_script with start_all(), the machines by name and a
      subset of the Machine API (succeed, fail, execute, wait_for_unit,
      wait_until_succeeds, wait_until_fails, wait_for_open_port, wait_for_closed_port,
      wait_for_file, systemctl, shutdown). Exit status 1 when the script fails.

What it does per machine, as the upstream driver: listens on `monitor` and `shell`
unix sockets in a state dir, spawns the start script in its own process group
with the upstream appended arguments and TMPDIR/SHARED_DIR/USE_TMPDIR, waits for
the "Spawning backdoor root shell..." sentinel and runs commands with the upstream
wire protocol (`bash -c` piped through base64, then `echo ${PIPESTATUS[0]}`).
Every process it starts is killed on every exit path. Python 3.11 stdlib only.
"""

import argparse
import base64
import json
import os
import select
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nodes as nodes_mod  # noqa: E402

SENTINEL = b"Spawning backdoor root shell..."
REPO = nodes_mod.REPO_DIR
VERBOSE = False
T0 = time.monotonic()
CHILDREN = []  # Popen objects, each the leader of its own process group


def log(msg):
    print(f"[{time.monotonic() - T0:7.2f}] {msg}", file=sys.stderr, flush=True)


class Failure(Exception):
    """A check or a test-script assertion that did not hold."""


def kill_all():
    """Kill every process group we started (QEMU through its start script, switches)."""
    for proc in CHILDREN:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log(f"process {proc.pid} did not die")
    CHILDREN.clear()


def _terminate(signum, _frame):
    raise SystemExit(128 + signum)


class Vlan:
    """vde_switch --hub, started and checked for readiness as upstream does."""

    def __init__(self, nr, tmp_dir):
        self.nr = nr
        self.socket_dir = os.path.join(tmp_dir, f"vde{nr}.ctl")
        os.environ[f"QEMU_VDE_SOCKET_{nr}"] = self.socket_dir
        self.proc = subprocess.Popen(
            ["vde_switch", "--sock", self.socket_dir, "--dirmode", "0700", "--hub"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        CHILDREN.append(self.proc)
        self.proc.stdin.write(b"showinfo\n")
        self.proc.stdin.flush()
        buf = b""
        while b"1000 Success" not in buf:
            ready, _, _ = select.select([self.proc.stdout], [], [], 5)
            chunk = os.read(self.proc.stdout.fileno(), 4096) if ready else b""
            if not chunk:
                raise Failure(f"vde_switch for vlan {nr} did not become ready")
            buf += chunk
        if not os.path.exists(os.path.join(self.socket_dir, "ctl")):
            raise Failure(f"vde_switch for vlan {nr} has no ctl socket")


class Machine:
    """One guest: start script + sockets + backdoor shell."""

    def __init__(self, name, start_script, tmp_dir):
        self.name = name
        self.start_script = start_script
        self.state_dir = os.path.join(tmp_dir, f"vm-state-{name}")
        self.shared_dir = os.path.join(tmp_dir, "shared-xchg")
        self.proc = None
        self.shell = None
        self.buf = b""
        self.console = []
        self.booted = False
        self.t_spawn = self.t_sentinel = None

    def __repr__(self):
        return f"<Machine {self.name}>"

    # --- lifecycle ---------------------------------------------------------------
    def start(self):
        if self.proc is not None:
            return
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        os.makedirs(self.shared_dir, exist_ok=True)
        listeners = {}
        for role in ("monitor", "shell"):
            path = os.path.join(self.state_dir, role)
            if os.path.exists(path):
                os.unlink(path)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(path)
            s.listen(1)
            listeners[role] = s
        sd = self.state_dir
        args = [f"-qmp unix:{sd}/qmp,server=on,wait=off", f"-monitor unix:{sd}/monitor",
                f"-chardev socket,id=shell,path={sd}/shell", "-device virtio-serial",
                "-device virtconsole,chardev=shell", "-device virtio-rng-pci",
                "-serial stdio", "-no-reboot", "-nographic"]
        env = dict(os.environ, TMPDIR=sd, SHARED_DIR=self.shared_dir, USE_TMPDIR="1")
        log(f"{self.name}: starting vm")
        self.t_spawn = time.monotonic()
        self.proc = subprocess.Popen(
            [self.start_script] + " ".join(args).split(), env=env, cwd=sd,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True)
        CHILDREN.append(self.proc)
        threading.Thread(target=self._read_console, daemon=True).start()
        try:
            self.monitor = self._accept(listeners["monitor"])
            self.shell = self._accept(listeners["shell"])
        finally:
            for s in listeners.values():
                s.close()

    def _accept(self, listener):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._dump_console()
                raise Failure(f"{self.name}: QEMU exited ({self.proc.returncode}) before connecting")
            ready, _, _ = select.select([listener], [], [], 0.2)
            if ready:
                return listener.accept()[0]
        raise Failure(f"{self.name}: QEMU did not connect to {listener.getsockname()}")

    def _read_console(self):
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            self.console.append(line)
            if VERBOSE:
                print(f"{self.name} # {line}", file=sys.stderr, flush=True)

    def _dump_console(self, lines=40):
        for line in self.console[-lines:]:
            print(f"{self.name} # {line}", file=sys.stderr)

    def _recv_until(self, marker, timeout):
        deadline = time.monotonic() + timeout
        while marker not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failure(f"{self.name}: no answer from the guest shell within {timeout} s")
            ready, _, _ = select.select([self.shell], [], [], min(left, 1.0))
            if not ready:
                if self.proc.poll() is not None:
                    self._dump_console()
                    raise Failure(f"{self.name}: QEMU exited ({self.proc.returncode})")
                continue
            chunk = self.shell.recv(65536)
            if not chunk:
                raise Failure(f"{self.name}: guest shell closed")
            self.buf += chunk
        head, _, self.buf = self.buf.partition(marker)
        return head

    def connect(self):
        if self.booted:
            return
        self.start()
        log(f"{self.name}: waiting for the VM to finish booting")
        self._recv_until(SENTINEL + b"\n", 600)
        self.t_sentinel = time.monotonic()
        self.booted = True
        log(f"{self.name}: connected to guest root shell ({self.t_sentinel - self.t_spawn:.2f} s)")

    def execute(self, command, check_return=True, check_output=True, timeout=900):
        self.connect()
        wrapped = f"set -euo pipefail; {command}"
        prefix = f"timeout {timeout} " if timeout is not None else " "
        self.shell.sendall(f"{prefix}bash -c {shlex.quote(wrapped)} | (base64 -w 0; echo)\n".encode())
        if not check_output:
            return -2, ""
        wait = (timeout or 3600) + 60
        output = base64.b64decode(self._recv_until(b"\n", wait))
        if not check_return:
            return -1, output.decode()
        self.shell.sendall(b"echo ${PIPESTATUS[0]}\n")
        status = int(self._recv_until(b"\n", 60).strip())
        return status, output.decode(errors="replace")

    # --- the upstream API subset ----------------------------------------------
    def succeed(self, *commands, timeout=None):
        out = ""
        for c in commands:
            log(f"{self.name}: must succeed: {c}")
            status, o = self.execute(c, timeout=timeout)
            if status != 0:
                log(f"output: {o}")
                raise Failure(f"command `{c}` failed (exit code {status})")
            out += o
        return out

    def fail(self, *commands, timeout=None):
        out = ""
        for c in commands:
            log(f"{self.name}: must fail: {c}")
            status, o = self.execute(c, timeout=timeout)
            if status == 0:
                raise Failure(f"command `{c}` unexpectedly succeeded")
            out += o
        return out

    def _retry(self, what, attempt, timeout):
        """Upstream's retry: attempts 1 s apart while less than TIMEOUT has passed
        since the first one (whose boot wait counts), then one last attempt."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            ok, value = attempt()
            if ok:
                return value
            time.sleep(1)
        ok, value = attempt()
        if ok:
            return value
        raise Failure(f"action timed out after {time.monotonic() - start:.2f} seconds"
                      f" (timeout={timeout}): {what}")

    def wait_until_succeeds(self, command, timeout=900):
        log(f"{self.name}: waiting for success: {command}")

        def attempt():
            status, out = self.execute(command, timeout=timeout)
            return status == 0, out
        return self._retry(command, attempt, timeout)

    def wait_until_fails(self, command, timeout=900):
        log(f"{self.name}: waiting for failure: {command}")

        def attempt():
            status, out = self.execute(command, timeout=timeout)
            return status != 0, out
        return self._retry(command, attempt, timeout)

    def wait_for_open_port(self, port, addr="localhost", timeout=900):
        log(f"{self.name}: waiting for TCP port {port} on {addr}")
        self._retry(f"port {port}", lambda: (self.execute(f"nc -z {addr} {port}")[0] == 0, None),
                    timeout)

    def wait_for_closed_port(self, port, addr="localhost", timeout=900):
        log(f"{self.name}: waiting for TCP port {port} on {addr} to be closed")
        self._retry(f"port {port}", lambda: (self.execute(f"nc -z {addr} {port}")[0] != 0, None),
                    timeout)

    def wait_for_file(self, filename, timeout=900):
        log(f"{self.name}: waiting for file '{filename}'")
        self._retry(filename, lambda: (self.execute(f"test -e {filename}")[0] == 0, None), timeout)

    def systemctl(self, q):
        return self.execute(f"systemctl {q}")

    def get_unit_info(self, unit):
        status, out = self.systemctl(f'--no-pager show "{unit}"')
        if status != 0:
            raise Failure(f'retrieving systemctl info for unit "{unit}" failed with exit code {status}')
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait_for_unit(self, unit, timeout=900):
        log(f"{self.name}: waiting for unit {unit}")

        def attempt():
            state = self.get_unit_info(unit)["ActiveState"]
            if state == "failed":
                raise Failure(f'unit "{unit}" reached state "failed"')
            if state == "inactive":
                _, jobs = self.systemctl("list-jobs --full 2>&1")
                if "No jobs" in jobs and self.get_unit_info(unit)["ActiveState"] == "inactive":
                    raise Failure(f'unit "{unit}" is inactive and there are no pending jobs')
            return state == "active", None
        self._retry(unit, attempt, timeout)

    def shutdown(self):
        if not self.booted:
            return
        log(f"{self.name}: shutting down")
        self.execute("poweroff", check_return=False, check_output=False)
        t = time.monotonic()
        self.proc.wait(timeout=300)
        self.booted = False
        log(f"{self.name}: QEMU exited {self.proc.returncode} {time.monotonic() - t:.2f} s after poweroff")
        return time.monotonic() - t

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        raise Failure(f"smoke.py implements no Machine.{name}; run this test under ntd")


def boot_all(machines):
    for m in machines:
        m.start()
    for m in machines:
        m.connect()


def time_to_multi_user(machine):
    """Spawn -> multi-user.target active, waited for inside the guest (one round trip)."""
    machine.succeed("until systemctl -q is-active multi-user.target; do sleep 0.1; done",
                    timeout=300)
    return time.monotonic() - machine.t_spawn


# --- built-in smoke test ----------------------------------------------------------
def prepare(test_dir, tmp_dir, image):
    nodes = nodes_mod.load(test_dir)
    scripts = nodes_mod.write_start_scripts(nodes, image, os.path.join(tmp_dir, "nodes"))
    vlans = [Vlan(v, tmp_dir) for v in sorted({v for n in nodes for v in n.vlans})]
    return [Machine(n.name, scripts[n.name], tmp_dir) for n in nodes], vlans


def check(cond, what):
    if not cond:
        raise Failure(what)
    log(f"ok: {what}")


def smoke_hello(tmp_dir, image, full=True):
    (node1,), _ = prepare(os.path.join(REPO, "tests/scenarios/hello-world"), tmp_dir, image)
    boot_all([node1])
    sentinel = node1.t_sentinel - node1.t_spawn
    multi_user = time_to_multi_user(node1)
    log(f"node1: sentinel {sentinel:.2f} s, multi-user.target {multi_user:.2f} s")
    if full:
        check(node1.succeed("systemctl is-active hello-world-server").strip() == "active",
              "hello-world-server is active")
        check("Hello world" in node1.succeed("curl --silent localhost:8000/index.html"),
              "curl localhost:8000/index.html answers Hello world")
        check(node1.succeed("hostname").strip() == "node1", "hostname is node1")
        hosts = node1.succeed("cat /etc/hosts")
        check("192.168.1.1 node1" in hosts and "2001:db8:1::1 node1" in hosts,
              "/etc/hosts lists node1 (IPv4 and IPv6)")
        check(node1.succeed("systemctl is-active network-online.target").strip() == "active",
              "network-online.target is active")
        addrs = node1.succeed("ip -o addr show")
        check("192.168.1.1/24" in addrs and "2001:db8:1::1/64" in addrs,
              "vlan NIC has 192.168.1.1/24 and 2001:db8:1::1/64")
        check(node1.execute("ip route show default")[1].strip() == "", "no default route")
        with open(os.path.join(node1.shared_dir, "from-host"), "w") as f:
            f.write("shared ok\n")
        check(node1.succeed("cat /tmp/shared/from-host").strip() == "shared ok",
              "9p share /tmp/shared shows a host file")
        node1.succeed("echo guest > /tmp/xchg/from-guest")
        with open(os.path.join(node1.state_dir, "xchg", "from-guest")) as f:
            check(f.read() == "guest\n", "9p share /tmp/xchg reaches the host")
        check(node1.execute("exit 3")[0] == 3, "exit status travels back")
        check(node1.execute("ls -d /dev/fd/")[0] == 0, "/dev/fd exists")
    down = node1.shutdown()
    check(node1.proc.returncode == 0, f"poweroff ends QEMU ({down:.2f} s)")
    return sentinel, multi_user


def smoke_ping(tmp_dir, image):
    machines, _ = prepare(os.path.join(REPO, "tests/scenarios/ping-pair"), tmp_dir, image)
    boot_all(machines)
    m1, m2 = machines
    for m in machines:
        m.wait_for_unit("network-online.target")
    for a, b in ((m1, m2), (m2, m1)):
        a.succeed(f"ping -c 1 -W 5 {b.name}")
        a.succeed(f"ping -4 -c 1 -W 5 {b.name}", f"ping -6 -c 1 -W 5 {b.name}")
        log(f"ok: {a.name} pings {b.name} by name (IPv4 and IPv6)")
    for m in machines:
        m.shutdown()


def run_builtin(args):
    image = nodes_mod.build_image()
    times = []
    with tempfile.TemporaryDirectory(prefix="ntd-smoke-") as tmp_dir:
        for i in range(args.runs):
            run_dir = os.path.join(tmp_dir, f"r{i}")
            os.makedirs(run_dir)
            times.append(smoke_hello(run_dir, image, full=(i == 0)))
            kill_all()
        if not args.skip_ping:
            run_dir = os.path.join(tmp_dir, "ping")
            os.makedirs(run_dir)
            smoke_ping(run_dir, image)
            kill_all()
    sentinel = [t[0] for t in times]
    multi = [t[1] for t in times]
    print(f"boot to sentinel: min {min(sentinel):.2f} s, median {statistics.median(sentinel):.2f} s"
          f" ({len(times)} runs)")
    print(f"boot to multi-user.target: min {min(multi):.2f} s,"
          f" median {statistics.median(multi):.2f} s ({len(times)} runs)")
    print("smoke: all checks passed")


# --- stand-in driver --------------------------------------------------------------
def run_config(args):
    with open(args.config) as f:
        config = json.load(f)
    tmp_dir = tempfile.mkdtemp(prefix="ntd-smoke-")
    try:
        for nr in config.get("vlans", []):
            Vlan(nr, tmp_dir)
        machines = [Machine(vm["name"], vm["start_script"], tmp_dir)
                    for vm in config["vms"].values()]

        def start_all():
            log("start all VMs")
            for m in machines:
                m.start()

        symbols = {"start_all": start_all, "machines": machines, "Machine": Machine,
                   "log": type("Log", (), {"info": staticmethod(log)})}
        symbols.update({m.name: m for m in machines})
        with open(config["test_script"]) as f:
            script = f.read()
        t = time.monotonic()
        try:
            exec(compile(script, config["test_script"], "exec"), symbols)
        except Exception as e:  # noqa: BLE001 - any script error fails the test, as upstream
            if not isinstance(e, Failure):
                import traceback
                traceback.print_exc()
            log(f"Test \"{config['test_script']}\" failed: {type(e).__name__}: {e}")
            return 1
        for m in machines:
            if m.booted and m.proc.poll() is None:
                m.shutdown()
        log(f"test script finished in {time.monotonic() - t:.2f} s")
        return 0
    finally:
        kill_all()
        shutil.rmtree(tmp_dir, ignore_errors=True)


def main():
    global VERBOSE
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-c", "--config", help="driver configuration JSON (stand-in driver mode)")
    p.add_argument("--runs", type=int, default=1, help="hello-world boots for timing")
    p.add_argument("--skip-ping", action="store_true", help="leave out the two-node ping check")
    p.add_argument("--verbose", action="store_true", help="print the guests' serial consoles")
    args, _unknown = p.parse_known_args()
    VERBOSE = args.verbose
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    try:
        if args.config:
            return run_config(args)
        run_builtin(args)
        return 0
    except Failure as e:
        log(f"FAILED: {e}")
        return 1
    finally:
        kill_all()


if __name__ == "__main__":
    sys.exit(main())
