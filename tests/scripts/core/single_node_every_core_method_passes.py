# machines: machine

import time
machine.start()
assert machine.booted
machine.connect()
assert machine.is_up()
status, out = machine.execute("echo hi; exit 3")
assert (status, out) == (3, "hi\n"), (status, out)
assert machine.succeed("echo a", "echo b") == "a\nb\n"
machine.fail("false", "exit 2")
machine.succeed("(sleep 0.5; touch /tmp/ready) >/dev/null 2>&1 &")
machine.wait_for_file("/tmp/ready", timeout=20)
assert machine.wait_until_succeeds("test -e /tmp/ready && echo there", timeout=20) == "there\n"
machine.succeed("(sleep 0.5; rm /tmp/ready) >/dev/null 2>&1 &")
machine.wait_until_fails("test -e /tmp/ready", timeout=20)
machine.succeed("busybox httpd -p 8080 -h /tmp")
machine.wait_for_open_port(8080)
machine.succeed("kill $(busybox pidof busybox | tr ' ' '\\n' | while read p; do grep -q httpd /proc/$p/cmdline && echo $p; done)")
machine.wait_for_closed_port(8080)
machine.succeed("echo console-marker-42 >&2")
machine.wait_for_console_text("console-marker-4[0-9]")
assert "running" in machine.send_monitor_command("info status")
t0 = time.monotonic()
machine.sleep(1)
assert time.monotonic() - t0 >= 1
machine.log("a log line")
with machine.nested("a nested block"):
    pass
machine.shutdown()
assert not machine.booted
machine.start()
machine.crash()
assert not machine.booted
machine.start()
machine.succeed("(sleep 0.3; poweroff) >/dev/null 2>&1 &")
machine.wait_for_shutdown()
assert not machine.is_up()
