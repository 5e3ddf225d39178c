# machines: machine

import os, re, string
from datetime import timedelta
from test_driver.errors import MachineError

start_all()
machine.wait_for_file("/tmp")

with subtest("send_chars and send_key reach tty1 with upstream's key mapping"):
    machine.succeed("(cat /dev/tty1 > /tmp/typed) >/dev/null 2>&1 &")
    machine.wait_until_succeeds("busybox pidof cat", timeout=10)
    printable = "".join(c for c in string.printable if c not in string.whitespace)
    machine.send_chars("Hello, World! " + printable + "\n")
    machine.wait_until_succeeds("grep -q World /tmp/typed", timeout=30)
    typed = machine.succeed("cat /tmp/typed")
    assert typed == "Hello, World! " + printable + "\n", repr(typed)
    # Every delay form; log=False sends without a log line.
    machine.send_key("A", delay=0.05)
    machine.send_key("b", delay=timedelta(milliseconds=5))
    machine.send_key("c", None)
    machine.send_key("spc", 0)
    machine.send_key("shift-d", log=False)
    machine.send_chars("_~|\n", delay=0.01)
    machine.send_chars("Z\n", timedelta(milliseconds=1))
    machine.wait_until_succeeds("grep -q '^Z$' /tmp/typed", timeout=30)
    lines = machine.succeed("cat /tmp/typed").splitlines()
    assert lines[1:] == ["Abc D_~|", "Z"], lines

with subtest("screenshot, OCR"):
    machine.succeed("printf '\\033[2J\\033[HNTD SCREEN PROBE 4711\\n' > /dev/tty1")
    machine.screenshot("probe")
    machine.screenshot("second.png")
    machine.screenshot(str(driver.out_dir / "absolute"))
    assert (driver.out_dir / "probe.png").exists()
    text = machine.get_screen_text()
    assert "SCREEN PROBE" in text, text
    variants = machine.get_screen_text_variants()
    assert isinstance(variants, list) and any("4711" in v for v in variants), variants
    machine.wait_for_text("SCREEN PROBE", timeout=30)
    machine.succeed("(sleep 1; echo LATER ARRIVAL > /dev/tty1) >/dev/null 2>&1 &")
    machine.wait_for_text(r"LATER\s+ARRIVAL", timeout=timedelta(seconds=60))
    try:
        machine.wait_for_text("NOT ON THE SCREEN", timeout=1)
        raise Exception("wait_for_text did not time out")
    except AssertionError as e:
        assert "action timed out" in str(e), e

with subtest("OCR without tesseract is upstream's MachineError"):
    path = os.environ["PATH"]
    os.environ["PATH"] = "/nonexistent"
    try:
        for call in (machine.get_screen_text, machine.get_screen_text_variants,
                     lambda: machine.wait_for_text("x", timeout=30)):
            try:
                call()
                raise Exception("OCR worked without tesseract")
            except MachineError as e:
                assert str(e) == "OCR requested but enableOCR is false", e
    finally:
        os.environ["PATH"] = path

with subtest("tty text"):
    machine.succeed("echo tty-probe-1234 > /dev/tty1")
    assert "tty-probe-1234" in machine.get_tty_text("1")
    assert "tty-probe-1234" in machine.get_tty_text(1)  # legacy: tty as an int
    machine.wait_until_tty_matches("1", r"tty-probe-\d+")
    machine.wait_until_tty_matches(1, "tty-probe", timeout=5)
    machine.succeed("(sleep 1; echo tty-later > /dev/tty1) >/dev/null 2>&1 &")
    machine.wait_until_tty_matches("1", "tty-later", timeout=timedelta(seconds=20))
    try:
        machine.wait_until_tty_matches("1", "never-there", timeout=1)
        raise Exception("wait_until_tty_matches did not time out")
    except AssertionError as e:
        assert "action timed out" in str(e), e
    # The tiny guest has no systemd-cat: the command fails, and (as upstream) nothing raises.
    machine.dump_tty_contents("1")
