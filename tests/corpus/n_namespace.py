# machines: db, web
# vlans: 1
# The rest of the namespace: driver, machines, log, t, debug, os, the class names, and
# machines' attributes.
import os

from test_driver.machine import QemuMachine

assert [m.name for m in machines] == ["db", "web"]
assert sorted(m.name for m in machines_qemu) == ["db", "web"] and machines_nspawn == []
assert isinstance(web, QemuMachine) and isinstance(db, BaseMachine)
assert repr(db) == "<QemuMachine 'db'>"
assert db.state_dir.name == "vm-state-db" and db.shared_dir.name == "shared-xchg"
assert driver.out_dir.is_dir()
assert os.path.isdir(os.environ.get("XDG_RUNTIME_DIR", "/tmp"))
debug.breakpoint()
dump_machine_ssh()

start_all()
for m in machines:
    m.wait_for_file("/tmp/shared")
    log.info(f"{m.name} is up as pid {m.pid}")
    t.assertTrue(m.is_up())

db.succeed("echo shared-by-db > /tmp/shared/note")
t.assertEqual(web.succeed("cat /tmp/shared/note"), "shared-by-db\n")
t.assertEqual(sorted(os.listdir(db.shared_dir)), ["note"])
with log.nested("cleaning up"):
    db.succeed("rm /tmp/shared/note")
