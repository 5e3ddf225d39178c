# machines: host
# A helper class around a machine, as larger test suites write them: it subclasses
# QemuMachine without calling its constructor and delegates attributes to the real machine,
# calling the inherited methods through super().
import json


class ContainerHost(QemuMachine):
    def __init__(self, base: QemuMachine) -> None:
        with subtest("wait for startup"):
            base.wait_for_file("/tmp/shared")
        self._parent = base

    def __getattr__(self, name: str):
        return getattr(self._parent, name)

    def in_container(self, name: str, command: str) -> tuple[int, str]:
        return super().execute(f"mkdir -p /tmp/ct/{name} && cd /tmp/ct/{name} && {command}")

    def wait_in_container(self, name: str, command: str, timeout: int = 60) -> None:
        def check(_) -> bool:
            status, _out = self.in_container(name, command)
            return status == 0

        with super().nested(f"waiting in container {name} for {command}"):
            retry(check, timeout)

    def inventory(self) -> list[str]:
        return json.loads(super().succeed("cd /tmp/ct && printf '%s\\n' * | jq -R . | jq -s . 2>/dev/null || echo '[]'"))


start_all()
ct = ContainerHost(host)
assert ct.name == "host" and ct.booted
status, out = ct.in_container("web", "echo ready > state; cat state")
assert (status, out) == (0, "ready\n"), (status, out)
ct.succeed("(sleep 0.5; touch /tmp/ct/web/done) >/dev/null 2>&1 &")
ct.wait_in_container("web", "test -e done")
super(ContainerHost, ct).sleep(1)
assert ct.inventory() == []  # no jq in the guest: the fallback answer
