# machines: machine
# A guest kernel panic (panic=1 and -no-reboot end QEMU): the command raises and the error
# quotes the console.
start_all()
machine.succeed("true")
try:
    machine.succeed("echo c > /proc/sysrq-trigger")
except Exception as e:
    msg = str(e)
    assert "Shell disconnected while running" in msg, msg
    assert "Kernel panic" in msg, msg
    print("RAISED on panic")
else:
    raise AssertionError("a panicking guest must fail the command")
