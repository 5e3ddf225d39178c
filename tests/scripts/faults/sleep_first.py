# machines: machine
import time

time.sleep(600)
start_all()
