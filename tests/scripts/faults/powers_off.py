# machines: machine
# The guest powers off by itself: the next command fails; after wait_for_shutdown() (the
# test acknowledges the shutdown) the next command boots the machine again, as upstream.
start_all()
machine.succeed("true")
try:
    machine.execute("poweroff -f")
except Exception as e:
    print(f"poweroff command raised: {e}")
try:
    machine.succeed("true")
except Exception as e:
    # QEMU closes the shell a moment before it exits; either way the call names what happened.
    assert "QEMU exited (code 0)" in str(e), str(e)
    print("RAISED after poweroff")
else:
    raise AssertionError("a command on a powered-off machine must fail")
machine.wait_for_shutdown()
assert not machine.booted
machine.succeed("true")
