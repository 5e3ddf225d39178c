# Every systemd method of the Machine API on a Debian guest, system and user manager.
import time
from datetime import timedelta


def must_raise(fn, fragment, kind=AssertionError):
    """Call fn; it must raise `kind` with `fragment` in its message."""
    try:
        fn()
    except kind as e:
        assert fragment in str(e), f"{fragment!r} not in {str(e)!r}"
        return str(e)
    raise Exception(f"no exception containing {fragment!r}")


start_all()

with subtest("wait_for_unit and unit queries (system manager)"):
    machine.wait_for_unit("multi-user.target")
    machine.wait_for_unit("ntd-alice.service", timeout=60)
    machine.wait_for_job("multi-user.target")  # the legacy name
    info = machine.get_unit_info("multi-user.target")
    assert info["ActiveState"] == "active", info
    assert info["Id"] == "multi-user.target", info
    assert machine.get_unit_property("ntd-alice.service", "Description") == (
        "User alice with a lingering user manager"
    )
    assert machine.get_unit_property("ntd-never.service", "ActiveState") == "inactive"
    machine.require_unit_state("multi-user.target")
    machine.require_unit_state("ntd-never.service", "inactive")
    must_raise(
        lambda: machine.require_unit_state("multi-user.target", "borked"),
        "Expected unit 'multi-user.target' to to be in state 'borked' but it is in state 'active'",
    )

with subtest("systemctl, start_job, stop_job"):
    status, out = machine.systemctl("is-active multi-user.target")
    assert (status, out) == (0, "active\n"), (status, out)
    status, out = machine.systemctl("is-active ntd-never.service")
    assert status == 3 and out == "inactive\n", (status, out)
    status, _ = machine.start_job("ntd-fails.service")
    assert status != 0, "starting a failing unit succeeded"
    machine.require_unit_state("ntd-fails.service", "failed")
    must_raise(
        lambda: machine.wait_for_unit("ntd-fails.service"),
        'unit "ntd-fails.service" reached state "failed"',
    )
    must_raise(
        lambda: machine.wait_for_unit("ntd-never.service"),
        'unit "ntd-never.service" is inactive and there are no pending jobs',
    )
    # A unit that is still activating when the time is up: a timeout.
    machine.systemctl("start --no-block ntd-slow.service")
    t0 = time.monotonic()
    must_raise(lambda: machine.wait_for_unit("ntd-slow.service", timeout=2), "action timed out")
    assert time.monotonic() - t0 < 20, time.monotonic() - t0
    machine.stop_job("ntd-slow.service")

with subtest("wait_for_open_unix_socket"):
    assert machine.start_job("ntd-stream.service")[0] == 0
    assert machine.start_job("ntd-dgram.service")[0] == 0
    machine.fail("nc -z -U /run/ntd-stream.sock")
    machine.wait_for_open_unix_socket("/run/ntd-stream.sock", timeout=30)
    machine.wait_for_open_unix_socket("/run/ntd-dgram.sock", is_datagram=True, timeout=timedelta(seconds=30))
    machine.wait_for_open_unix_socket("/run/ntd-stream.sock", False, 30)
    status, _ = machine.stop_job("ntd-stream.service")
    assert status == 0
    machine.require_unit_state("ntd-stream.service", "inactive")
    must_raise(
        lambda: machine.wait_for_open_unix_socket("/run/ntd-nothing.sock", timeout=1),
        "action timed out",
    )

with subtest("the user manager (user=)"):
    machine.wait_for_unit("user@1000.service", timeout=60)
    machine.wait_for_unit("default.target", "alice", timeout=60)
    machine.wait_for_unit("default.target", user="alice")
    status, out = machine.systemctl("is-active default.target", user="alice")
    assert (status, out) == (0, "active\n"), (status, out)
    # A quote in the query is escaped as upstream does.
    status, out = machine.systemctl("show-environment --property='HOME'", user="alice")
    assert status == 0 and "HOME=/home/alice" in out, (status, out)
    assert machine.start_job("ntd-user-demo.service", user="alice")[0] == 0
    machine.wait_for_unit("ntd-user-demo.service", user="alice")
    info = machine.get_unit_info("ntd-user-demo.service", user="alice")
    assert info["Description"] == "A service of alice's user manager", info
    assert machine.get_unit_property("ntd-user-demo.service", "ActiveState", "alice") == "active"
    assert machine.succeed("ps -o user= -C sleep").split() == ["alice"]
    assert machine.stop_job("ntd-user-demo.service", user="alice")[0] == 0
    assert machine.get_unit_property("ntd-user-demo.service", "ActiveState", user="alice") == "inactive"
    must_raise(
        lambda: machine.wait_for_unit("ntd-user-demo.service", user="alice"),
        'unit "ntd-user-demo.service" is inactive and there are no pending jobs',
    )
    must_raise(
        lambda: machine.get_unit_info("x.service", user="nobody-here"),
        'retrieving systemctl info for unit "x.service" under user "nobody-here" failed with exit code',
    )
    machine.wait_for_unit_active_state("ntd-user-demo.service", "inactive", user="alice", timeout=10)

with subtest("wait_for_unit_active_state and dump_tty_contents"):
    machine.systemctl("start --no-block ntd-slow.service")
    machine.wait_for_unit_active_state("ntd-slow.service", "activating", timeout=10)
    machine.stop_job("ntd-slow.service")
    # A oneshot unit stopped while it starts fails (result 'signal').
    machine.wait_for_unit_active_state("ntd-slow.service", "failed", timeout=timedelta(seconds=10))
    machine.succeed("echo ntd-tty-dump-marker > /dev/tty1")
    machine.dump_tty_contents("1")
    machine.wait_until_succeeds("journalctl -b | grep -q ntd-tty-dump-marker", timeout=10)
