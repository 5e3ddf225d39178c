# machines: machine
# vlans: 1
# Sockets live in a short private directory when the runtime directory is too long.
start_all()
machine.succeed("true")
assert len(str(machine.shell_path)) < 108, machine.shell_path
assert not str(vlan1.socket_dir).startswith(str(machine.state_dir.parent)), vlan1.socket_dir
print("SOCKETS", machine.shell_path.parent.parent)
