# machines: machine
import time
start_all()
machine.succeed('echo up')
time.sleep(600)
