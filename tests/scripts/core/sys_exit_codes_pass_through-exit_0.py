# machines: machine
import sys
sys.exit(0)
