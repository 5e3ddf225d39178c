# machines: machine

from test_driver.errors import MachineError

start_all()
machine.succeed("echo base > /root/state")
machine.snapshot("base")
for variant in ["a", "b"]:
    machine.succeed(f"echo {variant} > /root/state")
    machine.restore("base")
    print("state", variant, machine.succeed("cat /root/state").strip())
    print("urandom", machine.succeed("head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'"))
# ntd's 9p shares are back after a restore.
machine.succeed("echo from-guest > /tmp/shared/hello")

try:
    machine.restore("nope")
except ValueError as e:
    print("unknown:", e)

# A 9p share ntd does not manage (the start script gets it through QEMU_OPTS).
machine.succeed("mkdir -p /nix/store && mount -t 9p -o trans=virtio,version=9p2000.L nix-store /nix/store")
try:
    machine.snapshot("with-store")
except MachineError as e:
    print("9p:", e)
machine.succeed("umount /nix/store")

machine.shutdown()
try:
    machine.snapshot("stopped")
except MachineError as e:
    print("stopped:", e)
# A restore boots a stopped machine from the snapshot.
machine.restore("base")
print("after-stop", machine.succeed("cat /root/state").strip())
