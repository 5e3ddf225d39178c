machine.start()
machine.wait_for_unit("multi-user.target")

with subtest("systemd-networkd is started"):
  machine.succeed("systemctl status systemd-networkd.service")

with subtest("/etc is populated correctly"):
  output = machine.succeed("cat /etc/something")
  t.assertEqual(output, "nothing")
