# machines: machine
import sys
start_all()
sys.exit(1)
