# machines: machine
# Screenshots and OCR (enableOCR = true in Nix): the console on tty1, read from the screen.
import datetime as dt

start_all()
machine.wait_for_file("/dev/tty1")
machine.succeed("printf '\\033[2J\\033[HLOGIN PROMPT READY\\n' > /dev/tty1")
machine.wait_for_text("PROMPT READY", timeout=dt.timedelta(seconds=60))
machine.screenshot("login")
assert (driver.out_dir / "login.png").exists()
text = machine.get_screen_text()
assert "LOGIN" in text, text
variants = machine.get_screen_text_variants()
assert any("READY" in v for v in variants), variants
machine.succeed("(sleep 1; echo SECOND SCREEN > /dev/tty1) >/dev/null 2>&1 &")
machine.wait_for_text("SECOND", timeout=60)
machine.screenshot("second.png")
