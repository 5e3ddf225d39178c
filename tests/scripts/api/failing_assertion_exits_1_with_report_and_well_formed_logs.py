# machines: machine

start_all()
with subtest("passes"):
    machine.succeed("echo '<fine & dandy>'")
with subtest("fails"):
    output = machine.succeed("echo abc")
    t.assertIn("xyz", output)
machine.succeed("echo never reached")
