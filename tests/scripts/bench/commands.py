# machines: machine
# placeholder: @COMMANDS@ 200
# placeholder: @WAITS@ 20
import json, time
start_all()
machine.succeed("true")
lat = []
for _ in range(@COMMANDS@):
    start = time.perf_counter()
    machine.succeed("true")
    lat.append(time.perf_counter() - start)
det = []
for _ in range(@WAITS@):
    machine.succeed("rm -f /tmp/f /tmp/t; (sleep 0.3; : > /tmp/f; echo $EPOCHREALTIME > /tmp/t) >/dev/null 2>&1 &")
    machine.wait_for_file("/tmp/f")
    now = float(machine.succeed("echo $EPOCHREALTIME"))
    det.append(now - float(machine.succeed("cat /tmp/t")))
print("BENCH " + json.dumps({"latency": lat, "detection": det}))
