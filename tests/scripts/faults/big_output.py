# machines: machine
# 100 MB of output, NUL bytes and invalid UTF-8 come back exactly; a 4 MB console line does
# not grow the driver's memory (lines are cut at 64 KiB).
start_all()
out = machine.succeed("head -c 100000000 /dev/zero | tr '\\000' x")
assert len(out) == 100_000_000 and out.count("x") == 100_000_000, len(out)
assert machine.succeed("printf 'a\\000b\\377c'") == "a\x00b\ufffdc"
machine.succeed("head -c 4000000 /dev/zero | tr '\\000' y > /dev/ttyS0; echo >/dev/ttyS0")
machine.wait_for_console_text("y{1000}")
print("big output ok")
