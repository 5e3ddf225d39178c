# machines: machine
# Moving files between host and guest: copy_from_host (files and trees), the shell variant,
# copy_from_machine into the output directory.
import tempfile
from pathlib import Path

start_all()
src = Path(tempfile.mkdtemp())
(src / "config.ini").write_text("[main]\nkey = value\n")
(src / "bundle" / "bin").mkdir(parents=True)
(src / "bundle" / "bin" / "tool").write_text("#!/bin/sh\necho tool ran\n")
(src / "bundle" / "bin" / "tool").chmod(0o755)

machine.copy_from_host(str(src / "config.ini"), "/etc/app/config.ini")
machine.copy_from_host(str(src / "bundle"), "/opt/bundle")
assert machine.succeed("/opt/bundle/bin/tool") == "tool ran\n"
assert machine.succeed("grep key /etc/app/config.ini") == "key = value\n"

machine.copy_from_host_via_shell(str(src / "config.ini"), "/root/config.ini")
machine.succeed("cmp /root/config.ini /etc/app/config.ini")

machine.succeed("mkdir -p /var/log/app && echo 'started' > /var/log/app/app.log")
machine.copy_from_machine("/var/log/app", "logs")
machine.copy_from_machine("/etc/app/config.ini")
assert (driver.out_dir / "logs" / "app" / "app.log").read_text() == "started\n"
assert (driver.out_dir / "config.ini").exists()
