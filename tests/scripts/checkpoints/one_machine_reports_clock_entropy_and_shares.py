# machines: machine

import time

start_all()
# The clock, read with a builtin only (a short round trip), against the host's.
t0 = time.time()
guest = float(machine.succeed("echo $EPOCHREALTIME"))
t1 = time.time()
print(f"clock-offset {guest - (t0 + t1) / 2:.3f} rtt {t1 - t0:.3f}")
print("urandom", machine.succeed("head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'"))
# ntd's 9p shares are mounted and usable.
machine.succeed("grep -q ' /tmp/shared 9p ' /proc/mounts")
machine.succeed("grep -q ' /tmp/xchg 9p ' /proc/mounts")
machine.succeed("echo from-guest > /tmp/shared/hello")
print("shell", machine.succeed("echo works"))
