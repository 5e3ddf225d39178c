# wait_for_unit and wait_for_unit_active_state keep upstream's semantics while following
# systemd's D-Bus signals: a unit that fails while waited for raises as upstream, one that is
# restarted is waited for until active again, late units and aliases are noticed, a unit that
# is never started raises, and without D-Bus events (no busctl, no subscriber) the waits
# poll and still succeed. No watcher is left behind.
from typing import Callable

start_all()
machine.wait_for_unit("multi-user.target")


def raises(wait: Callable[[], None], fragment: str) -> None:
    try:
        wait()
    except AssertionError as e:
        assert fragment in str(e), f"{fragment!r} not in {str(e)!r}"
        return
    raise Exception(f"no exception containing {fragment!r}")


def late(unit: str) -> None:
    machine.succeed(f"systemctl stop {unit}; systemctl start --no-block {unit}")


with subtest("a unit that fails while waited for"):
    late("ntd-fails-later.service")
    raises(
        lambda: machine.wait_for_unit("ntd-fails-later.service", timeout=60),
        'unit "ntd-fails-later.service" reached state "failed"',
    )
    machine.succeed("systemctl reset-failed ntd-fails-later.service")

with subtest("a unit restarted while waited for"):
    machine.succeed("systemctl start ntd-restarts.service")
    machine.succeed("systemctl restart --no-block ntd-restarts.service")
    machine.wait_for_unit("ntd-restarts.service", timeout=60)
    machine.require_unit_state("ntd-restarts.service", "active")

with subtest("late units, a name without suffix, an alias, states"):
    late("ntd-late.service")
    machine.wait_for_unit("ntd-late", timeout=60)
    late("ntd-aliased.service")
    machine.wait_for_unit("ntd-other-name.service", timeout=60)
    late("ntd-late.service")
    machine.wait_for_unit_active_state("ntd-late.service", "activating", timeout=60)
    machine.wait_for_unit_active_state("ntd-late.service", "active", timeout=60)
    late("ntd-fails-later.service")
    machine.wait_for_unit_active_state("ntd-fails-later.service", "failed", timeout=60)
    machine.succeed("systemctl reset-failed ntd-fails-later.service")
    raises(
        lambda: machine.wait_for_unit("ntd-never.service", timeout=60),
        'unit "ntd-never.service" is inactive and there are no pending jobs',
    )

with subtest("no watcher is left behind"):
    late("ntd-late.service")
    raises(lambda: machine.wait_for_unit("ntd-late.service", timeout=1), "action timed out")
    machine.wait_for_unit("ntd-late.service", timeout=60)
    machine.wait_until_succeeds("! pgrep -f 'busctl --json=short monitor'", timeout=10)
    machine.fail("pgrep -x grep")

with subtest("no signals: nobody subscribed (logind stopped), then no busctl at all"):
    machine.succeed("systemctl stop systemd-logind.service")
    late("ntd-late.service")
    machine.wait_for_unit("ntd-late.service", timeout=120)
    machine.succeed("mount --bind /bin/false /usr/bin/busctl")
    late("ntd-late.service")
    machine.wait_for_unit("ntd-late.service", timeout=60)
    late("ntd-fails-later.service")
    raises(
        lambda: machine.wait_for_unit("ntd-fails-later.service", timeout=60),
        'unit "ntd-fails-later.service" reached state "failed"',
    )
    machine.succeed("umount /usr/bin/busctl")
