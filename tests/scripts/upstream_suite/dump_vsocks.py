# machines: machine
# The mid generation's SSH backdoor (`--dump-vsocks 2`): the machine's start script gives it
# native vsock CID 3 (offset + 1); the driver prints how to reach it and offers the command.
import contextlib
import io

out = io.StringIO()
with contextlib.redirect_stdout(out):
    dump_machine_ssh()
assert "ssh -o User=root vsock/3" in out.getvalue(), out.getvalue()
assert machine.ssh_backdoor_command(3) == "ssh -o User=root vsock/3"
print("dump_vsocks checked")
