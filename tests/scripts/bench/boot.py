# machines: node1, node2
# placeholder: @NODES@ node1, node2
import json, time
t0 = time.perf_counter()
start_all()
first = {}
for m in [@NODES@]:
    m.succeed("true")
    first[m.name] = time.perf_counter() - t0
boot = {}
for m in [@NODES@]:
    state = getattr(m, "_state", None)
    if state is not None:
        boot[m.name] = state().get("boot_secs")
print("BENCH " + json.dumps({"first": first, "boot": boot}))
