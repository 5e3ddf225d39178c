# machines: machine
import time

start_all()
machine.succeed("true")
time.sleep(600)
