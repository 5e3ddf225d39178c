# machines: machine

import time

machine.succeed("echo waited > /root/marker")
time.sleep(600)
