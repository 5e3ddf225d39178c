# machines: machine

start_all()
machine.succeed("echo from-the-script > /tmp/f")
x = 41
breakpoint()
machine.succeed("echo after-the-breakpoint")
