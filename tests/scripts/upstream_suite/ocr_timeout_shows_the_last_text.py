# machines: machine
# nixpkgs #485896: when an OCR wait times out, its error shows the text the last OCR attempt
# recognised; an OCR attempt cut by the deadline has no result (None), which is not "".
from datetime import timedelta

start_all()
machine.wait_for_file("/tmp")
machine.succeed("printf '\\033[2J\\033[HNTD SCREEN PROBE 4711\\n' > /dev/tty1")
machine.wait_for_text("SCREEN PROBE", timeout=timedelta(seconds=60))
try:
    machine.wait_for_text("NOT ON THE SCREEN", timeout=timedelta(seconds=15))
    raise Exception("wait_for_text did not time out")
except AssertionError as e:
    message = str(e)
    print(f"OCR ERROR: {message}")
    assert "action timed out after" in message, message
    assert "the last OCR attempt recognised" in message, message
    assert "SCREEN PROBE" in message, message
