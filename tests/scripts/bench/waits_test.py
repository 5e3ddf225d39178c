# machines: machine
# placeholder: @WORK@ 100
# A typical small test for benches/waits.rs' N-tests-at-once figure: boot, a service that
# starts late (@WORK@ fork+execs, then a listener), and the waits a test makes for it.
start_all()
machine.succeed(
    "(for ((i = 0; i < @WORK@; i++)); do /bin/true; done; touch /tmp/ready; "
    "exec nc -l -k -p 8080) </dev/null >/dev/null 2>&1 &"
)
machine.wait_for_open_port(8080)
machine.wait_for_file("/tmp/ready")
machine.succeed("(sleep 1; echo done >/tmp/result) >/dev/null 2>&1 &")
assert machine.wait_until_succeeds("cat /tmp/result") == "done\n"
machine.succeed("nc -z localhost 8080")
machine.shutdown()
