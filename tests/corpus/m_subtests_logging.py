# machines: machine
# Subtests (nested), the logger and unittest assertions through `t`.
start_all()

with subtest("kernel"):
    kernel = machine.succeed("uname -r").strip()
    log.info(f"kernel {kernel}")
    t.assertRegex(kernel, r"^\d+\.\d+")

    with subtest("modules"):
        modules = machine.succeed("cat /proc/modules")
        t.assertIn("virtio_net", modules)

with subtest("hostname and hosts"):
    with log.nested("checking names"):
        t.assertEqual(machine.succeed("hostname").strip(), "machine")
        t.assertTrue(machine.succeed("cat /etc/hosts").startswith("127.0.0.1 localhost"))
    with machine.nested("a block on the machine"):
        machine.log("inside the block")

with subtest("assertions that must fail"):
    with t.assertRaises(AssertionError):
        t.assertEqual(machine.succeed("echo 1"), "2\n")
    with t.assertRaises(AssertionError):
        machine.succeed("false")
    machine.fail("false", "exit 3")

with subtest("a headless machine has no X server"):
    with t.assertRaises(AssertionError):
        machine.wait_for_x(timeout=2)
    with t.assertRaises(AssertionError):
        machine.wait_for_window("xterm", timeout=2)
    with t.assertRaises(AssertionError):
        machine.get_window_names()
log.warning("all checks done")
