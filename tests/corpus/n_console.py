# machines: machine
# The serial console: what the guest prints, what the host types, the whole log.
start_all()
machine.wait_for_file("/tmp")

machine.succeed("echo 'service started on port 1234' > /dev/console")
machine.wait_for_console_text(r"started on port \d+")

machine.succeed("(read -r line < /dev/ttyS0; echo \"$line\" > /tmp/answer) >/dev/null 2>&1 &")
machine.send_console("yes\n")
machine.wait_until_succeeds("grep -qx yes /tmp/answer", timeout=30)

serial_stdout_off()
machine.succeed("echo quiet-now >&2")
machine.wait_for_console_text("quiet-now")
serial_stdout_on()

log_text = machine.get_console_log()
assert "service started on port 1234" in log_text
assert "quiet-now" in log_text, "serial_stdout_off() only hides lines"
