# The machine is named `evil $(touch pwned) name`; the script reaches it as machines[0].
# A machine name with shell syntax and spaces never reaches a shell unquoted; state and
# socket directories are private; the driver listens on no TCP/UDP port.
import os
import stat

m = machines[0]
assert isinstance(m, QemuMachine)  # `machines` holds VMs and containers
start_all()
m.succeed("true")
assert not os.path.exists("pwned"), "a machine name was run by a shell"
for d in (m.state_dir, m.shell_path.parent):
    mode = stat.S_IMODE(os.stat(d).st_mode)
    assert mode == 0o700, (d, oct(mode))
for p in (m.shell_path, m.monitor_path, m.qmp_path):
    st = os.stat(p)
    assert stat.S_ISSOCK(st.st_mode), p
    assert stat.S_IMODE(st.st_mode) == 0o600, (p, oct(st.st_mode))
driver_pid = os.getppid()
inodes = set()
for fd in os.listdir(f"/proc/{driver_pid}/fd"):
    try:
        target = os.readlink(f"/proc/{driver_pid}/fd/{fd}")
    except OSError:
        continue
    if target.startswith("socket:["):
        inodes.add(target[8:-1])
assert inodes, "the driver has sockets"
for table in ("tcp", "tcp6", "udp", "udp6"):
    with open(f"/proc/net/{table}") as f:
        next(f)
        for line in f:
            assert line.split()[9] not in inodes, f"the driver has a {table} socket: {line}"
print("security ok")
