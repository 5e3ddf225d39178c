# machines: machine
# Legacy create_machine(…, keep_vm_state=…): a second VM from the first one's start command,
# booted after the first has shut down; what it leaves in its state directory stays.
import os

machine.start()
machine.wait_for_file("/tmp/shared")
machine.succeed("echo first > /tmp/shared/handover")
machine.shutdown()


def boot_second():
    second = create_machine(machine.start_command, name="second", keep_vm_state=True)
    second.start()
    assert second.succeed("cat /tmp/shared/handover") == "first\n"
    second.succeed("echo persisted > /tmp/xchg/state")
    second.shutdown()
    assert os.path.exists(os.path.join(second.state_dir, "xchg", "state"))
    return second


second = boot_second()
assert second.name == "second"
assert second not in machines
