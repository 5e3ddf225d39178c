# containers: c1, c2
# vlans: 1
# Run by ci/sandbox-run in emulated Nix build sandbox namespaces (tests/containers.rs).
import os

assert os.environ.get("NIX_BUILD_TOP"), "not in the emulated sandbox"
start_all()
c1.wait_for_unit("multi-user.target")
c1.succeed("ping -c 1 -W 10 c2")
c2.succeed("ping -c 1 -W 10 c1")
assert c2.succeed("cat /etc/hostname") == "c2\n"
c2.shutdown()
c2.start()
c2.succeed("ping -c 1 -W 10 c1")
print("SANDBOX DONE")
