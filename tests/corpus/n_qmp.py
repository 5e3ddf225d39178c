# machines: machine
# QMP and the HMP monitor: pause the VM, see the events, query state, resume.
import datetime as dt
from typing import Any

start_all()
machine.wait_for_file("/tmp")

reply = machine.send_monitor_command("info status")
assert "VM status: running" in reply, reply
assert machine.qmp_client is not None
status: Any = machine.qmp_client.send("query-status")
assert status["return"]["status"] == "running", status

machine.send_monitor_command("stop")
event = machine.wait_for_qmp_event(lambda e: e["event"] == "STOP", timeout=dt.timedelta(seconds=30))
assert "timestamp" in event
assert "paused" in machine.send_monitor_command("info status")
machine.qmp_client.send("cont")
machine.wait_for_qmp_event(lambda e: e["event"] == "RESUME")
assert machine.succeed("echo alive") == "alive\n"

names = machine.qmp_client.send("query-commands")
assert any(c["name"] == "screendump" for c in names["return"])
