# machines: machine
# guest: debian
# Newest-generation style (N) with systemd user units: a lingering user's manager,
# systemctl/start_job/stop_job/wait_for_unit with user=, timedeltas.
import datetime as dt

from test_driver.machine import QemuMachine

MINUTE = dt.timedelta(minutes=1)


def user_unit_state(m: QemuMachine, unit: str) -> str:
    return m.get_unit_property(unit, "ActiveState", user="bob")


machine.start()
machine.wait_for_unit("ntd-user-bob.service", timeout=MINUTE)
# The user manager must run before `systemctl --user` can answer (as upstream).
machine.wait_for_unit("user@1000.service", timeout=MINUTE)
machine.wait_for_unit("default.target", user="bob", timeout=MINUTE)

with subtest("a user service"):
    status, _ = machine.start_job("clock.service", user="bob")
    assert status == 0
    machine.wait_for_unit("clock.service", user="bob", timeout=MINUTE)
    machine.wait_until_succeeds("test -s /home/bob/clock", timeout=MINUTE)
    assert user_unit_state(machine, "clock.service") == "active"
    status, out = machine.systemctl("list-units --no-legend clock.service", user="bob")
    assert status == 0 and "clock.service" in out, out
    machine.stop_job("clock.service", user="bob")
    assert user_unit_state(machine, "clock.service") == "inactive"

with subtest("system and user managers are separate"):
    status, _ = machine.systemctl("cat clock.service")
    assert status != 0, "the user unit is visible to the system manager"
    info = machine.get_unit_info("clock.service", user="bob")
    assert info["FragmentPath"].endswith("/systemd/user/clock.service"), info["FragmentPath"]
